//! `rbee infer`: generate text with a model that a targeted hive serves, printing the text as
//! it arrives.
//!
//! With one targeted hive, the request goes straight to it and the hive chooses the worker.
//! With several, rbee first lists each hive's active workers and sends the request to the hive
//! with the most ready llama.cpp workers for the model.

use std::{
    cell::{Cell, RefCell},
    collections::BTreeSet,
    time::Duration,
};

use rbee_proto::v1::{
    ActiveWorker, ActiveWorkerState, InferRequest, InferSummary, ListActiveWorkersRequest,
    infer_response::Event,
};
use serde::Serialize;

use super::{Context, DEFAULT_TIMEOUT, count};
use crate::{
    cli::{InferArgs, OutputFormat},
    config::HiveTarget,
    fanout::{self, CallError, CallMode, FanoutOptions, HiveResult},
    render::{self, Exit, format, write_stderr, write_stdout},
};

/// Call timeout of `rbee infer` when `--timeout` is not given. It bounds the whole generation,
/// which on a CPU can take minutes for a long completion.
pub const INFER_TIMEOUT: Duration = Duration::from_secs(300);

/// Inference API of the workers that can serve `Infer`, as hives report it in `api`.
const LLAMA_CPP_API: &str = "llama.cpp";

/// `data` of `rbee infer`: the whole text and the hive's summary.
#[derive(Debug, Serialize)]
struct Generated {
    text: String,
    worker_id: String,
    prompt_tokens: u32,
    completion_tokens: u32,
    #[serde(serialize_with = "format::serialize_duration")]
    duration: Option<prost_types::Duration>,
    stop_reason: String,
}

impl Generated {
    fn new(text: String, summary: InferSummary) -> Self {
        Self {
            text,
            worker_id: summary.worker_id,
            prompt_tokens: summary.prompt_tokens,
            completion_tokens: summary.completion_tokens,
            duration: summary.duration,
            stop_reason: summary.stop_reason,
        }
    }

    /// Describes the counts and timing in one line, for stderr.
    fn describe(&self, hive: &str) -> String {
        let duration = self
            .duration
            .and_then(|duration| Duration::try_from(duration).ok());
        let timing = match duration {
            Some(duration) if !duration.is_zero() => format!(
                " in {}, {:.1} tokens/s",
                format::duration(duration),
                f64::from(self.completion_tokens) / duration.as_secs_f64()
            ),
            Some(duration) => format!(" in {}", format::duration(duration)),
            None => String::new(),
        };
        format!(
            "{}{timing} (prompt: {}, stop reason: {}), worker {} on hive {hive}",
            count(self.completion_tokens as usize, "token", "tokens"),
            count(self.prompt_tokens as usize, "token", "tokens"),
            if self.stop_reason.is_empty() {
                "unknown"
            } else {
                &self.stop_reason
            },
            self.worker_id,
        )
    }
}

/// Builds the request from the command line. The job id is set per call.
fn request_of(args: InferArgs) -> InferRequest {
    InferRequest {
        job_id: String::new(),
        model: args.model,
        prompt: args.prompt,
        max_tokens: args.max_tokens.unwrap_or(0),
        temperature: args.temperature,
        top_p: args.top_p,
        top_k: args.top_k,
        worker_id: args.worker.unwrap_or_default(),
    }
}

/// Runs `rbee infer`. `quiet` hides the summary on stderr.
pub async fn run(context: &Context, args: InferArgs, quiet: bool) -> Exit {
    let printer = TextPrinter::default();
    let request = request_of(args);
    tokio::select! {
        exit = choose_and_generate(context, request, quiet, &printer) => exit,
        // Returning drops the call, which closes the stream. The hive then stops the worker's
        // generation and records the job as cancelled.
        () = interrupted() => {
            printer.end_line();
            match printer.job.take() {
                Some((hive, job_id)) => write_stderr(&format!(
                    "interrupted: cancelled the generation on hive {hive} (job {job_id})"
                )),
                None => write_stderr("interrupted: in-flight requests were cancelled"),
            }
            Exit::Interrupted
        }
    }
}

