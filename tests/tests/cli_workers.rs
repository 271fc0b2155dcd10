//! `rbee worker spawn` and `rbee worker active` against real hives that start real `test-worker`
//! processes: the ready worker in table and JSON output, the listings that show it, retiring
//! it, the hive's errors, and input rejected before any request.

mod cli_common;

use std::{
    fs,
    net::TcpStream,
    path::{Path, PathBuf},
    time::Duration,
};

use cli_common::{Rbee, closed_address, outcomes};
use nix::{sys::signal, unistd::Pid};
use rbee_tests::{HiveOptions, TestHive, test_worker_bin};
use serde_json::Value;
use tempfile::TempDir;

/// Catalog name the test worker is installed under.
const BINARY: &str = "llm-worker";

/// Time a hive gets to retire its workers and exit when a test ends.
const SHUTDOWN_LIMIT: Duration = Duration::from_secs(20);

/// A test hive that stops every worker it spawned when the test ends, pass or fail.
///
/// A hive keeps its workers running when it exits unless it was started with
/// `--stop-workers-on-shutdown`, and `TestHive` ends the hive with SIGKILL, which skips that
/// step. So drop first sends SIGTERM and waits for the hive to retire its workers, then kills
/// any process still running a binary of this hive's temp catalog.
struct WorkerHive {
    hive: TestHive,
}

impl WorkerHive {
    fn start() -> Self {
        let hive = TestHive::start_with(HiveOptions {
            args: vec!["--stop-workers-on-shutdown".to_owned()],
        });
        hive.install(&test_worker_bin(), BINARY);
        Self { hive }
    }

    fn address(&self) -> String {
        self.hive.address()
    }
}

impl Drop for WorkerHive {
    fn drop(&mut self) {
        if self.hive.terminate(SHUTDOWN_LIMIT).is_none() {
            eprintln!(
                "hive still running after {SHUTDOWN_LIMIT:?}; log:\n{}",
                self.hive.log()
            );
        }
        for pid in processes_running_from(&self.hive.catalog_dir()) {
            eprintln!("killing worker process {pid}, left running by the hive");
            let _ = signal::kill(Pid::from_raw(pid), signal::Signal::SIGKILL);
        }
    }
}

/// Returns the pids of the processes whose executable lies inside `dir`. The catalog is a
/// fresh temp dir, so only workers of the test's own hive match.
fn processes_running_from(dir: &Path) -> Vec<i32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|exe| exe.starts_with(dir))
        })
        .collect()
}

/// `rbee` with a private home, and a model file in its own temp dir.
struct Fixture {
    rbee: Rbee,
    model: PathBuf,
    _model_dir: TempDir,
}

impl Fixture {
    fn new() -> Self {
        let model_dir = tempfile::tempdir().expect("model dir");
        let model = model_dir.path().join("tiny.gguf");
        fs::write(&model, b"GGUF test model").expect("write the model file");
        Self {
            rbee: Rbee::new(),
            model,
            _model_dir: model_dir,
        }
    }

    fn model(&self) -> &str {
        self.model.to_str().expect("temp path is UTF-8")
    }

    /// Runs `rbee worker spawn BINARY --model MODEL --device cpu` on `hives`, with `extra`.
    fn spawn(&self, hives: &str, extra: &[&str]) -> cli_common::Run {
        let mut args = vec![
            "worker",
            "spawn",
            BINARY,
            "--model",
            self.model(),
            "--device",
            "cpu",
            "--ready-timeout",
            "20s",
            "--hive",
            hives,
        ];
        args.extend_from_slice(extra);
        self.rbee.run(&args)
    }
}

fn accepts_connections(port: u64) -> bool {
    let port = u16::try_from(port).expect("port fits u16");
    TcpStream::connect(("127.0.0.1", port)).is_ok()
}

/// Returns whether `pid` is a live process: it exists and is not a zombie.
fn process_exists(pid: i64) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next());
    !matches!(state, Some("Z") | Some("X") | None)
}

