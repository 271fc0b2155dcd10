//! `Narrate`: streaming a job's narration.

use std::time::Duration;

use futures::StreamExt;
use rbee_proto::v1 as proto;

use super::{HiveApi, NarrateStream, request_duration};
use crate::{
    error::Error,
    jobs::{Event, JobError, JobId, Level},
};

/// Longest a `Narrate` request may wait for its job to start.
const MAX_WAIT_FOR_START: Duration = Duration::from_secs(60);

impl HiveApi {
    pub(super) async fn narrate_job(
        &self,
        request: proto::NarrateRequest,
    ) -> Result<NarrateStream, Error> {
        let job_id = JobId::parse(&request.job_id).map_err(JobError::from)?;
        let wait = request_duration(
            "wait_for_start",
            request.wait_for_start,
            Duration::ZERO,
            MAX_WAIT_FOR_START,
        )?;
        let slot = self
            .shared
            .narration_streams
            .try_take()
            .ok_or(Error::TooManyStreams {
                limit: self.shared.narration_streams.limit(),
            })?;

        let events = self.shared.jobs.subscribe(&job_id, wait).await?;
        let stream = events.map(move |event| {
            // The slot is taken as long as the stream lives.
            let _open_stream = &slot;
            Ok(event_to_proto(event))
        });
        Ok(Box::pin(stream))
    }
}

fn event_to_proto(event: Event) -> proto::NarrationEvent {
    let level = match event.level {
        Level::Debug => proto::NarrationLevel::Debug,
        Level::Info => proto::NarrationLevel::Info,
        Level::Warn => proto::NarrationLevel::Warn,
        Level::Error => proto::NarrationLevel::Error,
    };
    proto::NarrationEvent {
        job_id: event.job_id.to_string(),
        seq: event.seq,
        timestamp: Some(event.at.into()),
        level: level.into(),
        action: event.action.to_owned(),
        message: event.message.into_owned(),
        progress: event.progress.map(|p| proto::Progress {
            current: p.current,
            total: p.total,
            unit: p.unit.to_owned(),
        }),
        outcome: event.outcome.map(|o| proto::JobOutcome {
            code: o.code,
            message: o.message,
        }),
    }
}
