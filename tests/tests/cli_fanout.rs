//! The `rbee` CLI against a fleet of real hives: two healthy ones, a closed port and a stopped
//! hive. Every targeted hive must get a result row, dead or stalled hives may cost at most the
//! timeout, and the exit status must follow the outcomes.

mod cli_common;

use std::{
    io::Read,
    time::{Duration, Instant},
};

use cli_common::{Rbee, StoppedHive, closed_address, outcomes};
use nix::{sys::signal, unistd::Pid};
use rbee_tests::{ChildGuard, TestHive, test_worker_bin, wait_with_timeout};

/// Allowance for process start-up and scheduling on a busy 2-core machine.
const MARGIN: Duration = Duration::from_secs(2);

/// Call timeout used against the stopped hive.
const TIMEOUT: Duration = Duration::from_secs(2);

/// A fleet of four: `a` (one worker binary), `b` (empty catalog), `closed`, `stopped`.
struct Fleet {
    rbee: Rbee,
    a: TestHive,
    _b: TestHive,
    _stopped: StoppedHive,
}

impl Fleet {
    fn new() -> Self {
        let a = TestHive::start();
        a.install(&test_worker_bin(), "llm-cpu");
        let b = TestHive::start();
        let stopped = StoppedHive::new(TestHive::start());

        let rbee = Rbee::new();
        rbee.write_hives(&[
            ("a", &a.address()),
            ("b", &b.address()),
            ("closed", &closed_address()),
            ("stopped", &stopped.address()),
        ]);
        Self {
            rbee,
            a,
            _b: b,
            _stopped: stopped,
        }
    }
}

