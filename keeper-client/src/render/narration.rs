//! Live narration of hive jobs on stderr: one line per event, progress bars for events that
//! carry progress when stderr is a terminal, and a hive prefix when several hives are targeted.

use std::{
    collections::HashMap,
    future::Future,
    io::{IsTerminal, Write},
    sync::Mutex,
    time::{Duration, Instant},
};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use rbee_proto::v1::{
    NarrateRequest, NarrationEvent, NarrationLevel, Progress,
    hive_service_client::HiveServiceClient,
};

use super::format;
use crate::fanout::HiveChannel;

/// How long the narration stream may wait for a job that has not started yet. The request
/// naming the job is sent at the same time, so this only covers a slow start.
const WAIT_FOR_START: Duration = Duration::from_secs(5);

/// How long to keep reading narration after the response arrived, for the last events.
const DRAIN_AFTER_RESPONSE: Duration = Duration::from_millis(300);

/// Actions of the narration events that carry one line of another program's output: a
/// worker's log, or the compiler's output during a build.
const OUTPUT_LINE_ACTIONS: &[&str] = &["worker.log", "build.output"];

/// Progress printed as text is printed again only after this many more percent.
const TEXT_PROGRESS_STEP_PERCENT: u64 = 10;

/// Progress printed as text is printed again after this long even without a step of
/// [`TEXT_PROGRESS_STEP_PERCENT`], so a slow transfer or one of unknown size still shows that
/// it moves.
const TEXT_PROGRESS_INTERVAL: Duration = Duration::from_secs(10);

/// Shows the narration of the jobs a command runs.
pub struct Narrator {
    prefix_with_hive: bool,
    show_debug: bool,
    /// Progress bars, drawn only when stderr is a terminal.
    bars: Option<MultiProgress>,
    state: Mutex<State>,
}

/// Progress shown so far, per hive and action.
#[derive(Default)]
struct State {
    bars: HashMap<(String, String), Bar>,
    printed: HashMap<(String, String), PrintedProgress>,
}

/// A progress bar, and whether it shows a known total (a bar) or an unknown one (a spinner).
struct Bar {
    bar: ProgressBar,
    total_known: bool,
}

/// The last progress line printed as text for one hive and action.
#[derive(Debug, Clone, Copy)]
struct PrintedProgress {
    /// Percent done; `None` when the total was unknown.
    percent: Option<u64>,
    at: Instant,
}

