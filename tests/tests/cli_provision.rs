//! `rbee worker download|build`, `rbee model ...` and `rbee job cancel` against real hives:
//! downloads over `file://` and HTTP from a local file server, checksum mismatches, builds with
//! cargo, the model catalog, Ctrl-C cancelling a download on the hive, and input rejected
//! before any request.

mod cli_common;

use std::{
    fs,
    io::{BufRead, BufReader},
    path::Path,
    sync::mpsc,
    time::{Duration, Instant},
};

use cli_common::{Rbee, closed_address, outcomes};
use nix::{sys::signal, unistd::Pid};
use rbee_tests::{
    ChildGuard, TestHive,
    http::{Fault, FileServer},
    wait_with_timeout,
};
use serde_json::Value;
use tempfile::TempDir;

/// A small shell script served as a worker binary.
const WORKER_SCRIPT: &[u8] = b"#!/bin/sh\necho downloaded worker\n";

/// SHA-256 of [`WORKER_SCRIPT`], computed with `sha256sum`.
const WORKER_SCRIPT_SHA256: &str =
    "9e5d8fbe2ca84e7ee04f3665da66ba41c388f47067c709dc3b8f44f9373d665e";

/// A SHA-256 that matches none of the files served here.
const WRONG_SHA256: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Returns the `data` of the only result, after checking that it succeeded.
fn only_data(run: &cli_common::Run) -> Value {
    let results = run.results();
    assert_eq!(results.len(), 1, "{results:?}");
    assert_eq!(results[0]["outcome"], "ok", "{run:?}");
    results[0]["data"].clone()
}