/// Polls `condition` every 50ms for at most 5s; returns whether it became true.
fn eventually(mut condition: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while std::time::Instant::now() < deadline {
        if condition() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    condition()
}

/// Returns whether `id` is `worker-` followed by hex digits.
fn is_worker_id(id: &str) -> bool {
    id.strip_prefix("worker-")
        .is_some_and(|hex| !hex.is_empty() && hex.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Checks that the only result succeeded and returns its `data`.
fn only_data(run: &cli_common::Run) -> Value {
    let results = run.results();
    assert_eq!(outcomes(&results), ["ok"], "stderr:\n{}", run.stderr);
    results[0]["data"].clone()
}

#[test]
fn spawn_list_and_retire_round_trip() {
    let hive = WorkerHive::start();
    let fixture = Fixture::new();
    let address = hive.address();

    // Spawn: the ready worker, with a pid and a port that accepts connections.
    let run = fixture.spawn(&address, &["-o", "json"]);
    assert_eq!(run.code, Some(0), "stderr:\n{}", run.stderr);
    let worker = only_data(&run)["worker"].clone();
    let id = worker["worker_id"].as_str().expect("worker_id").to_owned();
    let pid = worker["pid"].as_i64().expect("pid");
    let port = worker["port"].as_u64().expect("port");
    assert!(is_worker_id(&id), "{id}");
    assert!(pid > 0);
    assert!(process_exists(pid), "worker process {pid} runs");
    assert!(accepts_connections(port), "port {port} accepts connections");
    assert_eq!(worker["binary"], BINARY);
    assert_eq!(worker["model"], fixture.model());
    assert_eq!(worker["device"], "cpu");
    assert_eq!(worker["state"], "ready");
    assert_eq!(worker["heartbeat_source"], "readiness_check");
    assert_eq!(worker["lost_reason"], "");
    assert!(worker["started_at"].is_string(), "{worker}");
    assert!(worker["last_heartbeat"].is_string(), "{worker}");
    let log_path = worker["log_path"].as_str().expect("log_path");
    assert!(Path::new(log_path).is_file(), "log file {log_path} exists");
    let argv: Vec<&str> = worker["argv"]
        .as_array()
        .expect("argv")
        .iter()
        .map(|arg| arg.as_str().expect("argument is a string"))
        .collect();
    let port_arg = port.to_string();
    assert_eq!(
        argv[1..],
        [
            "--model",
            fixture.model(),
            "--device",
            "cpu",
            "--port",
            &port_arg
        ]
    );

    // The hive's narration and the worker's log lines appear on stderr.
    assert!(
        run.stderr.contains(&format!("starting worker {id}")),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains(&format!("  | listening on {port}")),
        "worker log line is shown:\n{}",
        run.stderr
    );
    assert!(
        run.stderr
            .contains(&format!("worker {id} is ready on port {port}")),
        "{}",
        run.stderr
    );

    // `worker active list`: JSON with exact values, and a table without a HIVE column.
    let run = fixture
        .rbee
        .run(&["worker", "active", "list", "--hive", &address, "-o", "json"]);
    assert_eq!(run.code, Some(0), "stderr:\n{}", run.stderr);
    let workers = only_data(&run)["workers"].clone();
    assert_eq!(workers.as_array().map(Vec::len), Some(1), "{workers}");
    assert_eq!(workers[0]["worker_id"], id.as_str());
    assert_eq!(workers[0]["state"], "ready");
    assert_eq!(workers[0]["pid"], pid);
    assert_eq!(workers[0]["port"], port);

    let run = fixture
        .rbee
        .run(&["worker", "active", "list", "--hive", &address]);
    assert_eq!(run.code, Some(0), "stderr:\n{}", run.stderr);
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "header and one row:\n{}", run.stdout);
    // Columns are separated by at least three blanks; LAST HEARTBEAT contains one.
    let headers: Vec<&str> = lines[0]
        .split("  ")
        .map(str::trim)
        .filter(|header| !header.is_empty())
        .collect();
    assert_eq!(
        headers,
        [
            "ID",
            "BINARY",
            "MODEL",
            "DEVICE",
            "PID",
            "PORT",
            "STATE",
            "LAST HEARTBEAT"
        ]
    );
    let row: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(row[0], id);
    assert_eq!(row[1], BINARY);
    assert_eq!(row[2], fixture.model());
    assert_eq!(row[3], "cpu");
    assert_eq!(row[4], pid.to_string());
    assert_eq!(row[5], port.to_string());
    assert_eq!(row[6], "ready");
    assert!(
        row[7].ends_with('s'),
        "heartbeat age in seconds: {}",
        lines[1]
    );
    assert_eq!(row[8], "ago");

    // `worker active get`: the details of the one worker.
    let run = fixture
        .rbee
        .run(&["worker", "active", "get", &id, "--hive", &address]);
    assert_eq!(run.code, Some(0), "stderr:\n{}", run.stderr);
    assert!(
        run.stdout.contains(&format!("Worker ID:       {id}")),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains(&format!("Log:             {log_path}")));

    // `worker process list` and `get`: the process carries its worker id, model and port.
    let run = fixture.rbee.run(&[
        "worker", "process", "list", "--hive", &address, "-o", "json",
    ]);
    assert_eq!(run.code, Some(0), "stderr:\n{}", run.stderr);
    let processes = only_data(&run)["processes"].clone();
    let process = processes
        .as_array()
        .expect("processes")
        .iter()
        .find(|process| process["pid"] == pid)
        .unwrap_or_else(|| panic!("no process {pid} in {processes}"))
        .clone();
    assert_eq!(process["worker_id"], id.as_str());
    assert_eq!(process["worker_name"], BINARY);
    assert_eq!(process["model"], fixture.model());
    assert_eq!(process["device"], "cpu");
    assert_eq!(process["port"], port);

    let run = fixture
        .rbee
        .run(&["worker", "process", "list", "--hive", &address]);
    assert_eq!(run.code, Some(0), "stderr:\n{}", run.stderr);
    assert!(
        run.stdout
            .lines()
            .next()
            .unwrap_or("")
            .contains("WORKER ID"),
        "{}",
        run.stdout
    );
    let row = run
        .stdout
        .lines()
        .find(|line| line.starts_with(&format!("{pid} ")))
        .unwrap_or_else(|| panic!("no row for pid {pid}:\n{}", run.stdout));
    assert!(row.contains(&id), "{row}");

    let pid_arg = pid.to_string();
    let run = fixture
        .rbee
        .run(&["worker", "process", "get", &pid_arg, "--hive", &address]);
    assert_eq!(run.code, Some(0), "stderr:\n{}", run.stderr);
    assert!(run.stdout.contains(&id), "{}", run.stdout);
    assert!(
        run.stdout.contains(&format!("Assigned port:  {port}")),
        "{}",
        run.stdout
    );

    // `worker active retire`: the process is gone and the port is closed.
    let run = fixture.rbee.run(&[
        "worker", "active", "retire", &id, "--grace", "5s", "--hive", &address, "-o", "json",
    ]);
    assert_eq!(run.code, Some(0), "stderr:\n{}", run.stderr);
    let data = only_data(&run);
    assert_eq!(data["worker"]["worker_id"], id.as_str());
    assert_eq!(data["stopped"]["pid"], pid);
    assert_eq!(data["stopped"]["method"], "terminated");
    assert!(
        eventually(|| !process_exists(pid)),
        "worker process {pid} still runs"
    );
    assert!(
        !accepts_connections(port),
        "port {port} still accepts connections"
    );

    let run = fixture
        .rbee
        .run(&["worker", "active", "list", "--hive", &address]);
    assert_eq!(run.code, Some(0), "stderr:\n{}", run.stderr);
    assert_eq!(run.stdout, "no active workers\n");

    // Retiring it again: the hive no longer has the worker.
    let run = fixture.rbee.run(&[
        "worker", "active", "retire", &id, "--hive", &address, "-o", "json",
    ]);
    assert_eq!(run.code, Some(4), "stderr:\n{}", run.stderr);
    let results = run.results();
    assert_eq!(results[0]["code"], "NOT_FOUND");
    assert!(
        results[0]["error"].as_str().unwrap_or("").contains(&id),
        "{}",
        results[0]
    );
}

#[test]
fn spawn_table_shows_the_ready_worker() {
    let hive = WorkerHive::start();
    let fixture = Fixture::new();
    let address = hive.address();

    let run = fixture.spawn(
        &address,
        &[
            "--arg",
            "--exit-code",
            "--arg",
            "7",
            "--env",
            "HF_HOME=/tmp",
        ],
    );

    assert_eq!(run.code, Some(0), "stderr:\n{}", run.stderr);
    for key in ["Worker ID:", "PID:", "Port:", "State:", "Log:", "Command:"] {
        assert!(
            run.stdout.lines().any(|line| line.starts_with(key)),
            "no {key} line:\n{}",
            run.stdout
        );
    }
    assert!(
        run.stdout.contains("--exit-code 7"),
        "extra arguments end the command line:\n{}",
        run.stdout
    );
    assert!(!run.stdout.contains("HIVE"), "{}", run.stdout);
}

#[test]
fn spawn_on_two_hives_starts_two_workers() {
    let a = WorkerHive::start();
    let b = WorkerHive::start();
    let fixture = Fixture::new();
    fixture
        .rbee
        .write_hives(&[("a", &a.address()), ("b", &b.address())]);

    let run = fixture.spawn("a,b", &["-o", "json"]);

    assert_eq!(run.code, Some(0), "stderr:\n{}", run.stderr);
    let results = run.results();
    assert_eq!(outcomes(&results), ["ok", "ok"]);
    let ids: Vec<&str> = results
        .iter()
        .map(|result| result["data"]["worker"]["worker_id"].as_str().unwrap_or(""))
        .collect();
    assert_ne!(ids[0], ids[1], "each hive runs its own worker");
    for result in &results {
        let port = result["data"]["worker"]["port"].as_u64().expect("port");
        assert!(
            accepts_connections(port),
            "port {port} of {}",
            result["hive"]
        );
    }
    assert!(
        run.stderr.contains("[a] "),
        "narration is prefixed with the hive:\n{}",
        run.stderr
    );
    assert!(run.stderr.contains("[b] "), "{}", run.stderr);

    let run = fixture.rbee.run(&["worker", "active", "list", "--all"]);
    assert_eq!(run.code, Some(0), "stderr:\n{}", run.stderr);
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert!(lines[0].starts_with("HIVE "), "{}", run.stdout);
    assert!(lines[1].starts_with("a "), "{}", run.stdout);
    assert!(lines[1].contains(ids[0]), "{}", run.stdout);
    assert!(lines[2].starts_with("b "), "{}", run.stdout);
    assert!(lines[2].contains(ids[1]), "{}", run.stdout);
}

#[test]
fn spawn_on_unknown_device_is_invalid_argument() {
    let hive = WorkerHive::start();
    let fixture = Fixture::new();
    let address = hive.address();

    let run = fixture.rbee.run(&[
        "worker",
        "spawn",
        BINARY,
        "--model",
        fixture.model(),
        "--device",
        "cuda:97",
        "--hive",
        &address,
    ]);

    assert_eq!(run.code, Some(4), "stderr:\n{}", run.stderr);
    assert!(run.stdout.is_empty(), "{}", run.stdout);
    assert!(
        run.stderr
            .contains("INVALID_ARGUMENT: device \"cuda:97\" is not available on this hive"),
        "the hive's message is shown:\n{}",
        run.stderr
    );

    let run = fixture
        .rbee
        .run(&["worker", "active", "list", "--hive", &address]);
    assert_eq!(run.stdout, "no active workers\n", "nothing was spawned");
}

#[test]
fn spawn_of_unknown_binary_is_not_found() {
    let hive = WorkerHive::start();
    let fixture = Fixture::new();

    let run = fixture.rbee.run(&[
        "worker",
        "spawn",
        "no-such-worker",
        "--model",
        fixture.model(),
        "--device",
        "cpu",
        "--hive",
        &hive.address(),
        "-o",
        "json",
    ]);

    assert_eq!(run.code, Some(4), "stderr:\n{}", run.stderr);
    let results = run.results();
    assert_eq!(outcomes(&results), ["error"]);
    assert_eq!(results[0]["code"], "NOT_FOUND");
    let error = results[0]["error"].as_str().unwrap_or("");
    assert!(error.contains("\"no-such-worker\" not found"), "{error}");
}

#[test]
fn worker_that_exits_at_start_is_aborted() {
    let hive = WorkerHive::start();
    let fixture = Fixture::new();

    let run = fixture.spawn(&hive.address(), &["--arg", "--crash-at-start"]);

    assert_eq!(run.code, Some(4), "stderr:\n{}", run.stderr);
    assert!(run.stderr.contains("ABORTED: worker"), "{}", run.stderr);
    assert!(
        run.stderr.contains("  | fatal: cannot load model"),
        "the worker's log line is narrated:\n{}",
        run.stderr
    );
    assert!(
        processes_running_from(&hive.hive.catalog_dir()).is_empty(),
        "nothing is left running"
    );
}

#[test]
fn worker_never_ready_keeps_the_hives_error() {
    let hive = WorkerHive::start();
    let fixture = Fixture::new();

    let run = fixture.rbee.run(&[
        "worker",
        "spawn",
        BINARY,
        "--model",
        fixture.model(),
        "--device",
        "cpu",
        "--arg",
        "--no-listen",
        "--ready-timeout",
        "1s",
        "--hive",
        &hive.address(),
        "-o",
        "json",
    ]);

    assert_eq!(run.code, Some(4), "stderr:\n{}", run.stderr);
    let results = run.results();
    // The hive's own DEADLINE_EXCEEDED, well before the call's timeout, is not a TIMEOUT.
    assert_eq!(outcomes(&results), ["error"]);
    assert_eq!(results[0]["code"], "DEADLINE_EXCEEDED");
    let error = results[0]["error"].as_str().unwrap_or("");
    assert!(error.contains("did not become ready within 1s"), "{error}");
    assert!(
        eventually(|| processes_running_from(&hive.hive.catalog_dir()).is_empty()),
        "the worker was stopped"
    );
}

#[test]
fn invalid_input_is_rejected_before_any_request() {
    let rbee = Rbee::new();
    // A request to this address would fail with exit status 4, not 2.
    let closed = closed_address();
    let spawn = |extra: &[&'static str]| {
        let mut args = vec!["worker", "spawn"];
        args.extend_from_slice(extra);
        args
    };

    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            spawn(&["", "--model", "m", "--device", "cpu"]),
            "invalid worker name",
        ),
        (
            spawn(&[BINARY, "--model", "", "--device", "cpu"]),
            "the model is empty",
        ),
        (
            spawn(&[BINARY, "--model", "m", "--device", "gpu0"]),
            "invalid device \"gpu0\"",
        ),
        (
            spawn(&[BINARY, "--model", "m", "--device", "cuda:"]),
            "invalid device \"cuda:\"",
        ),
        (
            spawn(&[BINARY, "--model", "m", "--device", "cpu", "--port", "65536"]),
            "65536",
        ),
        (
            spawn(&[
                BINARY, "--model", "m", "--device", "cpu", "--env", "HF_HOME",
            ]),
            "use NAME=VALUE",
        ),
        (
            spawn(&[
                BINARY, "--model", "m", "--device", "cpu", "--env", "A=1", "--env", "A=2",
            ]),
            "given twice",
        ),
        (
            spawn(&[
                BINARY,
                "--model",
                "m",
                "--device",
                "cpu",
                "--ready-timeout",
                "20s",
                "--timeout",
                "20s",
            ]),
            "must be longer than the ready timeout",
        ),
        (
            vec!["worker", "active", "get", "worker-xyz"],
            "invalid worker id",
        ),
        (
            vec!["worker", "active", "retire", "0123456789ab"],
            "invalid worker id",
        ),
        (
            vec![
                "worker",
                "active",
                "retire",
                "worker-0123",
                "--grace",
                "10s",
                "--timeout",
                "5s",
            ],
            "must be longer than the grace period",
        ),
    ];

    for (mut args, expected) in cases {
        args.extend(["--hive", &closed]);
        let run = rbee.run(&args);
        assert_eq!(run.code, Some(2), "rbee {args:?}; stderr:\n{}", run.stderr);
        assert!(
            run.stderr.contains(expected),
            "rbee {args:?}: stderr lacks {expected:?}:\n{}",
            run.stderr
        );
        assert!(run.stdout.is_empty(), "rbee {args:?}: {}", run.stdout);
    }
}
