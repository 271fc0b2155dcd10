//! Spawning a worker: validation, launch, readiness wait, and cleanup when it fails.

use std::{
    collections::BTreeMap,
    net::TcpListener,
    path::{Path, PathBuf},
    process::{ExitStatus, Stdio},
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use tokio::process::{Child, Command};

use super::{
    ActiveWorker, HeartbeatSource, Record, WorkerError, WorkerId, Workers, launch, log, readiness,
    state_file::PersistedWorker,
};
use crate::{
    catalog::{CatalogError, WorkerName},
    jobs::{Level, Narrator},
    process,
};

/// How often the readiness wait checks the worker and its log.
const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// Grace period for a worker that did not become ready in time.
const FAILED_START_GRACE: Duration = Duration::from_secs(2);

/// Maximum readiness timeout a request may set.
pub const MAX_READY_TIMEOUT: Duration = Duration::from_secs(3600);

/// Spawn request, as received.
#[derive(Debug, Clone)]
pub struct SpawnRequest {
    /// Catalog name of the binary.
    pub binary: String,
    /// Model name or absolute path.
    pub model: String,
    /// Device id.
    pub device: String,
    /// Port, zero to let the hive pick one.
    pub port: u32,
    /// Extra arguments.
    pub args: Vec<String>,
    /// Extra environment variables.
    pub env: BTreeMap<String, String>,
    /// Readiness timeout; the configured default when `None`.
    pub ready_timeout: Option<Duration>,
}

/// A validated spawn, ready to launch.
struct Plan {
    id: WorkerId,
    binary: WorkerName,
    model: String,
    device: String,
    port: u16,
    argv: Vec<String>,
    env: Vec<(String, String)>,
    readiness: crate::catalog::Readiness,
    api: Option<String>,
    dir: PathBuf,
    log_path: PathBuf,
    ready_timeout: Duration,
}

impl Workers {
    /// Spawns a worker and waits until it is ready.
    ///
    /// Everything is validated before anything starts. A worker that exits or does not become
    /// ready in time is stopped with its whole process tree, and the error carries its last log
    /// lines.
    pub async fn spawn(
        self: &Arc<Self>,
        request: SpawnRequest,
        devices: &[String],
        narrator: &Narrator,
    ) -> Result<ActiveWorker, WorkerError> {
        let plan = self.plan(request, devices).await?;
        narrator.info(
            "worker.spawn",
            format!(
                "starting worker {} from {} on {} (port {}, model {})",
                plan.id, plan.binary, plan.device, plan.port, plan.model
            ),
        );

        let (child, pid) = self.launch(&plan)?;
        let mut start = StartGuard {
            workers: Arc::clone(self),
            id: plan.id.clone(),
            pid,
            child: Some(child),
        };
        narrator.info(
            "worker.start",
            format!("worker process {pid} started: {}", plan.argv.join(" ")),
        );

        let mut follower = log::LogFollower::new(plan.log_path.clone());
        let deadline = Instant::now() + plan.ready_timeout;
        loop {
            for line in follower.read_new_lines() {
                narrator.narrate(Level::Info, "worker.log", line);
            }
            if process::has_exited(pid) {
                // Killed while the unreaped leader still has its pid, so the group cannot be
                // someone else's: children it left behind are not wanted either.
                process::kill_group(pid);
                let status = start.wait().await;
                // Lines written just before the exit.
                for line in follower.read_new_lines() {
                    narrator.narrate(Level::Info, "worker.log", line);
                }
                start.forget();
                return Err(WorkerError::ExitedDuringStart {
                    id: plan.id,
                    status: status.map_or_else(|| "status unknown".to_owned(), describe_exit),
                    log: follower.last_lines().join("\n"),
                });
            }
            if readiness::check(&plan.readiness, plan.port).await {
                // Lines written just before the worker became ready.
                for line in follower.read_new_lines() {
                    narrator.narrate(Level::Info, "worker.log", line);
                }
                break;
            }
            if Instant::now() >= deadline {
                narrator.warn(
                    "worker.ready",
                    format!(
                        "worker {} not ready after {}s; stopping it",
                        plan.id,
                        plan.ready_timeout.as_secs_f64()
                    ),
                );
                start.stop(narrator).await;
                return Err(WorkerError::NotReady {
                    id: plan.id,
                    timeout_secs: plan.ready_timeout.as_secs_f64(),
                    log: follower.last_lines().join("\n"),
                });
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }

        let worker = self.mark_ready(&plan.id)?;
        let child = start.disarm();
        self.reap_in_background(plan.id.clone(), child);
        narrator.info(
            "worker.ready",
            format!("worker {} is ready on port {}", plan.id, plan.port),
        );
        tracing::info!(worker_id = %plan.id, pid, port = plan.port, binary = %plan.binary, "worker ready");
        Ok(worker)
    }

    async fn plan(&self, request: SpawnRequest, devices: &[String]) -> Result<Plan, WorkerError> {
        let binary_name = WorkerName::parse(&request.binary).map_err(CatalogError::from)?;
        if !devices.contains(&request.device) {
            return Err(WorkerError::UnknownDevice {
                device: request.device,
                available: devices.to_vec(),
            });
        }
        let cuda_index = cuda_index(&request.device);
        let model = self.resolve_model(&request.model)?;
        for name in request.env.keys() {
            launch::check_env_name(name)?;
        }
        let ready_timeout = request
            .ready_timeout
            .unwrap_or(self.config.default_ready_timeout);

        let catalog = Arc::clone(&self.catalog);
        let binary = {
            let name = binary_name.clone();
            tokio::task::spawn_blocking(move || catalog.get_usable(&name))
                .await
                .map_err(|e| {
                    WorkerError::InvalidArgument(format!("catalog lookup failed: {e}"))
                })??
        };

        let port = self.choose_port(request.port)?;
        let id = WorkerId::generate();
        let values = launch::TemplateValues {
            model: &model,
            device: &request.device,
            port,
            worker_id: id.as_str(),
            hive_addr: &self.config.hive_addr,
            binary: &binary.path,
        };
        let preset = launch::Preset::of(&binary)?;
        let argv = launch::command_line(&binary, preset, &values, &request.args)?;
        let env = launch::environment(&binary, &values, &request.env, cuda_index)?;
        let dir = self.config.state_dir.join("workers").join(id.as_str());
        Ok(Plan {
            log_path: dir.join("worker.log"),
            dir,
            readiness: binary
                .manifest
                .readiness
                .clone()
                .or_else(|| preset.map(launch::Preset::readiness))
                .unwrap_or(crate::catalog::Readiness::Tcp),
            api: preset.map(|preset| preset.api().to_owned()),
            id,
            binary: binary_name,
            model,
            device: request.device,
            port,
            argv,
            env,
            ready_timeout,
        })
    }

    /// Starts the process in its own process group with its output in its log file, and records
    /// it before anything else can fail, so a crash of the hive still finds it on restart.
    fn launch(&self, plan: &Plan) -> Result<(Child, i32), WorkerError> {
        let io_error = |source| WorkerError::Launch {
            program: plan.argv[0].clone(),
            source,
        };
        std::fs::create_dir_all(&plan.dir).map_err(io_error)?;
        let log_file = log::create(&plan.log_path).map_err(io_error)?;
        let stderr = log_file.try_clone().map_err(io_error)?;

        let child = Command::new(&plan.argv[0])
            .args(&plan.argv[1..])
            .envs(plan.env.iter().map(|(k, v)| (k, v)))
            .current_dir(&plan.dir)
            .stdin(Stdio::null())
            .stdout(log_file)
            .stderr(stderr)
            .process_group(0)
            .kill_on_drop(false)
            .spawn()
            .map_err(io_error)?;
        let pid = child
            .id()
            .and_then(|pid| i32::try_from(pid).ok())
            .ok_or_else(|| io_error(std::io::Error::other("the process exited at once")))?;
        // The child is not reaped before the guard allows it, so its stat entry is readable.
        let start_ticks = process::start_ticks(pid).map_err(io_error)?;

        let persisted = PersistedWorker {
            id: plan.id.clone(),
            binary: plan.binary.clone(),
            model: plan.model.clone(),
            device: plan.device.clone(),
            pid,
            start_ticks,
            port: plan.port,
            log_path: plan.log_path.clone(),
            argv: plan.argv.clone(),
            readiness: plan.readiness.clone(),
            api: plan.api.clone(),
            started_at: SystemTime::now(),
        };
        let mut records = self.lock();
        records.insert(
            plan.id.clone(),
            Record {
                persisted,
                starting: true,
                last_heartbeat: None,
                tracked_since: SystemTime::now(),
                source: HeartbeatSource::ReadinessCheck,
                reports_ready: false,
                lost_reason: None,
                exit: None,
            },
        );
        self.persist(&records)?;
        Ok((child, pid))
    }

    fn mark_ready(&self, id: &WorkerId) -> Result<ActiveWorker, WorkerError> {
        let now = SystemTime::now();
        let mut records = self.lock();
        let record = records
            .get_mut(id)
            .ok_or_else(|| WorkerError::NotFound(id.clone()))?;
        record.starting = false;
        record.last_heartbeat = Some(now);
        record.tracked_since = now;
        Ok(record.snapshot(now, self.config.heartbeat_interval))
    }

    /// Waits for the worker process in the background, so it never stays a zombie, and marks the
    /// worker lost with its exit status.
    fn reap_in_background(self: &Arc<Self>, id: WorkerId, mut child: Child) {
        let workers = Arc::downgrade(self);
        tokio::spawn(async move {
            let status = child.wait().await;
            let reason = match &status {
                Ok(status) => format!("exited: {}", describe_exit(*status)),
                Err(error) => format!("exited; its status could not be read: {error}"),
            };
            if let Some(workers) = workers.upgrade() {
                if let Ok(status) = status {
                    use std::os::unix::process::ExitStatusExt;
                    workers.record_exit(&id, (status.code(), status.signal()));
                }
                workers.mark_lost(&id, reason);
            }
        });
    }

    /// Marks a worker lost because its process is gone.
    pub(super) fn mark_lost(&self, id: &WorkerId, reason: String) {
        let mut records = self.lock();
        if let Some(record) = records.get_mut(id) {
            tracing::warn!(worker_id = %id, reason, "worker lost");
            record.lost_reason = Some(reason);
            if let Err(error) = self.persist(&records) {
                tracing::warn!(%error, "failed to record a lost worker");
            }
        }
    }

    /// Resolves a model: an absolute path that exists, or an entry of the model directory.
    fn resolve_model(&self, model: &str) -> Result<String, WorkerError> {
        if model.is_empty() {
            return Err(WorkerError::InvalidArgument(
                "model is missing: give a model name or an absolute path".to_owned(),
            ));
        }
        let path = Path::new(model);
        if path.is_absolute() {
            return if path.exists() {
                Ok(model.to_owned())
            } else {
                Err(self.model_not_found(model))
            };
        }
        if WorkerName::parse(model).is_err() {
            return Err(WorkerError::InvalidArgument(format!(
                "invalid model {model:?}: give a model name without `/` or an absolute path"
            )));
        }
        let entry = self.config.model_dir.join(model);
        if entry.exists() {
            Ok(entry.display().to_string())
        } else {
            Err(self.model_not_found(model))
        }
    }

    fn model_not_found(&self, model: &str) -> WorkerError {
        WorkerError::ModelNotFound {
            model: model.to_owned(),
            dir: self.config.model_dir.clone(),
        }
    }

    /// Checks a requested port, or picks a free one that no other worker of this hive has.
    fn choose_port(&self, requested: u32) -> Result<u16, WorkerError> {
        if requested != 0 {
            let port = u16::try_from(requested).map_err(|_| {
                WorkerError::InvalidArgument(format!(
                    "invalid port {requested}: ports are 1 to 65535"
                ))
            })?;
            let taken_by_worker = self.lock().values().any(|r| r.persisted.port == port);
            if taken_by_worker || !port_is_free(port) {
                return Err(WorkerError::PortInUse(port));
            }
            return Ok(port);
        }

        let taken: Vec<u16> = self.lock().values().map(|r| r.persisted.port).collect();
        for _ in 0..32 {
            // Limitation: the port is free when checked but not reserved; another program can
            // take it before the worker binds it, and the spawn then fails its readiness check.
            let port = TcpListener::bind(("127.0.0.1", 0))
                .and_then(|listener| listener.local_addr())
                .map(|addr| addr.port())
                .map_err(|source| WorkerError::Launch {
                    program: "port allocation".to_owned(),
                    source,
                })?;
            if !taken.contains(&port) {
                return Ok(port);
            }
        }
        Err(WorkerError::InvalidArgument(
            "no free port found; pass one explicitly".to_owned(),
        ))
    }
}

/// A worker process between launch and readiness. If it is dropped before `disarm`, because the
/// hive shuts down or the spawn task panics, it kills the process group and removes the worker
/// from the registry, so a half-started worker never stays behind.
struct StartGuard {
    workers: Arc<Workers>,
    id: WorkerId,
    pid: i32,
    child: Option<Child>,
}

impl StartGuard {
    /// Reaps the exited worker process and returns how it ended.
    async fn wait(&mut self) -> Option<ExitStatus> {
        self.child.as_mut()?.wait().await.ok()
    }

    /// Stops the worker's process tree gracefully, reaps it and removes the worker from the
    /// registry.
    async fn stop(&mut self, narrator: &Narrator) {
        if let Err(error) = self
            .workers
            .stop_process(self.pid, FAILED_START_GRACE, narrator)
            .await
        {
            tracing::warn!(pid = self.pid, %error, "failed to stop a worker that never became ready");
            process::kill_group(self.pid);
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.wait().await;
        }
        self.forget();
    }

    fn forget(&mut self) {
        self.child = None;
        if let Err(error) = self.workers.remove(&self.id) {
            tracing::warn!(worker_id = %self.id, %error, "failed to forget a failed worker");
        }
    }

    fn disarm(mut self) -> Child {
        self.child.take().expect("child present until disarmed")
    }
}

impl Drop for StartGuard {
    fn drop(&mut self) {
        if let Some(child) = self.child.take() {
            tracing::warn!(worker_id = %self.id, pid = self.pid, "spawn cancelled; killing the worker");
            // The child is not reaped yet, so its pid and process group cannot have been reused.
            process::kill_group(self.pid);
            // tokio reaps a dropped child in the background.
            drop(child);
            self.forget();
        }
    }
}

fn port_is_free(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok() && TcpListener::bind(("0.0.0.0", port)).is_ok()
}

/// Returns N for a device `cuda:N`.
fn cuda_index(device: &str) -> Option<u32> {
    device.strip_prefix("cuda:")?.parse().ok()
}

fn describe_exit(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (_, Some(signal)) => format!("killed by signal {signal}"),
        _ => status.to_string(),
    }
}
