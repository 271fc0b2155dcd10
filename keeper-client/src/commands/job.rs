//! `rbee job follow`: the narration of a job, live until its final event. `rbee job cancel`:
//! stop a running download or build.

use std::time::Duration;

use prost_types::Timestamp;
use rbee_proto::v1::{
    CancelJobRequest, NarrateRequest, NarrationEvent, NarrationLevel,
    hive_service_client::HiveServiceClient,
};
use serde::Serialize;

use super::Context;
use crate::{
    cli::OutputFormat,
    fanout::{CallError, HiveResult},
    render::{self, Exit, HiveData, format, narration},
};

/// A narration event in JSON output. `level` is `debug`, `info`, `warn` or `error`.
#[derive(Debug, Serialize)]
struct EventView {
    seq: u64,
    #[serde(serialize_with = "format::serialize_time")]
    timestamp: Option<Timestamp>,
    level: &'static str,
    action: String,
    message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    progress: Option<ProgressView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    outcome: Option<OutcomeView>,
}

/// Outcome of the job, on the final event: `code` is the gRPC code number (0 for OK).
#[derive(Debug, Serialize)]
struct OutcomeView {
    code: i32,
    message: String,
}

#[derive(Debug, Serialize)]
struct ProgressView {
    current: u64,
    total: u64,
    unit: String,
}

/// `data` of `job follow` for a job that succeeded: every event streamed, the final one
/// included.
#[derive(Debug, Serialize)]
struct Followed {
    events: Vec<EventView>,
}

impl HiveData for Followed {
    fn summary(&self) -> String {
        "job succeeded".to_owned()
    }
}

/// `rbee job follow JOB_ID`.
pub async fn follow(context: &Context, job_id: String, wait_for_start: Option<Duration>) -> Exit {
    let several = context.targets.len() > 1;
    let live = context.output == OutputFormat::Table;

    let mut results = context
        .run_plain(|call| {
            let request = NarrateRequest {
                job_id: job_id.clone(),
                wait_for_start: wait_for_start
                    .and_then(|wait| prost_types::Duration::try_from(wait).ok()),
            };
            async move {
                let hive = call.hive_name().to_owned();
                let request = call.request(request);
                let mut stream = HiveServiceClient::new(call.channel())
                    .narrate(request)
                    .await?
                    .into_inner();

                let mut events = Vec::new();
                while let Some(event) = stream.message().await? {
                    if live && !print_event(several.then_some(hive.as_str()), &event) {
                        // The reader of stdout has gone, so following the job has no purpose any more.
                        return Err(tonic::Status::cancelled("stdout was closed"));
                    }
                    let outcome = event.outcome.clone();
                    events.push(EventView::from(event));
                    if let Some(outcome) = outcome {
                        if outcome.code != 0 {
                            let code = tonic::Code::from(outcome.code);
                            return Err(tonic::Status::new(code, outcome.message));
                        }
                        return Ok(Followed { events });
                    }
                }
                Err(tonic::Status::unavailable(
                    "the narration stream ended before the job's final event",
                ))
            }
        })
        .await;

    show_job_id(&mut results, &job_id);
    render::print_results(context.output, &results, |_, _| String::new())
}

/// `data` of `job cancel`: the cancelled job.
#[derive(Debug, Serialize)]
struct Cancelled {
    job_id: String,
}

impl HiveData for Cancelled {
    fn summary(&self) -> String {
        format!("cancelled {}", self.job_id)
    }
}

/// `rbee job cancel JOB_ID`.
pub async fn cancel(context: &Context, job_id: String) -> Exit {
    // CancelJob runs no job of its own, so the result rows show the cancelled job's id.
    let mut results = context
        .run_plain(|call| {
            let job_id = job_id.clone();
            async move {
                let request = call.request(CancelJobRequest { job_id });
                let response = call.hive_client().cancel_job(request).await?;
                Ok(Cancelled {
                    job_id: response.into_inner().job_id,
                })
            }
        })
        .await;

    show_job_id(&mut results, &job_id);
    render::print_results(context.output, &results, |succeeded, several| {
        let mut text = String::new();
        for (hive, cancelled) in succeeded {
            text.push_str(&format!("cancelled job {}", cancelled.job_id));
            if several {
                text.push_str(&format!(" on {}", hive.name));
            }
            text.push('\n');
        }
        text
    })
}

/// Prints one event line to stdout: `16:21:03.120Z  info   message`. Returns false when
/// stdout is closed.
fn print_event(hive: Option<&str>, event: &NarrationEvent) -> bool {
    let level = NarrationLevel::try_from(event.level).unwrap_or(NarrationLevel::Unspecified);
    let prefix = hive.map(|hive| format!("[{hive}] ")).unwrap_or_default();
    let mut text = event.message.clone();
    if let Some(progress) = &event.progress {
        text = format!("{text}: {}", narration::progress_text(progress));
    }
    if let Some(outcome) = &event.outcome
        && outcome.code != 0
    {
        let code = crate::fanout::code_name(tonic::Code::from(outcome.code));
        text = format!("{text} ({code})");
    }
    render::write_stdout(&format!(
        "{prefix}{}  {:<5}  {text}\n",
        clock_time(event.timestamp.as_ref()),
        level_name(level)
    ))
}

/// Time of day in UTC with milliseconds: `16:21:03.120Z`.
fn clock_time(timestamp: Option<&Timestamp>) -> String {
    let Some(timestamp) = timestamp else {
        return "--:--:--.---Z".to_owned();
    };
    let seconds = timestamp.seconds.rem_euclid(86_400);
    format!(
        "{:02}:{:02}:{:02}.{:03}Z",
        seconds / 3600,
        seconds / 60 % 60,
        seconds % 60,
        timestamp.nanos.clamp(0, 999_999_999) / 1_000_000
    )
}

fn level_name(level: NarrationLevel) -> &'static str {
    match level {
        NarrationLevel::Debug => "debug",
        NarrationLevel::Info => "info",
        NarrationLevel::Warn => "warn",
        NarrationLevel::Error => "error",
        NarrationLevel::Unspecified => "-",
    }
}

impl From<NarrationEvent> for EventView {
    fn from(event: NarrationEvent) -> Self {
        let level = NarrationLevel::try_from(event.level).unwrap_or(NarrationLevel::Unspecified);
        Self {
            seq: event.seq,
            timestamp: event.timestamp,
            level: level_name(level),
            action: event.action,
            message: event.message,
            progress: event.progress.map(|progress| ProgressView {
                current: progress.current,
                total: progress.total,
                unit: progress.unit,
            }),
            outcome: event.outcome.map(|outcome| OutcomeView {
                code: outcome.code,
                message: outcome.message,
            }),
        }
    }
}

/// Shows `job_id` on the result rows of the hives that were reached.
fn show_job_id<T>(results: &mut [HiveResult<T>], job_id: &str) {
    for result in results {
        if result
            .outcome
            .as_ref()
            .err()
            .is_none_or(CallError::reached_hive)
        {
            result.job_id = Some(job_id.to_owned());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_time_is_utc_with_millis() {
        let timestamp = Timestamp {
            seconds: 1_765_000_000 + 3,
            nanos: 120_000_000,
        };
        assert_eq!(clock_time(Some(&timestamp)), "05:46:43.120Z");
        assert_eq!(clock_time(None), "--:--:--.---Z");
    }
}
