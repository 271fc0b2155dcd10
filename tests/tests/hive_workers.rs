//! Spawning workers, their lifecycle, adoption after a hive crash, and heartbeats.

use std::{
    collections::HashMap,
    fs,
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use rbee_proto::v1::{
    ActiveWorker, ActiveWorkerState, GetActiveWorkerRequest, HeartbeatRequest, HeartbeatSource,
    ListActiveWorkersRequest, ListWorkerProcessesRequest, RetireActiveWorkerRequest,
    SpawnWorkerRequest, StopMethod, hive_service_client::HiveServiceClient,
};
use rbee_tests::{HiveOptions, PidGuard, TestHive, start_non_worker, test_worker_bin};
use tonic::{Code, transport::Channel};

/// A model file in its own temp dir.
struct Model {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

fn model() -> Model {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.gguf");
    fs::write(&path, b"GGUF test model").unwrap();
    Model { _dir: dir, path }
}

fn spawn_request(binary: &str, model: &Path, args: &[&str]) -> SpawnWorkerRequest {
    SpawnWorkerRequest {
        binary: binary.into(),
        model: model.display().to_string(),
        device: "cpu".into(),
        args: args.iter().map(|a| (*a).to_owned()).collect(),
        ready_timeout: Some(Duration::from_secs(20).try_into().unwrap()),
        ..Default::default()
    }
}

async fn spawn(
    client: &mut HiveServiceClient<Channel>,
    request: SpawnWorkerRequest,
) -> ActiveWorker {
    client
        .spawn_worker(request)
        .await
        .unwrap()
        .into_inner()
        .worker
        .unwrap()
}

fn accepts_connections(port: u32) -> bool {
    TcpStream::connect(("127.0.0.1", u16::try_from(port).unwrap())).is_ok()
}

fn process_exists(pid: i32) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next());
    !matches!(state, Some("Z") | Some("X") | None)
}

fn children_of(pid: i32) -> Vec<i32> {
    let tasks = fs::read_dir(format!("/proc/{pid}/task")).unwrap();
    let mut children = Vec::new();
    for task in tasks.flatten() {
        let list = fs::read_to_string(task.path().join("children")).unwrap_or_default();
        children.extend(list.split_whitespace().map(|p| p.parse::<i32>().unwrap()));
    }
    children
}

