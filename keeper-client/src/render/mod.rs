//! Output: results on stdout as tables or one JSON document, problems on stderr, and the exit
//! status that follows from the per-hive outcomes.

pub mod format;
pub mod narration;
pub mod table;

use std::io::Write;

use serde::Serialize;

use crate::{
    cli::OutputFormat,
    config::HiveTarget,
    fanout::{CallError, HiveResult},
};

/// Exit status of `rbee`, documented in `--help` and the README.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Every targeted hive succeeded.
    Success,
    /// A local failure: files, configuration or the rbee-hive binary.
    LocalFailure,
    /// Usage error or invalid input, found before any request was sent.
    Usage,
    /// Some targeted hives failed, the others succeeded.
    PartialFailure,
    /// Every targeted hive failed.
    TotalFailure,
    /// Interrupted by Ctrl-C.
    Interrupted,
}

impl Exit {
    /// Returns the process exit code.
    pub fn code(self) -> u8 {
        match self {
            Self::Success => 0,
            Self::LocalFailure => 1,
            Self::Usage => 2,
            Self::PartialFailure => 3,
            Self::TotalFailure => 4,
            Self::Interrupted => 130,
        }
    }

    /// Success when every result is OK, partial or total failure otherwise.
    pub fn from_results<T>(results: &[HiveResult<T>]) -> Self {
        let failed = results.iter().filter(|r| r.outcome.is_err()).count();
        if failed == 0 {
            Self::Success
        } else if failed == results.len() {
            Self::TotalFailure
        } else {
            Self::PartialFailure
        }
    }
}

/// Data a command returns per hive.
pub trait HiveData: Serialize {
    /// Returns one line for the DETAIL column of the per-hive result table, e.g. `3 worker binaries`.
    fn summary(&self) -> String;
}

/// Writes to stdout. Returns false when the reader has gone (`rbee ... | head -1`), which is a
/// normal way for output to end, not an error.
pub fn write_stdout(text: &str) -> bool {
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Ok(()) => true,
        Err(error) => {
            if error.kind() != std::io::ErrorKind::BrokenPipe {
                write_stderr(&format!("error: failed to write to stdout: {error}"));
            }
            false
        }
    }
}

/// Writes one line to stderr, ignoring failure: there is nowhere left to report it.
pub fn write_stderr(line: &str) {
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

/// Prints the results of a fan-out and returns the exit status they imply.
///
/// In table mode, `render_table` gets the hives that succeeded and whether several hives were
/// targeted. With several hives, a per-hive result table follows, so every targeted hive gets
/// a row. Failures also go to stderr.
pub fn print_results<T: HiveData>(
    output: OutputFormat,
    results: &[HiveResult<T>],
    render_table: impl FnOnce(&[(&HiveTarget, &T)], bool) -> String,
) -> Exit {
    match output {
        OutputFormat::Json => {
            write_stdout(&json_document(results));
        }
        OutputFormat::Table => print_tables(results, render_table),
    }
    report_failures(results);
    Exit::from_results(results)
}

fn print_tables<T: HiveData>(
    results: &[HiveResult<T>],
    render_table: impl FnOnce(&[(&HiveTarget, &T)], bool) -> String,
) {
    let several = results.len() > 1;
    let succeeded: Vec<(&HiveTarget, &T)> = results
        .iter()
        .filter_map(|result| {
            result
                .outcome
                .as_ref()
                .ok()
                .map(|data| (&result.hive, data))
        })
        .collect();

    let mut text = String::new();
    if !succeeded.is_empty() {
        text.push_str(&render_table(&succeeded, several));
    }
    if several {
        if !text.is_empty() {
            text.push('\n');
        }
        text.push_str(&result_table(results));
    }
    write_stdout(&text);
}

/// Renders one row per targeted hive: HIVE, ADDRESS, RESULT, JOB, DETAIL.
fn result_table<T: HiveData>(results: &[HiveResult<T>]) -> String {
    let mut table = table::new(&["HIVE", "ADDRESS", "RESULT", "JOB", "DETAIL"]);
    for result in results {
        let (label, detail) = match &result.outcome {
            Ok(data) => ("OK".to_owned(), data.summary()),
            Err(error) => (error.label().to_owned(), error.to_string()),
        };
        table.add_row(vec![
            result.hive.name.clone(),
            result.hive.address.clone(),
            label,
            result.job_id.clone().unwrap_or_else(|| "-".to_owned()),
            detail,
        ]);
    }
    table::render(&table)
}

/// Reports failed hives on stderr: each one when a single hive was targeted, a count
/// otherwise (the result table on stdout has the details).
fn report_failures<T>(results: &[HiveResult<T>]) {
    let failed: Vec<&HiveResult<T>> = results.iter().filter(|r| r.outcome.is_err()).collect();
    if failed.is_empty() {
        return;
    }

    if results.len() > 1 {
        write_stderr(&format!(
            "error: {} of {} hives failed",
            failed.len(),
            results.len()
        ));
    } else {
        for result in &failed {
            if let Err(error) = &result.outcome {
                write_stderr(&failure_line(&result.hive, result.job_id.as_deref(), error));
            }
        }
    }

    let localhost_down = failed.iter().any(|result| {
        result.hive.is_builtin_localhost()
            && matches!(result.outcome, Err(CallError::Unreachable { .. }))
    });
    if localhost_down {
        write_stderr("hint: no hive responds on localhost; start one with `rbee hive start`");
    }
}

/// `error: hive a (127.0.0.1:7835): NOT_FOUND: ... (job job-...)`
pub fn failure_line(hive: &HiveTarget, job_id: Option<&str>, error: &CallError) -> String {
    let job = job_id.map(|id| format!(" (job {id})")).unwrap_or_default();
    format!(
        "error: hive {} ({}): {}: {error}{job}",
        hive.name,
        hive.address,
        error.label()
    )
}

/// One entry of the `results` array of JSON output.
#[derive(Serialize)]
struct JsonResult<'a, T> {
    hive: &'a str,
    address: &'a str,
    outcome: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    job_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    code: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<&'a T>,
}

