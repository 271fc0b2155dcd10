//! The periodic check of active workers: liveness, heartbeats on behalf of workers that do not
//! send their own, and log rotation.

use std::{sync::Arc, time::SystemTime};

use tokio_util::sync::CancellationToken;

use super::{HeartbeatSource, WorkerId, Workers, log, state_file::PersistedWorker};
use crate::process;

impl Workers {
    /// Checks every worker once per heartbeat interval until `shutdown` is cancelled.
    pub async fn monitor(self: Arc<Self>, shutdown: CancellationToken) {
        let mut ticks = tokio::time::interval(self.config.heartbeat_interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticks.tick() => self.check_all().await,
                () = shutdown.cancelled() => return,
            }
        }
    }

    async fn check_all(&self) {
        let due: Vec<(PersistedWorker, HeartbeatSource)> = self
            .lock()
            .values()
            .filter(|r| !r.starting && r.lost_reason.is_none())
            .map(|r| (r.persisted.clone(), r.source))
            .collect();

        for (worker, source) in due {
            let alive = !process::has_exited(worker.pid)
                && process::start_ticks(worker.pid).is_ok_and(|t| t == worker.start_ticks);
            if !alive {
                // A child of this hive is reaped and reported by its waiter with the exit
                // status; this covers adopted workers, which are not.
                self.mark_lost(&worker.id, "exited".to_owned());
                continue;
            }
            // A stopped process (SIGSTOP) still has its socket accept connections, but it serves
            // nothing, so it earns no heartbeat.
            if source == HeartbeatSource::ReadinessCheck
                && !process::is_stopped(worker.pid)
                && super::readiness::check(&worker.readiness, worker.port).await
            {
                self.record_probe(&worker.id);
            }
            match log::rotate_if_larger(&worker.log_path, self.config.log_max_bytes) {
                Ok(true) => tracing::debug!(worker_id = %worker.id, "worker log rotated"),
                Ok(false) => {}
                Err(error) => {
                    tracing::debug!(worker_id = %worker.id, %error, "log rotation failed")
                }
            }
        }
    }

    fn record_probe(&self, id: &WorkerId) {
        if let Some(record) = self.lock().get_mut(id)
            && record.source == HeartbeatSource::ReadinessCheck
        {
            record.last_heartbeat = Some(SystemTime::now());
            record.reports_ready = true;
        }
    }
}
