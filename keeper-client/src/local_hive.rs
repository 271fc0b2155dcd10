//! The hive that `rbee hive start` runs on this machine: finding the `rbee-hive` executable,
//! starting it in the background, and the pid file through which `stop` and `status` find it
//! again and check that the pid still belongs to that hive.

use std::{
    fs::{self, DirBuilder, File, OpenOptions},
    io::{self, Read, Seek, SeekFrom, Write},
    net::SocketAddr,
    os::unix::fs::{DirBuilderExt, OpenOptionsExt},
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use rustix::process::{Pid, PidfdFlags, Signal, pidfd_open, pidfd_send_signal};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::config::{self, ConfigError, LocalhostHive};

/// Name of the hive executable.
const HIVE_BINARY: &str = "rbee-hive";

/// Prefix of the first line the hive prints on stdout, followed by its bound address.
const LISTENING_PREFIX: &str = "listening on ";

/// Interval between checks while waiting for the hive to come up or go away.
const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// Files of the local hive under `$XDG_STATE_HOME/rbee/`.
#[derive(Debug, Clone)]
pub struct Paths {
    /// `hive.pid`: JSON record of the running hive.
    pub pid_file: PathBuf,
    /// `hive.log`: the hive's stdout and stderr, appended to on every start.
    pub log_file: PathBuf,
    /// `hive/`: the hive's own state directory (`--state-dir`).
    pub hive_state_dir: PathBuf,
}

impl Paths {
    /// Paths under the XDG state directory.
    pub fn new() -> Result<Self, ConfigError> {
        let dir = config::state_dir()?;
        Ok(Self {
            pid_file: dir.join("hive.pid"),
            log_file: dir.join("hive.log"),
            hive_state_dir: dir.join("hive"),
        })
    }
}

/// Contents of the pid file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PidRecord {
    /// Process id of the hive.
    pub pid: i32,
    /// Start time of the process in clock ticks since boot (`/proc/PID/stat` field 22), which
    /// distinguishes the hive from a later process that reuses its pid.
    pub start_time_ticks: u64,
    /// Canonical path of the executable that was started.
    pub exe: PathBuf,
    /// Address the hive listens on.
    pub address: String,
    /// Start time, in seconds since the Unix epoch.
    pub started_at_unix: u64,
    /// File that receives the hive's output.
    pub log_file: PathBuf,
    /// Worker catalog directory passed to the hive.
    pub catalog_dir: PathBuf,
    /// Token file passed to the hive. Commands to `localhost` send the token it contains. It is
    /// absent in pid files written before tokens existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
}

/// State of the local hive according to its pid file.
#[derive(Debug)]
pub enum LocalHive {
    /// No pid file: `rbee hive start` has not started a hive, or it was stopped.
    NotStarted,
    /// A pid file whose process is gone, or whose pid now belongs to another process.
    Stale(PidRecord),
    /// The recorded hive is running.
    Running(PidRecord),
}

/// Failures in starting, finding or stopping the local hive.
///
/// Each message names its cause, so no variant exposes it as a `source` as well: `rbee` prints
/// the chain of sources after the message, which would repeat the cause.
#[derive(Debug, thiserror::Error)]
pub enum LocalHiveError {
    /// No `rbee-hive` next to `rbee` nor on PATH.
    #[error("{HIVE_BINARY} not found next to {} or on PATH; install it or pass --hive-binary", beside.display())]
    BinaryNotFound { beside: PathBuf },

    /// A file or directory of the local hive could not be used.
    #[error("failed to {action} {}: {error}", path.display())]
    File {
        action: &'static str,
        path: PathBuf,
        error: io::Error,
    },

    /// The pid file exists but cannot be parsed.
    #[error("invalid pid file {}: {error}; remove it if no hive is running", path.display())]
    InvalidPidFile {
        path: PathBuf,
        error: serde_json::Error,
    },

    /// The executable could not be run.
    #[error("failed to run {}: {error}", path.display())]
    Spawn { path: PathBuf, error: io::Error },

