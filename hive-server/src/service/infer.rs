//! `Infer`: text generation through a ready local worker, streamed back to the caller.

use rbee_proto::v1 as proto;
use tokio::sync::mpsc;
use tokio_stream::{StreamExt, wrappers::ReceiverStream};

use super::{HiveApi, InferStream, RunningJob, proto_duration};
use crate::{
    error::Error,
    jobs::{Narrator, Outcome},
    workers::{self, ActiveWorker, Completion, InferEvent, LoadGuard, WorkerError, WorkerId},
};

/// Tokens generated when a request sets no maximum.
const DEFAULT_MAX_TOKENS: u32 = 128;

/// Most tokens a request may ask for.
const MAX_TOKENS: u32 = 32_768;

/// A validated inference request with its worker chosen.
pub(super) struct Prepared {
    completion: Completion,
    worker: ActiveWorker,
    load: LoadGuard,
}

impl HiveApi {
    /// Validates the request and chooses the worker.
    pub(super) fn prepare_inference(
        &self,
        narrator: &Narrator,
        request: &proto::InferRequest,
    ) -> Result<Prepared, Error> {
        let completion = completion_of(request)?;
        let worker_id = match request.worker_id.as_str() {
            "" => None,
            id => Some(WorkerId::parse(id).map_err(WorkerError::from)?),
        };
        let (worker, load) = self
            .shared
            .workers
            .choose_for_inference(&request.model, worker_id.as_ref())?;
        narrator.info(
            "infer.worker",
            format!(
                "generating with worker {} (pid {}, port {})",
                worker.id, worker.pid, worker.port
            ),
        );
        Ok(Prepared {
            completion,
            worker,
            load,
        })
    }

    /// Streams the completion. The job finishes when the completion ends, fails, or the caller
    /// goes away.
    pub(super) fn stream_inference(&self, job: RunningJob, prepared: Prepared) -> InferStream {
        let Prepared {
            completion,
            worker,
            load,
        } = prepared;
        let job_id = job.narrator().job_id().to_string();
        let (events, received) = mpsc::channel(64);
        let client = self.shared.worker_client.clone();
        tokio::spawn(async move {
            let result = workers::complete(&client, &worker, &completion, &events).await;
            drop(load);
            let outcome = match result {
                Ok(()) if events.is_closed() => {
                    Outcome::cancelled("the caller went away before the completion finished")
                }
                Ok(()) => Outcome::ok(),
                Err(error) => {
                    let code = crate::error::worker_code(&error) as i32;
                    let outcome = Outcome::failed(code, error.to_string());
                    // The caller learns of the failure from the stream's last item.
                    let _ = events.send(Err(error)).await;
                    outcome
                }
            };
            let RunningJob { job, _slot } = job;
            job.finish(outcome);
        });

        let stream = ReceiverStream::new(received).map(move |event| match event {
            Ok(InferEvent::Text(text)) => Ok(proto::InferResponse {
                job_id: job_id.clone(),
                event: Some(proto::infer_response::Event::Text(text)),
            }),
            Ok(InferEvent::Done(summary)) => Ok(proto::InferResponse {
                job_id: job_id.clone(),
                event: Some(proto::infer_response::Event::Summary(proto::InferSummary {
                    worker_id: summary.worker_id.to_string(),
                    prompt_tokens: summary.prompt_tokens,
                    completion_tokens: summary.completion_tokens,
                    duration: Some(proto_duration(summary.duration)),
                    stop_reason: summary.stop_reason,
                })),
            }),
            Err(error) => Err(Error::from(error).into()),
        });
        Box::pin(stream)
    }
}

fn completion_of(request: &proto::InferRequest) -> Result<Completion, Error> {
    let invalid = |message: String| Err(Error::InvalidArgument(message));
    if request.model.is_empty() {
        return invalid("model is missing: give a model name or path".to_owned());
    }
    if request.prompt.is_empty() {
        return invalid("prompt is empty".to_owned());
    }
    if request.max_tokens > MAX_TOKENS {
        return invalid(format!(
            "invalid max_tokens {}: at most {MAX_TOKENS}",
            request.max_tokens
        ));
    }
    if !(0.0..=5.0).contains(&request.temperature) {
        return invalid(format!(
            "invalid temperature {}: use 0 to 5",
            request.temperature
        ));
    }
    if let Some(top_p) = request.top_p
        && !(0.0..=1.0).contains(&top_p)
    {
        return invalid(format!("invalid top_p {top_p}: use 0 to 1"));
    }
    Ok(Completion {
        prompt: request.prompt.clone(),
        max_tokens: if request.max_tokens == 0 {
            DEFAULT_MAX_TOKENS
        } else {
            request.max_tokens
        },
        temperature: request.temperature,
        top_p: request.top_p,
        top_k: request.top_k,
    })
}