/// Returns the names of the entries of `dir`, sorted; empty when `dir` does not exist.
fn entries(dir: &Path) -> Vec<String> {
    let Ok(read) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut names: Vec<String> = read
        .flatten()
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Returns the entries of `dir` whose name contains `name`, at any depth.
fn files_named_like(dir: &Path, name: &str) -> Vec<String> {
    let mut found = Vec::new();
    let Ok(read) = fs::read_dir(dir) else {
        return found;
    };
    for entry in read.flatten() {
        let path = entry.path();
        if entry.file_name().to_string_lossy().contains(name) {
            found.push(path.display().to_string());
        }
        if path.is_dir() {
            found.extend(files_named_like(&path, name));
        }
    }
    found
}

/// Polls `condition` every 50ms for at most 5s; returns whether it became true.
fn eventually(mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if condition() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    condition()
}

/// Writes [`WORKER_SCRIPT`] into a temp dir and returns the dir and its `file://` URL.
fn worker_script_file() -> (TempDir, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("llm-script");
    fs::write(&path, WORKER_SCRIPT).expect("write the worker script");
    let url = format!("file://{}", path.display());
    (dir, url)
}

/// Returns the contents of a model file of `size` bytes that starts with the GGUF magic.
fn gguf_model(size: usize) -> Vec<u8> {
    let mut body = b"GGUF".to_vec();
    body.resize(size, 7);
    body
}

#[test]
fn worker_download_file_url_installs_the_binary() {
    let hive = TestHive::start();
    let rbee = Rbee::new();
    let (_dir, url) = worker_script_file();

    let run = rbee.run(&[
        "worker",
        "download",
        "llm-script",
        "--url",
        &url,
        "--version",
        "1.2.3",
        "--hive",
        &hive.address(),
        "-o",
        "json",
    ]);
    assert_eq!(run.code, Some(0), "{run:?}");
    let binary = &only_data(&run)["binary"];
    assert_eq!(binary["name"], "llm-script");
    assert_eq!(binary["sha256"], WORKER_SCRIPT_SHA256);
    assert_eq!(binary["size_bytes"], WORKER_SCRIPT.len());
    assert_eq!(binary["executable"], true);
    assert_eq!(binary["version"], "1.2.3");
    assert_eq!(binary["source"], url.as_str());

    let list = rbee.run(&["worker", "binary", "list", "--hive", &hive.address()]);
    assert_eq!(list.code, Some(0), "{list:?}");
    assert!(list.stdout.contains("llm-script"), "{}", list.stdout);
    assert!(list.stdout.contains("1.2.3"), "{}", list.stdout);
}

#[test]
fn worker_download_http_checks_sha256() {
    let hive = TestHive::start();
    let rbee = Rbee::new();
    let server = FileServer::start();
    server.add("/llm-http", WORKER_SCRIPT.to_vec(), Fault::None);

    let uppercase_sha = WORKER_SCRIPT_SHA256.to_ascii_uppercase();
    let run = rbee.run(&[
        "worker",
        "download",
        "llm-http",
        "--url",
        &server.url("/llm-http"),
        "--sha256",
        &uppercase_sha,
        "--hive",
        &hive.address(),
    ]);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert!(run.stdout.contains("llm-http"), "{}", run.stdout);
    assert!(run.stdout.contains(WORKER_SCRIPT_SHA256), "{}", run.stdout);
    assert_eq!(server.requests("/llm-http").len(), 1);

    let get = rbee.run(&[
        "worker",
        "binary",
        "get",
        "llm-http",
        "--hive",
        &hive.address(),
        "-o",
        "json",
    ]);
    assert_eq!(get.code, Some(0), "{get:?}");
    assert_eq!(only_data(&get)["binary"]["sha256"], WORKER_SCRIPT_SHA256);
}

#[test]
fn worker_download_wrong_sha256_installs_nothing() {
    let hive = TestHive::start();
    let rbee = Rbee::new();
    let server = FileServer::start();
    server.add("/llm-bad", WORKER_SCRIPT.to_vec(), Fault::None);

    let run = rbee.run(&[
        "worker",
        "download",
        "llm-bad",
        "--url",
        &server.url("/llm-bad"),
        "--sha256",
        WRONG_SHA256,
        "--hive",
        &hive.address(),
        "-o",
        "json",
    ]);
    assert_eq!(run.code, Some(4), "{run:?}");
    let results = run.results();
    assert_eq!(results[0]["outcome"], "error");
    assert_eq!(results[0]["code"], "DATA_LOSS", "{results:?}");
    assert!(results[0]["job_id"].is_string(), "{results:?}");
    assert!(run.stderr.contains("DATA_LOSS"), "{}", run.stderr);

    let list = rbee.run(&[
        "worker",
        "binary",
        "list",
        "--hive",
        &hive.address(),
        "-o",
        "json",
    ]);
    assert_eq!(only_data(&list)["binaries"], serde_json::json!([]));
    assert!(
        eventually(|| files_named_like(&hive.catalog_dir(), "llm-bad").is_empty()),
        "catalog keeps {:?}",
        files_named_like(&hive.catalog_dir(), "llm-bad")
    );
}

#[test]
fn worker_download_existing_name_needs_replace() {
    let hive = TestHive::start();
    let rbee = Rbee::new();
    let (_dir, url) = worker_script_file();
    let address = hive.address();
    let download = |extra: &[&str]| {
        let mut args = vec![
            "worker",
            "download",
            "llm-twice",
            "--url",
            &url,
            "--hive",
            &address,
            "-o",
            "json",
        ];
        args.extend_from_slice(extra);
        rbee.run(&args)
    };

    assert_eq!(download(&[]).code, Some(0));
    let again = download(&[]);
    assert_eq!(again.code, Some(4), "{again:?}");
    assert_eq!(again.results()[0]["code"], "ALREADY_EXISTS");
    let replaced = download(&["--replace"]);
    assert_eq!(replaced.code, Some(0), "{replaced:?}");
}

#[test]
fn download_progress_per_hive() {
    let first = TestHive::start();
    let second = TestHive::start();
    let rbee = Rbee::new();
    rbee.write_hives(&[("a", &first.address()), ("b", &second.address())]);
    let server = FileServer::start();
    // 256 KiB in 1 KiB pieces, 2ms apart: about half a second, long enough for the hive to
    // narrate progress more than once.
    let body: Vec<u8> = WORKER_SCRIPT
        .iter()
        .copied()
        .chain(std::iter::repeat_n(b'#', 256 * 1024))
        .collect();
    server.add("/llm-big", body, Fault::Slow(Duration::from_millis(2)));

    let run = rbee.run(&[
        "worker",
        "download",
        "llm-big",
        "--url",
        &server.url("/llm-big"),
        "--hive",
        "a,b",
    ]);
    assert_eq!(run.code, Some(0), "{run:?}");
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert!(lines[0].starts_with("HIVE"), "{}", run.stdout);
    for hive in ["a", "b"] {
        let prefix = format!("[{hive}] ");
        let progress = run
            .stderr
            .lines()
            .filter(|line| line.starts_with(&prefix) && line.ends_with("%)"))
            .count();
        assert!(
            progress >= 1,
            "no progress line for {hive} on stderr:\n{}",
            run.stderr
        );
        let result_row = lines
            .iter()
            .find(|line| line.starts_with(hive) && line.contains("OK"));
        assert!(
            result_row.is_some(),
            "no OK row for {hive}:\n{}",
            run.stdout
        );
    }
    assert!(run.stderr.contains("(100%)"), "{}", run.stderr);
}

#[test]
fn model_download_list_get_delete() {
    let hive = TestHive::start();
    let rbee = Rbee::new();
    let server = FileServer::start();
    let model = gguf_model(64 * 1024);
    server.add("/tiny.gguf", model.clone(), Fault::None);
    let url = server.url("/tiny.gguf");
    let address = hive.address();

    let run = rbee.run(&[
        "model",
        "download",
        "tiny.gguf",
        "--url",
        &url,
        "--hive",
        &address,
        "-o",
        "json",
    ]);
    assert_eq!(run.code, Some(0), "{run:?}");
    let downloaded = &only_data(&run)["model"];
    assert_eq!(downloaded["name"], "tiny.gguf");
    assert_eq!(downloaded["format"], "gguf");
    assert_eq!(downloaded["size_bytes"], model.len());
    assert_eq!(downloaded["source_url"], url.as_str());
    let sha256 = downloaded["sha256"].as_str().expect("sha256").to_owned();
    assert_eq!(sha256.len(), 64);
    assert!(hive.model_dir().join("tiny.gguf").is_file());

    let list = rbee.run(&["model", "list", "--hive", &address]);
    assert_eq!(list.code, Some(0), "{list:?}");
    let lines: Vec<&str> = list.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{}", list.stdout);
    for header in ["NAME", "FORMAT", "SIZE", "SHA256", "SOURCE"] {
        assert!(lines[0].contains(header), "{header}: {}", list.stdout);
    }
    assert!(lines[1].contains("tiny.gguf"), "{}", list.stdout);
    assert!(lines[1].contains("64.0 KiB"), "{}", list.stdout);
    assert!(lines[1].contains(&sha256[..12]), "{}", list.stdout);
    assert!(!lines[1].contains(&sha256), "full SHA-256 in the table");
    assert!(lines[1].contains(&url), "{}", list.stdout);

    let get = rbee.run(&[
        "model",
        "get",
        "tiny.gguf",
        "--hive",
        &address,
        "-o",
        "json",
    ]);
    assert_eq!(get.code, Some(0), "{get:?}");
    assert_eq!(only_data(&get)["model"]["sha256"], sha256.as_str());

    let delete = rbee.run(&["model", "delete", "tiny.gguf", "--hive", &address]);
    assert_eq!(delete.code, Some(0), "{delete:?}");
    assert!(
        delete.stdout.contains("deleted model tiny.gguf"),
        "{delete:?}"
    );
    assert!(!hive.model_dir().join("tiny.gguf").exists());

    let after_delete = rbee.run(&[
        "model",
        "get",
        "tiny.gguf",
        "--hive",
        &address,
        "-o",
        "json",
    ]);
    assert_eq!(after_delete.code, Some(4), "{after_delete:?}");
    assert_eq!(after_delete.results()[0]["code"], "NOT_FOUND");
    let empty = rbee.run(&["model", "list", "--hive", &address]);
    assert_eq!(empty.stdout, "no models\n");
}

#[test]
fn model_download_wrong_sha256_is_data_loss() {
    let hive = TestHive::start();
    let rbee = Rbee::new();
    let server = FileServer::start();
    server.add("/bad.gguf", gguf_model(4096), Fault::None);

    let run = rbee.run(&[
        "model",
        "download",
        "bad.gguf",
        "--url",
        &server.url("/bad.gguf"),
        "--sha256",
        WRONG_SHA256,
        "--hive",
        &hive.address(),
        "-o",
        "json",
    ]);
    assert_eq!(run.code, Some(4), "{run:?}");
    assert_eq!(run.results()[0]["code"], "DATA_LOSS");
    assert!(
        eventually(|| files_named_like(&hive.model_dir(), "bad.gguf").is_empty()),
        "model dir keeps {:?}",
        files_named_like(&hive.model_dir(), "bad.gguf")
    );
}

#[test]
fn ctrl_c_cancels_the_download_on_the_hive() {
    let hive = TestHive::start();
    let rbee = Rbee::new();
    let server = FileServer::start();
    // 1 MiB in 1 KiB pieces, 20ms apart: about 20s, far longer than the test waits.
    server.add(
        "/slow.gguf",
        gguf_model(1024 * 1024),
        Fault::Slow(Duration::from_millis(20)),
    );

    let mut child = rbee.command(&[
        "model",
        "download",
        "slow.gguf",
        "--url",
        &server.url("/slow.gguf"),
        "--hive",
        &hive.address(),
    ]);
    child
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut rbee_process = ChildGuard::new(child.spawn().expect("start rbee"));
    let stderr = rbee_process.child_mut().stderr.take().expect("stderr");
    let (lines_tx, lines_rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = lines_tx.send(line);
        }
    });

    // Ctrl-C once the transfer has made progress, so the job certainly runs on the hive.
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    while !seen.iter().any(|line: &String| line.ends_with("%)")) {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines_rx.recv_timeout(left) {
            Ok(line) => seen.push(line),
            Err(_) => panic!("no progress within 15s; stderr so far: {seen:?}"),
        }
    }
    signal::kill(Pid::from_raw(rbee_process.pid()), signal::Signal::SIGINT).expect("SIGINT");

    let status = wait_with_timeout(rbee_process.child_mut(), Duration::from_secs(10))
        .expect("rbee exits within 10s of Ctrl-C");
    reader.join().expect("stderr reader");
    seen.extend(lines_rx.try_iter());
    let stderr = seen.join("\n");
    assert_eq!(status.code(), Some(130), "{stderr}");
    let on_hive = format!(" on hive {}", hive.address());
    let job_id = seen
        .iter()
        .find_map(|line| line.strip_prefix("cancelled job ")?.strip_suffix(&on_hive))
        .unwrap_or_else(|| panic!("no cancellation line:\n{stderr}"));

    // The job itself ended as cancelled on the hive, not merely the keeper's call.
    let follow = rbee.run(&[
        "job",
        "follow",
        job_id,
        "--hive",
        &hive.address(),
        "-o",
        "json",
    ]);
    assert_eq!(follow.code, Some(4), "{follow:?}");
    assert_eq!(follow.results()[0]["code"], "CANCELLED", "{follow:?}");

    let list = rbee.run(&["model", "list", "--hive", &hive.address(), "-o", "json"]);
    assert_eq!(only_data(&list)["models"], serde_json::json!([]));
    assert!(
        eventually(|| files_named_like(&hive.model_dir(), "slow.gguf").is_empty()),
        "model dir keeps {:?}",
        files_named_like(&hive.model_dir(), "slow.gguf")
    );
}