/// Completes on Ctrl-C. Never completes when the signal handler cannot be installed, so the
/// command then runs to its end.
async fn interrupted() {
    if let Err(error) = tokio::signal::ctrl_c().await {
        tracing::warn!(%error, "failed to listen for Ctrl-C");
        std::future::pending::<()>().await;
    }
}

async fn choose_and_generate(
    context: &Context,
    mut request: InferRequest,
    quiet: bool,
    printer: &TextPrinter,
) -> Exit {
    let target = match context.targets.as_slice() {
        [target] => target.clone(),
        _ => match choose_hive(context, &request).await {
            Ok(choice) => {
                request.model = choice.model;
                context.targets[choice.index].clone()
            }
            Err(exit) => return exit,
        },
    };

    let result = generate(context, &target, request, printer).await;
    printer.end_line();

    if context.output == OutputFormat::Json {
        write_stdout(&render::json_document(std::slice::from_ref(&result)));
    }
    match &result.outcome {
        Ok(generated) => {
            if !quiet {
                write_stderr(&generated.describe(&target.name));
            }
        }
        Err(error) => {
            write_stderr(&render::failure_line(
                &target,
                result.job_id.as_deref(),
                error,
            ));
            if target.is_builtin_localhost() && matches!(error, CallError::Unreachable { .. }) {
                write_stderr(
                    "hint: no hive responds on localhost; start one with `rbee hive start`",
                );
            }
        }
    }
    Exit::from_results(std::slice::from_ref(&result))
}

/// Sends the request to `target` and streams the text to stdout as it arrives, unless the
/// output is JSON.
async fn generate(
    context: &Context,
    target: &HiveTarget,
    request: InferRequest,
    printer: &TextPrinter,
) -> HiveResult<Generated> {
    let stream_text = context.output == OutputFormat::Table;
    let results = fanout::fan_out(
        std::slice::from_ref(target),
        &context.fanout,
        CallMode::Job(None),
        |call| {
            let mut request = request.clone();
            async move {
                request.job_id = call.job_id();
                printer
                    .job
                    .replace(Some((call.hive_name().to_owned(), call.job_id())));
                let request = call.request(request);
                let mut stream = call.hive_client().infer(request).await?.into_inner();
                let mut text = String::new();
                while let Some(message) = stream.message().await? {
                    match message.event {
                        Some(Event::Text(piece)) => {
                            if stream_text {
                                printer.print(&piece);
                            }
                            text.push_str(&piece);
                        }
                        Some(Event::Summary(summary)) => return Ok(Generated::new(text, summary)),
                        // An event this version does not know, from a newer hive.
                        None => {}
                    }
                }
                Err(tonic::Status::unknown(
                    "the hive ended the stream without a summary, so the text may be incomplete",
                ))
            }
        },
    )
    .await;
    results
        .into_iter()
        .next()
        .expect("one result for one target")
}

/// Writes the text to stdout piece by piece, flushing each, and remembers whether the last
/// line is open and which job generates the text.
#[derive(Default)]
struct TextPrinter {
    /// Hive name and job id of the generation, once its request is sent.
    job: RefCell<Option<(String, String)>>,
    /// Whether text was printed after the last newline.
    line_open: Cell<bool>,
    /// Whether stdout was found closed, after which nothing more is written.
    closed: Cell<bool>,
}

impl TextPrinter {
    fn print(&self, piece: &str) {
        if self.closed.get() || piece.is_empty() {
            return;
        }
        if write_stdout(piece) {
            self.line_open.set(!piece.ends_with('\n'));
        } else {
            self.closed.set(true);
        }
    }

    /// Ends the printed text with a newline, unless it already ends with one.
    fn end_line(&self) {
        if self.line_open.replace(false) && !self.closed.get() {
            write_stdout("\n");
        }
    }
}

/// The hive chosen among several, and the model to request from it.
#[derive(Debug, PartialEq, Eq)]
struct Choice {
    /// Position of the hive in the targets.
    index: usize,
    /// Model to send: the model the hive's matching workers were spawned with when they all
    /// agree, else the model as given.
    model: String,
}

