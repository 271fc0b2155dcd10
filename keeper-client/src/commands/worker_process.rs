//! `rbee worker process list|get|delete`: worker processes running on each hive.

use std::time::Duration;

use prost_types::Timestamp;
use rbee_proto::v1::{
    DeleteWorkerProcessRequest, GetWorkerProcessRequest, ListWorkerProcessesRequest, StopMethod,
    StoppedProcess, WorkerProcess,
};
use serde::Serialize;

use super::{Context, count};
use crate::{
    cli::WorkerProcessCommand,
    config::HiveTarget,
    render::{self, Exit, HiveData, format, table},
};

/// Runs one `rbee worker process` command.
pub async fn run(context: &Context, command: WorkerProcessCommand) -> Exit {
    match command {
        WorkerProcessCommand::List { worker } => list(context, worker.unwrap_or_default()).await,
        WorkerProcessCommand::Get { pid } => get(context, pid).await,
        WorkerProcessCommand::Delete { pid, grace } => delete(context, pid, grace).await,
    }
}

/// A worker process in JSON output: the protobuf fields, with the start time in RFC 3339.
/// `worker_id`, `model` and `device` are empty and `port` is zero unless the hive spawned the
/// process.
#[derive(Debug, Serialize)]
pub struct WorkerProcessView {
    pid: i32,
    ppid: i32,
    worker_name: String,
    exe_path: String,
    argv: Vec<String>,
    uid: u32,
    user: String,
    state: String,
    #[serde(serialize_with = "format::serialize_time")]
    started_at: Option<Timestamp>,
    cpu_percent: f64,
    rss_bytes: u64,
    listening_ports: Vec<u32>,
    worker_id: String,
    model: String,
    device: String,
    port: u32,
}

impl From<WorkerProcess> for WorkerProcessView {
    fn from(process: WorkerProcess) -> Self {
        Self {
            pid: process.pid,
            ppid: process.ppid,
            worker_name: process.worker_name,
            exe_path: process.exe_path,
            argv: process.argv,
            uid: process.uid,
            user: process.user,
            state: process.state,
            started_at: process.started_at,
            cpu_percent: process.cpu_percent,
            rss_bytes: process.rss_bytes,
            listening_ports: process.listening_ports,
            worker_id: process.worker_id,
            model: process.model,
            device: process.device,
            port: process.port,
        }
    }
}

/// A stopped worker process in JSON output. `method` is `terminated`, `killed_after_grace`,
/// `killed` or `already_exited`; `elapsed` is a protobuf JSON duration such as `0.120s`.
#[derive(Debug, Serialize)]
pub struct StoppedView {
    pid: i32,
    worker_name: String,
    method: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    exit_code: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    signal: Option<i32>,
    #[serde(serialize_with = "format::serialize_duration")]
    elapsed: Option<prost_types::Duration>,
}

impl From<StoppedProcess> for StoppedView {
    fn from(stopped: StoppedProcess) -> Self {
        let method = match StopMethod::try_from(stopped.method) {
            Ok(StopMethod::Terminated) => "terminated",
            Ok(StopMethod::KilledAfterGrace) => "killed_after_grace",
            Ok(StopMethod::Killed) => "killed",
            Ok(StopMethod::AlreadyExited) => "already_exited",
            Ok(StopMethod::Unspecified) | Err(_) => "unspecified",
        };
        Self {
            pid: stopped.pid,
            worker_name: stopped.worker_name,
            method,
            exit_code: stopped.exit_code,
            signal: stopped.signal,
            elapsed: stopped.elapsed,
        }
    }
}