#[test]
fn fleet_json_has_a_result_per_hive() {
    let fleet = Fleet::new();

    let run = fleet.rbee.run(&[
        "worker",
        "binary",
        "list",
        "--all",
        "--timeout",
        "2s",
        "--connect-timeout",
        "1s",
        "--output",
        "json",
    ]);

    assert_eq!(
        run.code,
        Some(3),
        "partial failure; stderr:\n{}",
        run.stderr
    );
    assert!(
        run.elapsed < TIMEOUT + MARGIN,
        "took {:?}, more than the timeout plus margin",
        run.elapsed
    );
    let results = run.results();
    assert_eq!(outcomes(&results), ["ok", "ok", "unreachable", "timeout"]);

    let names: Vec<&str> = results
        .iter()
        .map(|r| r["hive"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["a", "b", "closed", "stopped"]);

    assert_eq!(results[0]["address"], fleet.a.address());
    assert_eq!(results[0]["data"]["binaries"][0]["name"], "llm-cpu");
    assert_eq!(results[0]["data"]["binaries"][0]["layout"], "file");
    assert!(
        results[0]["data"]["binaries"][0]["size_bytes"]
            .as_u64()
            .unwrap()
            > 0
    );
    assert!(results[0]["job_id"].as_str().unwrap().starts_with("job-"));
    assert_eq!(results[1]["data"]["binaries"], serde_json::json!([]));

    assert!(results[2].get("data").is_none());
    assert!(
        results[2].get("job_id").is_none(),
        "no request reached the closed port"
    );
    assert!(
        results[2]["error"].as_str().unwrap().contains("refused"),
        "{}",
        results[2]["error"]
    );
    assert!(
        results[3]["error"]
            .as_str()
            .unwrap()
            .contains("no answer within")
    );
}

#[test]
fn fleet_table_has_a_row_per_hive() {
    let fleet = Fleet::new();

    let run = fleet.rbee.run(&[
        "worker",
        "binary",
        "list",
        "--hive",
        "a,b,closed,stopped",
        "--timeout",
        "2s",
    ]);

    assert_eq!(run.code, Some(3), "stderr:\n{}", run.stderr);
    assert!(run.elapsed < TIMEOUT + MARGIN, "took {:?}", run.elapsed);

    let lines: Vec<&str> = run.stdout.lines().collect();
    assert!(
        lines[0].starts_with("HIVE"),
        "binaries table has a HIVE column:\n{}",
        run.stdout
    );
    assert!(
        lines[1].starts_with("a ") && lines[1].contains("llm-cpu"),
        "{}",
        lines[1]
    );

    let row = |hive: &str| {
        lines
            .iter()
            .find(|line| line.starts_with(&format!("{hive} ")) && line.contains("127.0.0.1:"))
            .unwrap_or_else(|| panic!("no result row for {hive}:\n{}", run.stdout))
            .to_string()
    };
    assert!(row("a").contains(" OK "), "{}", row("a"));
    assert!(row("b").contains("0 worker binaries"), "{}", row("b"));
    assert!(row("closed").contains("UNREACHABLE"), "{}", row("closed"));
    assert!(row("stopped").contains("TIMEOUT"), "{}", row("stopped"));

    assert!(run.stderr.contains("2 of 4 hives failed"), "{}", run.stderr);
}

#[test]
fn all_hives_failing_is_total_failure() {
    let fleet = Fleet::new();

    let run = fleet.rbee.run(&[
        "hive",
        "info",
        "--hive",
        "closed,stopped",
        "--timeout",
        "1s",
        "-o",
        "json",
    ]);

    assert_eq!(run.code, Some(4), "stderr:\n{}", run.stderr);
    assert_eq!(outcomes(&run.results()), ["unreachable", "timeout"]);
}

#[test]
fn single_hive_success_has_no_hive_column() {
    let fleet = Fleet::new();

    let run = fleet.rbee.run(&["worker", "binary", "list", "--hive", "a"]);

    assert_eq!(run.code, Some(0), "stderr:\n{}", run.stderr);
    assert!(run.stdout.starts_with("NAME "), "{}", run.stdout);
    assert!(run.stdout.contains("llm-cpu"));
    assert!(!run.stdout.contains("HIVE"));
}

#[test]
fn address_targets_need_no_hives_file() {
    let hive = TestHive::start();
    let rbee = Rbee::new();

    let run = rbee.run(&["hive", "info", "--hive", &hive.address(), "-o", "json"]);

    assert_eq!(run.code, Some(0), "stderr:\n{}", run.stderr);
    let results = run.results();
    assert_eq!(results[0]["hive"], hive.address());
    assert_eq!(results[0]["data"]["name"], "test-hive");
    assert_eq!(results[0]["data"]["devices"][0]["id"], "cpu");
}

#[test]
fn grpc_errors_keep_code_and_job_id() {
    let fleet = Fleet::new();

    let run = fleet.rbee.run(&[
        "worker", "binary", "get", "missing", "--hive", "a", "-o", "json",
    ]);

    assert_eq!(run.code, Some(4), "stderr:\n{}", run.stderr);
    let results = run.results();
    assert_eq!(results[0]["outcome"], "error");
    assert_eq!(results[0]["code"], "NOT_FOUND");
    assert!(results[0]["job_id"].as_str().unwrap().starts_with("job-"));
    assert!(run.stderr.contains("NOT_FOUND"), "{}", run.stderr);
}

#[test]
fn invalid_input_exits_2_before_any_request() {
    let rbee = Rbee::new();
    // Nothing listens here: reaching out would turn into an UNREACHABLE row and exit 4.
    let closed = closed_address();

    let cases: &[&[&str]] = &[
        &["worker", "process", "get", "0"],
        &["worker", "process", "delete", "-5"],
        &["worker", "binary", "get", "../etc"],
        &["worker", "binary", "delete", ".hidden"],
        &["worker", "process", "list", "--worker", "a/b"],
        &["worker", "binary", "list", "--hive", "no-such-hive"],
        &["worker", "binary", "list", "--hive", "host:99999"],
        &[
            "worker",
            "process",
            "delete",
            "42",
            "--grace",
            "30",
            "--timeout",
            "10s",
        ],
        &["worker", "process", "delete", "42", "--grace", "2h"],
        &["worker", "binary", "list", "--timeout", "0"],
        &["job", "follow", "not a job id"],
    ];
    for args in cases {
        let mut args = args.to_vec();
        if !args.contains(&"--hive") {
            args.extend(["--hive", &closed]);
        }
        let run = rbee.run(&args);
        assert_eq!(run.code, Some(2), "rbee {args:?}; stderr:\n{}", run.stderr);
        assert!(run.stdout.is_empty(), "rbee {args:?} printed results");
        assert!(
            run.stderr.contains("error"),
            "rbee {args:?}: {}",
            run.stderr
        );
    }
}

#[test]
fn worker_process_delete_reports_how_it_ended() {
    let fleet = Fleet::new();
    let mut worker = fleet.a.start_worker("llm-cpu", &["--exit-code", "3"]);
    let pid = worker.pid().to_string();

    let run = fleet.rbee.run(&[
        "worker", "process", "delete", &pid, "--hive", "a", "--grace", "5", "-o", "json",
    ]);

    assert_eq!(run.code, Some(0), "stderr:\n{}", run.stderr);
    let stopped = &run.results()[0]["data"]["stopped"];
    assert_eq!(stopped["pid"].as_i64(), Some(i64::from(worker.pid())));
    assert_eq!(stopped["worker_name"], "llm-cpu");
    assert_eq!(stopped["method"], "terminated");
    assert_eq!(stopped["exit_code"], 3);
    assert!(stopped["elapsed"].as_str().unwrap().ends_with('s'));
    assert!(wait_with_timeout(worker.process().child_mut(), MARGIN).is_some());

    // Live narration went to stderr while the command waited.
    assert!(
        run.stderr.contains("SIGTERM"),
        "narration missing:\n{}",
        run.stderr
    );
}

#[test]
fn quiet_hides_narration() {
    let fleet = Fleet::new();

    let run = fleet
        .rbee
        .run(&["worker", "binary", "list", "--hive", "a,b", "--quiet"]);

    assert_eq!(run.code, Some(0), "stderr:\n{}", run.stderr);
    assert_eq!(run.stderr, "");
}

#[test]
fn narration_lines_name_the_hive_when_several() {
    let fleet = Fleet::new();

    // Hive a has the binary and deletes it; hive b has none and fails.
    let run = fleet
        .rbee
        .run(&["worker", "binary", "delete", "llm-cpu", "--hive", "a,b"]);

    assert_eq!(run.code, Some(3), "stderr:\n{}", run.stderr);
    assert!(
        run.stderr.lines().any(|l| l.starts_with("[a] ")),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.lines().any(|l| l.starts_with("[b] ")),
        "{}",
        run.stderr
    );
}

#[test]
fn reads_show_no_narration() {
    let fleet = Fleet::new();

    let run = fleet
        .rbee
        .run(&["worker", "binary", "list", "--hive", "a,b"]);

    assert_eq!(run.code, Some(0), "stderr:\n{}", run.stderr);
    assert_eq!(run.stderr, "");
    assert!(run.stdout.contains("llm-cpu"), "{}", run.stdout);
}

#[test]
fn job_follow_replays_a_finished_job() {
    let fleet = Fleet::new();
    let listed = fleet.rbee.run(&[
        "worker", "binary", "list", "--hive", "a", "-o", "json", "-q",
    ]);
    let job_id = listed.results()[0]["job_id"].as_str().unwrap().to_owned();

    let run = fleet.rbee.run(&["job", "follow", &job_id, "--hive", "a"]);

    assert_eq!(run.code, Some(0), "stderr:\n{}", run.stderr);
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert!(lines.len() >= 2, "{}", run.stdout);
    assert!(
        lines.last().unwrap().contains("job finished"),
        "{}",
        run.stdout
    );

    let json = fleet
        .rbee
        .run(&["job", "follow", &job_id, "--hive", "a", "-o", "json"]);
    let events = json.results()[0]["data"]["events"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(events[0]["seq"], 0);
    assert_eq!(events.last().unwrap()["outcome"]["code"], 0);
}

#[test]
fn job_follow_of_unknown_job_fails() {
    let fleet = Fleet::new();

    let run = fleet
        .rbee
        .run(&["job", "follow", "job-unknown", "--hive", "a"]);

    assert_eq!(run.code, Some(4), "stderr:\n{}", run.stderr);
    assert!(run.stderr.contains("NOT_FOUND"), "{}", run.stderr);
}

#[test]
fn ctrl_c_cancels_and_exits_130() {
    let fleet = Fleet::new();
    let mut rbee = ChildGuard::new(fleet.rbee.spawn(&[
        "worker",
        "binary",
        "list",
        "--hive",
        "stopped",
        "--timeout",
        "60s",
    ]));
    std::thread::sleep(Duration::from_millis(500));

    let interrupted = Instant::now();
    signal::kill(Pid::from_raw(rbee.pid()), signal::Signal::SIGINT).expect("SIGINT rbee");
    let status = wait_with_timeout(rbee.child_mut(), MARGIN).expect("rbee exits after Ctrl-C");

    assert!(interrupted.elapsed() < Duration::from_secs(1));
    assert_eq!(status.code(), Some(130));
    let mut stderr = String::new();
    let _ = rbee
        .child_mut()
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr);
    assert!(stderr.contains("interrupted"), "{stderr}");
}

#[test]
fn closed_stdout_is_a_clean_exit() {
    let fleet = Fleet::new();
    let mut child = fleet.rbee.spawn(&["hive", "info", "--hive", "a,b"]);
    // The reader goes away before any result is written, as with `rbee ... | head -1`.
    drop(child.stdout.take());
    let mut rbee = ChildGuard::new(child);

    let status = wait_with_timeout(rbee.child_mut(), Duration::from_secs(10)).expect("rbee exits");
    let mut stderr = String::new();
    let _ = rbee
        .child_mut()
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr);

    assert_eq!(status.code(), Some(0), "stderr:\n{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!stderr.contains("Broken pipe"), "{stderr}");
}

#[test]
fn localhost_unreachable_suggests_hive_start() {
    let rbee = Rbee::new();
    // An explicit `localhost` entry keeps the test off port 7835, which a real hive may use.
    rbee.write_hives(&[("localhost", &closed_address())]);

    let run = rbee.run(&["worker", "binary", "list"]);

    assert_eq!(run.code, Some(4), "stderr:\n{}", run.stderr);
    assert!(run.stderr.contains("UNREACHABLE"), "{}", run.stderr);
    assert!(run.stderr.contains("rbee hive start"), "{}", run.stderr);
}

#[test]
fn hive_list_probes_every_configured_hive() {
    let fleet = Fleet::new();

    let run = fleet
        .rbee
        .run(&["hive", "list", "--connect-timeout", "1s", "-o", "json"]);

    assert_eq!(run.code, Some(3), "stderr:\n{}", run.stderr);
    assert!(
        run.elapsed < Duration::from_secs(1) + MARGIN,
        "took {:?}",
        run.elapsed
    );
    let results = run.results();
    assert_eq!(outcomes(&results), ["ok", "ok", "unreachable", "timeout"]);
    assert_eq!(results[0]["data"]["health"], "serving");
}

#[test]
fn binary_delete_needs_force_while_running() {
    let fleet = Fleet::new();
    let mut worker = fleet.a.start_worker("llm-cpu", &[]);

    let refused = fleet.rbee.run(&[
        "worker", "binary", "delete", "llm-cpu", "--hive", "a", "-o", "json",
    ]);
    assert_eq!(refused.code, Some(4), "stderr:\n{}", refused.stderr);
    assert_eq!(refused.results()[0]["code"], "FAILED_PRECONDITION");
    assert!(worker.is_running());

    let forced = fleet.rbee.run(&[
        "worker", "binary", "delete", "llm-cpu", "--force", "--hive", "a", "-o", "json",
    ]);
    assert_eq!(forced.code, Some(0), "stderr:\n{}", forced.stderr);
    let data = &forced.results()[0]["data"];
    assert_eq!(data["binary"]["name"], "llm-cpu");
    assert_eq!(
        data["stopped"][0]["pid"].as_i64(),
        Some(i64::from(worker.pid()))
    );
    assert!(wait_with_timeout(worker.process().child_mut(), MARGIN).is_some());
    assert!(!fleet.a.catalog_dir().join("llm-cpu").exists());
}
