//! `rbee worker active list|get|retire`: the workers each hive spawned, with their heartbeat
//! state.

use std::time::Duration;

use prost_types::Timestamp;
use rbee_proto::v1::{
    ActiveWorker, ActiveWorkerState, GetActiveWorkerRequest, HeartbeatSource,
    ListActiveWorkersRequest, RetireActiveWorkerRequest,
};
use serde::Serialize;

use super::{Context, count, worker_process::StoppedView};
use crate::{
    cli::WorkerActiveCommand,
    config::HiveTarget,
    render::{self, Exit, HiveData, format, table},
};

/// Runs one `rbee worker active` command.
pub async fn run(context: &Context, command: WorkerActiveCommand) -> Exit {
    match command {
        WorkerActiveCommand::List => list(context).await,
        WorkerActiveCommand::Get { worker_id } => get(context, worker_id).await,
        WorkerActiveCommand::Retire { worker_id, grace } => retire(context, worker_id, grace).await,
    }
}

/// An active worker in JSON output: the protobuf fields, with `state` (`starting`, `ready`,
/// `stale`, `lost`) and `heartbeat_source` (`worker`, `readiness_check`) as lowercase words and
/// the times in RFC 3339.
#[derive(Debug, Serialize)]
pub struct ActiveWorkerView {
    pub worker_id: String,
    pub binary: String,
    pub model: String,
    pub device: String,
    pub pid: i32,
    pub port: u32,
    pub state: &'static str,
    #[serde(serialize_with = "format::serialize_time")]
    pub last_heartbeat: Option<Timestamp>,
    #[serde(serialize_with = "format::serialize_time")]
    pub started_at: Option<Timestamp>,
    pub log_path: String,
    pub argv: Vec<String>,
    pub heartbeat_source: &'static str,
    pub lost_reason: String,
    /// Inference API the worker serves, `llama.cpp` for llama-server workers, or empty when
    /// the hive records none.
    pub api: String,
}

impl From<ActiveWorker> for ActiveWorkerView {
    fn from(worker: ActiveWorker) -> Self {
        let state = match ActiveWorkerState::try_from(worker.state) {
            Ok(ActiveWorkerState::Starting) => "starting",
            Ok(ActiveWorkerState::Ready) => "ready",
            Ok(ActiveWorkerState::Stale) => "stale",
            Ok(ActiveWorkerState::Lost) => "lost",
            Ok(ActiveWorkerState::Unspecified) | Err(_) => "unspecified",
        };
        let heartbeat_source = match HeartbeatSource::try_from(worker.heartbeat_source) {
            Ok(HeartbeatSource::Worker) => "worker",
            Ok(HeartbeatSource::ReadinessCheck) => "readiness_check",
            Ok(HeartbeatSource::Unspecified) | Err(_) => "unspecified",
        };
        Self {
            worker_id: worker.worker_id,
            binary: worker.binary,
            model: worker.model,
            device: worker.device,
            pid: worker.pid,
            port: worker.port,
            state,
            last_heartbeat: worker.last_heartbeat,
            started_at: worker.started_at,
            log_path: worker.log_path,
            argv: worker.argv,
            heartbeat_source,
            lost_reason: worker.lost_reason,
            api: worker.api,
        }
    }
}

/// `data` of `worker active list`.
#[derive(Debug, Serialize)]
struct ActiveList {
    workers: Vec<ActiveWorkerView>,
}

impl HiveData for ActiveList {
    fn summary(&self) -> String {
        count(self.workers.len(), "active worker", "active workers")
    }
}

/// `data` of `worker active get`.
#[derive(Debug, Serialize)]
struct ActiveGet {
    worker: ActiveWorkerView,
}

impl HiveData for ActiveGet {
    fn summary(&self) -> String {
        format!("{} ({})", self.worker.worker_id, self.worker.state)
    }
}

/// `data` of `worker active retire`. `stopped` is `null` when the worker's process had already
/// exited.
#[derive(Debug, Serialize)]
struct ActiveRetired {
    worker: ActiveWorkerView,
    stopped: Option<StoppedView>,
}

impl ActiveRetired {
    /// Describes how the worker ended, in words.
    fn how(&self) -> String {
        match &self.stopped {
            Some(stopped) => stopped.describe(),
            None => format!("worker process {} had already exited", self.worker.pid),
        }
    }
}

impl HiveData for ActiveRetired {
    fn summary(&self) -> String {
        format!("retired {}", self.worker.worker_id)
    }
}