/// Renders the JSON document `{"results": [...]}`, one entry per targeted hive in target order.
pub fn json_document<T: Serialize>(results: &[HiveResult<T>]) -> String {
    #[derive(Serialize)]
    struct Document<'a, T> {
        results: Vec<JsonResult<'a, T>>,
    }

    let results = results
        .iter()
        .map(|result| {
            let (outcome, code, error, data) = match &result.outcome {
                Ok(data) => ("ok", None, None, Some(data)),
                Err(error) => (error.outcome(), error.code(), Some(error.to_string()), None),
            };
            JsonResult {
                hive: &result.hive.name,
                address: &result.hive.address,
                outcome,
                job_id: result.job_id.as_deref(),
                code,
                error,
                data,
            }
        })
        .collect();

    let mut text = serde_json::to_string_pretty(&Document { results })
        .unwrap_or_else(|error| format!("{{\"error\":\"failed to encode JSON: {error}\"}}"));
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[derive(Serialize)]
    struct Count {
        count: u32,
    }

    impl HiveData for Count {
        fn summary(&self) -> String {
            format!("{} things", self.count)
        }
    }

    fn hive(name: &str) -> HiveTarget {
        HiveTarget {
            name: name.to_owned(),
            address: format!("{name}:7835"),
            security: Default::default(),
        }
    }

    fn results() -> Vec<HiveResult<Count>> {
        vec![
            HiveResult {
                hive: hive("a"),
                job_id: Some("job-1".to_owned()),
                outcome: Ok(Count { count: 2 }),
            },
            HiveResult {
                hive: hive("b"),
                job_id: None,
                outcome: Err(CallError::Unreachable {
                    reason: "failed to connect: connection refused".to_owned(),
                }),
            },
            HiveResult {
                hive: hive("c"),
                job_id: Some("job-3".to_owned()),
                outcome: Err(CallError::Status {
                    code: tonic::Code::NotFound,
                    message: "no such worker".to_owned(),
                }),
            },
            HiveResult {
                hive: hive("d"),
                job_id: Some("job-4".to_owned()),
                outcome: Err(CallError::Timeout {
                    after: Duration::from_secs(2),
                }),
            },
        ]
    }

    #[test]
    fn exit_follows_outcomes() {
        let mut all = results();
        assert_eq!(Exit::from_results(&all), Exit::PartialFailure);
        all.remove(0);
        assert_eq!(Exit::from_results(&all), Exit::TotalFailure);
        assert_eq!(Exit::from_results(&all[..0]), Exit::Success);
    }

    #[test]
    fn json_has_one_entry_per_hive() {
        let document: serde_json::Value = serde_json::from_str(&json_document(&results())).unwrap();
        let entries = document["results"].as_array().unwrap();
        assert_eq!(entries.len(), 4);

        assert_eq!(entries[0]["outcome"], "ok");
        assert_eq!(entries[0]["data"]["count"], 2);
        assert_eq!(entries[0]["job_id"], "job-1");
        assert!(entries[0].get("error").is_none());

        assert_eq!(entries[1]["outcome"], "unreachable");
        assert!(entries[1].get("job_id").is_none());
        assert!(entries[1].get("code").is_none());

        assert_eq!(entries[2]["outcome"], "error");
        assert_eq!(entries[2]["code"], "NOT_FOUND");
        assert_eq!(entries[2]["error"], "no such worker");

        assert_eq!(entries[3]["outcome"], "timeout");
        assert_eq!(entries[3]["error"], "no answer within 2.0s");
    }

    #[test]
    fn result_table_has_a_row_per_hive() {
        let text = result_table(&results());
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 5);
        assert!(lines[1].contains("OK"));
        assert!(lines[1].contains("2 things"));
        assert!(lines[2].contains("UNREACHABLE"));
        assert!(lines[3].contains("NOT_FOUND"));
        assert!(lines[3].contains("job-3"));
        assert!(lines[4].contains("TIMEOUT"));
    }
}
