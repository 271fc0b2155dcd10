//! Active workers: the workers this hive spawned, tracked through heartbeats and recorded in a
//! state file so that a restarted hive adopts the ones still running.
//!
//! A worker is `starting` until it is ready, then `ready` while heartbeats arrive, `stale` when
//! none arrived for three heartbeat intervals and `lost` after six, or as soon as its process
//! exits. Workers that call `Heartbeat` report for themselves. For the others, the hive runs
//! their readiness check once per interval and counts a success as a heartbeat.

mod id;
mod infer;
mod launch;
mod log;
mod monitor;
mod readiness;
mod spawn;
mod state_file;

use std::{
    collections::{BTreeMap, HashMap},
    path::PathBuf,
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, SystemTime},
};

pub use id::{InvalidWorkerId, WorkerId};
pub use infer::{Completion, InferEvent, InferSender, InferSummary, LoadGuard, complete};
pub use spawn::{MAX_READY_TIMEOUT, SpawnRequest};

use tokio_util::sync::CancellationToken;

use crate::{
    catalog::{Catalog, CatalogError, WorkerName},
    jobs::Narrator,
    process::{self, Identity, ProcessError, Spawned, StoppedProcess},
};
use state_file::{PersistedWorker, StateFile};

/// Errors of active-worker operations.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// A catalog lookup failed.
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    /// A process operation failed.
    #[error(transparent)]
    Process(#[from] ProcessError),
    /// The worker id is malformed.
    #[error(transparent)]
    InvalidId(#[from] InvalidWorkerId),
    /// A request field is invalid.
    #[error("{0}")]
    InvalidArgument(String),
    /// The device is not one this hive has.
    #[error("device {device:?} is not available on this hive; it has {}", .available.join(", "))]
    UnknownDevice {
        /// The device asked for.
        device: String,
        /// The devices this hive has.
        available: Vec<String>,
    },
    /// The model is neither in the model directory nor an existing path.
    #[error(
        "model {model:?} not found: it is not an entry of the model directory {} and not an \
         existing absolute path",
        .dir.display()
    )]
    ModelNotFound {
        /// The model asked for.
        model: String,
        /// The model directory.
        dir: PathBuf,
    },
    /// The port is taken.
    #[error(
        "port {0} is already in use on this machine; choose another, or leave the port unset to let the hive pick one"
    )]
    PortInUse(u16),
    /// A manifest template cannot be expanded.
    #[error("{0}")]
    Template(String),
    /// The worker process could not be started at all.
    #[error("failed to start worker {program:?}: {source}")]
    Launch {
        /// The program.
        program: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The worker exited before it became ready.
    #[error("worker {id} exited during start-up ({status}); last log lines:\n{log}")]
    ExitedDuringStart {
        /// The worker.
        id: WorkerId,
        /// How it exited.
        status: String,
        /// Its last log lines.
        log: String,
    },
    /// The worker did not become ready in time and was stopped.
    #[error(
        "worker {id} did not become ready within {timeout_secs}s and was stopped; last log lines:\n{log}"
    )]
    NotReady {
        /// The worker.
        id: WorkerId,
        /// The readiness timeout.
        timeout_secs: f64,
        /// Its last log lines.
        log: String,
    },
    /// No ready worker can serve an inference request.
    #[error("{0}")]
    NotServing(String),
    /// The worker failed while serving an inference request.
    #[error("worker {id} failed: {reason}")]
    WorkerFailed {
        /// The worker.
        id: WorkerId,
        /// What went wrong.
        reason: String,
    },
    /// No active worker has this id.
    #[error("active worker {0} not found")]
    NotFound(WorkerId),
    /// The state file cannot be written.
    #[error("failed to write the worker state file {path}: {source}")]
    State {
        /// The state file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

/// Settings of the active-worker registry.
#[derive(Debug, Clone)]
pub struct WorkersConfig {
    /// Directory of the state file and the per-worker folders with logs.
    pub state_dir: PathBuf,
    /// Directory of models named by catalog name.
    pub model_dir: PathBuf,
    /// Address workers reach the hive at, for `RBEE_HIVE_ADDR`.
    pub hive_addr: String,
    /// How often heartbeats are expected.
    pub heartbeat_interval: Duration,
    /// Size at which a worker log is rotated.
    pub log_max_bytes: u64,
    /// Readiness timeout when a spawn request gives none.
    pub default_ready_timeout: Duration,
}

/// Heartbeat state of an active worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerState {
    /// Spawned, not ready yet.
    Starting,
    /// Heartbeats arrive on time.
    Ready,
    /// Heartbeats are late.
    Stale,
    /// Exited, or heartbeats stopped.
    Lost,
}

