//! Process faults: pids that are not, or no longer, worker processes, workers whose children
//! leave the worker's process group, and a hive killed with SIGKILL. Nothing but a worker
//! process and its own tree may ever be signalled, and nothing may be lost.

use std::{
    collections::BTreeMap,
    fs,
    io::{BufRead, BufReader, Write},
    os::unix::{fs::PermissionsExt, process::CommandExt},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use nix::{sys::signal, unistd::Pid};
use rbee_proto::v1::{
    DeleteWorkerProcessRequest, GetWorkerProcessRequest, ListWorkerBinariesRequest,
    ListWorkerProcessesRequest, NarrateRequest, SpawnWorkerRequest, StopMethod,
    hive_service_client::HiveServiceClient,
};
use rbee_tests::{
    ChildGuard, HiveOptions, PidGuard, TestHive, TestWorker, is_running, start_non_worker,
    start_ticks, test_worker_bin,
};
use tonic::{Code, transport::Channel};

fn grace(millis: u64) -> Option<prost_types::Duration> {
    Some(Duration::from_millis(millis).try_into().unwrap())
}

async fn get_code(client: &mut HiveServiceClient<Channel>, pid: i32) -> Code {
    match client
        .get_worker_process(GetWorkerProcessRequest {
            pid,
            ..Default::default()
        })
        .await
    {
        Ok(_) => Code::Ok,
        Err(status) => status.code(),
    }
}

async fn delete_code(client: &mut HiveServiceClient<Channel>, pid: i32) -> Code {
    match client
        .delete_worker_process(DeleteWorkerProcessRequest {
            pid,
            grace_period: grace(0),
            ..Default::default()
        })
        .await
    {
        Ok(_) => Code::Ok,
        Err(status) => status.code(),
    }
}

async fn listed_pids(client: &mut HiveServiceClient<Channel>) -> Vec<i32> {
    client
        .list_worker_processes(ListWorkerProcessesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .processes
        .iter()
        .map(|p| p.pid)
        .collect()
}

/// Polls `condition` every 20 ms for at most 5 s.
fn eventually(mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if condition() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    condition()
}

#[tokio::test]
async fn lookalikes_of_workers_are_never_signalled() {
    let mut hive = TestHive::start();
    let real = hive.start_worker("llm-worker", &[]);

    // The same binary, byte for byte, but outside the catalog.
    let outside = tempfile::tempdir().unwrap();
    let copy = outside.path().join("llm-worker");
    fs::copy(test_worker_bin(), &copy).unwrap();
    fs::set_permissions(&copy, fs::Permissions::from_mode(0o755)).unwrap();
    let copy_process = TestWorker::start(&copy, &[]);

    // Started through a catalog symlink, so it runs the target outside the catalog.
    let link = hive.catalog_dir().join("linked");
    std::os::unix::fs::symlink(&copy, &link).unwrap();
    let through_link = TestWorker::start(&link, &[]);

    // Its command line names the catalog binary; its executable is `sleep`.
    let named_after_path = ChildGuard::new(
        Command::new("sleep")
            .arg0(hive.catalog_dir().join("llm-worker"))
            .arg("300")
            .stdin(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut client = hive.client().await;

    let lookalikes = [
        ("copy outside the catalog", copy_process.pid()),
        ("started through a catalog symlink", through_link.pid()),
        ("argv[0] is a catalog path", named_after_path.pid()),
        ("the hive itself", hive.pid()),
        (
            "the test process",
            i32::try_from(std::process::id()).unwrap(),
        ),
    ];
    for (what, pid) in lookalikes {
        assert_eq!(
            get_code(&mut client, pid).await,
            Code::NotFound,
            "get: {what}"
        );
        assert_eq!(
            delete_code(&mut client, pid).await,
            Code::NotFound,
            "delete: {what}"
        );
    }

    assert_eq!(listed_pids(&mut client).await, [real.pid()]);
    assert!(copy_process.is_running());
    assert!(through_link.is_running());
    assert!(named_after_path.is_running());
    assert!(real.is_running());
    assert!(
        hive.process().child_mut().try_wait().unwrap().is_none(),
        "the hive exited; log:\n{}",
        hive.log()
    );
}

#[tokio::test]
async fn worker_exec_into_sleep_is_not_found() {
    let hive = TestHive::start();
    // A shell copied into the catalog is a worker binary until it replaces itself with `sleep`.
    let shell = fs::canonicalize("/bin/sh").unwrap();
    hive.install(&shell, "shell-worker");
    let mut shell_worker = ChildGuard::new(
        Command::new(hive.catalog_dir().join("shell-worker"))
            .args(["-c", "read line; exec sleep 300"])
            .stdin(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let pid = shell_worker.pid();
    let started = start_ticks(pid).unwrap();
    let mut client = hive.client().await;

    let found = client
        .get_worker_process(GetWorkerProcessRequest {
            pid,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .process
        .unwrap();
    assert_eq!(found.worker_name, "shell-worker");

    let mut stdin = shell_worker.child_mut().stdin.take().unwrap();
    stdin.write_all(b"exec\n").unwrap();
    let catalog = hive.catalog_dir().canonicalize().unwrap();
    assert!(
        eventually(|| fs::read_link(format!("/proc/{pid}/exe"))
            .is_ok_and(|exe| !exe.starts_with(&catalog))),
        "the shell did not exec sleep"
    );

    // Same pid, same start time, but no longer a worker binary.
    assert_eq!(start_ticks(pid), Some(started));
    assert_eq!(get_code(&mut client, pid).await, Code::NotFound);
    assert_eq!(delete_code(&mut client, pid).await, Code::NotFound);
    assert!(shell_worker.is_running());
    assert!(listed_pids(&mut client).await.is_empty());
}

#[tokio::test]
async fn reaped_worker_pid_is_not_found() {
    let hive = TestHive::start();
    let mut worker = hive.start_worker("w", &[]);
    let pid = worker.pid();
    let mut client = hive.client().await;
    assert_eq!(get_code(&mut client, pid).await, Code::Ok);

    worker.process().child_mut().kill().unwrap();
    worker.process().wait();
    // New processes that may, rarely, be given the freed pid.
    let successors: Vec<ChildGuard> = (0..20).map(|_| start_non_worker("w")).collect();
    let holder_before = start_ticks(pid);

    assert_eq!(get_code(&mut client, pid).await, Code::NotFound);
    assert_eq!(delete_code(&mut client, pid).await, Code::NotFound);

    assert_eq!(
        start_ticks(pid),
        holder_before,
        "whatever holds pid {pid} now is the same process as before the delete"
    );
    for successor in &successors {
        assert!(successor.is_running(), "pid {}", successor.pid());
    }
}

/// A test worker started from the catalog with its stdout kept open, and guards for the
/// children it forked.
struct ForkingWorker {
    process: ChildGuard,
    children: Vec<PidGuard>,
    _stdout: BufReader<std::process::ChildStdout>,
}

impl ForkingWorker {
    /// Starts `path` with `args`, which fork `children` children, and reads their pids.
    fn start(path: &Path, args: &[&str], children: usize) -> Self {
        let mut child = Command::new(path)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let process = ChildGuard::new(child);
        let mut guards = Vec::new();
        for _ in 0..=children {
            let mut line = String::new();
            stdout.read_line(&mut line).unwrap();
            if let Some(pid) = line.trim().strip_prefix("child ") {
                guards.push(PidGuard::new(pid.parse().unwrap()));
            }
        }
        assert_eq!(guards.len(), children, "children of {}", path.display());
        Self {
            process,
            children: guards,
            _stdout: stdout,
        }
    }

    fn child_pids(&self) -> Vec<i32> {
        self.children.iter().map(PidGuard::pid).collect()
    }
}

/// Process group of `pid`.
fn process_group(pid: i32) -> i32 {
    nix::unistd::getpgid(Some(Pid::from_raw(pid)))
        .unwrap()
        .as_raw()
}

#[tokio::test]
async fn delete_stops_children_in_and_out_of_the_workers_group() {
    // Orphaned children are reparented to this process, so none stays a zombie of init.
    nix::sys::prctl::set_child_subreaper(true).unwrap();
    let hive = TestHive::start();
    let path = hive.install(&test_worker_bin(), "forker");
    let mut worker = ForkingWorker::start(
        &path,
        &["--fork-child", "--fork-session-child", "--ignore-sigterm"],
        2,
    );
    let pid = worker.process.pid();
    let children = worker.child_pids();
    // Started by the test without a group of its own, the worker shares this process's group,
    // and so does a bystander: signalling the group would hit both, and the test.
    let bystander = start_non_worker("bystander");
    assert_eq!(process_group(pid), process_group(bystander.pid()));
    let own_group: Vec<i32> = children
        .iter()
        .copied()
        .filter(|&child| process_group(child) == child)
        .collect();
    assert_eq!(own_group.len(), 1, "one child leads a group of its own");
    let mut client = hive.client().await;

    let stopped = client
        .delete_worker_process(DeleteWorkerProcessRequest {
            pid,
            grace_period: grace(300),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .stopped
        .unwrap();

    assert_eq!(stopped.method(), StopMethod::KilledAfterGrace);
    assert_eq!(stopped.other_processes, 2);
    assert!(!worker.process.is_running());
    for child in children {
        assert!(
            eventually(|| !is_running(child)),
            "child {child} survived the delete"
        );
    }
    assert!(
        bystander.is_running(),
        "the shared process group was signalled"
    );
    worker.process.wait();
}

#[tokio::test]
async fn delete_kills_session_child_left_by_a_worker_that_exits() {
    nix::sys::prctl::set_child_subreaper(true).unwrap();
    let hive = TestHive::start();
    let path = hive.install(&test_worker_bin(), "forker");
    // The worker exits on SIGTERM; the child in its own group ignores it.
    let mut worker = ForkingWorker::start(&path, &["--fork-session-child"], 1);
    let pid = worker.process.pid();
    let child = worker.child_pids()[0];
    let mut client = hive.client().await;

    let stopped = client
        .delete_worker_process(DeleteWorkerProcessRequest {
            pid,
            grace_period: grace(300),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .stopped
        .unwrap();

    assert_eq!(stopped.other_processes, 1);
    assert_eq!(stopped.exit_code, Some(0));
    assert_eq!(worker.process.wait().code(), Some(0));
    assert!(
        eventually(|| !is_running(child)),
        "child {child} outlived its worker"
    );
}

/// Every file under `dir` with its contents, or the target of a symbolic link, so a change
/// anywhere shows up in a comparison.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut files = BTreeMap::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(current) = pending.pop() {
        for entry in fs::read_dir(&current).unwrap().flatten() {
            let path = entry.path();
            let file_type = entry.file_type().unwrap();
            let relative = path.strip_prefix(dir).unwrap().to_path_buf();
            if file_type.is_symlink() {
                let target = fs::read_link(&path).unwrap();
                files.insert(relative, target.into_os_string().into_encoded_bytes());
            } else if file_type.is_dir() {
                pending.push(path);
            } else {
                files.insert(relative, fs::read(&path).unwrap());
            }
        }
    }
    files
}

#[tokio::test]
async fn hive_killed_and_restarted_keeps_catalog_and_workers() {
    nix::sys::prctl::set_child_subreaper(true).unwrap();
    let mut hive = TestHive::start_with(HiveOptions::default());
    let catalog = hive.catalog_dir();
    hive.install(&test_worker_bin(), "llm-cpu");
    let bundle = catalog.join("bundle");
    fs::create_dir(&bundle).unwrap();
    fs::copy(test_worker_bin(), bundle.join("bin")).unwrap();
    fs::write(
        bundle.join("manifest.json"),
        r#"{"binary": "bin", "version": "1.2.3"}"#,
    )
    .unwrap();
    let outside = tempfile::tempdir().unwrap();
    fs::write(
        outside.path().join("target"),
        b"#!/bin/sh\nexec sleep 300\n",
    )
    .unwrap();
    std::os::unix::fs::symlink(outside.path().join("target"), catalog.join("linked")).unwrap();
    fs::write(catalog.join(".notes"), b"hidden, not an entry").unwrap();
    let model = outside.path().join("model.gguf");
    fs::write(&model, b"model").unwrap();

    let plain = hive.start_worker("llm-cpu", &[]);
    let stubborn = hive.start_worker("llm-cpu", &["--ignore-sigterm"]);
    let mut client = hive.client().await;
    let spawned = client
        .spawn_worker(SpawnWorkerRequest {
            binary: "bundle".into(),
            model: model.display().to_string(),
            device: "cpu".into(),
            ready_timeout: grace(20_000),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .worker
        .unwrap();
    let _spawned_guard = PidGuard::new(spawned.pid);

    let binaries_before = client
        .list_worker_binaries(ListWorkerBinariesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .binaries;
    let processes_before = client
        .list_worker_processes(ListWorkerProcessesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .processes;
    let files_before = snapshot(&catalog);

    // A stop in progress when the hive dies: SIGTERM was sent, SIGKILL is 30 s away.
    let in_flight = {
        let url = hive.url();
        let pid = stubborn.pid();
        tokio::spawn(async move {
            let mut client = HiveServiceClient::connect(url).await.unwrap();
            client
                .delete_worker_process(DeleteWorkerProcessRequest {
                    job_id: "job-interrupted".into(),
                    pid,
                    grace_period: grace(30_000),
                })
                .await
        })
    };
    let mut narration = client
        .narrate(NarrateRequest {
            job_id: "job-interrupted".into(),
            wait_for_start: grace(10_000),
        })
        .await
        .unwrap()
        .into_inner();
    loop {
        let event = narration.message().await.unwrap().expect("job narrates");
        if event.action == "process.signal" {
            break;
        }
    }
    drop(client);

    signal::kill(Pid::from_raw(hive.pid()), signal::Signal::SIGKILL).unwrap();
    hive.process().wait();
    let interrupted = in_flight.await.unwrap();
    assert!(
        interrupted.is_err(),
        "the stop cannot finish without a hive"
    );

    let hive = TestHive::start_in(hive.into_dir(), HiveOptions::default());
    let mut client = hive.client().await;

    let binaries_after = client
        .list_worker_binaries(ListWorkerBinariesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .binaries;
    assert_eq!(binaries_after, binaries_before);
    assert_eq!(snapshot(&catalog), files_before);
    let processes_after = client
        .list_worker_processes(ListWorkerProcessesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .processes;
    let pids = |list: &[rbee_proto::v1::WorkerProcess]| -> Vec<(i32, String)> {
        list.iter().map(|p| (p.pid, p.worker_id.clone())).collect()
    };
    assert_eq!(pids(&processes_after), pids(&processes_before));
    assert_eq!(processes_after.len(), 3);
    assert!(plain.is_running());
    assert!(stubborn.is_running(), "a stop cut short by the crash");
    assert!(is_running(spawned.pid));
}