async fn list(context: &Context) -> Exit {
    let results = context
        .run_reads(|call| async move {
            let request = call.request(ListActiveWorkersRequest {
                job_id: call.job_id(),
            });
            let response = call.hive_client().list_active_workers(request).await?;
            let workers = response.into_inner().workers;
            Ok(ActiveList {
                workers: workers.into_iter().map(ActiveWorkerView::from).collect(),
            })
        })
        .await;

    render::print_results(context.output, &results, |succeeded, several| {
        let rows = succeeded
            .iter()
            .flat_map(|(hive, list)| list.workers.iter().map(move |worker| (*hive, worker)));
        active_table(rows, several, "no active workers\n")
    })
}

async fn get(context: &Context, worker_id: String) -> Exit {
    let results = context
        .run_reads(|call| {
            let worker_id = worker_id.clone();
            async move {
                let request = call.request(GetActiveWorkerRequest {
                    job_id: call.job_id(),
                    worker_id,
                });
                let response = call.hive_client().get_active_worker(request).await?;
                Ok(ActiveGet {
                    worker: response.into_inner().worker.unwrap_or_default().into(),
                })
            }
        })
        .await;

    render::print_results(context.output, &results, |succeeded, several| {
        if let [(_, found)] = succeeded
            && !several
        {
            return active_details(&found.worker);
        }
        let rows = succeeded.iter().map(|(hive, found)| (*hive, &found.worker));
        active_table(rows, several, "")
    })
}

async fn retire(context: &Context, worker_id: String, grace: Option<Duration>) -> Exit {
    let grace_period = grace.and_then(|grace| prost_types::Duration::try_from(grace).ok());
    let results = context
        .run_jobs(|call| {
            let worker_id = worker_id.clone();
            async move {
                let request = call.request(RetireActiveWorkerRequest {
                    job_id: call.job_id(),
                    worker_id,
                    grace_period,
                });
                let response = call.hive_client().retire_active_worker(request).await?;
                let response = response.into_inner();
                Ok(ActiveRetired {
                    worker: response.worker.unwrap_or_default().into(),
                    stopped: response.stopped.map(StoppedView::from),
                })
            }
        })
        .await;

    render::print_results(context.output, &results, |succeeded, several| {
        let mut text = String::new();
        for (hive, retired) in succeeded {
            let on_hive = if several {
                format!(" on {}", hive.name)
            } else {
                String::new()
            };
            text.push_str(&format!(
                "retired worker {}{on_hive}: {}\n",
                retired.worker.worker_id,
                retired.how()
            ));
        }
        text
    })
}

/// Renders one row per active worker, with a HIVE column when several hives were targeted.
pub fn active_table<'a>(
    rows: impl Iterator<Item = (&'a HiveTarget, &'a ActiveWorkerView)>,
    several: bool,
    when_empty: &str,
) -> String {
    let mut headers = Vec::new();
    if several {
        headers.push("HIVE");
    }
    headers.extend([
        "ID",
        "BINARY",
        "MODEL",
        "DEVICE",
        "PID",
        "PORT",
        "STATE",
        "LAST HEARTBEAT",
    ]);
    let mut table = table::new(&headers);

    let mut empty = true;
    for (hive, worker) in rows {
        empty = false;
        let mut row = Vec::new();
        if several {
            row.push(hive.name.clone());
        }
        row.extend([
            worker.worker_id.clone(),
            worker.binary.clone(),
            worker.model.clone(),
            worker.device.clone(),
            worker.pid.to_string(),
            worker.port.to_string(),
            worker.state.to_owned(),
            heartbeat_age(worker.last_heartbeat.as_ref()),
        ]);
        table.add_row(row);
    }

    if empty {
        when_empty.to_owned()
    } else {
        table::render(&table)
    }
}

/// `Key: value` lines for one active worker.
pub fn active_details(worker: &ActiveWorkerView) -> String {
    let heartbeat_source = match worker.heartbeat_source {
        "worker" => "sent by the worker",
        "readiness_check" => "readiness checks run by the hive",
        _ => "unspecified",
    };
    table::details(&[
        ("Worker ID", worker.worker_id.clone()),
        ("Binary", worker.binary.clone()),
        ("Model", worker.model.clone()),
        ("Device", worker.device.clone()),
        ("PID", worker.pid.to_string()),
        ("Port", worker.port.to_string()),
        ("State", worker.state.to_owned()),
        ("Lost because", worker.lost_reason.clone()),
        (
            "Last heartbeat",
            format::time(worker.last_heartbeat.as_ref()),
        ),
        ("Heartbeats", heartbeat_source.to_owned()),
        ("Inference API", worker.api.clone()),
        ("Started", format::time(worker.started_at.as_ref())),
        ("Log", worker.log_path.clone()),
        ("Command", worker.argv.join(" ")),
    ])
}

/// Age of the last heartbeat, `4s ago`; `-` before the first.
fn heartbeat_age(last_heartbeat: Option<&Timestamp>) -> String {
    match last_heartbeat {
        Some(_) => format!("{} ago", format::age(last_heartbeat)),
        None => "-".to_owned(),
    }
}