impl WorkerState {
    /// Returns the state's name as users see it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Starting => "starting",
            Self::Ready => "ready",
            Self::Stale => "stale",
            Self::Lost => "lost",
        }
    }
}

/// Source of a worker's heartbeats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeartbeatSource {
    /// The worker calls `Heartbeat`.
    Worker,
    /// The hive runs the worker's readiness check.
    ReadinessCheck,
}

/// A snapshot of an active worker.
#[derive(Debug, Clone, PartialEq)]
pub struct ActiveWorker {
    /// Worker id.
    pub id: WorkerId,
    /// Catalog name of the binary.
    pub binary: WorkerName,
    /// Model, as given at spawn.
    pub model: String,
    /// Device.
    pub device: String,
    /// Process id.
    pub pid: i32,
    /// Port.
    pub port: u16,
    /// Heartbeat state.
    pub state: WorkerState,
    /// Last heartbeat.
    pub last_heartbeat: Option<SystemTime>,
    /// Spawn time.
    pub started_at: SystemTime,
    /// Log file.
    pub log_path: PathBuf,
    /// Command line.
    pub argv: Vec<String>,
    /// Heartbeat source.
    pub heartbeat_source: HeartbeatSource,
    /// Reason the worker is lost.
    pub lost_reason: Option<String>,
    /// API the worker serves for inference, such as `llama.cpp`.
    pub api: Option<String>,
}

/// In-memory record of a worker.
#[derive(Debug, Clone)]
struct Record {
    persisted: PersistedWorker,
    /// Spawn still in progress.
    starting: bool,
    /// Last heartbeat, from the worker or a successful readiness check.
    last_heartbeat: Option<SystemTime>,
    /// When tracking started (ready after spawn, or adopted), the base for missed heartbeats.
    tracked_since: SystemTime,
    source: HeartbeatSource,
    /// The `ready` flag of the worker's last heartbeat.
    reports_ready: bool,
    lost_reason: Option<String>,
    /// Exit code and signal, once this hive reaped the process.
    exit: Option<(Option<i32>, Option<i32>)>,
}

impl Record {
    fn state(&self, now: SystemTime, interval: Duration) -> (WorkerState, Option<String>) {
        if let Some(reason) = &self.lost_reason {
            return (WorkerState::Lost, Some(reason.clone()));
        }
        if self.starting {
            return (WorkerState::Starting, None);
        }
        let since = self.last_heartbeat.unwrap_or(self.tracked_since);
        let silent = now.duration_since(since).unwrap_or_default();
        if silent >= interval * 6 {
            let reason = format!("no heartbeat for {}s", silent.as_secs());
            return (WorkerState::Lost, Some(reason));
        }
        if silent >= interval * 3 {
            return (WorkerState::Stale, None);
        }
        let waiting = self.last_heartbeat.is_none()
            || (self.source == HeartbeatSource::Worker && !self.reports_ready);
        if waiting {
            (WorkerState::Starting, None)
        } else {
            (WorkerState::Ready, None)
        }
    }

    fn snapshot(&self, now: SystemTime, interval: Duration) -> ActiveWorker {
        let (state, lost_reason) = self.state(now, interval);
        let p = &self.persisted;
        ActiveWorker {
            id: p.id.clone(),
            binary: p.binary.clone(),
            model: p.model.clone(),
            device: p.device.clone(),
            pid: p.pid,
            port: p.port,
            state,
            last_heartbeat: self.last_heartbeat,
            started_at: p.started_at,
            log_path: p.log_path.clone(),
            argv: p.argv.clone(),
            heartbeat_source: self.source,
            lost_reason,
            api: p.api.clone(),
        }
    }
}

/// The registry of active workers of one hive.
#[derive(Debug)]
pub struct Workers {
    config: WorkersConfig,
    catalog: Arc<Catalog>,
    state_file: StateFile,
    records: Mutex<BTreeMap<WorkerId, Record>>,
    load: infer::InferenceLoad,
    /// Cancelled when stops may no longer wait for their grace period.
    grace_cut: CancellationToken,
}

