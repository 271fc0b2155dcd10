//! `rbee worker binary list|get|delete`: the worker catalog of each hive.

use prost_types::Timestamp;
use rbee_proto::v1::{
    BinaryLayout, DeleteWorkerBinaryRequest, GetWorkerBinaryRequest, ListWorkerBinariesRequest,
    WorkerBinary,
};
use serde::Serialize;

use super::{Context, count, worker_process::StoppedView};
use crate::{
    cli::WorkerBinaryCommand,
    render::{self, Exit, HiveData, format, table},
};

/// Runs one `rbee worker binary` command.
pub async fn run(context: &Context, command: WorkerBinaryCommand) -> Exit {
    match command {
        WorkerBinaryCommand::List => list(context).await,
        WorkerBinaryCommand::Get { name } => get(context, name).await,
        WorkerBinaryCommand::Delete { name, force } => delete(context, name, force).await,
    }
}

/// A worker binary in JSON output: the protobuf fields, with the layout as a lowercase word
/// (`file`, `directory`, `symlink`) and the modification time in RFC 3339.
#[derive(Debug, Serialize)]
pub struct WorkerBinaryView {
    pub(super) name: String,
    path: String,
    layout: &'static str,
    pub(super) size_bytes: u64,
    sha256: String,
    #[serde(serialize_with = "format::serialize_time")]
    modified_at: Option<Timestamp>,
    executable: bool,
    platform: String,
    version: String,
    source: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    symlink_target: String,
    /// Why the entry cannot be used; empty for a usable entry.
    problem: String,
}

impl From<WorkerBinary> for WorkerBinaryView {
    fn from(binary: WorkerBinary) -> Self {
        let layout = match BinaryLayout::try_from(binary.layout) {
            Ok(BinaryLayout::File) => "file",
            Ok(BinaryLayout::Directory) => "directory",
            Ok(BinaryLayout::Symlink) => "symlink",
            Ok(BinaryLayout::Unspecified) | Err(_) => "unspecified",
        };
        Self {
            name: binary.name,
            path: binary.path,
            layout,
            size_bytes: binary.size_bytes,
            sha256: binary.sha256,
            modified_at: binary.modified_at,
            executable: binary.executable,
            platform: binary.platform,
            version: binary.version,
            source: binary.source,
            symlink_target: binary.symlink_target,
            problem: binary.problem,
        }
    }
}

/// `data` of `worker binary list`.
#[derive(Debug, Serialize)]
struct BinaryList {
    binaries: Vec<WorkerBinaryView>,
}

impl HiveData for BinaryList {
    fn summary(&self) -> String {
        count(self.binaries.len(), "worker binary", "worker binaries")
    }
}

/// `data` of `worker binary get`.
#[derive(Debug, Serialize)]
struct BinaryGet {
    binary: WorkerBinaryView,
}

impl HiveData for BinaryGet {
    fn summary(&self) -> String {
        format!(
            "{} ({})",
            self.binary.name,
            format::bytes(self.binary.size_bytes)
        )
    }
}

/// `data` of `worker binary delete`.
#[derive(Debug, Serialize)]
struct BinaryDeleted {
    binary: WorkerBinaryView,
    stopped: Vec<StoppedView>,
}

impl HiveData for BinaryDeleted {
    fn summary(&self) -> String {
        if self.stopped.is_empty() {
            format!("deleted {}", self.binary.name)
        } else {
            format!(
                "deleted {} after stopping {}",
                self.binary.name,
                count(self.stopped.len(), "worker process", "worker processes")
            )
        }
    }
}

async fn list(context: &Context) -> Exit {
    let results = context
        .run_reads(|call| async move {
            let request = call.request(ListWorkerBinariesRequest {
                job_id: call.job_id(),
            });
            let response = call.hive_client().list_worker_binaries(request).await?;
            let binaries = response.into_inner().binaries;
            Ok(BinaryList {
                binaries: binaries.into_iter().map(WorkerBinaryView::from).collect(),
            })
        })
        .await;

    render::print_results(context.output, &results, |succeeded, several| {
        let rows = succeeded
            .iter()
            .flat_map(|(hive, list)| list.binaries.iter().map(move |binary| (*hive, binary)));
        binary_table(rows, several, "no worker binaries\n")
    })
}