impl StoppedView {
    /// Describes how the process ended, in words.
    fn how(&self) -> &'static str {
        match self.method {
            "terminated" => "exited after SIGTERM",
            "killed_after_grace" => "killed with SIGKILL after the grace period",
            "killed" => "killed with SIGKILL",
            "already_exited" => "had already exited",
            _ => "stopped",
        }
    }

    /// `exit code 0`, `signal 9`, or `-` when unknown.
    fn status(&self) -> String {
        match (self.exit_code, self.signal) {
            (Some(code), _) => format!("exit code {code}"),
            (None, Some(signal)) => format!("signal {signal}"),
            (None, None) => "-".to_owned(),
        }
    }

    /// Describes the stop in one line: `worker process 4242 (llm-cpu): exited after SIGTERM, exit code 0, in 120ms`.
    pub fn describe(&self) -> String {
        format!(
            "worker process {} ({}): {}, {}, in {}",
            self.pid,
            self.worker_name,
            self.how(),
            self.status(),
            format::proto_duration(self.elapsed.as_ref())
        )
    }
}

/// `data` of `worker process list`.
#[derive(Debug, Serialize)]
struct ProcessList {
    processes: Vec<WorkerProcessView>,
}

impl HiveData for ProcessList {
    fn summary(&self) -> String {
        count(self.processes.len(), "worker process", "worker processes")
    }
}

/// `data` of `worker process get`.
#[derive(Debug, Serialize)]
struct ProcessGet {
    process: WorkerProcessView,
}

impl HiveData for ProcessGet {
    fn summary(&self) -> String {
        format!("pid {} ({})", self.process.pid, self.process.worker_name)
    }
}

/// `data` of `worker process delete`.
#[derive(Debug, Serialize)]
struct ProcessDeleted {
    stopped: StoppedView,
}

impl HiveData for ProcessDeleted {
    fn summary(&self) -> String {
        format!("pid {} {}", self.stopped.pid, self.stopped.how())
    }
}

async fn list(context: &Context, worker_name: String) -> Exit {
    let results = context
        .run_reads(|call| {
            let worker_name = worker_name.clone();
            async move {
                let request = call.request(ListWorkerProcessesRequest {
                    job_id: call.job_id(),
                    worker_name,
                });
                let response = call.hive_client().list_worker_processes(request).await?;
                let processes = response.into_inner().processes;
                Ok(ProcessList {
                    processes: processes.into_iter().map(WorkerProcessView::from).collect(),
                })
            }
        })
        .await;

    render::print_results(context.output, &results, |succeeded, several| {
        let rows = succeeded
            .iter()
            .flat_map(|(hive, list)| list.processes.iter().map(move |process| (*hive, process)));
        process_table(rows, several, "no worker processes\n")
    })
}

async fn get(context: &Context, pid: i32) -> Exit {
    let results = context
        .run_reads(|call| async move {
            let request = call.request(GetWorkerProcessRequest {
                job_id: call.job_id(),
                pid,
            });
            let response = call.hive_client().get_worker_process(request).await?;
            Ok(ProcessGet {
                process: response.into_inner().process.unwrap_or_default().into(),
            })
        })
        .await;

    render::print_results(context.output, &results, |succeeded, several| {
        if let [(_, found)] = succeeded
            && !several
        {
            return process_details(&found.process);
        }
        let rows = succeeded
            .iter()
            .map(|(hive, found)| (*hive, &found.process));
        process_table(rows, several, "")
    })
}

async fn delete(context: &Context, pid: i32, grace: Option<Duration>) -> Exit {
    let grace_period = grace.and_then(|grace| prost_types::Duration::try_from(grace).ok());
    let results = context
        .run_jobs(|call| async move {
            let request = call.request(DeleteWorkerProcessRequest {
                job_id: call.job_id(),
                pid,
                grace_period,
            });
            let response = call.hive_client().delete_worker_process(request).await?;
            Ok(ProcessDeleted {
                stopped: response.into_inner().stopped.unwrap_or_default().into(),
            })
        })
        .await;

    render::print_results(context.output, &results, |succeeded, several| {
        if !several {
            return succeeded
                .iter()
                .map(|(_, deleted)| format!("stopped {}\n", deleted.stopped.describe()))
                .collect();
        }
        let mut table = table::new(&["HIVE", "PID", "WORKER", "RESULT", "STATUS", "ELAPSED"]);
        for (hive, deleted) in succeeded {
            let stopped = &deleted.stopped;
            table.add_row(vec![
                hive.name.clone(),
                stopped.pid.to_string(),
                stopped.worker_name.clone(),
                stopped.how().to_owned(),
                stopped.status(),
                format::proto_duration(stopped.elapsed.as_ref()),
            ]);
        }
        table::render(&table)
    })
}

