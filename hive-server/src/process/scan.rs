//! Finding worker processes in `/proc`.
//!
//! A scan reads only the `exe` link of each pid, which is cheap, and reads the details (stat,
//! command line, sockets) of the few processes that turn out to be workers.

use std::{
    collections::{BTreeSet, HashSet},
    io,
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use procfs::process::{FDTarget, Process};

use super::{Identity, ProcessError, Spawned, WorkerProcess, listeners::ListenTables};
use crate::catalog::WorkerName;

/// Lists the worker processes, optionally only those running `only`, sorted by pid.
pub fn list_workers(
    identity: Identity<'_>,
    only: Option<&WorkerName>,
) -> Result<Vec<WorkerProcess>, ProcessError> {
    let clock = Clock::read()?;
    let proc_dir = std::fs::read_dir("/proc").map_err(|source| ProcessError::Os {
        action: "list /proc",
        pid: 0,
        source,
    })?;

    let mut workers = Vec::new();
    let mut tables = ListenTables::default();
    for dir_entry in proc_dir.flatten() {
        let Some(pid) = dir_entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        let Some(found) = identify(identity, pid) else {
            continue;
        };
        if only.is_some_and(|only| *only != found.worker_name) {
            continue;
        }
        // A process that exits between the two reads is simply not listed.
        if let Ok(worker) = read_worker(pid, found, clock, &mut tables) {
            workers.push(worker);
        }
    }
    workers.sort_by_key(|w| w.pid);
    Ok(workers)
}

/// Returns the worker process `pid`.
///
/// Fails with [`ProcessError::NotFound`] when the pid does not exist or is not a worker, with
/// the same message in both cases, so callers learn nothing about non-worker processes.
pub fn find_worker(identity: Identity<'_>, pid: i32) -> Result<WorkerProcess, ProcessError> {
    let not_found = || ProcessError::NotFound { pid };
    if pid <= 0 {
        return Err(not_found());
    }
    if !is_process(pid) {
        return Err(not_found());
    }
    let found = identify(identity, pid).ok_or_else(not_found)?;
    let clock = Clock::read()?;
    read_worker(pid, found, clock, &mut ListenTables::default()).map_err(|_| not_found())
}

/// Why a process is a worker process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Found {
    pub(super) worker_name: WorkerName,
    pub(super) exe: PathBuf,
    pub(super) spawned: Option<Spawned>,
}

/// Identifies `pid` as a worker process: one the hive spawned (same pid and start time), or one
/// whose executable is a catalog binary.
///
/// Zombies and kernel threads have no `exe` link, and processes of other users may hide it;
/// none of them are identified by their executable.
pub(super) fn identify(identity: Identity<'_>, pid: i32) -> Option<Found> {
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok();
    if let Some(spawned) = identity.spawned.get(&pid)
        && start_ticks(pid).is_ok_and(|ticks| ticks == spawned.start_ticks)
    {
        return Some(Found {
            worker_name: spawned.binary.clone(),
            exe: exe.unwrap_or_default(),
            spawned: Some(spawned.clone()),
        });
    }
    let exe = exe?;
    let worker_name = identity.catalog.worker_name_of(&exe)?;
    if !runs_file_at(pid, &exe) {
        return None;
    }
    Some(Found {
        worker_name,
        exe,
        spawned: None,
    })
}

/// Checks that the `exe` path the kernel reports for `pid` names, in the hive's own view of the
/// file system, the file the process really runs.
///
/// The path is relative to the process's mount namespace: a process in a container can report
/// the catalog path for a file that is elsewhere on the host. So the device and inode of the
/// running executable must match the file at that path. A deleted executable has no file to
/// compare with; its path is trusted only from the hive's own mount namespace.
fn runs_file_at(pid: i32, exe: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;

    if exe.to_str().is_some_and(|s| s.ends_with(" (deleted)")) {
        return same_mount_namespace(pid);
    }
    let (Ok(running), Ok(at_path)) = (
        std::fs::metadata(format!("/proc/{pid}/exe")),
        std::fs::metadata(exe),
    ) else {
        return false;
    };
    running.dev() == at_path.dev() && running.ino() == at_path.ino()
}

fn same_mount_namespace(pid: i32) -> bool {
    let theirs = std::fs::read_link(format!("/proc/{pid}/ns/mnt"));
    let ours = std::fs::read_link("/proc/self/ns/mnt");
    matches!((theirs, ours), (Ok(a), Ok(b)) if a == b)
}

/// Returns whether `pid` is a process (a thread group leader), not another thread of one:
/// `/proc/TID` exists for every thread, though only processes are listed.
fn is_process(pid: i32) -> bool {
    Process::new(pid)
        .and_then(|p| p.status())
        .is_ok_and(|status| status.tgid == pid)
}

/// Reads the start time of `pid` in clock ticks after boot.
pub fn start_ticks(pid: i32) -> io::Result<u64> {
    let stat = Process::new(pid)
        .and_then(|p| p.stat())
        .map_err(proc_error)?;
    Ok(stat.starttime)
}