async fn get(context: &Context, name: String) -> Exit {
    let results = context
        .run_reads(|call| {
            let name = name.clone();
            async move {
                let request = call.request(GetWorkerBinaryRequest {
                    job_id: call.job_id(),
                    name,
                });
                let response = call.hive_client().get_worker_binary(request).await?;
                let binary = response.into_inner().binary.unwrap_or_default();
                Ok(BinaryGet {
                    binary: binary.into(),
                })
            }
        })
        .await;

    render::print_results(context.output, &results, |succeeded, several| {
        if let [(_, found)] = succeeded
            && !several
        {
            return binary_details(&found.binary);
        }
        let rows = succeeded.iter().map(|(hive, found)| (*hive, &found.binary));
        binary_table(rows, several, "")
    })
}

async fn delete(context: &Context, name: String, force: bool) -> Exit {
    let results = context
        .run_jobs(|call| {
            let name = name.clone();
            async move {
                let request = call.request(DeleteWorkerBinaryRequest {
                    job_id: call.job_id(),
                    name,
                    force,
                });
                let response = call.hive_client().delete_worker_binary(request).await?;
                let response = response.into_inner();
                Ok(BinaryDeleted {
                    binary: response.binary.unwrap_or_default().into(),
                    stopped: response
                        .stopped
                        .into_iter()
                        .map(StoppedView::from)
                        .collect(),
                })
            }
        })
        .await;

    render::print_results(context.output, &results, |succeeded, several| {
        let mut text = String::new();
        for (hive, deleted) in succeeded {
            let on_hive = if several {
                format!(" on {}", hive.name)
            } else {
                String::new()
            };
            text.push_str(&format!(
                "deleted worker binary {}{on_hive}\n",
                deleted.binary.name
            ));
            for stopped in &deleted.stopped {
                text.push_str(&format!("  stopped {}\n", stopped.describe()));
            }
        }
        text
    })
}

/// Renders one row per worker binary, with a HIVE column when several hives were targeted.
pub(super) fn binary_table<'a>(
    rows: impl Iterator<Item = (&'a crate::config::HiveTarget, &'a WorkerBinaryView)>,
    several: bool,
    when_empty: &str,
) -> String {
    let mut headers = Vec::new();
    if several {
        headers.push("HIVE");
    }
    headers.extend([
        "NAME", "LAYOUT", "PLATFORM", "VERSION", "SIZE", "MODIFIED", "EXEC",
    ]);
    headers.push("SHA256");
    let mut table = table::new(&headers);

    let mut empty = true;
    for (hive, binary) in rows {
        empty = false;
        let mut row = Vec::new();
        if several {
            row.push(hive.name.clone());
        }
        row.extend([
            binary.name.clone(),
            binary.layout.to_owned(),
            binary.platform.clone(),
            dash_if_empty(&binary.version),
            format::bytes(binary.size_bytes),
            format::age(binary.modified_at.as_ref()),
            if binary.executable { "yes" } else { "no" }.to_owned(),
            if binary.problem.is_empty() {
                binary.sha256.chars().take(12).collect()
            } else {
                "broken: see get".to_owned()
            },
        ]);
        table.add_row(row);
    }

    if empty {
        when_empty.to_owned()
    } else {
        table::render(&table)
    }
}

/// `Key: value` lines for one worker binary.
pub(super) fn binary_details(binary: &WorkerBinaryView) -> String {
    let layout = if binary.symlink_target.is_empty() {
        binary.layout.to_owned()
    } else {
        format!("{} -> {}", binary.layout, binary.symlink_target)
    };
    table::details(&[
        ("Name", binary.name.clone()),
        ("Path", binary.path.clone()),
        ("Layout", layout),
        ("Platform", binary.platform.clone()),
        ("Version", binary.version.clone()),
        ("Source", binary.source.clone()),
        (
            "Size",
            format!(
                "{} ({} bytes)",
                format::bytes(binary.size_bytes),
                binary.size_bytes
            ),
        ),
        ("Modified", format::time(binary.modified_at.as_ref())),
        (
            "Executable",
            if binary.executable { "yes" } else { "no" }.to_owned(),
        ),
        ("SHA-256", binary.sha256.clone()),
        // Shown only for a broken entry: empty values are left out.
        ("Problem", binary.problem.clone()),
    ])
}

fn dash_if_empty(text: &str) -> String {
    if text.is_empty() {
        "-".to_owned()
    } else {
        text.to_owned()
    }
}
