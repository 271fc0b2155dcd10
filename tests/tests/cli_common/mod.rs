//! Helpers for the `rbee` CLI tests: running the real binary with its own HOME and XDG
//! directories, a hives file, a stopped hive, and a closed port.

#![allow(dead_code)]

use std::{
    fs,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use nix::{sys::signal, unistd::Pid};
use rbee_tests::{ChildGuard, TestHive, wait_with_timeout, workspace_bin};
use tempfile::TempDir;

/// Maximum time one `rbee` run may take before the test kills it and fails.
const RUN_LIMIT: Duration = Duration::from_secs(30);

/// `rbee` with a private HOME and XDG directories, so tests never read or write the user's.
pub struct Rbee {
    home: TempDir,
}

/// What one `rbee` run produced.
#[derive(Debug)]
pub struct Run {
    /// Exit code; `None` when a signal ended it.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    /// Wall-clock time from start to exit.
    pub elapsed: Duration,
}

impl Run {
    /// Parses stdout as the JSON document of `--output json`.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|error| panic!("stdout is not JSON ({error}):\n{}", self.stdout))
    }

    /// Returns the `results` array of the JSON document.
    pub fn results(&self) -> Vec<serde_json::Value> {
        self.json()["results"]
            .as_array()
            .expect("`results` is an array")
            .clone()
    }
}

impl Rbee {
    pub fn new() -> Self {
        Self {
            home: tempfile::tempdir().expect("temp home"),
        }
    }

    /// `$XDG_STATE_HOME/rbee`, where `rbee hive start` keeps its pid and log files.
    pub fn state_dir(&self) -> PathBuf {
        self.home.path().join("state").join("rbee")
    }

    /// Writes `$XDG_CONFIG_HOME/rbee/hives.toml` with the given names and addresses.
    pub fn write_hives(&self, hives: &[(&str, &str)]) {
        let dir = self.home.path().join("config").join("rbee");
        fs::create_dir_all(&dir).expect("config dir");
        let mut text = String::new();
        for (name, address) in hives {
            text.push_str(&format!("[hives.{name}]\naddress = \"{address}\"\n\n"));
        }
        fs::write(dir.join("hives.toml"), text).expect("write hives.toml");
    }

    /// Builds a command for the `rbee` binary in this environment.
    pub fn command(&self, args: &[&str]) -> Command {
        let home = self.home.path();
        let mut command = Command::new(workspace_bin("rbee"));
        command
            .args(args)
            .env("HOME", home)
            .env("XDG_CONFIG_HOME", home.join("config"))
            .env("XDG_STATE_HOME", home.join("state"))
            .env("XDG_CACHE_HOME", home.join("cache"))
            .env_remove("RBEE_HIVE")
            .env_remove("RBEE_CONFIG")
            .env_remove("RBEE_HIVE_BIN")
            .env_remove("RBEE_TOKEN_FILE")
            .env_remove("RBEE_HIVE_TOKEN")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null());
        command
    }

    /// Runs `rbee ARGS` to completion and captures its output.
    pub fn run(&self, args: &[&str]) -> Run {
        let out = self.home.path().join("stdout");
        let err = self.home.path().join("stderr");
        let mut command = self.command(args);
        command
            .stdout(fs::File::create(&out).expect("stdout file"))
            .stderr(fs::File::create(&err).expect("stderr file"));

        let started = Instant::now();
        let mut child = ChildGuard::new(command.spawn().expect("start rbee"));
        let status = wait_with_timeout(child.child_mut(), RUN_LIMIT)
            .unwrap_or_else(|| panic!("rbee {args:?} still runs after {RUN_LIMIT:?}"));
        Run {
            code: status.code(),
            stdout: fs::read_to_string(&out).unwrap_or_default(),
            stderr: fs::read_to_string(&err).unwrap_or_default(),
            elapsed: started.elapsed(),
        }
    }

    /// Starts `rbee ARGS` without waiting, with stdout and stderr piped.
    pub fn spawn(&self, args: &[&str]) -> Child {
        self.command(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start rbee")
    }
}

/// A test hive stopped with SIGSTOP: its socket accepts TCP connections from the backlog, but
/// nothing responds. SIGCONT is sent on drop, before the hive itself is killed.
pub struct StoppedHive {
    hive: TestHive,
}

impl StoppedHive {
    pub fn new(hive: TestHive) -> Self {
        signal::kill(Pid::from_raw(hive.pid()), signal::Signal::SIGSTOP).expect("SIGSTOP");
        Self { hive }
    }

    pub fn address(&self) -> String {
        self.hive.address()
    }
}

impl Drop for StoppedHive {
    fn drop(&mut self) {
        let _ = signal::kill(Pid::from_raw(self.hive.pid()), signal::Signal::SIGCONT);
    }
}

/// Returns an address on which nothing listens: a port bound and released again.
pub fn closed_address() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = listener.local_addr().expect("local address").to_string();
    drop(listener);
    address
}

/// Outcome of each entry of a JSON result list, in order.
pub fn outcomes(results: &[serde_json::Value]) -> Vec<String> {
    results
        .iter()
        .map(|entry| entry["outcome"].as_str().unwrap_or("?").to_owned())
        .collect()
}