    /// The hive exited before it was ready.
    #[error("{HIVE_BINARY} exited during start-up ({status}); last lines of {}:\n{tail}", log.display())]
    ExitedEarly {
        status: std::process::ExitStatus,
        log: PathBuf,
        tail: String,
    },

    /// The hive did not print its address in time.
    #[error("{HIVE_BINARY} did not report its address within {}; see {}", crate::render::format::duration(*waited), log.display())]
    NoAddress { waited: Duration, log: PathBuf },

    /// A signal could not be sent.
    #[error("failed to send {signal} to the hive (pid {pid}): {error}")]
    Signal {
        pid: i32,
        signal: &'static str,
        error: io::Error,
    },
}

impl LocalHiveError {
    fn file(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> Self {
        let path = path.to_owned();
        move |error| Self::File {
            action,
            path,
            error,
        }
    }
}

/// Reads the pid file and checks whether its process is still that hive.
pub fn inspect(paths: &Paths) -> Result<LocalHive, LocalHiveError> {
    let text = match fs::read_to_string(&paths.pid_file) {
        Ok(text) => text,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(LocalHive::NotStarted),
        Err(source) => return Err(LocalHiveError::file("read", &paths.pid_file)(source)),
    };
    let record: PidRecord =
        serde_json::from_str(&text).map_err(|error| LocalHiveError::InvalidPidFile {
            path: paths.pid_file.clone(),
            error,
        })?;

    if is_recorded_process(&record) {
        Ok(LocalHive::Running(record))
    } else {
        Ok(LocalHive::Stale(record))
    }
}

/// Address and token file of the running local hive, if `rbee hive start` started one. Errors
/// count as "none", because this only chooses the settings of `localhost`.
pub fn running_hive() -> Option<LocalhostHive> {
    let paths = Paths::new().ok()?;
    match inspect(&paths) {
        Ok(LocalHive::Running(record)) => Some(LocalhostHive {
            address: record.address,
            token_file: record.token_file,
        }),
        Ok(LocalHive::Stale(record)) => {
            // Falling back to the default address may reach another hive: say so.
            eprintln!(
                "warning: the hive `rbee hive start` started (pid {}, {}) is not running; \
                 using {} instead",
                record.pid,
                record.address,
                rbee_proto::DEFAULT_HIVE_ADDR
            );
            None
        }
        _ => None,
    }
}

/// Finds `rbee-hive`: `explicit`, else next to the running `rbee`, else the first on PATH.
pub fn find_binary(explicit: Option<&Path>) -> Result<PathBuf, LocalHiveError> {
    if let Some(path) = explicit {
        return fs::canonicalize(path).map_err(LocalHiveError::file("find", path));
    }

    let current = std::env::current_exe().unwrap_or_default();
    let beside = current.with_file_name(HIVE_BINARY);
    let on_path = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .map(|dir| dir.join(HIVE_BINARY));

    std::iter::once(beside.clone())
        .chain(on_path)
        .find(|candidate| candidate.is_file())
        .and_then(|found| fs::canonicalize(found).ok())
        .ok_or(LocalHiveError::BinaryNotFound { beside })
}

/// Returns the absolute path of the token file given to `rbee hive start`, failing when it does
/// not exist: the hive may run from another directory, and the pid file records the path for
/// later commands.
pub fn absolute_token_file(path: &Path) -> Result<PathBuf, LocalHiveError> {
    fs::canonicalize(path).map_err(LocalHiveError::file("read the token file", path))
}

/// How to start the hive.
#[derive(Debug)]
pub struct StartOptions {
    /// Canonical path of `rbee-hive`.
    pub binary: PathBuf,
    /// `--listen`.
    pub listen: SocketAddr,
    /// `--catalog-dir`.
    pub catalog_dir: PathBuf,
    /// `--name`, if given.
    pub name: Option<String>,
    /// `--token-file`, if given, as an absolute path.
    pub token_file: Option<PathBuf>,
}

/// A hive this command started, not yet known to be healthy.
#[derive(Debug)]
pub struct Started {
    /// The child process.
    pub child: Child,
    /// Contents of the pid file.
    pub record: PidRecord,
    /// Length of the log file before the hive started: its output begins there.
    log_offset: u64,
}

/// Starts the hive in its own process group, so Ctrl-C in the terminal does not reach it, with
/// stdout and stderr appended to the log file, and writes the pid file.
///
/// The hive gets the path of the token file, never the token: arguments are visible to every
/// user in `/proc`. The state directory, the log and the pid file are created for the owner
/// only, because the log records what the hive did and the pid file names the token file.
pub fn spawn(paths: &Paths, options: &StartOptions) -> Result<Started, LocalHiveError> {
    if let Some(state_dir) = paths.hive_state_dir.parent() {
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(state_dir)
            .map_err(LocalHiveError::file("create", state_dir))?;
    }
    for dir in [&paths.hive_state_dir, &options.catalog_dir] {
        fs::create_dir_all(dir).map_err(LocalHiveError::file("create", dir))?;
    }

    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(&paths.log_file)
        .map_err(LocalHiveError::file("open", &paths.log_file))?;
    let log_offset = log
        .metadata()
        .map_err(LocalHiveError::file("read", &paths.log_file))?
        .len();
    let log_for_stderr = log
        .try_clone()
        .map_err(LocalHiveError::file("open", &paths.log_file))?;

    let mut command = Command::new(&options.binary);
    command
        .arg("--listen")
        .arg(options.listen.to_string())
        .arg("--catalog-dir")
        .arg(&options.catalog_dir)
        .arg("--state-dir")
        .arg(&paths.hive_state_dir)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_for_stderr)
        .process_group(0);
    if let Some(name) = &options.name {
        command.arg("--name").arg(name);
    }
    if let Some(token_file) = &options.token_file {
        command.arg("--token-file").arg(token_file);
    }