impl Narrator {
    /// Creates a narrator writing to stderr. `prefix_with_hive` starts each line with the hive name;
    /// `show_debug` also shows debug events.
    pub fn new(prefix_with_hive: bool, show_debug: bool) -> Self {
        let bars = std::io::stderr()
            .is_terminal()
            .then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr()));
        Self {
            prefix_with_hive,
            show_debug,
            bars,
            state: Mutex::new(State::default()),
        }
    }

    /// Runs `request` while streaming the narration of `job_id` from the same hive, and returns
    /// the request's result. Narration is best effort: if it cannot be streamed, the request
    /// still decides the result.
    pub async fn narrate_while<T>(
        &self,
        channel: HiveChannel,
        job_id: &str,
        hive: &str,
        request: impl Future<Output = Result<T, tonic::Status>>,
    ) -> Result<T, tonic::Status> {
        let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
        let request = async move {
            let result = request.await;
            let _ = done_tx.send(());
            result
        };

        let narration = async {
            // The stream normally ends with the job's final event, right after the response.
            // A stream that lags or never opens must not hold the result back.
            let drain = async {
                let _ = done_rx.await;
                tokio::time::sleep(DRAIN_AFTER_RESPONSE).await;
            };
            tokio::select! {
                () = self.stream_events(channel, job_id, hive) => {}
                () = drain => {}
            }
        };

        let (result, ()) = tokio::join!(request, narration);
        result
    }

    async fn stream_events(&self, channel: HiveChannel, job_id: &str, hive: &str) {
        let request = NarrateRequest {
            job_id: job_id.to_owned(),
            wait_for_start: prost_types::Duration::try_from(WAIT_FOR_START).ok(),
        };
        let mut stream = match HiveServiceClient::new(channel).narrate(request).await {
            Ok(response) => response.into_inner(),
            Err(status) => {
                tracing::debug!(hive, job_id, %status, "narration not available");
                return;
            }
        };

        loop {
            match stream.message().await {
                Ok(Some(event)) => {
                    let last = event.outcome.is_some();
                    self.show(hive, &event);
                    if last {
                        break;
                    }
                }
                Ok(None) => break,
                Err(status) => {
                    tracing::debug!(hive, job_id, %status, "narration stream failed");
                    break;
                }
            }
        }
    }

    /// Shows one event. The final event is not shown: the command's result row reports the
    /// outcome.
    pub fn show(&self, hive: &str, event: &NarrationEvent) {
        let level = NarrationLevel::try_from(event.level).unwrap_or(NarrationLevel::Unspecified);
        if event.outcome.is_some() || (level == NarrationLevel::Debug && !self.show_debug) {
            return;
        }

        let prefix = if self.prefix_with_hive {
            format!("[{hive}] ")
        } else {
            String::new()
        };
        match &event.progress {
            Some(progress) => self.show_progress(&prefix, hive, event, progress),
            // Output of a worker or a compiler, set apart from the hive's steps.
            None if OUTPUT_LINE_ACTIONS.contains(&event.action.as_str()) => {
                self.print(&format!("{prefix}  | {}", event.message));
            }
            None => self.print(&format!("{prefix}{}", event_text(level, &event.message))),
        }
    }

    fn show_progress(&self, prefix: &str, hive: &str, event: &NarrationEvent, progress: &Progress) {
        let key = (hive.to_owned(), event.action.clone());
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let total_known = progress.total > 0;

        if let Some(bars) = &self.bars {
            let entry = state.bars.entry(key).or_insert_with(|| {
                let bar = bars.add(ProgressBar::new(progress.total));
                bar.set_style(progress_style(total_known));
                bar.set_prefix(prefix.to_owned());
                Bar { bar, total_known }
            });
            // A download that starts without a size may learn it later, for example when it
            // resumes with a range request.
            if entry.total_known != total_known {
                entry.bar.set_style(progress_style(total_known));
                entry.total_known = total_known;
            }
            let bar = &entry.bar;
            if total_known {
                bar.set_length(progress.total);
            }
            bar.set_message(progress_message(event, progress));
            bar.set_position(progress.current);
            if total_known && progress.current >= progress.total {
                bar.finish();
            } else if !total_known {
                bar.tick();
            }
            return;
        }

        // Without a terminal, progress becomes a line at the start, every few percent, at the
        // end, and at least every few seconds. A log file then does not fill up with one line
        // per event, and still shows that a slow transfer moves.
        let percent = total_known.then(|| progress.current.saturating_mul(100) / progress.total);
        let now = Instant::now();
        if text_progress_due(state.printed.get(&key).copied(), percent, now) {
            state
                .printed
                .insert(key, PrintedProgress { percent, at: now });
            drop(state);
            let percent_text = percent.map(|p| format!(" ({p}%)")).unwrap_or_default();
            self.print(&format!(
                "{prefix}{}{percent_text}",
                progress_message(event, progress)
            ));
        }
    }

    /// Stops drawing progress bars, so results printed next appear below them.
    pub fn finish(&self) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        for (_, Bar { bar, .. }) in state.bars.drain() {
            if !bar.is_finished() {
                bar.abandon();
            }
        }
    }

    fn print(&self, line: &str) {
        match &self.bars {
            Some(bars) => {
                let _ = bars.println(line);
            }
            // Narration is a side channel: a closed stderr must not fail the command.
            None => {
                let _ = writeln!(std::io::stderr().lock(), "{line}");
            }
        }
    }
}

/// Returns the message with a `warning:` or `error:` tag for those levels.
pub fn event_text(level: NarrationLevel, message: &str) -> String {
    match level {
        NarrationLevel::Warn => format!("warning: {message}"),
        NarrationLevel::Error => format!("error: {message}"),
        _ => message.to_owned(),
    }
}

/// Progress as text: `12.3 MiB / 45.0 MiB (27%)`, or `3 / 10 processes (30%)`.
pub fn progress_text(progress: &Progress) -> String {
    let amount = |value: u64| {
        if progress.unit == "bytes" {
            format::bytes(value)
        } else {
            value.to_string()
        }
    };
    let unit = if progress.unit == "bytes" || progress.unit.is_empty() {
        String::new()
    } else {
        format!(" {}", progress.unit)
    };
    if progress.total == 0 {
        return format!("{}{unit}", amount(progress.current));
    }
    format!(
        "{} / {}{unit} ({}%)",
        amount(progress.current),
        amount(progress.total),
        progress.current * 100 / progress.total
    )
}

/// Returns the text of a progress event. The hive's message for a `bytes` step already states the amounts,
/// the rate and the ETA (`12.0 MiB of 45.0 MiB (3.0 MiB/s, ETA 11s)`), so it is shown as it
/// is. For other units, or without a message, the amounts are added.
fn progress_message(event: &NarrationEvent, progress: &Progress) -> String {
    if event.message.is_empty() {
        progress_text(progress)
    } else if progress.unit == "bytes" {
        event.message.clone()
    } else {
        format!("{}: {}", event.message, progress_text(progress))
    }
}