/// Returns whether `pid` has exited: it is a zombie waiting to be reaped, or gone.
pub fn has_exited(pid: i32) -> bool {
    Process::new(pid)
        .and_then(|p| p.stat())
        .map_or(true, |stat| matches!(stat.state, 'Z' | 'X' | 'x'))
}

/// Returns whether `pid` is stopped by a signal (SIGSTOP, SIGTSTP) or a tracer.
pub fn is_stopped(pid: i32) -> bool {
    Process::new(pid)
        .and_then(|p| p.stat())
        .is_ok_and(|stat| matches!(stat.state, 'T' | 't'))
}

/// Reads the raw wait status the kernel keeps for `pid` while it is a zombie, if the process
/// started at `start_ticks` is still there to read.
pub(super) fn zombie_wait_status(pid: i32, start_ticks: u64) -> Option<i32> {
    let stat = Process::new(pid).and_then(|p| p.stat()).ok()?;
    if stat.starttime != start_ticks || stat.state != 'Z' {
        return None;
    }
    stat.exit_code
}

/// Boot time and clock rate, to turn tick counts into times.
pub(super) struct Clock {
    boot_time: SystemTime,
    ticks_per_second: u64,
    page_size: u64,
}

impl Clock {
    /// Returns the clock facts, read once: none of them changes while the machine runs.
    pub(super) fn read() -> Result<&'static Self, ProcessError> {
        static CLOCK: std::sync::OnceLock<Clock> = std::sync::OnceLock::new();
        if let Some(clock) = CLOCK.get() {
            return Ok(clock);
        }
        let boot_secs = procfs::boot_time_secs().map_err(|e| ProcessError::Os {
            action: "read the boot time from /proc/stat",
            pid: 0,
            source: proc_error(e),
        })?;
        Ok(CLOCK.get_or_init(|| Self {
            boot_time: SystemTime::UNIX_EPOCH + Duration::from_secs(boot_secs),
            ticks_per_second: procfs::ticks_per_second().max(1),
            page_size: procfs::page_size(),
        }))
    }

    fn ticks_to_duration(&self, ticks: u64) -> Duration {
        Duration::from_secs_f64(ticks as f64 / self.ticks_per_second as f64)
    }
}

fn read_worker(
    pid: i32,
    found: Found,
    clock: &Clock,
    tables: &mut ListenTables,
) -> Result<WorkerProcess, procfs::ProcError> {
    let process = Process::new(pid)?;
    let stat = process.stat()?;
    let argv = process.cmdline()?;
    let uid = process.uid()?;

    let started_at = clock.boot_time + clock.ticks_to_duration(stat.starttime);
    let alive_secs = SystemTime::now()
        .duration_since(started_at)
        .unwrap_or_default()
        .as_secs_f64();
    let cpu_secs = clock
        .ticks_to_duration(stat.utime + stat.stime)
        .as_secs_f64();
    let cpu_percent = if alive_secs > 0.0 {
        100.0 * cpu_secs / alive_secs
    } else {
        0.0
    };

    Ok(WorkerProcess {
        pid,
        ppid: stat.ppid,
        worker_name: found.worker_name,
        exe: found.exe,
        argv,
        uid,
        user: user_name(uid),
        state: state_name(stat.state),
        start_ticks: stat.starttime,
        started_at,
        cpu_percent,
        rss_bytes: stat.rss * clock.page_size,
        listening_ports: listening_ports(&process, tables),
        spawned: found.spawned,
    })
}

/// Returns the TCP ports `process` listens on, matching its socket inodes against the TCP
/// tables of its own network namespace.
fn listening_ports(process: &Process, tables: &mut ListenTables) -> Vec<u16> {
    let Ok(fds) = process.fd() else {
        return Vec::new();
    };
    let sockets: HashSet<u64> = fds
        .flatten()
        .filter_map(|fd| match fd.target {
            FDTarget::Socket(inode) => Some(inode),
            _ => None,
        })
        .collect();
    if sockets.is_empty() {
        return Vec::new();
    }
    let listeners = tables.listeners_of(process);
    let ports: BTreeSet<u16> = sockets
        .iter()
        .filter_map(|inode| listeners.get(inode).copied())
        .collect();
    ports.into_iter().collect()
}

fn user_name(uid: u32) -> Option<String> {
    nix::unistd::User::from_uid(uid.into())
        .ok()
        .flatten()
        .map(|user| user.name)
}

/// Names the one-letter scheduler states of `/proc/PID/stat` (see proc(5)).
fn state_name(state: char) -> &'static str {
    match state {
        'R' => "running",
        'S' => "sleeping",
        'D' => "disk-sleep",
        'T' => "stopped",
        't' => "tracing-stop",
        'Z' => "zombie",
        'X' | 'x' => "dead",
        'I' => "idle",
        'P' => "parked",
        'W' => "waking",
        'K' => "wakekill",
        _ => "unknown",
    }
}

pub(super) fn proc_error(error: procfs::ProcError) -> io::Error {
    match error {
        procfs::ProcError::NotFound(_) => io::Error::from(io::ErrorKind::NotFound),
        procfs::ProcError::PermissionDenied(_) => io::Error::from(io::ErrorKind::PermissionDenied),
        procfs::ProcError::Io(e, _) => e,
        other => io::Error::other(other.to_string()),
    }
}
