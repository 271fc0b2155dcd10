//! The processes that belong to a worker process: its descendants and, when it leads its own
//! process group, the other members of that group.

use std::collections::{HashMap, HashSet, VecDeque};

use procfs::process::Process;

/// A process of a worker's tree, identified by pid and start time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) struct Member {
    pub(super) pid: i32,
    pub(super) start_ticks: u64,
}

/// Lists the processes that belong to `leader`, not counting the leader itself.
///
/// The process group counts only when the leader leads it (`pgid == pid`): a worker started from
/// a shell without job control shares the shell's group, and signalling that group would hit the
/// shell and its other children.
///
/// Limitation: a process that left the worker's group (`setsid`) and whose parent exited before
/// the stop has been reparented away from the worker, so it is no longer found here. For workers
/// the hive spawned, a retire after the worker's own exit still finds such processes by the
/// worker id in their environment; a DeleteWorkerProcess of a running worker does not look.
pub(super) fn members(leader: i32) -> Vec<Member> {
    let Ok(all) = procfs::process::all_processes() else {
        return Vec::new();
    };
    let mut children: HashMap<i32, Vec<i32>> = HashMap::new();
    let mut group: Vec<i32> = Vec::new();
    let mut start: HashMap<i32, u64> = HashMap::new();
    let mut leads_group = false;

    for process in all.flatten() {
        let Ok(stat) = Process::stat(&process) else {
            continue;
        };
        start.insert(stat.pid, stat.starttime);
        children.entry(stat.ppid).or_default().push(stat.pid);
        if stat.pgrp == leader {
            group.push(stat.pid);
        }
        if stat.pid == leader {
            leads_group = stat.pgrp == leader;
        }
    }

    let mut found: HashSet<i32> = HashSet::new();
    let mut queue: VecDeque<i32> = VecDeque::from([leader]);
    if leads_group {
        queue.extend(group.iter().copied());
    }
    while let Some(pid) = queue.pop_front() {
        if pid != leader && !found.insert(pid) {
            continue;
        }
        if let Some(kids) = children.get(&pid) {
            queue.extend(kids.iter().copied().filter(|kid| !found.contains(kid)));
        }
    }

    let mut members: Vec<Member> = found
        .into_iter()
        .filter(|&pid| pid != leader)
        .filter_map(|pid| {
            start
                .get(&pid)
                .map(|&start_ticks| Member { pid, start_ticks })
        })
        .collect();
    members.sort_by_key(|m| m.pid);
    members
}

/// Lists the processes whose environment contains the entry `marker` (`NAME=value`).
///
/// Environments of other users' processes are unreadable without privileges, so those never
/// match.
pub(super) fn carrying(marker: &str) -> Vec<Member> {
    let Ok(all) = procfs::process::all_processes() else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for process in all.flatten() {
        let Ok(environ) = std::fs::read(format!("/proc/{}/environ", process.pid)) else {
            continue;
        };
        if !environ
            .split(|&b| b == 0)
            .any(|entry| entry == marker.as_bytes())
        {
            continue;
        }
        if let Ok(stat) = process.stat() {
            found.push(Member {
                pid: stat.pid,
                start_ticks: stat.starttime,
            });
        }
    }
    found
}
