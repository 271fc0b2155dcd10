//! Jobs and their narration.
//!
//! Every operation runs as a job with an id. While it runs, the job records narration events
//! into a bounded history; subscribers replay the history and then follow new events until the
//! final one, which carries the outcome. Finished jobs stay for a while so that a subscriber
//! that arrives late still sees everything.

mod event;
mod id;
mod signal;
mod subscribe;

use std::{
    borrow::Cow,
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use signal::Signal;
use tokio_util::sync::CancellationToken;

pub use event::{Event, Level, Outcome, Progress};
pub use id::{InvalidJobId, JobId};
pub use subscribe::EventStream;

/// Errors of job bookkeeping.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// The job id is malformed.
    #[error(transparent)]
    InvalidId(#[from] InvalidJobId),
    /// A job with this id already exists.
    #[error("job {0} already exists; use a new job id for each request")]
    AlreadyExists(JobId),
    /// The job has finished, so there is nothing to cancel.
    #[error("job {0} has already finished")]
    AlreadyFinished(JobId),
    /// The job is not of a kind that can be cancelled.
    #[error("job {0} cannot be cancelled; only downloads and builds can")]
    NotCancellable(JobId),
    /// The hive is shutting down and no longer waits for jobs to start.
    #[error("the hive is shutting down")]
    ShuttingDown,
    /// No job with this id exists, or it was forgotten after its retention time.
    #[error("job {0} not found; it never ran here or finished too long ago")]
    NotFound(JobId),
}

/// Bounds on what the registry keeps.
#[derive(Debug, Clone, Copy)]
pub struct JobLimits {
    /// Events kept per job; older ones are dropped first.
    pub max_events_per_job: usize,
    /// Finished jobs kept at most; the oldest finished jobs are forgotten first.
    pub max_finished_jobs: usize,
    /// How long a finished job is kept.
    pub retention: Duration,
}

impl Default for JobLimits {
    fn default() -> Self {
        Self {
            max_events_per_job: 1024,
            max_finished_jobs: 1024,
            retention: Duration::from_secs(15 * 60),
        }
    }
}

/// All jobs of a hive.
#[derive(Debug)]
pub struct Jobs {
    registry: Arc<Mutex<Registry>>,
    /// Fired when a job starts.
    started: Signal,
    limits: JobLimits,
    shutdown: CancellationToken,
}

impl Jobs {
    /// Creates an empty registry. Cancelling `shutdown` ends every subscription with a final
    /// event that reports the hive shutting down.
    pub fn new(limits: JobLimits, shutdown: CancellationToken) -> Self {
        Self {
            registry: Arc::new(Mutex::new(Registry {
                jobs: HashMap::new(),
                finished: VecDeque::new(),
                limits,
            })),
            started: Signal::default(),
            limits,
            shutdown,
        }
    }

    /// Starts a job under `id`, or under a new id when `None`, and records its first event.
    pub fn start(
        &self,
        id: Option<JobId>,
        action: &'static str,
        message: impl Into<Cow<'static, str>>,
    ) -> Result<StartedJob, JobError> {
        let id = id.unwrap_or_else(JobId::generate);
        let job = Arc::new(Job::new(id.clone(), self.limits.max_events_per_job));
        {
            let mut registry = self.lock();
            registry.forget_expired(Instant::now());
            if registry.jobs.contains_key(&id) {
                return Err(JobError::AlreadyExists(id));
            }
            registry.jobs.insert(id, Arc::clone(&job));
        }
        self.started.fire();

        let narrator = Narrator { job };
        narrator.record(Level::Info, action, message.into(), None, None);
        Ok(StartedJob {
            narrator,
            registry: Arc::clone(&self.registry),
            finished: false,
        })
    }

    /// Subscribes to the job `id`: its history, then live events until the final one.
    ///
    /// When the job does not exist yet, waits up to `wait_for_start` for it to start.
    pub async fn subscribe(
        &self,
        id: &JobId,
        wait_for_start: Duration,
    ) -> Result<EventStream, JobError> {
        let deadline = tokio::time::Instant::now() + wait_for_start;
        let watch = self.started.watch();
        loop {
            // Created before the lookup, so a job started in between still wakes us.
            let started = watch.changed();
            if let Some(job) = self.get(id) {
                return Ok(EventStream::new(job, self.shutdown.clone()));
            }
            tokio::select! {
                woken = tokio::time::timeout_at(deadline, started) => {
                    if woken.is_err() {
                        return Err(JobError::NotFound(id.clone()));
                    }
                }
                () = self.shutdown.cancelled() => return Err(JobError::ShuttingDown),
            }
        }
    }

    /// Cancels the running job `id`, which must have made itself cancellable.
    pub fn cancel(&self, id: &JobId) -> Result<(), JobError> {
        let job = self.get(id).ok_or_else(|| JobError::NotFound(id.clone()))?;
        let state = job.lock();
        if state.finished_at.is_some() {
            return Err(JobError::AlreadyFinished(id.clone()));
        }
        let token = state
            .cancel
            .as_ref()
            .ok_or_else(|| JobError::NotCancellable(id.clone()))?;
        token.cancel();
        tracing::info!(job_id = %id, "job cancelled");
        Ok(())
    }

    fn get(&self, id: &JobId) -> Option<Arc<Job>> {
        self.lock().jobs.get(id).cloned()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.registry.lock().expect("job registry lock poisoned")
    }
}

/// The jobs, by id.
#[derive(Debug)]
struct Registry {
    jobs: HashMap<JobId, Arc<Job>>,
    /// Finished jobs in the order they finished, so the oldest are forgotten first without
    /// walking the whole registry.
    finished: VecDeque<(Instant, JobId)>,
    limits: JobLimits,
}

impl Registry {
    /// Records that the job `id` finished at `now`, and removes the jobs that finished too long
    /// ago or exceed the limit.
    fn record_finished(&mut self, id: JobId, now: Instant) {
        self.finished.push_back((now, id));
        self.forget_expired(now);
    }

    fn forget_expired(&mut self, now: Instant) {
        while let Some((finished_at, _)) = self.finished.front() {
            let expired = now.saturating_duration_since(*finished_at) >= self.limits.retention;
            if !expired && self.finished.len() <= self.limits.max_finished_jobs {
                break;
            }
            if let Some((_, id)) = self.finished.pop_front() {
                self.jobs.remove(&id);
            }
        }
    }
}

/// One job: its bounded event history and a signal for subscribers.
#[derive(Debug)]
struct Job {
    id: JobId,
    state: Mutex<JobState>,
    /// Fired when an event is recorded.
    recorded: Signal,
    max_events: usize,
}

#[derive(Debug)]
struct JobState {
    events: VecDeque<Event>,
    next_seq: u64,
    finished_at: Option<Instant>,
    /// Set once the job made itself cancellable.
    cancel: Option<CancellationToken>,
}

impl Job {
    fn new(id: JobId, max_events: usize) -> Self {
        Self {
            id,
            state: Mutex::new(JobState {
                events: VecDeque::new(),
                next_seq: 0,
                finished_at: None,
                cancel: None,
            }),
            recorded: Signal::default(),
            max_events: max_events.max(2),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, JobState> {
        self.state.lock().expect("job state lock poisoned")
    }
}

/// A job that has started and must be finished with an outcome.
///
/// Dropping it before [`StartedJob::finish`] records a final event with outcome CANCELLED, so a
/// job whose request was dropped never looks as if it were still running.
#[derive(Debug)]
pub struct StartedJob {
    narrator: Narrator,
    registry: Arc<Mutex<Registry>>,
    finished: bool,
}

impl StartedJob {
    /// Returns the narrator of the job.
    pub fn narrator(&self) -> &Narrator {
        &self.narrator
    }

    /// Records the final event with the job's outcome.
    pub fn finish(mut self, outcome: Outcome) {
        self.record_outcome(outcome);
    }

    fn record_outcome(&mut self, outcome: Outcome) {
        self.finished = true;
        self.narrator.finish(outcome);
        self.registry
            .lock()
            .expect("job registry lock poisoned")
            .record_finished(self.narrator.job_id().clone(), Instant::now());
    }
}

impl std::ops::Deref for StartedJob {
    type Target = Narrator;

    fn deref(&self) -> &Narrator {
        &self.narrator
    }
}

impl Drop for StartedJob {
    fn drop(&mut self) {
        if !self.finished {
            self.record_outcome(Outcome::cancelled(
                "the request was cancelled before the job finished",
            ));
        }
    }
}

/// Handle through which a running job records its narration; cheap to clone.
#[derive(Debug, Clone)]
pub struct Narrator {
    job: Arc<Job>,
}

impl Narrator {
    /// Returns the id of the job.
    pub fn job_id(&self) -> &JobId {
        &self.job.id
    }

    /// Makes the job cancellable through [`Jobs::cancel`] and returns the token that is
    /// cancelled then.
    pub fn cancellation(&self) -> CancellationToken {
        self.job
            .lock()
            .cancel
            .get_or_insert_with(CancellationToken::new)
            .clone()
    }

    /// Records an event at `level`.
    pub fn narrate(
        &self,
        level: Level,
        action: &'static str,
        message: impl Into<Cow<'static, str>>,
    ) {
        self.record(level, action, message.into(), None, None);
    }

    /// Records an informational event.
    pub fn info(&self, action: &'static str, message: impl Into<Cow<'static, str>>) {
        self.narrate(Level::Info, action, message);
    }

    /// Records a warning.
    pub fn warn(&self, action: &'static str, message: impl Into<Cow<'static, str>>) {
        self.narrate(Level::Warn, action, message);
    }

    /// Records an event that carries progress.
    pub fn progress(
        &self,
        action: &'static str,
        message: impl Into<Cow<'static, str>>,
        progress: Progress,
    ) {
        self.record(Level::Info, action, message.into(), Some(progress), None);
    }

    /// Records the final event with the job's outcome; events recorded after it are ignored.
    fn finish(&self, outcome: Outcome) {
        let (level, message) = if outcome.is_ok() {
            (Level::Info, Cow::Borrowed("job finished"))
        } else {
            (
                Level::Error,
                Cow::Owned(format!("job failed: {}", outcome.message)),
            )
        };
        self.record(level, "job.finish", message, None, Some(outcome));
    }

    fn record(
        &self,
        level: Level,
        action: &'static str,
        message: Cow<'static, str>,
        progress: Option<Progress>,
        outcome: Option<Outcome>,
    ) {
        {
            let mut state = self.job.lock();
            if state.finished_at.is_some() {
                return;
            }
            let seq = state.next_seq;
            state.next_seq += 1;
            if outcome.is_some() {
                state.finished_at = Some(Instant::now());
            }
            if state.events.len() == self.job.max_events {
                state.events.pop_front();
            }
            state.events.push_back(Event {
                job_id: self.job.id.clone(),
                seq,
                at: SystemTime::now(),
                level,
                action,
                message,
                progress,
                outcome,
            });
        }
        self.job.recorded.fire();
    }
}

#[cfg(test)]
mod tests;
