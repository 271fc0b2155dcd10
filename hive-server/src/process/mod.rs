//! The process table: worker processes found in `/proc`, and stopping them safely.
//!
//! A worker process is a process whose executable lives in the catalog, or a process the hive
//! spawned itself (recognized by pid and start time, so an interpreter such as `python3` counts
//! only for the processes the hive started). Nothing else counts: not a process's name, not its
//! command line.

mod listeners;
mod scan;
mod stop;
mod tree;

use std::{collections::HashMap, io, path::PathBuf, time::SystemTime};

pub use scan::{find_worker, has_exited, is_stopped, list_workers, start_ticks};
pub use stop::{StopMethod, StoppedProcess, kill_group, stop_remnants, stop_worker};

use crate::catalog::{Catalog, WorkerName};

/// A process the hive spawned, as the process table needs to know it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spawned {
    /// Start time in clock ticks after boot, to tell the process from a later one with its pid.
    pub start_ticks: u64,
    /// Catalog name of the binary it was spawned from.
    pub binary: WorkerName,
    /// Active worker id.
    pub worker_id: String,
    /// Model it serves.
    pub model: String,
    /// Device it runs on.
    pub device: String,
    /// Port it was assigned.
    pub port: u16,
}

/// What makes a process a worker process: its executable lives in `catalog`, or it is one of the
/// `spawned` processes, keyed by pid.
#[derive(Debug, Clone, Copy)]
pub struct Identity<'a> {
    /// The worker catalog.
    pub catalog: &'a Catalog,
    /// Processes the hive spawned.
    pub spawned: &'a HashMap<i32, Spawned>,
}

/// Errors of process operations.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// No worker process has this pid. The message deliberately reveals nothing about whether
    /// another process has it.
    #[error("no worker process with pid {pid}")]
    NotFound {
        /// The pid looked up.
        pid: i32,
    },
    /// The hive may not signal this process.
    #[error("not permitted to signal worker process {pid}: {source}")]
    PermissionDenied {
        /// The pid.
        pid: i32,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The process survived SIGKILL for longer than the kernel normally takes.
    #[error(
        "worker process {pid} is still present {waited_secs}s after SIGKILL; \
         it may be stuck in uninterruptible sleep (state D)"
    )]
    Unkillable {
        /// The pid.
        pid: i32,
        /// Seconds waited after SIGKILL.
        waited_secs: u64,
    },
    /// Reading `/proc` or a signal call failed.
    #[error("failed to {action} for pid {pid}: {source}")]
    Os {
        /// What the hive was doing.
        action: &'static str,
        /// The pid involved.
        pid: i32,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

/// A worker process as read from `/proc`.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerProcess {
    /// Process id.
    pub pid: i32,
    /// Parent process id.
    pub ppid: i32,
    /// Catalog name of the binary it runs.
    pub worker_name: WorkerName,
    /// Executable path as the kernel reports it.
    pub exe: PathBuf,
    /// Command line.
    pub argv: Vec<String>,
    /// Real user id.
    pub uid: u32,
    /// Name of `uid`, when it has one.
    pub user: Option<String>,
    /// Scheduler state, for example `sleeping`.
    pub state: &'static str,
    /// Start time in clock ticks after boot; with the pid, identifies the process for its whole
    /// life even when the pid is later reused.
    pub start_ticks: u64,
    /// Wall-clock start time.
    pub started_at: SystemTime,
    /// CPU use over the process lifetime, in percent of one CPU.
    pub cpu_percent: f64,
    /// Resident set size in bytes.
    pub rss_bytes: u64,
    /// TCP ports it listens on, sorted and without duplicates.
    pub listening_ports: Vec<u16>,
    /// What the hive recorded when it spawned the process; `None` for processes found by their
    /// executable alone.
    pub spawned: Option<Spawned>,
}
