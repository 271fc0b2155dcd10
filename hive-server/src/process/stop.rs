//! Stopping a worker process without ever signalling the wrong one.
//!
//! The hive opens a pidfd for the pid, then checks that the process behind it still is the
//! worker it found (same start time, executable still in the catalog). From then on every signal
//! goes through the pidfd, which refers to that one process even if it exits and the pid is
//! reused, and waiting is a poll on the pidfd, which becomes readable when the process exits.

use std::{
    os::fd::OwnedFd,
    time::{Duration, Instant},
};

use rustix::{
    io::Errno,
    process::{Pid, PidfdFlags, Signal},
};
use tokio::io::{Interest, unix::AsyncFd};
use tokio_util::sync::CancellationToken;

use super::{Identity, ProcessError, scan, tree};
use crate::{catalog::WorkerName, jobs::Narrator};

/// How long to wait for a process to disappear after SIGKILL before giving up. The kernel
/// normally reaps a killed process in milliseconds; only a process stuck in uninterruptible I/O
/// takes longer.
const KILL_WAIT: Duration = Duration::from_secs(10);

/// Signals that ended a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopMethod {
    /// Exited within the grace period after SIGTERM.
    Terminated,
    /// Still running after the grace period, then killed with SIGKILL.
    KilledAfterGrace,
    /// Killed with SIGKILL at once, because the grace period was zero.
    Killed,
    /// Exited on its own before it could be signalled.
    AlreadyExited,
}

/// A stopped worker process and how it ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoppedProcess {
    /// Process id.
    pub pid: i32,
    /// Catalog name of the binary it ran.
    pub worker_name: WorkerName,
    /// Signals that ended it.
    pub method: StopMethod,
    /// Exit code, when it exited normally and its status was readable.
    pub exit_code: Option<i32>,
    /// Signal that killed it, when its status was readable.
    pub signal: Option<i32>,
    /// Time from the first signal until it was gone.
    pub elapsed: Duration,
    /// Number of other processes of its tree that were stopped with it.
    pub other_processes: usize,
}

/// Stops the worker process `pid` with its descendants and, when it leads its own process
/// group, the rest of the group: SIGTERM, then SIGKILL after `grace` to whatever is left (at
/// once when `grace` is zero). Processes forked during the grace period are found again before
/// SIGKILL.
///
/// Cancelling `grace_cut` ends the grace period at once, as when the hive shuts down.
///
/// The exit status is reported when the process is still a zombie after it exits, which is the
/// case until its parent reaps it; otherwise it is unknown.
pub async fn stop_worker(
    identity: Identity<'_>,
    pid: i32,
    grace: Duration,
    grace_cut: &CancellationToken,
    narrator: &Narrator,
) -> Result<StoppedProcess, ProcessError> {
    let worker = scan::find_worker(identity, pid)?;
    let leader = open_verified(identity, &worker.worker_name, pid, worker.start_ticks)?;
    let name = &worker.worker_name;
    let mut members = open_members(tree::members(pid), &[]);
    let started = Instant::now();

    let first_signal = if grace.is_zero() {
        Signal::KILL
    } else {
        Signal::TERM
    };
    let others = if members.is_empty() {
        String::new()
    } else {
        format!(" and {} processes of its tree", members.len())
    };
    narrator.info(
        "process.signal",
        format!(
            "sending {} to worker process {pid} ({name}){others}",
            signal_name(first_signal)
        ),
    );
    let mut method = if grace.is_zero() {
        StopMethod::Killed
    } else {
        StopMethod::Terminated
    };
    if !send(&leader, pid, first_signal)? {
        method = StopMethod::AlreadyExited;
    }
    signal_members(&members, first_signal);

    if !grace.is_zero() && !exited_within(grace, grace_cut, all_exited(&leader, &members)).await {
        // Children forked during the grace period are part of the tree too.
        let known: Vec<i32> = members.iter().map(|m| m.pid).collect();
        members.extend(open_members(tree::members(pid), &known));
        let cut = grace_cut.is_cancelled();
        if cut {
            tracing::warn!(pid, worker = %name, "grace period cut by shutdown; sending SIGKILL");
        }
        let when = if cut {
            format!(
                "when the hive shut down, before the end of the {}s grace period",
                grace.as_secs_f64()
            )
        } else {
            format!("after the {}s grace period", grace.as_secs_f64())
        };
        narrator.warn(
            "process.signal",
            format!("worker process {pid} or its children still running {when}; sending SIGKILL"),
        );
        if method != StopMethod::AlreadyExited {
            method = StopMethod::KilledAfterGrace;
        }
        send(&leader, pid, Signal::KILL)?;
        signal_members(&members, Signal::KILL);
    }

    if tokio::time::timeout(KILL_WAIT, all_exited(&leader, &members))
        .await
        .is_err()
    {
        return Err(ProcessError::Unkillable {
            pid,
            waited_secs: KILL_WAIT.as_secs(),
        });
    }
    let elapsed = started.elapsed();

    let (exit_code, signal) = decode_wait_status(scan::zombie_wait_status(pid, worker.start_ticks));
    let how = match (exit_code, signal) {
        (Some(code), _) => format!("exited with code {code}"),
        (_, Some(signal)) => format!("was killed by signal {signal}"),
        _ => "exited".to_owned(),
    };
    narrator.info(
        "process.exit",
        format!(
            "worker process {pid} ({name}) {how} after {:.2}s",
            elapsed.as_secs_f64()
        ),
    );
    tracing::info!(
        pid,
        worker = %name,
        ?method,
        ?exit_code,
        ?signal,
        other_processes = members.len(),
        "worker process stopped"
    );

    Ok(StoppedProcess {
        pid,
        worker_name: worker.worker_name,
        method,
        exit_code,
        signal,
        elapsed,
        other_processes: members.len(),
    })
}