impl Workers {
    /// Opens the registry: reads the state file and adopts the workers that still run. Workers
    /// that exited while no hive watched them are kept as `lost` so the operator sees them.
    pub fn open(config: WorkersConfig, catalog: Arc<Catalog>) -> Result<Arc<Self>, WorkerError> {
        let state_file = StateFile::new(config.state_dir.join("workers.json"));
        let now = SystemTime::now();
        let mut records = BTreeMap::new();
        for persisted in state_file.load() {
            let lost_reason = if still_running(&persisted) {
                tracing::info!(worker_id = %persisted.id, pid = persisted.pid, "adopted running worker");
                None
            } else {
                tracing::warn!(
                    worker_id = %persisted.id,
                    pid = persisted.pid,
                    "worker exited while the hive was not running"
                );
                Some("exited while the hive was not running".to_owned())
            };
            records.insert(
                persisted.id.clone(),
                Record {
                    persisted,
                    starting: false,
                    last_heartbeat: None,
                    tracked_since: now,
                    source: HeartbeatSource::ReadinessCheck,
                    reports_ready: false,
                    lost_reason,
                    exit: None,
                },
            );
        }

        let workers = Arc::new(Self {
            config,
            catalog,
            state_file,
            records: Mutex::new(records),
            load: infer::InferenceLoad::default(),
            grace_cut: CancellationToken::new(),
        });
        workers.persist(&workers.lock())?;
        Ok(workers)
    }

    /// Returns how often heartbeats are expected.
    pub fn heartbeat_interval(&self) -> Duration {
        self.config.heartbeat_interval
    }

    /// Lists the active workers, sorted by id.
    pub fn list(&self) -> Vec<ActiveWorker> {
        let now = SystemTime::now();
        let interval = self.config.heartbeat_interval;
        self.lock()
            .values()
            .map(|record| record.snapshot(now, interval))
            .collect()
    }

    /// Returns one active worker.
    pub fn get(&self, id: &WorkerId) -> Result<ActiveWorker, WorkerError> {
        let records = self.lock();
        let record = records
            .get(id)
            .ok_or_else(|| WorkerError::NotFound(id.clone()))?;
        Ok(record.snapshot(SystemTime::now(), self.config.heartbeat_interval))
    }

    /// Records a heartbeat sent by the worker itself.
    pub fn heartbeat(&self, id: &WorkerId, ready: bool) -> Result<(), WorkerError> {
        let mut records = self.lock();
        let record = records
            .get_mut(id)
            .filter(|r| !r.lost_reason.as_deref().is_some_and(is_exit_reason))
            .ok_or_else(|| WorkerError::NotFound(id.clone()))?;
        record.last_heartbeat = Some(SystemTime::now());
        record.source = HeartbeatSource::Worker;
        record.reports_ready = ready;
        // A worker that was lost only for silence is back.
        record.lost_reason = None;
        Ok(())
    }

    /// Returns the processes this hive spawned, keyed by pid, for identifying worker processes.
    pub fn spawned(&self) -> HashMap<i32, Spawned> {
        self.lock()
            .values()
            .map(|record| {
                let p = &record.persisted;
                (
                    p.pid,
                    Spawned {
                        start_ticks: p.start_ticks,
                        binary: p.binary.clone(),
                        worker_id: p.id.to_string(),
                        model: p.model.clone(),
                        device: p.device.clone(),
                        port: p.port,
                    },
                )
            })
            .collect()
    }

    /// Returns the catalog.
    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// Stops an active worker and its process tree, and removes it from the registry.
    ///
    /// Returns the worker as it was and how its process ended, or `None` when it had already
    /// exited.
    pub async fn retire(
        &self,
        id: &WorkerId,
        grace: Duration,
        narrator: &Narrator,
    ) -> Result<(ActiveWorker, Option<StoppedProcess>), WorkerError> {
        let worker = self.get(id)?;
        narrator.info(
            "worker.retire",
            format!("retiring worker {id} (pid {})", worker.pid),
        );
        let stopped = match self.stop_process(worker.pid, grace, narrator).await {
            Ok(stopped) => Ok(self.with_exit_status(stopped).await),
            Err(error) => Err(error),
        };
        let stopped = match stopped {
            Ok(stopped) => Some(stopped),
            Err(ProcessError::NotFound { .. }) => {
                narrator.info("worker.retire", format!("worker {id} had already exited"));
                // Its children may still run, and hold its port.
                let marker = format!("RBEE_WORKER_ID={id}");
                let left = process::stop_remnants(&marker, grace, &self.grace_cut, narrator).await;
                if left > 0 {
                    tracing::info!(worker_id = %id, processes = left, "stopped processes left behind");
                }
                None
            }
            Err(error) => return Err(error.into()),
        };
        self.remove(id)?;
        tracing::info!(worker_id = %id, pid = worker.pid, "worker retired");
        Ok((worker, stopped))
    }

