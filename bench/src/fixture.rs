//! Processes a benchmark starts: hives, the bare baseline server, and crowds of idle processes.
//! Each is stopped and reaped when its guard is dropped, so a run leaves nothing behind, also
//! when it fails half-way.

use std::{
    fs,
    io::{BufRead, BufReader},
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail, ensure};
use nix::{
    sys::{signal, wait},
    unistd::Pid,
};
use rbee_proto::v1::hive_service_client::HiveServiceClient;
use tempfile::TempDir;
use tonic::transport::Channel;

/// Returns the path of a binary built beside this one (`rbee-hive`, `rbee`, `test-worker`).
pub fn sibling_binary(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("path of rbee-bench")?;
    let path = exe.with_file_name(name);
    if !path.exists() {
        bail!(
            "{} is missing; build every binary first: cargo build --release --workspace --bins",
            path.display()
        );
    }
    Ok(path)
}

/// Returns the resident set size of process `pid` in bytes, from `VmRSS` in `/proc/PID/status`.
pub fn rss_bytes(pid: u32) -> anyhow::Result<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("failed to read the status of process {pid}"))?;
    let kib = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| {
            value
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
        .with_context(|| format!("no VmRSS for process {pid}"))?;
    Ok(kib * 1024)
}

/// Returns the CPU time that process `pid` has spent running, summed over its live threads,
/// from `/proc/PID/task/TID/schedstat` (nanoseconds, unlike the clock ticks of `/proc/PID/stat`).
/// Threads that already exited are not counted.
pub fn cpu_time(pid: u32) -> anyhow::Result<Duration> {
    let tasks = format!("/proc/{pid}/task");
    let mut total = Duration::ZERO;
    let mut counted = 0;
    for task in fs::read_dir(&tasks).with_context(|| format!("failed to read {tasks}"))? {
        let path = task?.path().join("schedstat");
        let text = match fs::read_to_string(&path) {
            Ok(text) => text,
            // The thread exited after it was listed.
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => continue,
            Err(error) => {
                return Err(error).with_context(|| format!("failed to read {}", path.display()));
            }
        };
        let nanos: u64 = text
            .split_whitespace()
            .next()
            .and_then(|field| field.parse().ok())
            .with_context(|| format!("unexpected contents of {}: {text:?}", path.display()))?;
        total += Duration::from_nanos(nanos);
        counted += 1;
    }
    ensure!(
        counted > 0,
        "no schedstat file of process {pid} could be read: it exited, or the kernel keeps no \
         scheduler statistics"
    );
    Ok(total)
}

/// Returns the CPU time, user and system, of all children of this process that have been
/// waited for.
pub fn reaped_children_cpu_time() -> anyhow::Result<Duration> {
    let usage = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_CHILDREN)
        .context("failed to read the CPU time of child processes")?;
    let to_duration = |time: nix::sys::time::TimeVal| {
        Duration::from_secs(time.tv_sec() as u64) + Duration::from_micros(time.tv_usec() as u64)
    };
    Ok(to_duration(usage.user_time()) + to_duration(usage.system_time()))
}

/// A child process that is stopped on drop: SIGTERM, then SIGKILL after `term_grace`.
#[derive(Debug)]
pub struct Guarded {
    child: Child,
    term_grace: Duration,
}