/// Lists the active workers of every targeted hive and chooses the hive to generate with.
/// When no hive can serve the request, prints why for each hive (and the JSON document) and
/// returns the exit status.
async fn choose_hive(context: &Context, request: &InferRequest) -> Result<Choice, Exit> {
    // Listing is quick; the long default timeout is for the generation.
    let options = FanoutOptions {
        timeout: Some(
            context
                .fanout
                .timeout
                .unwrap_or(DEFAULT_TIMEOUT)
                .min(DEFAULT_TIMEOUT),
        ),
        ..context.fanout
    };
    let listings = fanout::fan_out(
        &context.targets,
        &options,
        CallMode::Job(None),
        |call| async move {
            let request = call.request(ListActiveWorkersRequest {
                job_id: call.job_id(),
            });
            let response = call.hive_client().list_active_workers(request).await?;
            Ok(response.into_inner().workers)
        },
    )
    .await;

    let worker_id = Some(request.worker_id.as_str()).filter(|id| !id.is_empty());
    match choose(&listings, &request.model, worker_id) {
        Some(choice) => {
            for listing in &listings {
                if let Err(error) = &listing.outcome {
                    write_stderr(&format!(
                        "warning: hive {} ({}) was left out because listing its workers failed: \
                         {}: {error}",
                        listing.hive.name,
                        listing.hive.address,
                        error.label()
                    ));
                }
            }
            Ok(choice)
        }
        None => Err(report_no_hive(context, &listings, request, worker_id)),
    }
}

/// Returns whether `worker` is ready, speaks llama.cpp's API, and serves `model`: its model is
/// `model`, or a path that ends with `/model`.
fn serves(worker: &ActiveWorker, model: &str) -> bool {
    is_ready_llama_cpp(worker)
        && (worker.model == model
            || worker
                .model
                .strip_suffix(model)
                .is_some_and(|prefix| prefix.ends_with('/')))
}

fn is_ready_llama_cpp(worker: &ActiveWorker) -> bool {
    worker.state == ActiveWorkerState::Ready as i32 && worker.api == LLAMA_CPP_API
}

/// Chooses the hive with the most workers that can serve the request, the first in target
/// order on a tie. Returns `None` when no hive has one. With `worker_id`, only that worker
/// counts.
fn choose(
    listings: &[HiveResult<Vec<ActiveWorker>>],
    model: &str,
    worker_id: Option<&str>,
) -> Option<Choice> {
    let mut best: Option<(usize, Vec<&ActiveWorker>)> = None;
    for (index, listing) in listings.iter().enumerate() {
        let Ok(workers) = &listing.outcome else {
            continue;
        };
        let matching: Vec<&ActiveWorker> = workers
            .iter()
            .filter(|worker| match worker_id {
                // The hive itself checks that the worker is ready and what it serves.
                Some(id) => worker.worker_id == id,
                None => serves(worker, model),
            })
            .collect();
        let best_count = best.as_ref().map_or(0, |(_, workers)| workers.len());
        if matching.len() > best_count {
            best = Some((index, matching));
        }
    }

    let (index, matching) = best?;
    // A hive matches a worker's model by the exact model string or by its own model
    // directory, not by any path that ends with the name, so it is sent the recorded model.
    let models: BTreeSet<&str> = matching.iter().map(|w| w.model.as_str()).collect();
    let model = match (worker_id, models.into_iter().collect::<Vec<_>>().as_slice()) {
        (None, [only]) => (*only).to_owned(),
        _ => model.to_owned(),
    };
    Some(Choice { index, model })
}

