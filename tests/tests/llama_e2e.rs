//! End-to-end tests with a real llama.cpp `llama-server` on the CPU and a tiny random-weight
//! GGUF model, driven through the real `rbee` binary against a real hive. They import the
//! server into the catalog, download the model over HTTP, spawn the worker with the hive's
//! llama-server preset, generate text with `rbee infer` and stop the worker. A corrupt model
//! must fail the spawn with llama.cpp's own error.
//!
//! They need the server binary and the model, which take minutes to build, so they are ignored
//! by default. `scripts/e2e-llama` builds both (cached), sets `RBEE_LLAMA_SERVER` and
//! `RBEE_TINY_MODEL`, and runs them.

mod cli_common;

use std::{
    fs,
    io::Read,
    net::TcpStream,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use cli_common::{Rbee, outcomes};
use nix::{sys::signal, unistd::Pid};
use rbee_tests::{
    ChildGuard, HiveOptions, PidGuard, TestHive,
    http::{Fault, FileServer},
    wait_with_timeout,
};
use serde_json::Value;

/// Catalog name of the llama.cpp server, which makes the hive apply its llama-server preset.
const SERVER_NAME: &str = "llama-server";

/// Model catalog name of the tiny model.
const MODEL_NAME: &str = "tiny.gguf";

/// Time a hive gets to stop its workers and exit when a test ends.
const SHUTDOWN_LIMIT: Duration = Duration::from_secs(20);

/// Readiness timeout of the spawns, with a wide margin over the time the tiny model takes to
/// load, for a loaded machine.
const READY_TIMEOUT: &str = "25s";

/// Returns the path in environment variable `name`, which must name an existing file.
fn fixture_path(name: &str) -> PathBuf {
    let value = std::env::var_os(name).unwrap_or_else(|| {
        panic!(
            "{name} is not set; run these tests with scripts/e2e-llama, which builds the \
             llama-server fixture and sets RBEE_LLAMA_SERVER and RBEE_TINY_MODEL"
        )
    });
    let path = PathBuf::from(value);
    assert!(
        path.is_file(),
        "{name}={} is not an existing file",
        path.display()
    );
    path
}

/// A test hive whose workers are stopped when the test ends, pass or fail.
///
/// `TestHive` ends the hive with SIGKILL, which skips `--stop-workers-on-shutdown`. So drop
/// first sends SIGTERM and waits for the hive to stop its workers, then kills any process still
/// running a binary of this hive's temp catalog.
struct LlamaHive {
    hive: TestHive,
}

impl LlamaHive {
    fn start() -> Self {
        Self {
            hive: TestHive::start_with(HiveOptions {
                args: vec!["--stop-workers-on-shutdown".to_owned()],
            }),
        }
    }

    fn address(&self) -> String {
        self.hive.address()
    }
}

impl Drop for LlamaHive {
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

/// A process stopped with SIGSTOP, continued with SIGCONT on drop, so a failing test does not
/// leave it stopped.
struct StoppedProcess {
    pid: Pid,
}

impl StoppedProcess {
    fn new(pid: i64) -> Self {
        let pid = Pid::from_raw(i32::try_from(pid).expect("pid fits i32"));
        signal::kill(pid, signal::Signal::SIGSTOP).expect("SIGSTOP the worker");
        Self { pid }
    }
}

impl Drop for StoppedProcess {
    fn drop(&mut self) {
        let _ = signal::kill(self.pid, signal::Signal::SIGCONT);
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

/// Returns the SHA-256 of `path` in lowercase hex, computed with `sha256sum`.
fn sha256_of(path: &Path) -> String {
    let output = Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("run sha256sum");
    assert!(
        output.status.success(),
        "sha256sum {} failed",
        path.display()
    );
    let text = String::from_utf8(output.stdout).expect("sha256sum output is UTF-8");
    text.split_whitespace()
        .next()
        .expect("sha256sum printed a digest")
        .to_owned()
}

/// Returns `len` pseudo-random bytes from a fixed xorshift seed: not a GGUF file.
fn random_bytes(len: usize) -> Vec<u8> {
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state.to_le_bytes()[0]
        })
        .collect()
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

/// Polls `condition` every 50ms for at most 10s and returns whether it became true.
fn eventually(mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if condition() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    condition()
}

/// Checks that the only result succeeded and returns its `data`.
fn only_data(run: &cli_common::Run) -> Value {
    let results = run.results();
    assert_eq!(outcomes(&results), ["ok"], "{run:?}");
    results[0]["data"].clone()
}

/// Imports the llama-server fixture into the hive's catalog with `rbee worker download` from a
/// `file://` URL, and checks the installed entry.
fn import_server(rbee: &Rbee, address: &str, server: &Path) {
    let url = format!("file://{}", server.display());
    let run = rbee.run(&[
        "worker",
        "download",
        SERVER_NAME,
        "--url",
        &url,
        "--hive",
        address,
        "-o",
        "json",
    ]);
    assert_eq!(run.code, Some(0), "{run:?}");
    let binary = &only_data(&run)["binary"];
    assert_eq!(binary["name"], SERVER_NAME);
    assert_eq!(binary["executable"], true);
    assert_eq!(binary["sha256"], sha256_of(server).as_str());
    // A usable entry has an empty `problem`.
    assert_eq!(binary["problem"], "", "{binary}");
}

#[test]
#[ignore = "needs the llama-server fixture; run by scripts/e2e-llama"]
fn llama_server_spawn_infer_and_stop() {
    let server = fixture_path("RBEE_LLAMA_SERVER");
    let model = fixture_path("RBEE_TINY_MODEL");
    let hive = LlamaHive::start();
    let address = hive.address();
    let rbee = Rbee::new();

    // 1. The server binary, imported from a file on the hive's machine.
    import_server(&rbee, &address, &server);

    // 2. The model, downloaded over HTTP and checked against its SHA-256.
    let model_bytes = fs::read(&model).expect("read the tiny model");
    let model_size = model_bytes.len();
    let model_sha256 = sha256_of(&model);
    let files = FileServer::start();
    files.add("/tiny.gguf", model_bytes, Fault::None);
    let url = files.url("/tiny.gguf");
    let run = rbee.run(&[
        "model",
        "download",
        MODEL_NAME,
        "--url",
        &url,
        "--sha256",
        &model_sha256,
        "--hive",
        &address,
        "-o",
        "json",
    ]);
    assert_eq!(run.code, Some(0), "{run:?}");
    let downloaded = &only_data(&run)["model"];
    assert_eq!(downloaded["name"], MODEL_NAME);
    assert_eq!(downloaded["format"], "gguf");
    assert_eq!(downloaded["sha256"], model_sha256.as_str());
    assert_eq!(downloaded["size_bytes"], model_size);
    assert_eq!(downloaded["source_url"], url.as_str());

    // 3. The worker, started with the llama-server preset and ready once GET /health is 200.
    let run = rbee.run(&[
        "worker",
        "spawn",
        SERVER_NAME,
        "--model",
        MODEL_NAME,
        "--device",
        "cpu",
        "--ready-timeout",
        READY_TIMEOUT,
        "--hive",
        &address,
        "-o",
        "json",
    ]);
    assert_eq!(run.code, Some(0), "{run:?}\nhive log:\n{}", hive.hive.log());
    let spawned = only_data(&run)["worker"].clone();
    let pid = spawned["pid"].as_i64().expect("pid");
    let _worker_guard = PidGuard::new(i32::try_from(pid).expect("pid fits i32"));
    let port = spawned["port"].as_u64().expect("port");
    let worker_id = spawned["worker_id"].as_str().expect("worker id").to_owned();
    assert_eq!(spawned["state"], "ready");
    assert_eq!(spawned["api"], "llama.cpp");
    let argv: Vec<&str> = spawned["argv"]
        .as_array()
        .expect("argv")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let model_path = hive.hive.model_dir().join(MODEL_NAME);
    let model_path = model_path.to_str().expect("temp path is UTF-8");
    let port_text = port.to_string();
    for pair in [
        ["--model", model_path],
        ["--host", "127.0.0.1"],
        ["--port", &port_text],
        ["--device", "none"],
    ] {
        assert!(
            argv.windows(2).any(|window| window == pair),
            "{pair:?} missing from {argv:?}"
        );
    }
    assert!(accepts_connections(port), "worker port {port} is closed");

    // 4. Text, streamed on stdout, with the summary on stderr.
    let run = rbee.run(&[
        "infer",
        "--model",
        MODEL_NAME,
        "Hello",
        "--max-tokens",
        "8",
        "--hive",
        &address,
    ]);
    assert_eq!(run.code, Some(0), "{run:?}\nhive log:\n{}", hive.hive.log());
    assert!(run.stdout.ends_with('\n'), "{:?}", run.stdout);
    assert!(
        !run.stdout.trim_end_matches('\n').is_empty(),
        "no text on stdout: {run:?}"
    );
    assert!(run.stderr.contains("tokens/s"), "{}", run.stderr);
    assert!(run.stderr.contains(&worker_id), "{}", run.stderr);
    assert!(run.stderr.contains(&address), "{}", run.stderr);

    let run = rbee.run(&[
        "infer",
        "--model",
        MODEL_NAME,
        "Hello",
        "--max-tokens",
        "8",
        "--temperature",
        "0",
        "--top-k",
        "20",
        "--top-p",
        "0.9",
        "--hive",
        &address,
        "-o",
        "json",
    ]);
    assert_eq!(run.code, Some(0), "{run:?}");
    let results = run.results();
    assert!(
        results[0]["job_id"]
            .as_str()
            .is_some_and(|id| id.starts_with("job-")),
        "{results:?}"
    );
    let generated = only_data(&run);
    let completion_tokens = generated["completion_tokens"].as_u64().expect("count");
    assert!(completion_tokens > 0, "{generated}");
    assert!(completion_tokens <= 8, "{generated}");
    assert!(
        generated["prompt_tokens"].as_u64().is_some_and(|n| n > 0),
        "{generated}"
    );
    assert!(
        generated["text"].as_str().is_some_and(|t| !t.is_empty()),
        "{generated}"
    );
    assert_eq!(generated["worker_id"], worker_id.as_str());
    assert!(
        generated["duration"]
            .as_str()
            .is_some_and(|d| d.ends_with('s')),
        "{generated}"
    );
    if completion_tokens == 8 {
        assert_eq!(generated["stop_reason"], "length", "{generated}");
    }

    // Ctrl-C while the worker is stopped in the middle of a request: rbee exits with 130 and
    // names the job, which the hive records as cancelled once the worker runs again.
    let stopped = StoppedProcess::new(pid);
    let mut child =
        ChildGuard::new(rbee.spawn(&["infer", "--model", MODEL_NAME, "Hello", "--hive", &address]));
    // Time for rbee to start and send the request, which the stopped worker cannot answer.
    std::thread::sleep(Duration::from_secs(2));
    signal::kill(Pid::from_raw(child.pid()), signal::Signal::SIGINT).expect("SIGINT rbee");
    let status = wait_with_timeout(child.child_mut(), Duration::from_secs(10))
        .expect("rbee exits after Ctrl-C");
    let mut stderr = String::new();
    child
        .child_mut()
        .stderr
        .take()
        .expect("piped stderr")
        .read_to_string(&mut stderr)
        .expect("read rbee's stderr");
    assert_eq!(status.code(), Some(130), "{stderr}");
    assert!(
        stderr.contains("interrupted: cancelled the generation on hive"),
        "{stderr}"
    );
    let job_id = stderr
        .split("(job ")
        .nth(1)
        .and_then(|rest| rest.split(')').next())
        .expect("job id in the message")
        .to_owned();
    drop(stopped);
    let run = rbee.run(&["job", "follow", &job_id, "--hive", &address]);
    assert_eq!(run.code, Some(4), "{run:?}");
    assert!(run.stderr.contains("CANCELLED"), "{run:?}");

    // With two hives, the one that serves the model is chosen.
    let empty_hive = LlamaHive::start();
    let both = format!("{},{address}", empty_hive.address());
    let run = rbee.run(&[
        "infer",
        "--model",
        MODEL_NAME,
        "Hello",
        "--max-tokens",
        "4",
        "--hive",
        &both,
        "-o",
        "json",
    ]);
    assert_eq!(run.code, Some(0), "{run:?}");
    let results = run.results();
    assert_eq!(results.len(), 1, "{results:?}");
    assert_eq!(results[0]["hive"], address.as_str());
    assert_eq!(results[0]["outcome"], "ok");

    // A model that no worker serves: the hive's error names the model that is served.
    let run = rbee.run(&[
        "infer",
        "--model",
        "missing.gguf",
        "Hello",
        "--hive",
        &address,
    ]);
    assert_eq!(run.code, Some(4), "{run:?}");
    assert!(run.stderr.contains("FAILED_PRECONDITION"), "{}", run.stderr);
    assert!(run.stderr.contains(model_path), "{}", run.stderr);
    assert!(run.stdout.is_empty(), "{}", run.stdout);

    let run = rbee.run(&["infer", "--model", "missing.gguf", "Hello", "--hive", &both]);
    assert_eq!(run.code, Some(4), "{run:?}");
    assert!(run.stderr.contains("missing.gguf"), "{}", run.stderr);
    assert!(run.stderr.contains(model_path), "{}", run.stderr);
    assert!(
        run.stderr.contains("no models are being served"),
        "{}",
        run.stderr
    );
    drop(empty_hive);

    // 5. The listings show the worker.
    let run = rbee.run(&[
        "worker", "process", "list", "--hive", &address, "-o", "json",
    ]);
    let processes = only_data(&run)["processes"].clone();
    let processes = processes.as_array().expect("processes");
    assert_eq!(processes.len(), 1, "{processes:?}");
    let process = &processes[0];
    assert_eq!(process["pid"], pid);
    assert_eq!(process["worker_name"], SERVER_NAME);
    assert_eq!(process["worker_id"], worker_id.as_str());
    assert_eq!(process["model"], model_path);
    assert_eq!(process["device"], "cpu");
    assert_eq!(process["port"], port);
    assert!(
        process["listening_ports"]
            .as_array()
            .is_some_and(|ports| ports.contains(&Value::from(port))),
        "{process}"
    );

    let run = rbee.run(&["worker", "active", "list", "--hive", &address, "-o", "json"]);
    let workers = only_data(&run)["workers"].clone();
    let workers = workers.as_array().expect("workers");
    assert_eq!(workers.len(), 1, "{workers:?}");
    assert_eq!(workers[0]["worker_id"], worker_id.as_str());
    assert_eq!(workers[0]["state"], "ready");
    assert_eq!(workers[0]["api"], "llama.cpp");

    // 6. Stopped: the port closes and the process is gone.
    let pid_text = pid.to_string();
    let run = rbee.run(&[
        "worker", "process", "delete", &pid_text, "--hive", &address, "-o", "json",
    ]);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(only_data(&run)["stopped"]["pid"], pid);
    assert!(
        eventually(|| !accepts_connections(port)),
        "port {port} still accepts connections"
    );
    assert!(
        eventually(|| !process_exists(pid)),
        "worker process {pid} still runs"
    );
    let run = rbee.run(&["worker", "active", "list", "--hive", &address, "-o", "json"]);
    assert_eq!(only_data(&run)["workers"], Value::Array(Vec::new()));
}

#[test]
#[ignore = "needs the llama-server fixture; run by scripts/e2e-llama"]
fn corrupt_model_aborts_spawn() {
    let server = fixture_path("RBEE_LLAMA_SERVER");
    let hive = LlamaHive::start();
    let address = hive.address();
    let rbee = Rbee::new();
    import_server(&rbee, &address, &server);

    let model_dir = tempfile::tempdir().expect("model dir");
    let bad_model = model_dir.path().join("bad.gguf");
    fs::write(&bad_model, random_bytes(64 * 1024)).expect("write the corrupt model");
    let bad_model = bad_model.to_str().expect("temp path is UTF-8");

    let run = rbee.run(&[
        "worker",
        "spawn",
        SERVER_NAME,
        "--model",
        bad_model,
        "--device",
        "cpu",
        "--ready-timeout",
        READY_TIMEOUT,
        "--hive",
        &address,
        "-o",
        "json",
    ]);
    assert_eq!(run.code, Some(4), "{run:?}");
    let results = run.results();
    assert_eq!(outcomes(&results), ["error"], "{run:?}");
    assert_eq!(results[0]["code"], "ABORTED", "{run:?}");
    // llama.cpp's own log lines, carried in the hive's message.
    let error = results[0]["error"].as_str().expect("error message");
    assert!(
        error.contains("failed to load model") || error.contains("error loading model"),
        "llama.cpp's load error missing from {error:?}"
    );

    let run = rbee.run(&[
        "worker", "process", "list", "--hive", &address, "-o", "json",
    ]);
    assert_eq!(only_data(&run)["processes"], Value::Array(Vec::new()));
    assert_eq!(
        processes_running_from(&hive.hive.catalog_dir()),
        Vec::<i32>::new()
    );
    let run = rbee.run(&["worker", "active", "list", "--hive", &address, "-o", "json"]);
    assert_eq!(only_data(&run)["workers"], Value::Array(Vec::new()));
}
