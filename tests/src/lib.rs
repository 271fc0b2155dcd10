//! Fixtures for end-to-end tests: a real `rbee-hive` on `127.0.0.1:0` with a temp catalog, and
//! real worker processes started from that catalog.
//!
//! Every process a fixture starts is killed and reaped when the fixture is dropped, whether the
//! test passed or failed. Fixtures only ever signal processes they started.

use std::{
    fs,
    io::{BufRead, BufReader},
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use rbee_proto::v1::hive_service_client::HiveServiceClient;
use tempfile::TempDir;
use tonic::transport::Channel;

pub mod http;

/// Returns the path of a binary built from this workspace (`rbee-hive`, `rbee`).
///
/// Test executables live in `target/<profile>/deps/`, the binaries one level up. They are built
/// by `cargo build --workspace --bins`, which the test command runs first.
pub fn workspace_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("path of the test executable");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test executable inside target/<profile>/deps");
    let path = profile_dir.join(name);
    assert!(
        path.exists(),
        "{} is missing; run `cargo build --workspace --bins` before the tests",
        path.display()
    );
    path
}

/// Path of the `test-worker` fixture binary.
pub fn test_worker_bin() -> PathBuf {
    workspace_bin("test-worker")
}

/// A child process that is killed and reaped on drop.
#[derive(Debug)]
pub struct ChildGuard {
    child: Option<Child>,
}

impl ChildGuard {
    /// Guards `child`.
    pub fn new(child: Child) -> Self {
        Self { child: Some(child) }
    }

    /// Process id.
    pub fn pid(&self) -> i32 {
        i32::try_from(self.child().id()).expect("pid fits i32")
    }

    /// The child process.
    pub fn child(&self) -> &Child {
        self.child.as_ref().expect("child present until drop")
    }

    /// The child process, mutably.
    pub fn child_mut(&mut self) -> &mut Child {
        self.child.as_mut().expect("child present until drop")
    }