    /// Stops the worker process `pid` and its tree, recognizing the processes this hive spawned
    /// as well as those running catalog binaries; see [`process::stop_worker`].
    pub async fn stop_process(
        &self,
        pid: i32,
        grace: Duration,
        narrator: &Narrator,
    ) -> Result<StoppedProcess, ProcessError> {
        let spawned = self.spawned();
        let identity = Identity {
            catalog: &self.catalog,
            spawned: &spawned,
        };
        process::stop_worker(identity, pid, grace, &self.grace_cut, narrator).await
    }

    /// Ends the grace period of every stop in progress and of every later one, so that they
    /// send SIGKILL at once. The hive calls it when its drain timeout ends.
    pub fn end_grace_periods(&self) {
        tracing::info!("drain timeout over: worker stops in their grace period send SIGKILL now");
        self.grace_cut.cancel();
    }

    /// Fills in the exit status of a stopped process this hive spawned. This hive reaps its own
    /// children, so the status is not readable from `/proc`; the reaper records it instead, a
    /// moment after the exit.
    pub async fn with_exit_status(&self, mut stopped: StoppedProcess) -> StoppedProcess {
        if stopped.exit_code.is_some() || stopped.signal.is_some() {
            return stopped;
        }
        for _ in 0..20 {
            let exit = self
                .lock()
                .values()
                .find(|record| record.persisted.pid == stopped.pid)
                .map(|record| record.exit);
            match exit {
                // Not a worker of this hive: nothing will record its status.
                None => return stopped,
                Some(Some((code, signal))) => {
                    stopped.exit_code = code;
                    stopped.signal = signal;
                    return stopped;
                }
                Some(None) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
        stopped
    }

    fn record_exit(&self, id: &WorkerId, exit: (Option<i32>, Option<i32>)) {
        if let Some(record) = self.lock().get_mut(id) {
            record.exit = Some(exit);
        }
    }

    /// Removes the worker whose process is `pid` and started at `start_ticks`, after the
    /// process was stopped by other means.
    pub fn forget_process(&self, pid: i32) -> Result<(), WorkerError> {
        let id = self
            .lock()
            .values()
            .find(|record| record.persisted.pid == pid)
            .map(|record| record.persisted.id.clone());
        match id {
            Some(id) => self.remove(&id),
            None => Ok(()),
        }
    }

    /// Stops every worker, for a hive that was asked to take its workers down on shutdown.
    pub async fn retire_all(&self, grace: Duration, narrator: &Narrator) {
        let ids: Vec<WorkerId> = self.lock().keys().cloned().collect();
        // All at once, so the grace periods run side by side rather than one after another.
        futures::future::join_all(ids.iter().map(|id| async move {
            if let Err(error) = self.retire(id, grace, narrator).await {
                tracing::warn!(worker_id = %id, %error, "failed to stop worker on shutdown");
            }
        }))
        .await;
    }

    fn remove(&self, id: &WorkerId) -> Result<(), WorkerError> {
        let mut records = self.lock();
        records.remove(id);
        self.persist(&records)
    }

    fn persist(&self, records: &BTreeMap<WorkerId, Record>) -> Result<(), WorkerError> {
        // Lost workers whose process is gone are not worth adopting again.
        let workers: Vec<&PersistedWorker> = records
            .values()
            .filter(|r| !r.lost_reason.as_deref().is_some_and(is_exit_reason))
            .map(|r| &r.persisted)
            .collect();
        self.state_file
            .save(&workers)
            .map_err(|source| WorkerError::State {
                path: self.state_file.path().to_owned(),
                source,
            })
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<WorkerId, Record>> {
        self.records.lock().expect("worker registry lock poisoned")
    }
}

/// Returns whether a lost reason means the process is gone, as opposed to only silent.
fn is_exit_reason(reason: &str) -> bool {
    reason.starts_with("exited")
}

/// Returns whether the process recorded for `worker` still runs: same pid, same start time and
/// the worker id in its environment.
fn still_running(worker: &PersistedWorker) -> bool {
    let same_start = process::start_ticks(worker.pid).is_ok_and(|t| t == worker.start_ticks);
    if !same_start {
        return false;
    }
    let expected = format!("RBEE_WORKER_ID={}", worker.id);
    std::fs::read(format!("/proc/{}/environ", worker.pid)).is_ok_and(|environ| {
        environ
            .split(|&b| b == 0)
            .any(|entry| entry == expected.as_bytes())
    })
}