impl Guarded {
    pub fn new(child: Child, term_grace: Duration) -> Self {
        Self { child, term_grace }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        let pid = Pid::from_raw(self.child.id() as i32);
        if !self.term_grace.is_zero() && signal::kill(pid, signal::Signal::SIGTERM).is_ok() {
            let deadline = Instant::now() + self.term_grace;
            while Instant::now() < deadline {
                if matches!(self.child.try_wait(), Ok(Some(_))) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `command` with stdout piped and waits for its `listening on ADDRESS` line.
fn start_listening(
    mut command: Command,
    term_grace: Duration,
) -> anyhow::Result<(Guarded, String)> {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("failed to start {command:?}"))?;
    let stdout = child.stdout.take().context("stdout of the server")?;
    let guarded = Guarded::new(child, term_grace);
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .context("failed to read the server's first line")?;
    let address = line
        .trim()
        .strip_prefix("listening on ")
        .with_context(|| format!("the server printed {line:?} instead of its address"))?
        .to_owned();
    Ok((guarded, address))
}

/// A real `rbee-hive` on loopback with its own catalog, state and model directories.
#[derive(Debug)]
pub struct Hive {
    /// `host:port` the hive listens on.
    pub address: String,
    // Dropped before the directory, so the hive stops before its files go.
    process: Guarded,
    dir: TempDir,
}

impl Hive {
    /// Starts a hive on `127.0.0.1:0`. It stops the workers it spawned when it shuts down, and
    /// it is shut down with SIGTERM on drop, so spawned workers do not outlive a benchmark.
    pub fn start(extra_args: &[&str]) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir().context("temp dir for a hive")?;
        let catalog = dir.path().join("catalog");
        fs::create_dir_all(&catalog)?;
        let mut command = Command::new(sibling_binary("rbee-hive")?);
        command
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--catalog-dir")
            .arg(&catalog)
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .arg("--model-dir")
            .arg(dir.path().join("models"))
            .arg("--stop-workers-on-shutdown")
            .arg("--drain-timeout-secs")
            .arg("5")
            .args(extra_args)
            .env("RUST_LOG", "warn")
            .stderr(Stdio::null());
        let (process, address) = start_listening(command, Duration::from_secs(10))?;
        Ok(Self {
            address,
            process,
            dir,
        })
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    pub fn catalog_dir(&self) -> PathBuf {
        self.dir.path().join("catalog")
    }

    /// Copies `source` into the catalog as `name`, executable, and returns its path.
    pub fn install(&self, source: &Path, name: &str) -> anyhow::Result<PathBuf> {
        let path = self.catalog_dir().join(name);
        fs::copy(source, &path)
            .with_context(|| format!("failed to copy {} into the catalog", source.display()))?;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755))?;
        Ok(path)
    }

    pub async fn client(&self) -> anyhow::Result<HiveServiceClient<Channel>> {
        Ok(HiveServiceClient::new(connect(&self.url()).await?))
    }
}

/// The bare tonic server of [`crate::baseline`], run as a child process of its own so that its
/// memory and CPU are measured apart from the load client's.
#[derive(Debug)]
pub struct Baseline {
    pub address: String,
    process: Guarded,
}

impl Baseline {
    pub fn start() -> anyhow::Result<Self> {
        let mut command = Command::new(std::env::current_exe()?);
        command.arg("baseline-server").stderr(Stdio::null());
        let (process, address) = start_listening(command, Duration::ZERO)?;
        Ok(Self { address, process })
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }
}

pub async fn connect(url: &str) -> anyhow::Result<Channel> {
    tonic::transport::Endpoint::from_shared(url.to_owned())?
        .tcp_nodelay(true)
        .connect()
        .await
        .with_context(|| format!("failed to connect to {url}"))
}

/// Many idle processes (`sleep`), killed and reaped together on drop.
#[derive(Debug, Default)]
pub struct Crowd {
    children: Vec<Child>,
}

impl Crowd {
    pub fn start(count: usize) -> anyhow::Result<Self> {
        let mut crowd = Self::default();
        for _ in 0..count {
            let child = Command::new("sleep")
                .arg("3600")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .spawn()
                .context("failed to start sleep")?;
            crowd.children.push(child);
        }
        Ok(crowd)
    }
}

impl Drop for Crowd {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
        }
        for child in &mut self.children {
            let _ = child.wait();
        }
    }
}

/// A process the benchmark caused to start without being its parent (a worker a hive spawned).
/// On drop it is killed if it still runs with the start time it had when guarded, so a reused
/// pid is never hit.
#[derive(Debug)]
pub struct Adopted {
    pid: i32,
    start_ticks: Option<String>,
}

impl Adopted {
    pub fn new(pid: i32) -> Self {
        Self {
            pid,
            start_ticks: start_ticks(pid),
        }
    }
}

impl Drop for Adopted {
    fn drop(&mut self) {
        if self.start_ticks.is_some() && start_ticks(self.pid) == self.start_ticks {
            let _ = signal::kill(Pid::from_raw(self.pid), signal::Signal::SIGKILL);
            let _ = wait::waitpid(Pid::from_raw(self.pid), Some(wait::WaitPidFlag::WNOHANG));
        }
    }
}

/// Field 22 of `/proc/PID/stat`, the start time in clock ticks after boot.
fn start_ticks(pid: i32) -> Option<String> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(19).map(str::to_owned)
}