#[test]
fn job_cancel_unknown_job_is_not_found() {
    let hive = TestHive::start();
    let rbee = Rbee::new();

    let run = rbee.run(&[
        "job",
        "cancel",
        "job-unknown",
        "--hive",
        &hive.address(),
        "-o",
        "json",
    ]);
    assert_eq!(run.code, Some(4), "{run:?}");
    let results = run.results();
    assert_eq!(outcomes(&results), ["error"]);
    assert_eq!(results[0]["code"], "NOT_FOUND");
    assert_eq!(results[0]["job_id"], "job-unknown");
}

/// Creates a cargo package with one binary target, `hello-worker`, that prints `loud` when
/// built with the feature of that name and `quiet` otherwise.
fn hello_worker_source() -> TempDir {
    let dir = tempfile::tempdir().expect("source dir");
    fs::write(
        dir.path().join("Cargo.toml"),
        "[package]\nname = \"hello-worker\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n\
         [features]\nloud = []\n\n[workspace]\n",
    )
    .expect("write Cargo.toml");
    fs::create_dir(dir.path().join("src")).expect("src dir");
    fs::write(
        dir.path().join("src").join("main.rs"),
        "fn main() {\n    if cfg!(feature = \"loud\") {\n        println!(\"loud\");\n    } else \
         {\n        println!(\"quiet\");\n    }\n}\n",
    )
    .expect("write main.rs");
    dir
}