/// Renders one row per worker process, with a HIVE column when several hives were targeted and
/// a WORKER ID column when a hive spawned any of the processes.
fn process_table<'a>(
    rows: impl Iterator<Item = (&'a HiveTarget, &'a WorkerProcessView)>,
    several: bool,
    when_empty: &str,
) -> String {
    let rows: Vec<(&HiveTarget, &WorkerProcessView)> = rows.collect();
    if rows.is_empty() {
        return when_empty.to_owned();
    }
    let any_spawned = rows
        .iter()
        .any(|(_, process)| !process.worker_id.is_empty());

    let mut headers = Vec::new();
    if several {
        headers.push("HIVE");
    }
    headers.extend(["PID", "PPID", "WORKER"]);
    if any_spawned {
        headers.push("WORKER ID");
    }
    headers.extend(["USER", "STATE", "CPU%", "RSS", "AGE"]);
    headers.extend(["PORTS", "COMMAND"]);
    let mut table = table::new(&headers);

    for (hive, process) in rows {
        let mut row = Vec::new();
        if several {
            row.push(hive.name.clone());
        }
        row.extend([
            process.pid.to_string(),
            process.ppid.to_string(),
            process.worker_name.clone(),
        ]);
        if any_spawned {
            row.push(dash_if_empty(&process.worker_id));
        }
        row.extend([
            user(process),
            process.state.clone(),
            format!("{:.1}", process.cpu_percent),
            format::bytes(process.rss_bytes),
            format::age(process.started_at.as_ref()),
            ports(&process.listening_ports),
            process.argv.join(" "),
        ]);
        table.add_row(row);
    }
    table::render(&table)
}

/// `Key: value` lines for one worker process. The lines of a spawned worker (id, model, device,
/// port) are left out for other processes.
fn process_details(process: &WorkerProcessView) -> String {
    table::details(&[
        ("PID", process.pid.to_string()),
        ("Parent PID", process.ppid.to_string()),
        ("Worker", process.worker_name.clone()),
        ("Worker ID", process.worker_id.clone()),
        ("Model", process.model.clone()),
        ("Device", process.device.clone()),
        (
            "Assigned port",
            if process.port == 0 {
                String::new()
            } else {
                process.port.to_string()
            },
        ),
        ("Executable", process.exe_path.clone()),
        ("Command", process.argv.join(" ")),
        ("User", format!("{} (uid {})", user(process), process.uid)),
        ("State", process.state.clone()),
        ("Started", format::time(process.started_at.as_ref())),
        ("CPU", format!("{:.1}% of one CPU", process.cpu_percent)),
        (
            "Memory",
            format!("{} resident", format::bytes(process.rss_bytes)),
        ),
        ("Ports", ports(&process.listening_ports)),
    ])
}

fn dash_if_empty(text: &str) -> String {
    if text.is_empty() {
        "-".to_owned()
    } else {
        text.to_owned()
    }
}

fn user(process: &WorkerProcessView) -> String {
    if process.user.is_empty() {
        process.uid.to_string()
    } else {
        process.user.clone()
    }
}

fn ports(ports: &[u32]) -> String {
    if ports.is_empty() {
        return "-".to_owned();
    }
    let ports: Vec<String> = ports.iter().map(u32::to_string).collect();
    ports.join(",")
}
