//! Following a job's narration.

use std::{
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::SystemTime,
};

use futures::{Stream, StreamExt, stream::BoxStream};
use tokio_util::sync::CancellationToken;

use super::{Event, Job, Level, Outcome};

/// Events of one job: its history first, then live events, ending after the final event.
///
/// The stream holds only a cursor into the job's history, so a slow reader never blocks the job
/// and never grows memory. A reader that falls further behind than the history keeps sees a gap
/// in `seq`, preceded by a warning event that says how many events it missed.
pub struct EventStream {
    inner: BoxStream<'static, Event>,
}

impl EventStream {
    pub(super) fn new(job: Arc<Job>, shutdown: CancellationToken) -> Self {
        let cursor = Cursor {
            job,
            next_seq: 0,
            shutdown,
            done: false,
        };
        let inner = futures::stream::unfold(cursor, |mut cursor| async move {
            let event = cursor.next().await?;
            Some((event, cursor))
        })
        .boxed();
        Self { inner }
    }
}

impl Stream for EventStream {
    type Item = Event;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        self.inner.poll_next_unpin(cx)
    }
}

struct Cursor {
    job: Arc<Job>,
    next_seq: u64,
    shutdown: CancellationToken,
    done: bool,
}

impl Cursor {
    async fn next(&mut self) -> Option<Event> {
        if self.done {
            return None;
        }
        let job = Arc::clone(&self.job);
        let watch = job.recorded.watch();
        loop {
            // Created before the history is read, so an event recorded in between still
            // wakes this cursor.
            let recorded = watch.changed();
            if let Some(event) = self.take_next() {
                self.done = event.outcome.is_some();
                return Some(event);
            }
            tokio::select! {
                () = recorded => {}
                () = self.shutdown.cancelled() => {
                    self.done = true;
                    return Some(self.shutdown_event());
                }
            }
        }
    }

    fn take_next(&mut self) -> Option<Event> {
        let state = self.job.lock();
        let oldest = state.events.front()?.seq;
        if self.next_seq < oldest {
            let missed = oldest - self.next_seq;
            self.next_seq = oldest;
            return Some(Event {
                job_id: self.job.id.clone(),
                seq: oldest.saturating_sub(1),
                at: SystemTime::now(),
                level: Level::Warn,
                action: "narration.gap",
                message: format!(
                    "{missed} earlier events were dropped from this job's bounded history"
                )
                .into(),
                progress: None,
                outcome: None,
            });
        }
        let index = usize::try_from(self.next_seq - oldest).ok()?;
        let event = state.events.get(index)?.clone();
        self.next_seq = event.seq + 1;
        Some(event)
    }

    fn shutdown_event(&self) -> Event {
        let seq = self.job.lock().next_seq;
        Event {
            job_id: self.job.id.clone(),
            seq,
            at: SystemTime::now(),
            level: Level::Warn,
            action: "hive.shutdown",
            message: "the hive is shutting down; this job's outcome is unknown".into(),
            progress: None,
            outcome: Some(Outcome::unavailable(
                "the hive shut down before the job finished",
            )),
        }
    }
}