async fn active_worker(client: &mut HiveServiceClient<Channel>, id: &str) -> ActiveWorker {
    client
        .get_active_worker(GetActiveWorkerRequest {
            worker_id: id.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .worker
        .unwrap()
}

/// Polls until the worker `id` reaches `state`, or fails after `limit`.
async fn wait_for_state(
    client: &mut HiveServiceClient<Channel>,
    id: &str,
    state: ActiveWorkerState,
    limit: Duration,
) -> ActiveWorker {
    let deadline = Instant::now() + limit;
    loop {
        let worker = active_worker(client, id).await;
        if worker.state() == state {
            return worker;
        }
        assert!(
            Instant::now() < deadline,
            "worker {id} is {:?}, not {state:?}, after {limit:?}",
            worker.state()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn spawned_worker_is_ready_listed_and_retired() {
    let hive = TestHive::start();
    hive.install(&test_worker_bin(), "llm-worker");
    let model = model();
    let mut client = hive.client().await;

    let worker = spawn(&mut client, spawn_request("llm-worker", &model.path, &[])).await;

    assert!(worker.worker_id.starts_with("worker-"));
    assert_eq!(worker.state(), ActiveWorkerState::Ready);
    assert_eq!(worker.binary, "llm-worker");
    assert_eq!(worker.device, "cpu");
    assert_eq!(worker.model, model.path.display().to_string());
    assert!(accepts_connections(worker.port));
    let port = worker.port.to_string();
    assert_eq!(
        worker.argv[1..],
        [
            "--model",
            &worker.model,
            "--device",
            "cpu",
            "--port",
            port.as_str()
        ]
    );
    let log = fs::read_to_string(&worker.log_path).unwrap();
    assert_eq!(log, format!("listening on {}\n", worker.port));
    let environ = fs::read(format!("/proc/{}/environ", worker.pid)).unwrap();
    let expected = format!("RBEE_WORKER_ID={}", worker.worker_id);
    assert!(environ.split(|&b| b == 0).any(|e| e == expected.as_bytes()));

    let processes = client
        .list_worker_processes(ListWorkerProcessesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .processes;
    assert_eq!(processes.len(), 1);
    assert_eq!(processes[0].pid, worker.pid);
    assert_eq!(processes[0].worker_id, worker.worker_id);
    assert_eq!(processes[0].model, worker.model);
    assert_eq!(processes[0].device, "cpu");
    assert_eq!(processes[0].port, worker.port);
    assert_eq!(processes[0].listening_ports, [worker.port]);

    let retired = client
        .retire_active_worker(RetireActiveWorkerRequest {
            worker_id: worker.worker_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let stopped = retired.stopped.unwrap();
    assert_eq!(stopped.method(), StopMethod::Terminated);
    assert_eq!(
        stopped.exit_code,
        Some(0),
        "the hive reaps its own workers and reports how"
    );
    assert!(!process_exists(worker.pid));
    assert!(!accepts_connections(worker.port));
    let active = client
        .list_active_workers(ListActiveWorkersRequest::default())
        .await
        .unwrap()
        .into_inner()
        .workers;
    assert!(active.is_empty(), "{active:?}");
}

#[tokio::test]
async fn shutdown_stops_spawned_workers_when_asked() {
    let mut hive = TestHive::start_with(HiveOptions {
        args: vec![
            "--stop-workers-on-shutdown".into(),
            "--drain-timeout-secs".into(),
            "2".into(),
        ],
    });
    hive.install(&test_worker_bin(), "llm-worker");
    let model = model();
    let mut client = hive.client().await;
    let mut workers = Vec::new();
    let mut guards = Vec::new();
    for _ in 0..3 {
        let request = spawn_request("llm-worker", &model.path, &["--ignore-sigterm"]);
        let worker = spawn(&mut client, request).await;
        guards.push(PidGuard::new(worker.pid));
        workers.push(worker);
    }
    drop(client);

    let started = Instant::now();
    let (status, hive) = tokio::task::spawn_blocking(move || {
        let status = hive.terminate(Duration::from_secs(20));
        (status, hive)
    })
    .await
    .unwrap();

    let status = status.expect("hive exits after stopping its workers");
    assert!(
        status.success(),
        "hive exit {status:?}; log:\n{}",
        hive.log()
    );
    for worker in &workers {
        assert!(!process_exists(worker.pid));
        assert!(!accepts_connections(worker.port));
    }
    // The three 2 s grace periods run side by side, not one after another (6 s).
    assert!(
        started.elapsed() < Duration::from_millis(4500),
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn spawn_validates_before_starting_anything() {
    let hive = TestHive::start();
    hive.install(&test_worker_bin(), "w");
    let model = model();
    let mut client = hive.client().await;
    let taken = TcpListener::bind(("127.0.0.1", 0)).unwrap();
    let taken_port = u32::from(taken.local_addr().unwrap().port());
    let valid = spawn_request("w", &model.path, &[]);

    let cases: Vec<(SpawnWorkerRequest, Code, String)> = vec![
        (
            SpawnWorkerRequest {
                binary: "missing".into(),
                ..valid.clone()
            },
            Code::NotFound,
            "worker binary \"missing\" not found in the catalog at ".into(),
        ),
        (
            SpawnWorkerRequest {
                binary: "../w".into(),
                ..valid.clone()
            },
            Code::InvalidArgument,
            "invalid worker name \"../w\"".into(),
        ),
        (
            SpawnWorkerRequest {
                device: "cuda:7".into(),
                ..valid.clone()
            },
            Code::InvalidArgument,
            "device \"cuda:7\" is not available on this hive; it has cpu".into(),
        ),
        (
            SpawnWorkerRequest {
                model: "/nonexistent/model.gguf".into(),
                ..valid.clone()
            },
            Code::NotFound,
            "model \"/nonexistent/model.gguf\" not found".into(),
        ),
        (
            SpawnWorkerRequest {
                model: "relative/model.gguf".into(),
                ..valid.clone()
            },
            Code::InvalidArgument,
            "invalid model \"relative/model.gguf\"".into(),
        ),
        (
            SpawnWorkerRequest {
                port: taken_port,
                ..valid.clone()
            },
            Code::FailedPrecondition,
            format!("port {taken_port} is already in use"),
        ),
        (
            SpawnWorkerRequest {
                port: 70_000,
                ..valid.clone()
            },
            Code::InvalidArgument,
            "invalid port 70000".into(),
        ),
        (
            SpawnWorkerRequest {
                env: HashMap::from([("RBEE_WORKER_ID".into(), "x".into())]),
                ..valid.clone()
            },
            Code::InvalidArgument,
            "environment variable RBEE_WORKER_ID is set by the hive".into(),
        ),
    ];
    for (request, code, message) in cases {
        let status = client.spawn_worker(request).await.unwrap_err();
        assert_eq!(status.code(), code, "{}", status.message());
        assert!(
            status.message().starts_with(&message),
            "expected {message:?}, got {:?}",
            status.message()
        );
    }

    let processes = client
        .list_worker_processes(ListWorkerProcessesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .processes;
    assert!(processes.is_empty(), "{processes:?}");
    let active = client
        .list_active_workers(ListActiveWorkersRequest::default())
        .await
        .unwrap()
        .into_inner()
        .workers;
    assert!(active.is_empty());
}

#[tokio::test]
async fn worker_crashing_at_start_fails_with_its_log() {
    let hive = TestHive::start();
    hive.install(&test_worker_bin(), "w");
    let model = model();
    let mut client = hive.client().await;

    let status = client
        .spawn_worker(spawn_request("w", &model.path, &["--crash-at-start"]))
        .await
        .unwrap_err();

    assert_eq!(status.code(), Code::Aborted);
    assert!(
        status
            .message()
            .contains("exited during start-up (exit code 3)"),
        "{}",
        status.message()
    );
    assert!(
        status
            .message()
            .ends_with("last log lines:\nfatal: cannot load model: invalid magic number"),
        "{}",
        status.message()
    );
    let processes = client
        .list_worker_processes(ListWorkerProcessesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .processes;
    assert!(processes.is_empty());
    let active = client
        .list_active_workers(ListActiveWorkersRequest::default())
        .await
        .unwrap()
        .into_inner()
        .workers;
    assert!(active.is_empty());
}

#[tokio::test]
async fn worker_never_ready_is_stopped_after_timeout() {
    let hive = TestHive::start();
    hive.install(&test_worker_bin(), "w");
    let model = model();
    let mut client = hive.client().await;
    let request = SpawnWorkerRequest {
        ready_timeout: Some(Duration::from_millis(500).try_into().unwrap()),
        ..spawn_request("w", &model.path, &["--no-listen", "--ignore-sigterm"])
    };

    let status = client.spawn_worker(request).await.unwrap_err();

    assert_eq!(status.code(), Code::DeadlineExceeded);
    assert!(
        status
            .message()
            .contains("did not become ready within 0.5s"),
        "{}",
        status.message()
    );
    let processes = client
        .list_worker_processes(ListWorkerProcessesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .processes;
    assert!(processes.is_empty(), "{processes:?}");
}

#[tokio::test]
async fn retire_stops_forked_children_that_ignore_sigterm() {
    let hive = TestHive::start();
    hive.install(&test_worker_bin(), "w");
    let model = model();
    let mut client = hive.client().await;
    let args = ["--fork-child", "--fork-session-child", "--ignore-sigterm"];
    let worker = spawn(&mut client, spawn_request("w", &model.path, &args)).await;
    let children = children_of(worker.pid);
    assert_eq!(children.len(), 2, "{children:?}");

    let stopped = client
        .retire_active_worker(RetireActiveWorkerRequest {
            worker_id: worker.worker_id.clone(),
            grace_period: Some(Duration::from_millis(300).try_into().unwrap()),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .stopped
        .unwrap();

    assert_eq!(stopped.method(), StopMethod::KilledAfterGrace);
    assert_eq!(stopped.other_processes, 2);
    assert!(!process_exists(worker.pid));
    for child in children {
        assert!(!process_exists(child), "child {child} survived");
    }
}

#[tokio::test]
async fn interpreter_worker_from_manifest_template() {
    let hive = TestHive::start();
    let folder = hive.catalog_dir().join("pyhttp");
    fs::create_dir(&folder).unwrap();
    fs::write(
        folder.join("manifest.json"),
        r#"{"command": ["python3", "-m", "http.server", "{port}", "--bind", "127.0.0.1"],
            "readiness": {"http": "/"}}"#,
    )
    .unwrap();
    let model = model();
    let bystander = start_non_worker("python3");
    let mut client = hive.client().await;

    let worker = spawn(&mut client, spawn_request("pyhttp", &model.path, &[])).await;

    assert_eq!(worker.state(), ActiveWorkerState::Ready);
    assert_eq!(worker.argv[0], "python3");
    let processes = client
        .list_worker_processes(ListWorkerProcessesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .processes;
    assert_eq!(
        processes.len(),
        1,
        "only the spawned interpreter: {processes:?}"
    );
    assert_eq!(processes[0].pid, worker.pid);
    assert_eq!(processes[0].worker_name, "pyhttp");
    assert!(
        !processes[0]
            .exe_path
            .starts_with(&hive.catalog_dir().display().to_string())
    );

    client
        .retire_active_worker(RetireActiveWorkerRequest {
            worker_id: worker.worker_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(!accepts_connections(worker.port));
    assert!(bystander.is_running());
}

#[tokio::test]
async fn restarted_hive_adopts_running_workers_and_reports_dead_ones() {
    // Orphaned workers are reparented to this test process, which reaps them, so none is left
    // a zombie when the hive is killed.
    nix::sys::prctl::set_child_subreaper(true).unwrap();
    let mut hive = TestHive::start();
    hive.install(&test_worker_bin(), "w");
    let model = model();
    let mut client = hive.client().await;
    let survivor = spawn(&mut client, spawn_request("w", &model.path, &[])).await;
    let victim = spawn(&mut client, spawn_request("w", &model.path, &[])).await;
    drop(client);

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(hive.pid()),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    hive.process().wait();
    assert!(process_exists(survivor.pid), "workers outlive the hive");
    // The victim is now a child of this process: stop and reap it while no hive runs.
    let victim_pid = nix::unistd::Pid::from_raw(victim.pid);
    nix::sys::signal::kill(victim_pid, nix::sys::signal::Signal::SIGKILL).unwrap();
    nix::sys::wait::waitpid(victim_pid, None).unwrap();

    let hive = TestHive::start_in(hive.into_dir(), HiveOptions::default());
    let mut client = hive.client().await;

    let adopted = active_worker(&mut client, &survivor.worker_id).await;
    assert_eq!(adopted.pid, survivor.pid);
    assert_eq!(adopted.port, survivor.port);
    assert_ne!(adopted.state(), ActiveWorkerState::Lost);
    let dead = active_worker(&mut client, &victim.worker_id).await;
    assert_eq!(dead.state(), ActiveWorkerState::Lost);
    assert_eq!(dead.lost_reason, "exited while the hive was not running");
    let processes = client
        .list_worker_processes(ListWorkerProcessesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .processes;
    let pids: Vec<i32> = processes.iter().map(|p| p.pid).collect();
    assert_eq!(pids, [survivor.pid]);
    assert_eq!(processes[0].worker_id, survivor.worker_id);

    client
        .retire_active_worker(RetireActiveWorkerRequest {
            worker_id: survivor.worker_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    let survivor_pid = nix::unistd::Pid::from_raw(survivor.pid);
    nix::sys::wait::waitpid(survivor_pid, None).unwrap();
    assert!(!accepts_connections(survivor.port));
}

#[tokio::test]
async fn missed_heartbeats_make_worker_stale_then_lost() {
    let hive = TestHive::start_with(HiveOptions {
        args: vec!["--heartbeat-interval-secs".into(), "0.2".into()],
    });
    hive.install(&test_worker_bin(), "w");
    let model = model();
    let mut client = hive.client().await;
    let args = ["--heartbeats", "3", "--heartbeat-ms", "100"];
    let worker = spawn(&mut client, spawn_request("w", &model.path, &args)).await;

    let beating = wait_for_state(
        &mut client,
        &worker.worker_id,
        ActiveWorkerState::Ready,
        Duration::from_secs(5),
    )
    .await;
    assert!(beating.last_heartbeat.is_some());
    let stale = wait_for_state(
        &mut client,
        &worker.worker_id,
        ActiveWorkerState::Stale,
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(stale.heartbeat_source(), HeartbeatSource::Worker);
    let lost = wait_for_state(
        &mut client,
        &worker.worker_id,
        ActiveWorkerState::Lost,
        Duration::from_secs(5),
    )
    .await;
    assert!(
        lost.lost_reason.starts_with("no heartbeat for"),
        "{}",
        lost.lost_reason
    );
    assert!(process_exists(worker.pid), "silence alone kills nothing");

    // A heartbeat brings it back.
    client
        .heartbeat(HeartbeatRequest {
            worker_id: worker.worker_id.clone(),
            ready: true,
        })
        .await
        .unwrap();
    assert_eq!(
        active_worker(&mut client, &worker.worker_id).await.state(),
        ActiveWorkerState::Ready
    );
    client
        .retire_active_worker(RetireActiveWorkerRequest {
            worker_id: worker.worker_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
}

#[tokio::test]
async fn readiness_checks_keep_silent_worker_ready_and_exit_makes_it_lost() {
    let hive = TestHive::start_with(HiveOptions {
        args: vec!["--heartbeat-interval-secs".into(), "0.1".into()],
    });
    hive.install(&test_worker_bin(), "w");
    let model = model();
    let mut client = hive.client().await;
    let worker = spawn(
        &mut client,
        spawn_request("w", &model.path, &["--exit-code", "5"]),
    )
    .await;

    // Six intervals without a heartbeat of its own would make it lost.
    tokio::time::sleep(Duration::from_millis(900)).await;
    let checked = active_worker(&mut client, &worker.worker_id).await;
    assert_eq!(checked.state(), ActiveWorkerState::Ready);
    assert_eq!(checked.heartbeat_source(), HeartbeatSource::ReadinessCheck);

    // The worker is a child of the hive this test started.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(worker.pid),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let lost = wait_for_state(
        &mut client,
        &worker.worker_id,
        ActiveWorkerState::Lost,
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(lost.lost_reason, "exited: exit code 5");
}

#[tokio::test]
async fn heartbeat_and_retire_of_unknown_workers() {
    let hive = TestHive::start();
    let mut client = hive.client().await;

    let unknown = client
        .heartbeat(HeartbeatRequest {
            worker_id: "worker-000000000000".into(),
            ready: true,
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);
    assert_eq!(
        unknown.message(),
        "active worker worker-000000000000 not found"
    );

    let malformed = client
        .retire_active_worker(RetireActiveWorkerRequest {
            worker_id: "../etc".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(malformed.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn retire_stops_children_left_by_an_exited_worker() {
    let hive = TestHive::start();
    let folder = hive.catalog_dir().join("launcher");
    fs::create_dir(&folder).unwrap();
    // The launcher starts the real server in the background and exits at once.
    let script = format!(
        "{} --port {{port}} & sleep 1; exit 0",
        test_worker_bin().display()
    );
    fs::write(
        folder.join("manifest.json"),
        serde_json::json!({ "command": ["sh", "-c", script] }).to_string(),
    )
    .unwrap();
    let model = model();
    let mut client = hive.client().await;
    let worker = spawn(&mut client, spawn_request("launcher", &model.path, &[])).await;
    let lost = wait_for_state(
        &mut client,
        &worker.worker_id,
        ActiveWorkerState::Lost,
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(lost.lost_reason, "exited: exit code 0");
    assert!(accepts_connections(worker.port), "the child still serves");

    client
        .retire_active_worker(RetireActiveWorkerRequest {
            worker_id: worker.worker_id.clone(),
            grace_period: Some(Duration::from_millis(500).try_into().unwrap()),
            ..Default::default()
        })
        .await
        .unwrap();

    assert!(
        !accepts_connections(worker.port),
        "the child is gone with the worker"
    );
}

#[tokio::test]
async fn stopped_worker_turns_stale() {
    let hive = TestHive::start_with(HiveOptions {
        args: vec!["--heartbeat-interval-secs".into(), "0.1".into()],
    });
    hive.install(&test_worker_bin(), "w");
    let model = model();
    let mut client = hive.client().await;
    let worker = spawn(&mut client, spawn_request("w", &model.path, &[])).await;
    let pid = nix::unistd::Pid::from_raw(worker.pid);

    // The worker is a child of the hive this test started.
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
    let stale = wait_for_state(
        &mut client,
        &worker.worker_id,
        ActiveWorkerState::Stale,
        Duration::from_secs(5),
    )
    .await;
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT).unwrap();

    assert_eq!(stale.heartbeat_source(), HeartbeatSource::ReadinessCheck);
    wait_for_state(
        &mut client,
        &worker.worker_id,
        ActiveWorkerState::Ready,
        Duration::from_secs(5),
    )
    .await;
    client
        .retire_active_worker(RetireActiveWorkerRequest {
            worker_id: worker.worker_id,
            ..Default::default()
        })
        .await
        .unwrap();
}

#[tokio::test]
async fn dropped_test_hive_takes_its_workers_along() {
    let hive = TestHive::start();
    hive.install(&test_worker_bin(), "w");
    let model = model();
    let mut client = hive.client().await;
    let worker = spawn(
        &mut client,
        spawn_request("w", &model.path, &["--fork-child"]),
    )
    .await;
    let children = children_of(worker.pid);
    assert_eq!(children.len(), 1);

    drop(client);
    drop(hive);

    assert!(
        !process_exists(worker.pid),
        "a failed test leaves no worker behind"
    );
    assert!(!process_exists(children[0]));
}