/// Waits up to `grace` for `exited`, or until `grace_cut` is cancelled, and returns whether the
/// processes exited.
async fn exited_within(
    grace: Duration,
    grace_cut: &CancellationToken,
    exited: impl Future<Output = ()>,
) -> bool {
    tokio::select! {
        // An exit that is already done counts, even when the grace period is cut.
        biased;
        result = tokio::time::timeout(grace, exited) => result.is_ok(),
        () = grace_cut.cancelled() => false,
    }
}

/// Stops the processes a worker left behind after its own process exited: every process whose
/// environment contains `marker` (`RBEE_WORKER_ID=<id>`, which children inherit), SIGTERM, then
/// SIGKILL after `grace`. Returns how many there were.
///
/// Each is signalled through a pidfd checked against the start time read with its environment.
pub async fn stop_remnants(
    marker: &str,
    grace: Duration,
    grace_cut: &CancellationToken,
    narrator: &Narrator,
) -> usize {
    let members = tree::carrying(marker);
    let members = open_members(members, &[]);
    if members.is_empty() {
        return 0;
    }
    narrator.info(
        "process.signal",
        format!(
            "sending SIGTERM to {} processes left behind by the worker",
            members.len()
        ),
    );
    signal_members(&members, Signal::TERM);
    if !exited_within(grace, grace_cut, members_exited(&members)).await {
        signal_members(&members, Signal::KILL);
        let _ = tokio::time::timeout(KILL_WAIT, members_exited(&members)).await;
    }
    members.len()
}

async fn members_exited(members: &[OpenMember]) {
    for member in members {
        exited(&member.pidfd).await;
    }
}

/// A process of a worker's tree with a pidfd that is known to refer to it.
struct OpenMember {
    pid: i32,
    pidfd: AsyncFd<OwnedFd>,
}

/// Opens pidfds for `members` not in `known`, keeping only those whose start time still matches
/// after opening; the others exited and their pids may belong to someone else now.
fn open_members(members: Vec<tree::Member>, known: &[i32]) -> Vec<OpenMember> {
    members
        .into_iter()
        .filter(|member| !known.contains(&member.pid))
        .filter_map(|member| {
            let raw = Pid::from_raw(member.pid)?;
            let pidfd = rustix::process::pidfd_open(raw, PidfdFlags::empty()).ok()?;
            let same = scan::start_ticks(member.pid).is_ok_and(|t| t == member.start_ticks);
            let pidfd = watch(pidfd).ok().filter(|_| same)?;
            Some(OpenMember {
                pid: member.pid,
                pidfd,
            })
        })
        .collect()
}

fn signal_members(members: &[OpenMember], signal: Signal) {
    for member in members {
        if let Err(error) = send(&member.pidfd, member.pid, signal) {
            tracing::warn!(pid = member.pid, %error, "failed to signal a process of a worker tree");
        }
    }
}