#[test]
fn worker_build_narrates_compiler_output_and_installs() {
    let hive = TestHive::start();
    let rbee = Rbee::new();
    let source = hello_worker_source();
    let source_path = source.path().to_str().expect("UTF-8 temp path");

    let run = rbee.run(&[
        "worker",
        "build",
        "hello-worker",
        "--source",
        source_path,
        "--features",
        "loud",
        "--profile",
        "dev",
        "--hive",
        &hive.address(),
        "-o",
        "json",
    ]);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert!(
        run.stderr
            .lines()
            .any(|line| line.starts_with("  | ") && line.contains("Compiling hello-worker")),
        "no compiler output on stderr:\n{}",
        run.stderr
    );
    let binary = &only_data(&run)["binary"];
    assert_eq!(binary["name"], "hello-worker");
    assert_eq!(binary["executable"], true);

    let path = binary["path"].as_str().expect("path");
    let output = std::process::Command::new(path)
        .output()
        .expect("run the built worker");
    assert_eq!(String::from_utf8_lossy(&output.stdout), "loud\n");
    assert!(entries(&hive.catalog_dir()).contains(&"hello-worker".to_owned()));
}

#[test]
fn invalid_input_exits_2_before_any_request() {
    let rbee = Rbee::new();
    // A request to this address would fail with exit code 4, not 2.
    let address = closed_address();
    let sha_63 = "a".repeat(63);
    let long_name = "n".repeat(256);
    let cases: Vec<Vec<&str>> = vec![
        vec!["worker", "download", "a/b", "--url", "http://h/x"],
        vec!["worker", "download", ".hidden", "--url", "http://h/x"],
        vec!["worker", "download", &long_name, "--url", "http://h/x"],
        vec!["worker", "download", "ok", "--url", "ftp://h/x"],
        vec!["worker", "download", "ok", "--url", "h/x"],
        vec!["worker", "download", "ok", "--url", "file://relative/x"],
        vec![
            "worker",
            "download",
            "ok",
            "--url",
            "http://h/x",
            "--sha256",
            &sha_63,
        ],
        vec!["worker", "build", "ok", "--source", "relative/dir"],
        vec![
            "worker",
            "build",
            "ok",
            "--source",
            "/src",
            "--features",
            "a,,b",
        ],
        vec![
            "worker",
            "build",
            "ok",
            "--source",
            "/src",
            "--features",
            "",
        ],
        vec![
            "worker",
            "build",
            "ok",
            "--source",
            "/src",
            "--profile",
            "a b",
        ],
        vec!["model", "download", "", "--url", "http://h/x"],
        vec!["model", "download", "m.gguf", "--url", "gopher://h/x"],
        vec![
            "model",
            "download",
            "m.gguf",
            "--url",
            "http://h/x",
            "--sha256",
            "xyz",
        ],
        vec!["model", "get", "a/b"],
        vec!["model", "delete", "."],
        vec!["job", "cancel", "job with spaces"],
    ];
    for mut args in cases {
        args.extend(["--hive", &address]);
        let run = rbee.run(&args);
        assert_eq!(run.code, Some(2), "rbee {args:?}: {run:?}");
        assert!(
            run.stdout.is_empty(),
            "rbee {args:?} printed {}",
            run.stdout
        );
        assert!(!run.stderr.is_empty(), "rbee {args:?} said nothing");
    }
}
