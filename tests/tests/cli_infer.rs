//! `rbee infer` against real hives that have no llama.cpp worker: the hive's error with one
//! hive, the per-hive report when several hives are targeted and none serves the model, and
//! input rejected before any request. Generating text needs a real llama.cpp server and is
//! tested in `llama_e2e.rs`.

mod cli_common;

use std::time::Duration;

use cli_common::{Rbee, closed_address, outcomes};
use rbee_tests::{HiveOptions, PidGuard, TestHive, test_worker_bin};

/// Time a hive gets to stop its workers and exit when a test ends.
const SHUTDOWN_LIMIT: Duration = Duration::from_secs(20);

/// A test hive that stops its workers when the test ends: SIGTERM with
/// `--stop-workers-on-shutdown`, since `TestHive` alone ends the hive with SIGKILL.
struct WorkerHive {
    hive: TestHive,
}

impl WorkerHive {
    fn start() -> Self {
        let hive = TestHive::start_with(HiveOptions {
            args: vec!["--stop-workers-on-shutdown".to_owned()],
        });
        hive.install(&test_worker_bin(), "llm-worker");
        Self { hive }
    }
}

impl Drop for WorkerHive {
    fn drop(&mut self) {
        if self.hive.terminate(SHUTDOWN_LIMIT).is_none() {
            eprintln!("hive still running after {SHUTDOWN_LIMIT:?}");
        }
    }
}

#[test]
fn one_hive_without_worker_fails_with_its_error() {
    let hive = TestHive::start();
    let rbee = Rbee::new();

    let run = rbee.run(&[
        "infer",
        "--model",
        "tiny.gguf",
        "Hello",
        "--hive",
        &hive.address(),
    ]);

    assert_eq!(run.code, Some(4), "{run:?}");
    assert!(run.stdout.is_empty(), "{}", run.stdout);
    assert!(run.stderr.contains("FAILED_PRECONDITION"), "{}", run.stderr);
    assert!(
        run.stderr.contains("no models are being served"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("(job job-"), "{}", run.stderr);
}

#[test]
fn worker_without_llama_api_is_not_chosen() {
    let hive = WorkerHive::start();
    let other = TestHive::start();
    let rbee = Rbee::new();
    let model_dir = tempfile::tempdir().expect("model dir");
    let model = model_dir.path().join("tiny.gguf");
    std::fs::write(&model, b"GGUF test model").expect("write the model file");
    let model = model.to_str().expect("temp path is UTF-8");

    // A ready worker for the model, but one that does not speak llama.cpp's API.
    let address = hive.hive.address();
    let run = rbee.run(&[
        "worker",
        "spawn",
        "llm-worker",
        "--model",
        model,
        "--device",
        "cpu",
        "--hive",
        &address,
        "-o",
        "json",
    ]);
    assert_eq!(run.code, Some(0), "{run:?}");
    let worker = &run.results()[0]["data"]["worker"];
    assert_eq!(worker["api"], "", "{worker}");
    let pid = worker["pid"].as_i64().expect("pid");
    let _worker_guard = PidGuard::new(i32::try_from(pid).expect("pid fits i32"));

    let closed = closed_address();
    let hives = format!("{address},{},{closed}", other.address());
    let run = rbee.run(&[
        "infer",
        "--model",
        "tiny.gguf",
        "Hello",
        "--hive",
        &hives,
        "-o",
        "json",
    ]);

    assert_eq!(run.code, Some(4), "{run:?}");
    let results = run.results();
    assert_eq!(outcomes(&results), ["error", "error", "unreachable"]);
    assert_eq!(results[0]["code"], "FAILED_PRECONDITION");
    assert_eq!(results[1]["code"], "FAILED_PRECONDITION");
    assert!(
        results[0]["job_id"]
            .as_str()
            .is_some_and(|id| id.starts_with("job-")),
        "{results:?}"
    );
    assert!(
        run.stderr
            .contains("no targeted hive has a ready llama.cpp worker for model \"tiny.gguf\""),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains(&closed), "{}", run.stderr);
    assert!(run.stderr.contains("UNREACHABLE"), "{}", run.stderr);

    // A worker id that no hive lists.
    let run = rbee.run(&[
        "infer",
        "--model",
        "tiny.gguf",
        "Hello",
        "--worker",
        "worker-0123456789ab",
        "--hive",
        &hives,
    ]);
    assert_eq!(run.code, Some(4), "{run:?}");
    assert!(
        run.stderr
            .contains("no targeted hive has worker worker-0123456789ab"),
        "{}",
        run.stderr
    );

    // By id, the hive itself rejects a worker that does not speak llama.cpp's API.
    let worker_id = worker["worker_id"].as_str().expect("worker id");
    let run = rbee.run(&[
        "infer", "--model", model, "Hello", "--worker", worker_id, "--hive", &address,
    ]);
    assert_eq!(run.code, Some(4), "{run:?}");
    assert!(run.stderr.contains("FAILED_PRECONDITION"), "{}", run.stderr);
    assert!(run.stderr.contains(worker_id), "{}", run.stderr);
}

#[test]
fn invalid_input_is_rejected_before_any_request() {
    let rbee = Rbee::new();
    // A request to this address would fail with exit status 4, not 2.
    let closed = closed_address();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--model", "m", ""], "the prompt is empty"),
        (vec!["--model", "", "Hello"], "the model is empty"),
        (vec!["Hello"], "--model"),
        (
            vec!["--model", "m", "Hello", "--temperature", "5.5"],
            "invalid temperature",
        ),
        (
            vec!["--model", "m", "Hello", "--temperature=-1"],
            "invalid temperature",
        ),
        (
            vec!["--model", "m", "Hello", "--top-p", "1.5"],
            "invalid top-p",
        ),
        (
            vec!["--model", "m", "Hello", "--max-tokens", "32769"],
            "32769",
        ),
        (vec!["--model", "m", "Hello", "--max-tokens", "0"], "0"),
        (
            vec!["--model", "m", "Hello", "--worker", "worker-xyz"],
            "invalid worker id",
        ),
    ];
    for (extra, expected) in cases {
        let mut args = vec!["infer"];
        args.extend_from_slice(&extra);
        args.extend_from_slice(&["--hive", &closed]);
        let run = rbee.run(&args);
        assert_eq!(run.code, Some(2), "rbee {args:?}: {run:?}");
        assert!(
            run.stderr.contains(expected),
            "rbee {args:?}: stderr {:?} lacks {expected:?}",
            run.stderr
        );
        assert!(run.stdout.is_empty(), "rbee {args:?}: {}", run.stdout);
    }
}
