//! Inference through a ready worker: choosing one for a model, and streaming a completion from
//! llama.cpp's HTTP API (`POST /completion` with `"stream": true`, which returns server-sent
//! events of JSON objects).

use std::{
    collections::BTreeSet,
    path::Path,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures::StreamExt;
use serde::Deserialize;
use tokio::sync::mpsc;

use super::{ActiveWorker, WorkerError, WorkerId, WorkerState, Workers};

/// API name recorded for workers that speak llama.cpp's completion API.
pub const LLAMA_CPP_API: &str = "llama.cpp";

/// A completion request.
#[derive(Debug, Clone)]
pub struct Completion {
    /// Text to continue.
    pub prompt: String,
    /// Maximum number of tokens to generate.
    pub max_tokens: u32,
    /// Sampling temperature.
    pub temperature: f32,
    /// Nucleus sampling threshold.
    pub top_p: Option<f32>,
    /// Top-k sampling.
    pub top_k: Option<u32>,
}

/// One step of a streamed completion.
#[derive(Debug, Clone, PartialEq)]
pub enum InferEvent {
    /// A piece of generated text.
    Text(String),
    /// The end, with counts.
    Done(InferSummary),
}

/// Counts and timing of a finished completion.
#[derive(Debug, Clone, PartialEq)]
pub struct InferSummary {
    /// Worker that generated the text.
    pub worker_id: WorkerId,
    /// Tokens in the prompt.
    pub prompt_tokens: u32,
    /// Tokens generated.
    pub completion_tokens: u32,
    /// Time from the request to the last token.
    pub duration: Duration,
    /// `length`, `stop`, or the worker's own word.
    pub stop_reason: String,
}

/// Completions running per worker, for choosing the least busy one.
#[derive(Debug, Default)]
pub(super) struct InferenceLoad {
    running: Mutex<std::collections::HashMap<WorkerId, usize>>,
}

/// A completion counted against a worker's load until dropped.
#[derive(Debug)]
pub struct LoadGuard {
    workers: Arc<Workers>,
    id: WorkerId,
}

impl Drop for LoadGuard {
    fn drop(&mut self) {
        let mut running = self
            .workers
            .load
            .running
            .lock()
            .expect("load lock poisoned");
        if let Some(count) = running.get_mut(&self.id) {
            *count = count.saturating_sub(1);
        }
    }
}

impl Workers {
    /// Chooses the ready worker to serve `model`: `worker_id` when given, else the least busy
    /// ready worker whose model is `model`, by the path given at spawn or by catalog name.
    pub fn choose_for_inference(
        self: &Arc<Self>,
        model: &str,
        worker_id: Option<&WorkerId>,
    ) -> Result<(ActiveWorker, LoadGuard), WorkerError> {
        let workers = self.list();
        let chosen = match worker_id {
            Some(id) => {
                let worker = workers
                    .into_iter()
                    .find(|w| w.id == *id)
                    .ok_or_else(|| WorkerError::NotFound(id.clone()))?;
                if !self.serves(&worker, model) {
                    return Err(WorkerError::NotServing(format!(
                        "worker {id} serves model {}, not {model:?}",
                        worker.model
                    )));
                }
                if worker.state != WorkerState::Ready
                    || worker.api.as_deref() != Some(LLAMA_CPP_API)
                {
                    return Err(WorkerError::NotServing(format!(
                        "worker {id} cannot serve inference: it is {} and serves {}",
                        worker.state.name(),
                        worker.api.as_deref().unwrap_or("no known inference API")
                    )));
                }
                worker
            }
            None => {
                let running = self.load.running.lock().expect("load lock poisoned");
                let candidates = workers.iter().filter(|w| {
                    w.state == WorkerState::Ready
                        && w.api.as_deref() == Some(LLAMA_CPP_API)
                        && self.serves(w, model)
                });
                let best = candidates
                    .min_by_key(|w| running.get(&w.id).copied().unwrap_or(0))
                    .cloned();
                drop(running);
                best.ok_or_else(|| no_worker_for(model, &workers))?
            }
        };
        *self
            .load
            .running
            .lock()
            .expect("load lock poisoned")
            .entry(chosen.id.clone())
            .or_default() += 1;
        let guard = LoadGuard {
            workers: Arc::clone(self),
            id: chosen.id.clone(),
        };
        Ok((chosen, guard))
    }

    fn serves(&self, worker: &ActiveWorker, model: &str) -> bool {
        worker.model == model || Path::new(&worker.model) == self.config.model_dir.join(model)
    }
}

fn no_worker_for(model: &str, workers: &[ActiveWorker]) -> WorkerError {
    let served: BTreeSet<&str> = workers
        .iter()
        .filter(|w| w.state == WorkerState::Ready && w.api.as_deref() == Some(LLAMA_CPP_API))
        .map(|w| w.model.as_str())
        .collect();
    let served = if served.is_empty() {
        "no models are being served".to_owned()
    } else {
        format!(
            "the models being served are {}",
            served.into_iter().collect::<Vec<_>>().join(", ")
        )
    };
    WorkerError::NotServing(format!("no ready worker serves model {model:?}; {served}"))
}

/// One server-sent event of llama.cpp's streamed completion.
#[derive(Debug, Deserialize)]
struct Chunk {
    #[serde(default)]
    content: String,
    #[serde(default)]
    stop: bool,
    #[serde(default)]
    stop_type: Option<String>,
    #[serde(default)]
    stopped_limit: Option<bool>,
    #[serde(default)]
    tokens_predicted: Option<u32>,
    #[serde(default)]
    tokens_evaluated: Option<u32>,
    #[serde(default)]
    timings: Option<Timings>,
}

#[derive(Debug, Deserialize)]
struct Timings {
    #[serde(default)]
    prompt_n: Option<u32>,
    #[serde(default)]
    predicted_n: Option<u32>,
}

/// Sending half of a completion's events; the receiver gets the text pieces and the summary,
/// or the error that ended the completion.
pub type InferSender = mpsc::Sender<Result<InferEvent, WorkerError>>;

/// Streams a completion from the llama.cpp server of `worker` into `events`. Returns when the
/// completion ends, the worker fails, or the receiver is dropped (the client went away), which
/// drops the connection so the worker stops generating.
pub async fn complete(
    client: &reqwest::Client,
    worker: &ActiveWorker,
    completion: &Completion,
    events: &InferSender,
) -> Result<(), WorkerError> {
    let started = Instant::now();
    let failed = |reason: String| WorkerError::WorkerFailed {
        id: worker.id.clone(),
        reason,
    };
    let mut body = serde_json::json!({
        "prompt": completion.prompt,
        "n_predict": completion.max_tokens,
        "temperature": completion.temperature,
        "stream": true,
    });
    if let Some(top_p) = completion.top_p {
        body["top_p"] = top_p.into();
    }
    if let Some(top_k) = completion.top_k {
        body["top_k"] = top_k.into();
    }
    let url = format!("http://127.0.0.1:{}/completion", worker.port);
    let response = client
        .post(&url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body.to_string())
        .send()
        .await
        .map_err(|e| failed(format!("request to {url} failed: {e}")))?;
    if !response.status().is_success() {
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        return Err(failed(format!("{url} answered {status}: {}", text.trim())));
    }

    let mut stream = response.bytes_stream();
    let mut buffer = Vec::new();
    loop {
        // Also woken when the caller goes away, so a worker busy with a long prompt does not
        // keep generating text no one reads.
        let next = tokio::select! {
            next = stream.next() => next,
            () = events.closed() => return Ok(()),
        };
        let Some(bytes) = next else { break };
        let bytes = bytes.map_err(|e| failed(format!("the stream broke: {e}")))?;
        buffer.extend_from_slice(&bytes);
        while let Some(end) = buffer.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = buffer.drain(..=end).collect();
            let line = String::from_utf8_lossy(&line);
            let Some(data) = line.trim().strip_prefix("data:") else {
                continue;
            };
            let chunk: Chunk = serde_json::from_str(data.trim())
                .map_err(|e| failed(format!("unreadable event {:?}: {e}", data.trim())))?;
            if !chunk.content.is_empty()
                && events
                    .send(Ok(InferEvent::Text(chunk.content.clone())))
                    .await
                    .is_err()
            {
                return Ok(());
            }
            if chunk.stop {
                let summary = summarize(&worker.id, &chunk, started.elapsed());
                let _ = events.send(Ok(InferEvent::Done(summary))).await;
                return Ok(());
            }
        }
    }
    Err(failed(
        "the stream ended before the completion finished".to_owned(),
    ))
}