    let child = command.spawn().map_err(|error| LocalHiveError::Spawn {
        path: options.binary.clone(),
        error,
    })?;
    let pid = child.id() as i32;
    tracing::info!(pid, binary = %options.binary.display(), "started rbee-hive");

    // The start time is the fork time, so reading it before or after the exec gives the same.
    let start_time_ticks = read_stat(pid)
        .map(|stat| stat.start_time_ticks)
        .unwrap_or(0);
    let record = PidRecord {
        pid,
        start_time_ticks,
        exe: options.binary.clone(),
        address: options.listen.to_string(),
        started_at_unix: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs(),
        log_file: paths.log_file.clone(),
        catalog_dir: options.catalog_dir.clone(),
        token_file: options.token_file.clone(),
    };
    write_pid_file(paths, &record)?;

    Ok(Started {
        child,
        record,
        log_offset,
    })
}

impl Started {
    /// Waits for the `listening on ADDR` line in the log, records the address in the pid file
    /// and returns it.
    pub async fn wait_for_address(
        &mut self,
        paths: &Paths,
        deadline: Instant,
    ) -> Result<String, LocalHiveError> {
        let started = Instant::now();
        loop {
            let output = read_log_from(&paths.log_file, self.log_offset);
            let address = output
                .lines()
                .find_map(|line| line.trim().strip_prefix(LISTENING_PREFIX))
                .map(str::to_owned);
            if let Some(address) = address {
                self.record.address = address.clone();
                write_pid_file(paths, &self.record)?;
                return Ok(address);
            }

            self.check_running(paths)?;
            if Instant::now() >= deadline {
                return Err(LocalHiveError::NoAddress {
                    waited: started.elapsed(),
                    log: paths.log_file.clone(),
                });
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Fails with the log's last lines if the hive has exited.
    pub fn check_running(&mut self, paths: &Paths) -> Result<(), LocalHiveError> {
        match self.child.try_wait() {
            Ok(Some(status)) => {
                let _ = fs::remove_file(&paths.pid_file);
                let output = read_log_from(&paths.log_file, self.log_offset);
                let lines: Vec<&str> = output.lines().collect();
                let tail = lines[lines.len().saturating_sub(10)..].join("\n");
                Err(LocalHiveError::ExitedEarly {
                    status,
                    log: paths.log_file.clone(),
                    tail,
                })
            }
            Ok(None) | Err(_) => Ok(()),
        }
    }

    /// Stops a hive that failed to come up: SIGTERM, SIGKILL after two seconds, and removes the
    /// pid file.
    pub async fn abort(mut self, paths: &Paths) {
        let pid = self.record.pid;
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            let _ = fs::remove_file(&paths.pid_file);
            return;
        }
        if let Err(error) = send_signal(&self.record, Signal::TERM, "SIGTERM") {
            tracing::warn!(pid, %error, "failed to stop rbee-hive after a failed start");
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            if !matches!(self.child.try_wait(), Ok(None)) {
                break;
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let _ = fs::remove_file(&paths.pid_file);
    }
}

/// Sends SIGTERM to the recorded hive and waits until it is gone. Returns false if it still
/// runs at `deadline`.
pub async fn stop(
    paths: &Paths,
    record: &PidRecord,
    deadline: Instant,
) -> Result<bool, LocalHiveError> {
    send_signal(record, Signal::TERM, "SIGTERM")?;
    tracing::info!(pid = record.pid, "sent SIGTERM to rbee-hive");

    loop {
        if !is_recorded_process(record) {
            let _ = fs::remove_file(&paths.pid_file);
            return Ok(true);
        }
        if Instant::now() >= deadline {
            return Ok(false);
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Removes a stale pid file.
pub fn remove_pid_file(paths: &Paths) -> Result<(), LocalHiveError> {
    match fs::remove_file(&paths.pid_file) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(LocalHiveError::file("remove", &paths.pid_file)(source)),
    }
}

/// Signals the recorded process through a pidfd, after checking its identity through that same
/// pidfd's process, so a pid reused in between is never signalled.
fn send_signal(
    record: &PidRecord,
    signal: Signal,
    name: &'static str,
) -> Result<(), LocalHiveError> {
    let error = |error: io::Error| LocalHiveError::Signal {
        pid: record.pid,
        signal: name,
        error,
    };
    let pid = Pid::from_raw(record.pid)
        .ok_or_else(|| error(io::Error::from(io::ErrorKind::InvalidInput)))?;
    let pidfd = pidfd_open(pid, PidfdFlags::empty()).map_err(|e| error(e.into()))?;

    // The pidfd now pins one process: if it is still the recorded one, the signal reaches it.
    if !is_recorded_process(record) {
        return Err(error(io::Error::new(
            io::ErrorKind::NotFound,
            "the pid now belongs to another process",
        )));
    }
    pidfd_send_signal(&pidfd, signal).map_err(|e| error(e.into()))
}

/// Checks whether `record.pid` is alive, started at the recorded time, and runs the recorded
/// executable. A zombie counts as gone: it has exited and only waits to be reaped.
fn is_recorded_process(record: &PidRecord) -> bool {
    let Some(stat) = read_stat(record.pid) else {
        return false;
    };
    if stat.state == 'Z' || stat.state == 'X' || stat.start_time_ticks != record.start_time_ticks {
        return false;
    }

    // The kernel appends " (deleted)" when the executable was replaced since, as by a rebuild.
    match fs::read_link(format!("/proc/{}/exe", record.pid)) {
        Ok(exe) => {
            let exe = exe.to_string_lossy();
            let exe = exe.strip_suffix(" (deleted)").unwrap_or(&exe);
            Path::new(exe) == record.exe
        }
        Err(_) => false,
    }
}

/// Fields of `/proc/PID/stat` used here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stat {
    state: char,
    start_time_ticks: u64,
}

fn read_stat(pid: i32) -> Option<Stat> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&text)
}

/// Parses `/proc/PID/stat`. The command name (field 2) may contain spaces and parentheses, so
/// the fields are counted from its closing parenthesis.
fn parse_stat(text: &str) -> Option<Stat> {
    let after_name = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // `fields[0]` is field 3 (state), so field 22 (starttime) is `fields[19]`.
    Some(Stat {
        state: fields.first()?.chars().next()?,
        start_time_ticks: fields.get(19)?.parse().ok()?,
    })
}

fn write_pid_file(paths: &Paths, record: &PidRecord) -> Result<(), LocalHiveError> {
    let text = serde_json::to_string_pretty(record).unwrap_or_default() + "\n";
    // Written beside and renamed, so a reader never sees half a file.
    let temporary = paths.pid_file.with_extension("pid.tmp");
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&temporary)
        .and_then(|mut file| file.write_all(text.as_bytes()))
        .map_err(LocalHiveError::file("write", &temporary))?;
    fs::rename(&temporary, &paths.pid_file).map_err(LocalHiveError::file("write", &paths.pid_file))
}

fn read_log_from(path: &Path, offset: u64) -> String {
    let mut text = String::new();
    if let Ok(mut file) = File::open(path)
        && file.seek(SeekFrom::Start(offset)).is_ok()
    {
        let mut bytes = Vec::new();
        let _ = file.read_to_end(&mut bytes);
        text = String::from_utf8_lossy(&bytes).into_owned();
    }
    text
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn stat_parsing_survives_odd_command_names() {
        let text = "4242 (rbee (hive) x) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 \
                    5 0 987654 1000 200 18446744073709551615";
        let stat = parse_stat(text).expect("parsable");
        assert_eq!(stat.state, 'S');
        assert_eq!(stat.start_time_ticks, 987_654);
    }

    #[test]
    fn recorded_process_matches_only_itself() {
        let pid = std::process::id() as i32;
        let stat = read_stat(pid).expect("own stat");
        let exe = fs::read_link("/proc/self/exe").unwrap();
        let mut record = PidRecord {
            pid,
            start_time_ticks: stat.start_time_ticks,
            exe,
            address: "127.0.0.1:7835".to_owned(),
            started_at_unix: 0,
            log_file: PathBuf::new(),
            catalog_dir: PathBuf::new(),
            token_file: None,
        };
        assert!(is_recorded_process(&record));

        record.start_time_ticks += 1;
        assert!(!is_recorded_process(&record), "a reused pid must not match");

        record.start_time_ticks -= 1;
        record.exe = PathBuf::from("/usr/bin/true");
        assert!(
            !is_recorded_process(&record),
            "another executable must not match"
        );
    }

    #[test]
    fn inspect_reports_missing_and_stale_pid_files() {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths {
            pid_file: dir.path().join("hive.pid"),
            log_file: dir.path().join("hive.log"),
            hive_state_dir: dir.path().join("hive"),
        };
        assert!(matches!(inspect(&paths), Ok(LocalHive::NotStarted)));

        let record = PidRecord {
            pid: i32::MAX,
            start_time_ticks: 1,
            exe: PathBuf::from("/nonexistent/rbee-hive"),
            address: "127.0.0.1:7835".to_owned(),
            started_at_unix: 0,
            log_file: paths.log_file.clone(),
            catalog_dir: PathBuf::new(),
            token_file: Some(PathBuf::from("/run/rbee/token")),
        };
        write_pid_file(&paths, &record).unwrap();
        let mode = fs::metadata(&paths.pid_file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "the pid file is for its owner only");
        match inspect(&paths) {
            Ok(LocalHive::Stale(read)) => assert_eq!(read.token_file, record.token_file),
            other => panic!("expected a stale record, got {other:?}"),
        }

        fs::write(&paths.pid_file, "not json").unwrap();
        assert!(matches!(
            inspect(&paths),
            Err(LocalHiveError::InvalidPidFile { .. })
        ));
    }
}
