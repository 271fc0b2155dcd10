//! `rbee worker download`: download a worker binary into each targeted hive's catalog.

use rbee_proto::v1::{DownloadWorkerRequest, WorkerBinary};
use serde::Serialize;

use super::{
    Context, long_job,
    worker_binary::{WorkerBinaryView, binary_details, binary_table},
};
use crate::{
    cli::WorkerDownloadArgs,
    fanout::HiveResult,
    render::{self, Exit, HiveData, format},
};

/// `data` of `worker download` and `worker build`: the installed catalog entry.
#[derive(Debug, Serialize)]
pub struct InstalledBinary {
    binary: WorkerBinaryView,
}

impl InstalledBinary {
    /// Wraps the entry a hive returned. An absent entry becomes an empty one.
    pub fn new(binary: Option<WorkerBinary>) -> Self {
        Self {
            binary: binary.unwrap_or_default().into(),
        }
    }
}

impl HiveData for InstalledBinary {
    fn summary(&self) -> String {
        format!(
            "installed {} ({})",
            self.binary.name,
            format::bytes(self.binary.size_bytes)
        )
    }
}

/// Runs `rbee worker download` on every targeted hive. Ctrl-C cancels the downloads.
pub async fn run(context: &Context, args: WorkerDownloadArgs) -> Exit {
    let request = DownloadWorkerRequest {
        job_id: String::new(),
        name: args.name,
        url: args.url,
        sha256: args.sha256.unwrap_or_default(),
        version: args.version.unwrap_or_default(),
        replace: args.replace,
    };
    let results = long_job::run_cancellable(context, |call| {
        let mut request = request.clone();
        async move {
            request.job_id = call.job_id();
            let request = call.request(request);
            let response = call.hive_client().download_worker(request).await?;
            Ok(InstalledBinary::new(response.into_inner().binary))
        }
    })
    .await;

    match results {
        Some(results) => print_installed(context, &results),
        None => Exit::Interrupted,
    }
}

/// Prints installed worker binaries: the entry's details for one hive, a table for several.
pub fn print_installed(context: &Context, results: &[HiveResult<InstalledBinary>]) -> Exit {
    render::print_results(context.output, results, |succeeded, several| {
        if let [(_, installed)] = succeeded
            && !several
        {
            return binary_details(&installed.binary);
        }
        let rows = succeeded
            .iter()
            .map(|(hive, installed)| (*hive, &installed.binary));
        binary_table(rows, several, "")
    })
}