/// Prints, on stderr and as JSON when asked, why no targeted hive can serve the request, and
/// returns the exit status: total failure.
fn report_no_hive(
    context: &Context,
    listings: &[HiveResult<Vec<ActiveWorker>>],
    request: &InferRequest,
    worker_id: Option<&str>,
) -> Exit {
    let reason = |workers: &[ActiveWorker]| match worker_id {
        Some(id) => format!("worker {id} not found"),
        None => no_worker_message(&request.model, workers),
    };

    let mut text = match worker_id {
        Some(id) => format!("error: no targeted hive has worker {id}"),
        None => format!(
            "error: no targeted hive has a ready llama.cpp worker for model {:?}",
            request.model
        ),
    };
    let mut results: Vec<HiveResult<Generated>> = Vec::with_capacity(listings.len());
    for listing in listings {
        let hive = &listing.hive;
        let outcome = match &listing.outcome {
            Ok(workers) => {
                let message = reason(workers);
                text.push_str(&format!(
                    "\n  hive {} ({}): {message}",
                    hive.name, hive.address
                ));
                CallError::Status {
                    code: tonic::Code::FailedPrecondition,
                    message,
                }
            }
            Err(error) => {
                text.push_str(&format!(
                    "\n  hive {} ({}): {}: {error}",
                    hive.name,
                    hive.address,
                    error.label()
                ));
                error.clone()
            }
        };
        results.push(HiveResult {
            hive: hive.clone(),
            job_id: listing.job_id.clone(),
            outcome: Err(outcome),
        });
    }

    if context.output == OutputFormat::Json {
        write_stdout(&render::json_document(&results));
    }
    write_stderr(&text);
    Exit::TotalFailure
}

