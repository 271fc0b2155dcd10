//! Process table over gRPC: listing, identity, and stopping worker processes safely.

use std::{os::unix::process::ExitStatusExt, time::Duration};

use rbee_proto::v1::{
    DeleteWorkerProcessRequest, GetWorkerProcessRequest, ListWorkerProcessesRequest, StopMethod,
};
use rbee_tests::{TestHive, start_non_worker};
use tonic::Code;

fn grace(millis: u64) -> Option<prost_types::Duration> {
    Some(Duration::from_millis(millis).try_into().unwrap())
}

#[tokio::test]
async fn list_shows_worker_with_details_and_port() {
    let hive = TestHive::start();
    let worker = hive.start_worker("llm-worker", &["--exit-code", "0"]);
    let _other = hive.start_worker("other-worker", &[]);
    let _impostor = start_non_worker("llm-worker");
    let mut client = hive.client().await;

    let all = client
        .list_worker_processes(ListWorkerProcessesRequest::default())
        .await
        .unwrap()
        .into_inner();
    let names: Vec<_> = all
        .processes
        .iter()
        .map(|p| p.worker_name.as_str())
        .collect();
    assert_eq!(names.len(), 2, "only catalog binaries count: {names:?}");

    let filtered = client
        .list_worker_processes(ListWorkerProcessesRequest {
            worker_name: "llm-worker".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(filtered.processes.len(), 1);
    let record = &filtered.processes[0];
    assert_eq!(record.pid, worker.pid());
    assert_eq!(record.ppid, i32::try_from(std::process::id()).unwrap());
    assert_eq!(record.worker_name, "llm-worker");
    assert_eq!(
        record.exe_path,
        hive.catalog_dir()
            .canonicalize()
            .unwrap()
            .join("llm-worker")
            .display()
            .to_string()
    );
    assert_eq!(record.argv[1..], ["--exit-code", "0"]);
    assert_eq!(record.uid, nix::unistd::getuid().as_raw());
    assert_eq!(record.state, "sleeping");
    assert!(record.rss_bytes > 0);
    assert!(record.started_at.is_some());
    assert_eq!(record.listening_ports, [u32::from(worker.port)]);
}

#[tokio::test]
async fn non_worker_pid_is_not_found_and_left_alive() {
    let hive = TestHive::start();
    let bystander = start_non_worker("worker");
    let mut client = hive.client().await;

    let get = client
        .get_worker_process(GetWorkerProcessRequest {
            pid: bystander.pid(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(get.code(), Code::NotFound);
    assert_eq!(
        get.message(),
        format!("no worker process with pid {}", bystander.pid())
    );

    let delete = client
        .delete_worker_process(DeleteWorkerProcessRequest {
            pid: bystander.pid(),
            grace_period: grace(0),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(delete.code(), Code::NotFound);
    assert_eq!(delete.message(), get.message());
    assert!(bystander.is_running());

    // A pid nobody has: the same answer, so a caller cannot tell the two cases apart.
    let unused = client
        .get_worker_process(GetWorkerProcessRequest {
            pid: i32::MAX,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(unused.code(), Code::NotFound);
    assert_eq!(
        unused.message(),
        format!("no worker process with pid {}", i32::MAX)
    );
}

#[tokio::test]
async fn invalid_pids_and_grace_are_invalid_argument() {
    let hive = TestHive::start();
    let mut client = hive.client().await;

    for pid in [0, -1, i32::MIN] {
        let status = client
            .delete_worker_process(DeleteWorkerProcessRequest {
                pid,
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "pid {pid}");
        assert_eq!(
            status.message(),
            format!("invalid pid {pid}: a pid is a positive number")
        );
    }

    let worker = hive.start_worker("w", &[]);
    let status = client
        .delete_worker_process(DeleteWorkerProcessRequest {
            pid: worker.pid(),
            grace_period: Some(prost_types::Duration {
                seconds: -1,
                nanos: 0,
            }),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(worker.is_running());
}

#[tokio::test]
async fn delete_terminates_and_reports_exit_code() {
    let hive = TestHive::start();
    let mut worker = hive.start_worker("w", &["--exit-code", "7"]);
    let mut client = hive.client().await;

    let stopped = client
        .delete_worker_process(DeleteWorkerProcessRequest {
            pid: worker.pid(),
            grace_period: grace(5_000),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .stopped
        .unwrap();

    assert_eq!(stopped.pid, worker.pid());
    assert_eq!(stopped.worker_name, "w");
    assert_eq!(stopped.method(), StopMethod::Terminated);
    assert_eq!(stopped.exit_code, Some(7));
    assert_eq!(stopped.signal, None);
    assert_eq!(worker.process().wait().code(), Some(7));
}

#[tokio::test]
async fn delete_kills_worker_ignoring_sigterm_after_grace() {
    let hive = TestHive::start();
    let mut worker = hive.start_worker("stubborn", &["--ignore-sigterm"]);
    let mut client = hive.client().await;

    let stopped = client
        .delete_worker_process(DeleteWorkerProcessRequest {
            pid: worker.pid(),
            grace_period: grace(300),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .stopped
        .unwrap();

    assert_eq!(stopped.method(), StopMethod::KilledAfterGrace);
    assert_eq!(stopped.signal, Some(9));
    let elapsed = Duration::try_from(stopped.elapsed.unwrap()).unwrap();
    assert!(elapsed >= Duration::from_millis(300), "{elapsed:?}");
    assert_eq!(worker.process().wait().signal(), Some(9));
}

#[tokio::test]
async fn zero_grace_kills_at_once_and_gone_pid_is_not_found() {
    let hive = TestHive::start();
    let mut worker = hive.start_worker("w", &[]);
    let mut client = hive.client().await;
    let request = DeleteWorkerProcessRequest {
        pid: worker.pid(),
        grace_period: grace(0),
        ..Default::default()
    };

    let stopped = client
        .delete_worker_process(request.clone())
        .await
        .unwrap()
        .into_inner()
        .stopped
        .unwrap();
    assert_eq!(stopped.method(), StopMethod::Killed);
    assert_eq!(stopped.signal, Some(9));
    worker.process().wait();

    let again = client.delete_worker_process(request).await.unwrap_err();
    assert_eq!(again.code(), Code::NotFound);
}