    /// Returns whether the process is still running (not exited and not a zombie).
    pub fn is_running(&self) -> bool {
        let stat = match fs::read_to_string(format!("/proc/{}/stat", self.pid())) {
            Ok(stat) => stat,
            Err(_) => return false,
        };
        let state = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next());
        !matches!(state, Some("Z") | Some("X") | None)
    }

    /// Waits for the process to exit and returns its status.
    pub fn wait(&mut self) -> std::process::ExitStatus {
        self.child_mut().wait().expect("wait for child")
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Environment variables that set a hive's token or TLS files.
pub const HIVE_SECURITY_ENV: [&str; 5] = [
    "RBEE_HIVE_TOKEN",
    "RBEE_HIVE_TOKEN_FILE",
    "RBEE_HIVE_TLS_CERT",
    "RBEE_HIVE_TLS_KEY",
    "RBEE_HIVE_TLS_CLIENT_CA",
];

/// Options of a test hive.
#[derive(Debug, Default, Clone)]
pub struct HiveOptions {
    /// Extra command-line arguments.
    pub args: Vec<String>,
}

/// A real `rbee-hive` on `127.0.0.1:0` with its own catalog and state directories.
#[derive(Debug)]
pub struct TestHive {
    /// Address the hive listens on.
    pub addr: std::net::SocketAddr,
    /// Declared before `process`, so spawned workers are stopped before the hive is killed.
    workers: SpawnedWorkerSweeper,
    process: ChildGuard,
    dir: TempDir,
}

impl TestHive {
    /// Starts a hive with an empty catalog.
    pub fn start() -> Self {
        Self::start_with(HiveOptions::default())
    }

    /// Starts a hive with `options`.
    pub fn start_with(options: HiveOptions) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        fs::create_dir_all(dir.path().join("catalog")).expect("catalog dir");
        Self::start_in(dir, options)
    }

    /// Starts a hive with `options` and the environment variables `env`, such as
    /// `RBEE_HIVE_TOKEN`.
    pub fn start_with_env(options: HiveOptions, env: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        fs::create_dir_all(dir.path().join("catalog")).expect("catalog dir");
        Self::start_in_with_env(dir, options, env)
    }

    /// Starts a hive on the catalog and state directories inside `dir`, for example again after
    /// a previous hive on them stopped.
    pub fn start_in(dir: TempDir, options: HiveOptions) -> Self {
        Self::start_in_with_env(dir, options, &[])
    }

    /// Like [`TestHive::start_in`], with the environment variables `env` set for the hive.
    /// Token and TLS variables of the test's own environment never reach the hive.
    pub fn start_in_with_env(dir: TempDir, options: HiveOptions, env: &[(&str, &str)]) -> Self {
        let log = fs::File::create(dir.path().join("hive.log")).expect("log file");
        let mut command = Command::new(workspace_bin("rbee-hive"));
        for variable in HIVE_SECURITY_ENV {
            command.env_remove(variable);
        }
        command.envs(env.iter().copied());
        let mut child = command
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--catalog-dir")
            .arg(dir.path().join("catalog"))
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .arg("--model-dir")
            .arg(dir.path().join("models"))
            .arg("--name")
            .arg("test-hive")
            .args(&options.args)
            .env("RUST_LOG", "rbee_hive=debug,warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("start rbee-hive");
        let stdout = child.stdout.take().expect("hive stdout");
        let process = ChildGuard::new(child);

        let mut first_line = String::new();
        BufReader::new(stdout)
            .read_line(&mut first_line)
            .expect("read the hive's first line");
        let addr = first_line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| {
                panic!(
                    "hive did not print its address; stdout {first_line:?}, log:\n{}",
                    fs::read_to_string(dir.path().join("hive.log")).unwrap_or_default()
                )
            })
            .parse()
            .expect("socket address");
        let workers = SpawnedWorkerSweeper {
            state_dir: Some(dir.path().join("state")),
        };
        Self {
            addr,
            workers,
            process,
            dir,
        }
    }

    /// Catalog directory.
    pub fn catalog_dir(&self) -> PathBuf {
        self.dir.path().join("catalog")
    }

    /// Model directory.
    pub fn model_dir(&self) -> PathBuf {
        self.dir.path().join("models")
    }

    /// State directory.
    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// Address as `host:port`.
    pub fn address(&self) -> String {
        self.addr.to_string()
    }

    /// Endpoint URL, `http://host:port`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Process id of the hive.
    pub fn pid(&self) -> i32 {
        self.process.pid()
    }

    /// The hive process.
    pub fn process(&mut self) -> &mut ChildGuard {
        &mut self.process
    }

    /// The hive's log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("hive.log")).unwrap_or_default()
    }

    /// Connects a gRPC client.
    pub async fn client(&self) -> HiveServiceClient<Channel> {
        HiveServiceClient::connect(self.url())
            .await
            .expect("connect to the test hive")
    }

    /// Copies `source` into the catalog as `name`, executable, and returns its path.
    pub fn install(&self, source: &Path, name: &str) -> PathBuf {
        let path = self.catalog_dir().join(name);
        fs::copy(source, &path).expect("copy binary into the catalog");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).expect("chmod");
        path
    }

    /// Installs the test worker as `name` and starts it with `args`; waits until it listens.
    pub fn start_worker(&self, name: &str, args: &[&str]) -> TestWorker {
        let path = self.catalog_dir().join(name);
        if !path.exists() {
            self.install(&test_worker_bin(), name);
        }
        TestWorker::start(&path, args)
    }

    /// Stops the hive with SIGTERM and waits for it to exit, at most `timeout`.
    pub fn terminate(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let pid = nix::unistd::Pid::from_raw(self.pid());
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM the hive");
        wait_with_timeout(self.process.child_mut(), timeout)
    }

    /// Gives up the temp directory, for starting a new hive on it after this one is gone.
    ///
    /// The workers the hive spawned keep running, as they would after a crash of the hive.
    pub fn into_dir(self) -> TempDir {
        let Self {
            mut workers,
            process,
            dir,
            ..
        } = self;
        workers.state_dir = None;
        drop(process);
        dir
    }
}

/// Kills, on drop, the workers a test hive spawned: workers outlive their hive by design, so
/// killing the hive alone would leave them running when a test fails midway.
///
/// The workers are read from the hive's state file and recognized, with their children, by the
/// `RBEE_WORKER_ID=<id>` entry they carry in their environment.
#[derive(Debug)]
struct SpawnedWorkerSweeper {
    state_dir: Option<PathBuf>,
}