fn summarize(id: &WorkerId, last: &Chunk, duration: Duration) -> InferSummary {
    let timings = last.timings.as_ref();
    let stop_reason = match (last.stop_type.as_deref(), last.stopped_limit) {
        (Some("limit"), _) | (None, Some(true)) => "length".to_owned(),
        (Some("eos" | "word"), _) | (None, Some(false)) => "stop".to_owned(),
        (Some(other), _) => other.to_owned(),
        (None, None) => "stop".to_owned(),
    };
    InferSummary {
        worker_id: id.clone(),
        prompt_tokens: last
            .tokens_evaluated
            .or(timings.and_then(|t| t.prompt_n))
            .unwrap_or(0),
        completion_tokens: last
            .tokens_predicted
            .or(timings.and_then(|t| t.predicted_n))
            .unwrap_or(0),
        duration,
        stop_reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn final_chunk_summary() {
        let chunk: Chunk = serde_json::from_str(
            r#"{"content":"","stop":true,"stop_type":"limit","tokens_predicted":8,
                "tokens_evaluated":5,"timings":{"prompt_n":5,"predicted_n":8}}"#,
        )
        .unwrap();
        let id = WorkerId::parse("worker-0123456789ab").unwrap();
        let summary = summarize(&id, &chunk, Duration::from_millis(20));
        assert_eq!(summary.prompt_tokens, 5);
        assert_eq!(summary.completion_tokens, 8);
        assert_eq!(summary.stop_reason, "length");
    }
}
