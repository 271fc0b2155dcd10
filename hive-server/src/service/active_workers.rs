//! `SpawnWorker`, `Heartbeat`, `ListActiveWorkers`, `GetActiveWorker` and `RetireActiveWorker`.

use std::{path::Path, time::Duration};

use rbee_proto::v1 as proto;

use super::{
    HiveApi,
    processes::{DEFAULT_GRACE, MAX_GRACE, stopped_to_proto},
    proto_duration, request_duration,
};
use crate::{
    error::Error,
    host,
    jobs::Narrator,
    workers::{self, ActiveWorker, HeartbeatSource, SpawnRequest, WorkerId, WorkerState},
};

impl HiveApi {
    pub(super) async fn spawn(
        &self,
        narrator: &Narrator,
        request: proto::SpawnWorkerRequest,
    ) -> Result<proto::SpawnWorkerResponse, Error> {
        let ready_timeout = match request.ready_timeout {
            Some(timeout) => Some(request_duration(
                "ready_timeout",
                Some(timeout),
                Duration::ZERO,
                workers::MAX_READY_TIMEOUT,
            )?),
            None => None,
        };
        let memory = host::memory().unwrap_or_default();
        let devices: Vec<String> = host::devices(memory, &self.shared.cpu_model, &self.shared.gpus)
            .await
            .into_iter()
            .map(|device| device.id)
            .collect();

        let spawn = SpawnRequest {
            binary: request.binary,
            model: request.model,
            device: request.device,
            port: request.port,
            args: request.args,
            env: request.env.into_iter().collect(),
            ready_timeout,
        };
        let worker = self.shared.workers.spawn(spawn, &devices, narrator).await?;
        Ok(proto::SpawnWorkerResponse {
            job_id: narrator.job_id().to_string(),
            worker: Some(worker_to_proto(worker)),
        })
    }

    pub(super) fn record_heartbeat(
        &self,
        request: proto::HeartbeatRequest,
    ) -> Result<proto::HeartbeatResponse, Error> {
        let id = WorkerId::parse(&request.worker_id).map_err(workers::WorkerError::from)?;
        self.shared.workers.heartbeat(&id, request.ready)?;
        Ok(proto::HeartbeatResponse {
            interval: Some(proto_duration(self.shared.workers.heartbeat_interval())),
        })
    }

    pub(super) fn list_active(
        &self,
        narrator: &Narrator,
    ) -> Result<proto::ListActiveWorkersResponse, Error> {
        let workers = self.shared.workers.list();
        Ok(proto::ListActiveWorkersResponse {
            job_id: narrator.job_id().to_string(),
            workers: workers.into_iter().map(worker_to_proto).collect(),
        })
    }

    pub(super) fn get_active(
        &self,
        narrator: &Narrator,
        request: proto::GetActiveWorkerRequest,
    ) -> Result<proto::GetActiveWorkerResponse, Error> {
        let id = WorkerId::parse(&request.worker_id).map_err(workers::WorkerError::from)?;
        let worker = self.shared.workers.get(&id)?;
        Ok(proto::GetActiveWorkerResponse {
            job_id: narrator.job_id().to_string(),
            worker: Some(worker_to_proto(worker)),
        })
    }

    pub(super) async fn retire(
        &self,
        narrator: &Narrator,
        request: proto::RetireActiveWorkerRequest,
    ) -> Result<proto::RetireActiveWorkerResponse, Error> {
        let id = WorkerId::parse(&request.worker_id).map_err(workers::WorkerError::from)?;
        let grace = request_duration(
            "grace_period",
            request.grace_period,
            DEFAULT_GRACE,
            MAX_GRACE,
        )?;
        let (worker, stopped) = self.shared.workers.retire(&id, grace, narrator).await?;
        Ok(proto::RetireActiveWorkerResponse {
            job_id: narrator.job_id().to_string(),
            worker: Some(worker_to_proto(worker)),
            stopped: stopped.map(stopped_to_proto),
        })
    }
}

fn worker_to_proto(worker: ActiveWorker) -> proto::ActiveWorker {
    let state = match worker.state {
        WorkerState::Starting => proto::ActiveWorkerState::Starting,
        WorkerState::Ready => proto::ActiveWorkerState::Ready,
        WorkerState::Stale => proto::ActiveWorkerState::Stale,
        WorkerState::Lost => proto::ActiveWorkerState::Lost,
    };
    let source = match worker.heartbeat_source {
        HeartbeatSource::Worker => proto::HeartbeatSource::Worker,
        HeartbeatSource::ReadinessCheck => proto::HeartbeatSource::ReadinessCheck,
    };
    proto::ActiveWorker {
        worker_id: worker.id.to_string(),
        binary: worker.binary.to_string(),
        model: worker.model,
        device: worker.device,
        pid: worker.pid,
        port: u32::from(worker.port),
        state: state.into(),
        last_heartbeat: worker.last_heartbeat.map(Into::into),
        started_at: Some(worker.started_at.into()),
        log_path: display(&worker.log_path),
        argv: worker.argv,
        heartbeat_source: source.into(),
        lost_reason: worker.lost_reason.unwrap_or_default(),
        api: worker.api.unwrap_or_default(),
    }
}

fn display(path: &Path) -> String {
    path.display().to_string()
}
