//! Live narration of hive jobs on stderr: one line per event, progress bars for events that
//! carry progress when stderr is a terminal, and a hive prefix when several hives are targeted.

use std::{
    collections::HashMap,
    future::Future,
    io::{IsTerminal, Write},
    sync::Mutex,
    time::Duration,
};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use rbee_proto::v1::{
    NarrateRequest, NarrationEvent, NarrationLevel, Progress,
    hive_service_client::HiveServiceClient,
};
use tonic::transport::Channel;

use super::format;

/// How long the narration stream may wait for a job that has not started yet. The request
/// naming the job is sent at the same time, so this only covers a slow start.
const WAIT_FOR_START: Duration = Duration::from_secs(5);

/// How long to keep reading narration after the response arrived, for the last events.
const DRAIN_AFTER_RESPONSE: Duration = Duration::from_millis(300);

/// Action of the narration events that carry a line of a worker's log.
const WORKER_LOG_ACTION: &str = "worker.log";

/// Progress printed as text is printed again only after this many more percent.
const TEXT_PROGRESS_STEP_PERCENT: u64 = 10;

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
    bars: HashMap<(String, String), ProgressBar>,
    printed_percent: HashMap<(String, String), u64>,
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
        channel: Channel,
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

    async fn stream_events(&self, channel: Channel, job_id: &str, hive: &str) {
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
            // A worker's own output, set apart from the hive's steps.
            None if event.action == WORKER_LOG_ACTION => {
                self.print(&format!("{prefix}  | {}", event.message));
            }
            None => self.print(&format!("{prefix}{}", event_text(level, &event.message))),
        }
    }

    fn show_progress(&self, prefix: &str, hive: &str, event: &NarrationEvent, progress: &Progress) {
        let key = (hive.to_owned(), event.action.clone());
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());

        if let Some(bars) = &self.bars {
            let bar = state.bars.entry(key).or_insert_with(|| {
                let bar = bars.add(ProgressBar::new(progress.total));
                bar.set_style(progress_style(&progress.unit));
                bar.set_prefix(prefix.to_owned());
                bar
            });
            bar.set_message(event.message.clone());
            if progress.total > 0 {
                bar.set_length(progress.total);
            }
            bar.set_position(progress.current);
            if progress.total > 0 && progress.current >= progress.total {
                bar.finish();
            }
            return;
        }

        // Without a terminal, progress becomes a line at the start, every few percent and at
        // the end, so a log file does not fill up with one line per event.
        let percent = (progress.total > 0).then(|| progress.current * 100 / progress.total);
        let printed = state.printed_percent.get(&key).copied();
        let due = match (percent, printed) {
            (_, None) => true,
            (Some(percent), Some(printed)) => {
                percent >= printed + TEXT_PROGRESS_STEP_PERCENT || percent >= 100 && printed < 100
            }
            (None, Some(_)) => false,
        };
        if due {
            state.printed_percent.insert(key, percent.unwrap_or(0));
            drop(state);
            self.print(&format!(
                "{prefix}{}: {}",
                event.message,
                progress_text(progress)
            ));
        }
    }

    /// Stops drawing progress bars, so results printed next appear below them.
    pub fn finish(&self) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        for (_, bar) in state.bars.drain() {
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

fn progress_style(unit: &str) -> ProgressStyle {
    let template = if unit == "bytes" {
        "{prefix}{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}".to_owned()
    } else {
        format!("{{prefix}}{{msg}} [{{bar:30}}] {{pos}}/{{len}} {unit}")
    };
    ProgressStyle::with_template(&template)
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

    #[test]
    fn warnings_and_errors_are_tagged() {
        assert_eq!(event_text(NarrationLevel::Warn, "slow"), "warning: slow");
        assert_eq!(event_text(NarrationLevel::Error, "bad"), "error: bad");
        assert_eq!(event_text(NarrationLevel::Info, "ok"), "ok");
    }
}