impl Drop for SpawnedWorkerSweeper {
    fn drop(&mut self) {
        let Some(state_dir) = &self.state_dir else {
            return;
        };
        let Ok(state) = fs::read(state_dir.join("workers.json")) else {
            return;
        };
        let Ok(state) = serde_json::from_slice::<serde_json::Value>(&state) else {
            return;
        };
        let markers: Vec<String> = state["workers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|worker| worker["id"].as_str())
            .map(|id| format!("RBEE_WORKER_ID={id}"))
            .collect();
        if markers.is_empty() {
            return;
        }
        let Ok(proc_dir) = fs::read_dir("/proc") else {
            return;
        };
        for entry in proc_dir.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|p| p.parse::<i32>().ok())
            else {
                continue;
            };
            let Ok(environ) = fs::read(format!("/proc/{pid}/environ")) else {
                continue;
            };
            let carries_marker = environ
                .split(|&b| b == 0)
                .any(|entry| markers.iter().any(|m| entry == m.as_bytes()));
            if carries_marker {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
}

/// A test worker process started from the catalog.
#[derive(Debug)]
pub struct TestWorker {
    /// Port the worker listens on.
    pub port: u16,
    process: ChildGuard,
}

impl TestWorker {
    /// Starts `path` (a copy of the test worker) with `args` and waits until it listens.
    pub fn start(path: &Path, args: &[&str]) -> Self {
        let mut child = Command::new(path)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start test worker");
        let stdout = child.stdout.take().expect("worker stdout");
        let process = ChildGuard::new(child);
        // Lines about forked children come first.
        let mut stdout = BufReader::new(stdout);
        let port = loop {
            let mut line = String::new();
            let read = stdout.read_line(&mut line).expect("read worker output");
            assert!(read > 0, "worker exited before it listened");
            if let Some(port) = line.trim().strip_prefix("listening on ") {
                break port.parse().expect("port number");
            }
        };
        Self { port, process }
    }

    /// Process id.
    pub fn pid(&self) -> i32 {
        self.process.pid()
    }

    /// The worker process.
    pub fn process(&mut self) -> &mut ChildGuard {
        &mut self.process
    }

    /// Returns whether the worker is still running.
    pub fn is_running(&self) -> bool {
        self.process.is_running()
    }
}

/// Starts a process that is not a worker (`sleep` outside any catalog), with `argv0` as its
/// visible name.
pub fn start_non_worker(argv0: &str) -> ChildGuard {
    use std::os::unix::process::CommandExt;
    let child = Command::new("sleep")
        .arg0(argv0)
        .arg("300")
        .stdin(Stdio::null())
        .spawn()
        .expect("start sleep");
    ChildGuard::new(child)
}

/// Waits for `child` to exit, at most `timeout`.
pub fn wait_with_timeout(child: &mut Child, timeout: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Returns the resident set size of process `pid` in bytes (`VmRSS` in `/proc/PID/status`), or
/// `None` when the process is gone.
pub fn rss_bytes(pid: i32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// Returns the start time of process `pid` in clock ticks after boot (field 22 of
/// `/proc/PID/stat`), or `None` when the process is gone. With the pid, it identifies one
/// process even after the pid is reused.
pub fn start_ticks(pid: i32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may contain spaces; the
    // state is field 3, so the start time is the 20th of these.
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Returns whether process `pid` runs: it exists and is neither a zombie nor dead.
pub fn is_running(pid: i32) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next());
    !matches!(state, Some("Z") | Some("X") | None)
}

/// A process that a test caused to start without being its parent: a worker spawned by a test
/// hive, or a child forked by a test worker.
///
/// On drop it is killed with SIGKILL if it still runs with the recorded start time, so a failing
/// test leaves nothing behind and a reused pid is never hit, and reaped if it became a child of
/// the test process.
#[derive(Debug)]
pub struct PidGuard {
    pid: i32,
    start_ticks: Option<u64>,
}

impl PidGuard {
    /// Guards the process that runs as `pid` now.
    pub fn new(pid: i32) -> Self {
        Self {
            pid,
            start_ticks: start_ticks(pid),
        }
    }

    /// Process id.
    pub fn pid(&self) -> i32 {
        self.pid
    }
}

impl Drop for PidGuard {
    fn drop(&mut self) {
        use nix::{
            sys::{signal, wait},
            unistd::Pid,
        };
        let pid = Pid::from_raw(self.pid);
        let same_process = self.start_ticks.is_some() && start_ticks(self.pid) == self.start_ticks;
        let killed = same_process && signal::kill(pid, signal::Signal::SIGKILL).is_ok();
        // Fails with ECHILD unless the process was reparented to this one (a subreaper). Only a
        // process just killed is waited for; anything else is reaped only if it already exited.
        let flags = (!killed).then_some(wait::WaitPidFlag::WNOHANG);
        let _ = wait::waitpid(pid, flags);
    }
}