/// Returns whether a progress line is due in text mode: for the first event of a step, after
/// [`TEXT_PROGRESS_STEP_PERCENT`] more percent, at 100%, and after
/// [`TEXT_PROGRESS_INTERVAL`] without a line.
fn text_progress_due(last: Option<PrintedProgress>, percent: Option<u64>, now: Instant) -> bool {
    let Some(last) = last else {
        return true;
    };
    if now.saturating_duration_since(last.at) >= TEXT_PROGRESS_INTERVAL {
        return true;
    }
    match (percent, last.percent) {
        (Some(percent), Some(printed)) => {
            percent >= printed + TEXT_PROGRESS_STEP_PERCENT || (percent >= 100 && printed < 100)
        }
        // The total just became known.
        (Some(_), None) => true,
        (None, _) => false,
    }
}

/// Returns the style of a progress bar: a bar with the percent done when the total is known, a spinner
/// otherwise. The message carries the amounts, the rate and the ETA.
fn progress_style(total_known: bool) -> ProgressStyle {
    let template = if total_known {
        "{prefix}[{bar:30}] {percent:>3}% {wide_msg}"
    } else {
        "{prefix}{spinner} {wide_msg}"
    };
    ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_text_names_units() {
        let bytes = Progress {
            current: 1536,
            total: 3072,
            unit: "bytes".to_owned(),
        };
        assert_eq!(progress_text(&bytes), "1.5 KiB / 3.0 KiB (50%)");
        let processes = Progress {
            current: 3,
            total: 0,
            unit: "processes".to_owned(),
        };
        assert_eq!(progress_text(&processes), "3 processes");
    }

    fn event(action: &str, message: &str) -> NarrationEvent {
        NarrationEvent {
            action: action.to_owned(),
            message: message.to_owned(),
            level: NarrationLevel::Info.into(),
            ..NarrationEvent::default()
        }
    }

    #[test]
    fn byte_progress_shows_the_hives_message() {
        let download = Progress {
            current: 12 * 1024 * 1024,
            total: 45 * 1024 * 1024,
            unit: "bytes".to_owned(),
        };
        let message = "12.0 MiB of 45.0 MiB (3.0 MiB/s, ETA 11s)";
        let text = progress_message(&event("download.progress", message), &download);
        assert_eq!(text, message);
        let text = progress_message(&event("download.progress", ""), &download);
        assert_eq!(text, "12.0 MiB / 45.0 MiB (26%)");
    }

    #[test]
    fn other_progress_adds_the_amounts() {
        let stopping = Progress {
            current: 3,
            total: 10,
            unit: "processes".to_owned(),
        };
        let text = progress_message(&event("process.stop", "stopping"), &stopping);
        assert_eq!(text, "stopping: 3 / 10 processes (30%)");
    }

    #[test]
    fn text_progress_prints_steps_end_and_interval() {
        let start = Instant::now();
        let printed = |percent, seconds_ago: u64| PrintedProgress {
            percent,
            at: start - Duration::from_secs(seconds_ago),
        };
        assert!(text_progress_due(None, Some(0), start), "first event");
        assert!(
            text_progress_due(None, None, start),
            "first event, unknown total"
        );
        assert!(!text_progress_due(
            Some(printed(Some(20), 1)),
            Some(25),
            start
        ));
        assert!(text_progress_due(
            Some(printed(Some(20), 1)),
            Some(30),
            start
        ));
        assert!(text_progress_due(
            Some(printed(Some(95), 1)),
            Some(100),
            start
        ));
        assert!(!text_progress_due(
            Some(printed(Some(100), 1)),
            Some(100),
            start
        ));
        assert!(!text_progress_due(Some(printed(None, 1)), None, start));
        assert!(text_progress_due(Some(printed(None, 10)), None, start));
        assert!(text_progress_due(
            Some(printed(Some(20), 10)),
            Some(21),
            start
        ));
        assert!(text_progress_due(Some(printed(None, 1)), Some(40), start));
    }

    #[test]
    fn warnings_and_errors_are_tagged() {
        assert_eq!(event_text(NarrationLevel::Warn, "slow"), "warning: slow");
        assert_eq!(event_text(NarrationLevel::Error, "bad"), "error: bad");
        assert_eq!(event_text(NarrationLevel::Info, "ok"), "ok");
    }
}