/// Says that no ready worker of a hive serves `model`, and names the models its ready
/// llama.cpp workers serve.
fn no_worker_message(model: &str, workers: &[ActiveWorker]) -> String {
    let served: BTreeSet<&str> = workers
        .iter()
        .filter(|worker| is_ready_llama_cpp(worker))
        .map(|worker| worker.model.as_str())
        .collect();
    if served.is_empty() {
        format!("no ready worker serves model {model:?}; no models are being served")
    } else {
        format!(
            "no ready worker serves model {model:?}; the models being served are {}",
            served.into_iter().collect::<Vec<_>>().join(", ")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn worker(id: &str, model: &str, state: ActiveWorkerState, api: &str) -> ActiveWorker {
        ActiveWorker {
            worker_id: id.to_owned(),
            model: model.to_owned(),
            state: state as i32,
            api: api.to_owned(),
            ..Default::default()
        }
    }

    fn ready(id: &str, model: &str) -> ActiveWorker {
        worker(id, model, ActiveWorkerState::Ready, LLAMA_CPP_API)
    }

    fn listing(name: &str, workers: Vec<ActiveWorker>) -> HiveResult<Vec<ActiveWorker>> {
        HiveResult {
            hive: HiveTarget {
                name: name.to_owned(),
                address: format!("{name}:7835"),
                security: Default::default(),
            },
            job_id: Some(format!("job-{name}")),
            outcome: Ok(workers),
        }
    }

    fn unreachable(name: &str) -> HiveResult<Vec<ActiveWorker>> {
        HiveResult {
            outcome: Err(CallError::Unreachable {
                reason: "failed to connect: connection refused".to_owned(),
            }),
            job_id: None,
            ..listing(name, Vec::new())
        }
    }

    #[test]
    fn model_matches_exactly_or_as_path_suffix() {
        assert!(serves(&ready("worker-1", "tiny.gguf"), "tiny.gguf"));
        assert!(serves(&ready("worker-1", "/m/tiny.gguf"), "tiny.gguf"));
        assert!(!serves(&ready("worker-1", "/m/xtiny.gguf"), "tiny.gguf"));
        assert!(!serves(&ready("worker-1", "/m/tiny.gguf.bak"), "tiny.gguf"));
    }

    #[test]
    fn only_ready_llama_cpp_workers_serve() {
        let starting = worker("worker-1", "m", ActiveWorkerState::Starting, LLAMA_CPP_API);
        let stale = worker("worker-2", "m", ActiveWorkerState::Stale, LLAMA_CPP_API);
        let no_api = worker("worker-3", "m", ActiveWorkerState::Ready, "");
        for worker in [starting, stale, no_api] {
            assert!(!serves(&worker, "m"), "{worker:?} was accepted");
        }
    }

    #[test]
    fn most_workers_wins() {
        let listings = vec![
            listing("a", vec![ready("worker-1", "/a/m.gguf")]),
            unreachable("b"),
            listing(
                "c",
                vec![
                    ready("worker-2", "/c/m.gguf"),
                    ready("worker-3", "/c/m.gguf"),
                ],
            ),
        ];
        let choice = choose(&listings, "m.gguf", None).unwrap();
        assert_eq!(choice.index, 2);
        assert_eq!(choice.model, "/c/m.gguf");
    }

    #[test]
    fn tie_goes_to_first_hive() {
        let listings = vec![
            listing("a", vec![ready("worker-1", "other.gguf")]),
            listing("b", vec![ready("worker-2", "m.gguf")]),
            listing("c", vec![ready("worker-3", "m.gguf")]),
        ];
        let choice = choose(&listings, "m.gguf", None).unwrap();
        assert_eq!(choice.index, 1);
    }

    #[test]
    fn differing_paths_send_model_as_given() {
        let listings = vec![listing(
            "a",
            vec![
                ready("worker-1", "/x/m.gguf"),
                ready("worker-2", "/y/m.gguf"),
            ],
        )];
        let choice = choose(&listings, "m.gguf", None).unwrap();
        assert_eq!(choice.model, "m.gguf");
    }

    #[test]
    fn no_serving_hive_is_none() {
        let listings = vec![
            listing("a", vec![ready("worker-1", "other.gguf")]),
            unreachable("b"),
        ];
        assert_eq!(choose(&listings, "m.gguf", None), None);
    }

    #[test]
    fn worker_id_picks_its_hive() {
        let listings = vec![
            listing("a", vec![ready("worker-1", "m.gguf")]),
            listing("b", vec![ready("worker-2", "other.gguf")]),
        ];
        let choice = choose(&listings, "m.gguf", Some("worker-2")).unwrap();
        assert_eq!(choice.index, 1);
        assert_eq!(choice.model, "m.gguf");
        assert_eq!(choose(&listings, "m.gguf", Some("worker-9")), None);
    }

    #[test]
    fn message_names_served_models() {
        let workers = vec![
            ready("worker-1", "/m/b.gguf"),
            ready("worker-2", "/m/a.gguf"),
            worker(
                "worker-3",
                "/m/c.gguf",
                ActiveWorkerState::Lost,
                LLAMA_CPP_API,
            ),
        ];
        assert_eq!(
            no_worker_message("x.gguf", &workers),
            "no ready worker serves model \"x.gguf\"; the models being served are /m/a.gguf, \
             /m/b.gguf"
        );
        assert_eq!(
            no_worker_message("x.gguf", &[]),
            "no ready worker serves model \"x.gguf\"; no models are being served"
        );
    }

    #[test]
    fn summary_line_has_rate_worker_and_hive() {
        let generated = Generated {
            text: "hi".to_owned(),
            worker_id: "worker-0123456789ab".to_owned(),
            prompt_tokens: 2,
            completion_tokens: 8,
            duration: Some(prost_types::Duration {
                seconds: 2,
                nanos: 0,
            }),
            stop_reason: "length".to_owned(),
        };
        assert_eq!(
            generated.describe("gpu1"),
            "8 tokens in 2.0s, 4.0 tokens/s (prompt: 2 tokens, stop reason: length), worker \
             worker-0123456789ab on hive gpu1"
        );
    }

    #[test]
    fn json_data_has_text_and_counts() {
        let generated = Generated {
            text: "hi".to_owned(),
            worker_id: "worker-0123456789ab".to_owned(),
            prompt_tokens: 2,
            completion_tokens: 1,
            duration: Some(prost_types::Duration {
                seconds: 1,
                nanos: 500_000_000,
            }),
            stop_reason: "stop".to_owned(),
        };
        let value = serde_json::to_value(&generated).unwrap();
        assert_eq!(value["text"], "hi");
        assert_eq!(value["completion_tokens"], 1);
        assert_eq!(value["duration"], "1.500s");
        assert_eq!(value["stop_reason"], "stop");
    }
}
