//! `rbee worker build`: build a worker binary with cargo on each targeted hive and install it
//! into the catalog.

use rbee_proto::v1::BuildWorkerRequest;

use super::{
    Context, long_job,
    worker_download::{InstalledBinary, print_installed},
};
use crate::{cli::WorkerBuildArgs, render::Exit};

/// Runs `rbee worker build` on every targeted hive. Ctrl-C cancels the builds.
pub async fn run(context: &Context, args: WorkerBuildArgs) -> Exit {
    let request = build_request(args);
    let results = long_job::run_cancellable(context, |call| {
        let mut request = request.clone();
        async move {
            request.job_id = call.job_id();
            let request = call.request(request);
            let response = call.hive_client().build_worker(request).await?;
            Ok(InstalledBinary::new(response.into_inner().binary))
        }
    })
    .await;

    match results {
        Some(results) => print_installed(context, &results),
        None => Exit::Interrupted,
    }
}

/// Builds the request from the command line. An empty profile lets the hive use `release`.
fn build_request(args: WorkerBuildArgs) -> BuildWorkerRequest {
    BuildWorkerRequest {
        job_id: String::new(),
        name: args.name,
        source: args.source,
        features: args.features,
        profile: args.profile.unwrap_or_default(),
        replace: args.replace,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_carries_every_flag() {
        let request = build_request(WorkerBuildArgs {
            name: "llm-cuda".to_owned(),
            source: "/src/llm-worker".to_owned(),
            features: vec!["cuda".to_owned(), "flash-attn".to_owned()],
            profile: None,
            replace: true,
        });
        assert_eq!(request.name, "llm-cuda");
        assert_eq!(request.source, "/src/llm-worker");
        assert_eq!(request.features, ["cuda", "flash-attn"]);
        assert_eq!(request.profile, "", "empty lets the hive use release");
        assert!(request.replace);
    }
}