async fn all_exited(leader: &AsyncFd<OwnedFd>, members: &[OpenMember]) {
    exited(leader).await;
    for member in members {
        exited(&member.pidfd).await;
    }
}

/// Opens a pidfd for `pid` and checks, after opening, that it refers to the worker found
/// earlier. Checking after opening closes the race: the pidfd cannot change process, and the
/// process behind the pid matched the worker's start time while the pidfd already held it.
fn open_verified(
    identity: Identity<'_>,
    name: &WorkerName,
    pid: i32,
    start_ticks: u64,
) -> Result<AsyncFd<OwnedFd>, ProcessError> {
    let not_found = || ProcessError::NotFound { pid };
    let raw_pid = Pid::from_raw(pid).ok_or_else(not_found)?;
    let pidfd = rustix::process::pidfd_open(raw_pid, PidfdFlags::empty()).map_err(|errno| {
        if errno == Errno::SRCH {
            not_found()
        } else {
            ProcessError::Os {
                action: "open a pidfd",
                pid,
                source: errno.into(),
            }
        }
    })?;

    let same_start = scan::start_ticks(pid).is_ok_and(|ticks| ticks == start_ticks);
    let same_binary = scan::identify(identity, pid).is_some_and(|found| found.worker_name == *name);
    if !(same_start && same_binary) {
        return Err(not_found());
    }
    watch(pidfd).map_err(|source| ProcessError::Os {
        action: "watch the pidfd",
        pid,
        source,
    })
}

/// Sends SIGKILL to the process group `pgid`.
///
/// Only for a group the caller owns for certain: one led by its own child that it has not reaped
/// yet, so the group id cannot have been reused.
pub fn kill_group(pgid: i32) {
    let group = nix::unistd::Pid::from_raw(pgid);
    match nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
        Err(error) => tracing::warn!(pgid, %error, "failed to kill a process group"),
    }
}

/// Registers the pidfd with the tokio reactor, to wait for the process to exit.
#[allow(unsafe_code)]
fn watch(pidfd: OwnedFd) -> std::io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: the `OwnedFd` is moved into the `AsyncFd`, so the descriptor stays open and refers
    // to the same pidfd until the `AsyncFd` is dropped, as registration requires.
    unsafe { AsyncFd::register_with_interest(pidfd, Interest::READABLE) }.map_err(Into::into)
}

/// Sends `signal` through the pidfd. Returns `false` when the process had already exited.
fn send(pidfd: &AsyncFd<OwnedFd>, pid: i32, signal: Signal) -> Result<bool, ProcessError> {
    match rustix::process::pidfd_send_signal(pidfd.get_ref(), signal) {
        Ok(()) => Ok(true),
        Err(Errno::SRCH) => Ok(false),
        Err(Errno::PERM) => Err(ProcessError::PermissionDenied {
            pid,
            source: Errno::PERM.into(),
        }),
        Err(errno) => Err(ProcessError::Os {
            action: "send a signal",
            pid,
            source: errno.into(),
        }),
    }
}

/// Waits until the process behind the pidfd has exited.
async fn exited(pidfd: &AsyncFd<OwnedFd>) {
    // A pidfd never stops being readable once the process exits, so the readiness is not
    // cleared. A reactor error is treated as an exit too, because waiting longer would learn
    // nothing more.
    let _ = pidfd.readable().await;
}

/// Splits a raw wait status into an exit code or a terminating signal.
fn decode_wait_status(status: Option<i32>) -> (Option<i32>, Option<i32>) {
    match status {
        Some(status) if status & 0x7f == 0 => (Some((status >> 8) & 0xff), None),
        Some(status) => (None, Some(status & 0x7f)),
        None => (None, None),
    }
}

fn signal_name(signal: Signal) -> &'static str {
    if signal == Signal::KILL {
        "SIGKILL"
    } else {
        "SIGTERM"
    }
}

#[cfg(test)]
mod tests {
    use super::decode_wait_status;

    #[test]
    fn wait_status_decoding() {
        assert_eq!(decode_wait_status(Some(0)), (Some(0), None));
        assert_eq!(decode_wait_status(Some(3 << 8)), (Some(3), None));
        assert_eq!(decode_wait_status(Some(15)), (None, Some(15)));
        assert_eq!(decode_wait_status(Some(9 | 0x80)), (None, Some(9)));
        assert_eq!(decode_wait_status(None), (None, None));
    }
}
