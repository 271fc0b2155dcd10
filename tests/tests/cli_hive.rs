//! `rbee hive start|status|stop` on a private state directory: the hive runs in the background,
//! `localhost` finds it, and `stop` ends it.

mod cli_common;

use std::{fs, path::Path};

use cli_common::Rbee;
use nix::{sys::signal, unistd::Pid};
use rbee_tests::workspace_bin;

/// Stops the hive `rbee hive start` started, when a test ends early: first through `rbee hive
/// stop`, then with SIGKILL to the pid recorded in the pid file if that pid still runs
/// rbee-hive.
struct StopOnDrop<'a>(&'a Rbee);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        let _ = self.0.run(&["hive", "stop", "--timeout", "5s"]);

        let pid_file = self.0.state_dir().join("hive.pid");
        let Ok(text) = fs::read_to_string(pid_file) else {
            return;
        };
        let record: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        let Some(pid) = record["pid"]
            .as_i64()
            .and_then(|pid| i32::try_from(pid).ok())
        else {
            return;
        };
        let exe = fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default();
        if exe == workspace_bin("rbee-hive") {
            let _ = signal::kill(Pid::from_raw(pid), signal::Signal::SIGKILL);
        }
    }
}

#[test]
fn start_status_stop_round_trip() {
    let rbee = Rbee::new();
    let _cleanup = StopOnDrop(&rbee);

    let started = rbee.run(&["hive", "start", "--listen", "127.0.0.1:0", "-o", "json"]);
    assert_eq!(started.code, Some(0), "stderr:\n{}", started.stderr);
    let data = started.results()[0]["data"].clone();
    let pid = data["pid"].as_i64().unwrap();
    let address = data["address"].as_str().unwrap().to_owned();
    assert!(
        address.starts_with("127.0.0.1:") && !address.ends_with(":0"),
        "{address}"
    );
    assert_eq!(data["already_running"], false);
    assert!(Path::new(&format!("/proc/{pid}")).exists());

    let again = rbee.run(&["hive", "start", "-o", "json"]);
    assert_eq!(again.code, Some(0), "stderr:\n{}", again.stderr);
    assert_eq!(again.results()[0]["data"]["already_running"], true);
    assert_eq!(again.results()[0]["data"]["pid"].as_i64(), Some(pid));

    let status = rbee.run(&["hive", "status"]);
    assert_eq!(status.code, Some(0), "stderr:\n{}", status.stderr);
    assert!(status.stdout.contains("serving"), "{}", status.stdout);
    assert!(status.stdout.contains(&address), "{}", status.stdout);

    // The built-in `localhost` is the hive `rbee hive start` runs, on whatever port it got.
    let info = rbee.run(&["hive", "info", "-o", "json"]);
    assert_eq!(info.code, Some(0), "stderr:\n{}", info.stderr);
    assert_eq!(info.results()[0]["address"], address.as_str());

    let stopped = rbee.run(&["hive", "stop"]);
    assert_eq!(stopped.code, Some(0), "stderr:\n{}", stopped.stderr);
    assert!(
        stopped.stdout.contains(&format!("pid {pid}")),
        "{}",
        stopped.stdout
    );
    assert!(!rbee.state_dir().join("hive.pid").exists());

    let after = rbee.run(&["hive", "status"]);
    assert_eq!(after.code, Some(4));
    assert!(after.stderr.contains("rbee hive start"), "{}", after.stderr);
}

#[test]
fn stop_without_a_hive_is_a_no_op() {
    let rbee = Rbee::new();

    let run = rbee.run(&["hive", "stop", "-o", "json"]);

    assert_eq!(run.code, Some(0), "stderr:\n{}", run.stderr);
    assert_eq!(run.results()[0]["data"]["was_running"], false);
}

#[test]
fn stale_pid_file_is_not_trusted() {
    let rbee = Rbee::new();
    fs::create_dir_all(rbee.state_dir()).unwrap();
    // This test process, recorded with a wrong start time: a pid that was reused since.
    let record = serde_json::json!({
        "pid": std::process::id(),
        "start_time_ticks": 1,
        "exe": workspace_bin("rbee-hive"),
        "address": "127.0.0.1:1",
        "started_at_unix": 0,
        "log_file": rbee.state_dir().join("hive.log"),
        "catalog_dir": "/nonexistent",
    });
    fs::write(rbee.state_dir().join("hive.pid"), record.to_string()).unwrap();

    let status = rbee.run(&["hive", "status"]);
    assert_eq!(status.code, Some(4));
    assert!(status.stderr.contains("is gone"), "{}", status.stderr);

    // `stop` must remove the record without signalling the process that now has the pid.
    let stop = rbee.run(&["hive", "stop"]);
    assert_eq!(stop.code, Some(0), "stderr:\n{}", stop.stderr);
    assert!(!rbee.state_dir().join("hive.pid").exists());
}

#[test]
fn corrupt_pid_file_is_a_local_failure() {
    let rbee = Rbee::new();
    fs::create_dir_all(rbee.state_dir()).unwrap();
    let pid_file = rbee.state_dir().join("hive.pid");
    fs::write(&pid_file, "{not json").unwrap();

    let status = rbee.run(&["hive", "status"]);

    assert_eq!(status.code, Some(1), "stderr:\n{}", status.stderr);
    assert_eq!(
        status.stderr,
        format!(
            "error: invalid pid file {}: key must be a string at line 1 column 2; remove it if \
             no hive is running\n",
            pid_file.display()
        )
    );
    assert!(
        pid_file.exists(),
        "a pid file the keeper cannot read is left for the user"
    );
}

#[test]
fn start_reports_a_hive_that_exits_at_once() {
    let rbee = Rbee::new();
    let _cleanup = StopOnDrop(&rbee);

    let run = rbee.run(&[
        "hive",
        "start",
        "--listen",
        "127.0.0.1:0",
        "--hive-binary",
        "/bin/false",
        "--timeout",
        "5s",
    ]);

    assert_eq!(run.code, Some(4), "stderr:\n{}", run.stderr);
    assert!(
        run.stderr.contains("exited during start-up"),
        "{}",
        run.stderr
    );
    // Running `rbee hive start` again would not help.
    assert!(!run.stderr.contains("hint:"), "{}", run.stderr);
    assert!(!rbee.state_dir().join("hive.pid").exists());
}

#[test]
fn start_rejects_remote_targets() {
    let rbee = Rbee::new();

    let run = rbee.run(&["hive", "start", "--hive", "10.0.0.5:7835"]);

    assert_eq!(run.code, Some(2), "stderr:\n{}", run.stderr);
    assert!(run.stdout.is_empty());
}

#[test]
fn empty_hive_list_is_a_usage_error() {
    let rbee = Rbee::new();

    for hives in ["", ","] {
        let run = rbee.run(&[
            "--hive", hives, "worker", "binary", "list", "--output", "json",
        ]);

        assert_eq!(
            run.code,
            Some(2),
            "--hive {hives:?}; stderr:\n{}",
            run.stderr
        );
        assert!(run.stdout.is_empty(), "{}", run.stdout);
        assert!(
            run.stderr.contains("no hives targeted"),
            "--hive {hives:?}; stderr:\n{}",
            run.stderr
        );
    }
}
