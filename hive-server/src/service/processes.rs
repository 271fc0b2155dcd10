//! `ListWorkerProcesses`, `GetWorkerProcess` and `DeleteWorkerProcess`.

use std::time::Duration;

use rbee_proto::v1 as proto;

use super::{HiveApi, blocking, counted, proto_duration, request_duration, with_identity};
use crate::{
    catalog::{CatalogError, WorkerName},
    error::Error,
    jobs::Narrator,
    process::{self, StopMethod, StoppedProcess, WorkerProcess},
};

/// Grace period between SIGTERM and SIGKILL when the request gives none.
pub(super) const DEFAULT_GRACE: Duration = Duration::from_secs(5);

/// Longest grace period a request may ask for.
pub(super) const MAX_GRACE: Duration = Duration::from_secs(3600);

impl HiveApi {
    pub(super) async fn list_processes(
        &self,
        narrator: &Narrator,
        request: proto::ListWorkerProcessesRequest,
    ) -> Result<proto::ListWorkerProcessesResponse, Error> {
        let only = if request.worker_name.is_empty() {
            None
        } else {
            Some(WorkerName::parse(&request.worker_name).map_err(CatalogError::from)?)
        };
        let registry = self.workers();
        let workers = blocking(move || {
            Ok(with_identity(&registry, |identity| {
                process::list_workers(identity, only.as_ref())
            })?)
        })
        .await?;
        narrator.info(
            "process.list",
            counted(workers.len(), "worker process", "worker processes"),
        );
        Ok(proto::ListWorkerProcessesResponse {
            job_id: narrator.job_id().to_string(),
            processes: workers.into_iter().map(process_to_proto).collect(),
        })
    }

    pub(super) async fn get_process(
        &self,
        narrator: &Narrator,
        request: proto::GetWorkerProcessRequest,
    ) -> Result<proto::GetWorkerProcessResponse, Error> {
        let pid = valid_pid(request.pid)?;
        let registry = self.workers();
        let worker = blocking(move || {
            Ok(with_identity(&registry, |identity| {
                process::find_worker(identity, pid)
            })?)
        })
        .await?;
        Ok(proto::GetWorkerProcessResponse {
            job_id: narrator.job_id().to_string(),
            process: Some(process_to_proto(worker)),
        })
    }

    pub(super) async fn delete_process(
        &self,
        narrator: &Narrator,
        request: proto::DeleteWorkerProcessRequest,
    ) -> Result<proto::DeleteWorkerProcessResponse, Error> {
        let pid = valid_pid(request.pid)?;
        let grace = request_duration(
            "grace_period",
            request.grace_period,
            DEFAULT_GRACE,
            MAX_GRACE,
        )?;
        let workers = &self.shared.workers;
        let stopped = workers.stop_process(pid, grace, narrator).await?;
        let stopped = workers.with_exit_status(stopped).await;
        workers.forget_process(pid)?;
        Ok(proto::DeleteWorkerProcessResponse {
            job_id: narrator.job_id().to_string(),
            stopped: Some(stopped_to_proto(stopped)),
        })
    }
}

fn valid_pid(pid: i32) -> Result<i32, Error> {
    if pid > 0 {
        Ok(pid)
    } else {
        Err(Error::InvalidArgument(format!(
            "invalid pid {pid}: a pid is a positive number"
        )))
    }
}

fn process_to_proto(worker: WorkerProcess) -> proto::WorkerProcess {
    let spawned = worker.spawned.unwrap_or_else(|| process::Spawned {
        start_ticks: 0,
        binary: worker.worker_name.clone(),
        worker_id: String::new(),
        model: String::new(),
        device: String::new(),
        port: 0,
    });
    proto::WorkerProcess {
        pid: worker.pid,
        ppid: worker.ppid,
        worker_name: worker.worker_name.to_string(),
        exe_path: worker.exe.display().to_string(),
        argv: worker.argv,
        uid: worker.uid,
        user: worker.user.unwrap_or_default(),
        state: worker.state.to_owned(),
        started_at: Some(worker.started_at.into()),
        cpu_percent: worker.cpu_percent,
        rss_bytes: worker.rss_bytes,
        listening_ports: worker.listening_ports.into_iter().map(u32::from).collect(),
        worker_id: spawned.worker_id,
        model: spawned.model,
        device: spawned.device,
        port: u32::from(spawned.port),
    }
}

pub(super) fn stopped_to_proto(stopped: StoppedProcess) -> proto::StoppedProcess {
    let method = match stopped.method {
        StopMethod::Terminated => proto::StopMethod::Terminated,
        StopMethod::KilledAfterGrace => proto::StopMethod::KilledAfterGrace,
        StopMethod::Killed => proto::StopMethod::Killed,
        StopMethod::AlreadyExited => proto::StopMethod::AlreadyExited,
    };
    proto::StoppedProcess {
        pid: stopped.pid,
        worker_name: stopped.worker_name.to_string(),
        method: method.into(),
        exit_code: stopped.exit_code,
        signal: stopped.signal,
        elapsed: Some(proto_duration(stopped.elapsed)),
        other_processes: u32::try_from(stopped.other_processes).unwrap_or(u32::MAX),
    }
}
