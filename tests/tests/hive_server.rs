//! Server behaviour: health, load shedding, graceful shutdown.

use std::{
    fs,
    process::{Command, Stdio},
    time::Duration,
};

use rbee_proto::v1::{
    DeleteWorkerProcessRequest, DeleteWorkerProcessResponse, ListWorkerBinariesRequest,
    NarrateRequest, StopMethod, hive_service_client::HiveServiceClient,
};
use rbee_tests::{HiveOptions, TestHive, wait_with_timeout, workspace_bin};
use tokio::task::JoinHandle;
use tokio_stream::StreamExt;
use tonic::Code;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

#[tokio::test]
async fn health_reports_hive_service_serving() {
    let hive = TestHive::start();
    let mut health = health_client(&hive).await;

    let response = health
        .check(HealthCheckRequest {
            service: "rbee.hive.v1.HiveService".into(),
        })
        .await
        .unwrap()
        .into_inner();

    assert_eq!(response.status(), ServingStatus::Serving);
}

#[tokio::test]
async fn requests_beyond_the_limit_are_shed_then_served_again() {
    let hive = TestHive::start_with(HiveOptions {
        args: vec!["--max-concurrent-requests".into(), "1".into()],
    });
    let worker = hive.start_worker("stubborn", &["--ignore-sigterm"]);

    // Holds the only request slot for the grace period.
    let slow = start_delete(&hive, "job-slow", worker.pid(), Duration::from_secs(2)).await;
    let mut client = hive.client().await;

    let shed = client
        .list_worker_binaries(ListWorkerBinariesRequest::default())
        .await
        .unwrap_err();
    assert_eq!(shed.code(), Code::ResourceExhausted);
    assert_eq!(
        shed.message(),
        "the hive is busy: 1 requests are already running; retry shortly"
    );

    slow.await.unwrap().unwrap();
    client
        .list_worker_binaries(ListWorkerBinariesRequest::default())
        .await
        .unwrap();
}

#[tokio::test]
async fn sigterm_ends_open_narration_streams_and_exits() {
    let mut hive = TestHive::start_with(HiveOptions {
        args: vec!["--drain-timeout-secs".into(), "1".into()],
    });
    let worker = hive.start_worker("stubborn", &["--ignore-sigterm"]);
    let bystander = hive.start_worker("stubborn", &["--ignore-sigterm"]);
    let running = start_delete(&hive, "job-running", worker.pid(), Duration::from_secs(60)).await;

    let mut streams = Vec::new();
    for _ in 0..20 {
        let mut client = hive.client().await;
        let stream = client
            .narrate(NarrateRequest {
                job_id: "job-running".into(),
                wait_for_start: None,
            })
            .await
            .unwrap()
            .into_inner();
        streams.push(tokio::spawn(stream.map(|e| e.unwrap()).collect::<Vec<_>>()));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;

    let status = tokio::task::spawn_blocking(move || {
        let status = hive.terminate(Duration::from_secs(15));
        (status, hive)
    });
    for stream in streams {
        let events = tokio::time::timeout(Duration::from_secs(5), stream)
            .await
            .expect("narration stream ends at shutdown")
            .unwrap();
        let last = events.last().unwrap();
        assert_eq!(last.action, "hive.shutdown");
        assert_eq!(
            last.outcome.as_ref().unwrap().code,
            Code::Unavailable as i32
        );
    }
    let (status, hive) = status.await.unwrap();
    let status = status.expect("hive exits soon after the drain timeout");
    assert!(
        status.success(),
        "hive exit {status:?}; log:\n{}",
        hive.log()
    );

    // The delete in flight had its grace period cut at the drain timeout, and still responded.
    let stopped = running
        .await
        .unwrap()
        .expect("the delete responds before the hive exits")
        .into_inner()
        .stopped
        .unwrap();
    assert_eq!(stopped.method(), StopMethod::KilledAfterGrace);
    assert!(!worker.is_running());
    assert!(
        bystander.is_running(),
        "a hive shutdown kills no other worker"
    );
}

#[tokio::test]
async fn health_watch_ends_at_shutdown() {
    // Far longer than the test waits, so only the end of the watch lets the hive exit in time.
    let mut hive = TestHive::start_with(HiveOptions {
        args: vec!["--drain-timeout-secs".into(), "60".into()],
    });
    let mut health = health_client(&hive).await;
    // The whole server (the empty name), the hive service, and a service the hive does not
    // have, with their first status and the updates that follow at shutdown.
    let cases = [
        ("", ServingStatus::Serving, vec![ServingStatus::NotServing]),
        (
            "rbee.hive.v1.HiveService",
            ServingStatus::Serving,
            vec![ServingStatus::NotServing],
        ),
        ("no.such.Service", ServingStatus::ServiceUnknown, vec![]),
    ];
    let mut watches = Vec::new();
    for (service, first, rest) in cases {
        let mut updates = health
            .watch(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        let update = updates.next().await.unwrap().unwrap();
        assert_eq!(update.status(), first, "{service:?}");
        let next = tokio::time::timeout(Duration::from_millis(100), updates.next()).await;
        assert!(next.is_err(), "{service:?}: the watch stays open: {next:?}");
        watches.push((service, updates, rest));
    }

    let started = std::time::Instant::now();
    let status = tokio::task::spawn_blocking(move || {
        let status = hive.terminate(Duration::from_secs(15));
        (status, hive)
    });
    for (service, updates, expected) in watches {
        let rest: Vec<_> = tokio::time::timeout(Duration::from_secs(10), updates.collect())
            .await
            .expect("the watch stream ends at shutdown");
        let rest: Vec<_> = rest
            .into_iter()
            .map(|update| update.unwrap().status())
            .collect();
        assert_eq!(rest, expected, "{service:?}");
    }
    let (status, hive) = status.await.unwrap();

    let status = status.expect("hive exits long before the drain timeout");
    assert!(
        status.success(),
        "hive exit {status:?}; log:\n{}",
        hive.log()
    );
    assert!(started.elapsed() < Duration::from_secs(15));
    assert!(
        !hive.log().contains("requests still running"),
        "log:\n{}",
        hive.log()
    );
}

#[tokio::test]
async fn abandoned_delete_still_finishes() {
    let hive = TestHive::start();
    let worker = hive.start_worker("stubborn", &["--ignore-sigterm"]);
    let call = start_delete(&hive, "job-abandoned", worker.pid(), Duration::from_secs(1)).await;
    let mut client = hive.client().await;

    // Dropping the call closes its connection, which cancels the request on the hive.
    call.abort();
    let events: Vec<_> = client
        .narrate(NarrateRequest {
            job_id: "job-abandoned".into(),
            wait_for_start: None,
        })
        .await
        .unwrap()
        .into_inner()
        .map(|event| event.unwrap())
        .collect()
        .await;

    let outcome = events.last().unwrap().outcome.as_ref().unwrap();
    assert_eq!(outcome.code, Code::Ok as i32, "{events:?}");
    assert!(!worker.is_running(), "the stop ended with SIGKILL");
}

#[test]
fn unusable_state_dir_fails_before_the_listening_line() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("a-file");
    fs::write(&state, "").unwrap();
    let mut hive = Command::new(workspace_bin("rbee-hive"))
        .args(["--listen", "127.0.0.1:0", "--catalog-dir"])
        .arg(dir.path().join("catalog"))
        .arg("--model-dir")
        .arg(dir.path().join("models"))
        .arg("--state-dir")
        .arg(&state)
        .stdin(Stdio::null())
        .stdout(fs::File::create(dir.path().join("stdout")).unwrap())
        .stderr(fs::File::create(dir.path().join("stderr")).unwrap())
        .spawn()
        .unwrap();
    let status = wait_with_timeout(&mut hive, Duration::from_secs(10));
    if status.is_none() {
        let _ = hive.kill();
        let _ = hive.wait();
        panic!("rbee-hive started with a file as its state directory");
    }

    let stderr = fs::read_to_string(dir.path().join("stderr")).unwrap();
    assert_eq!(status.unwrap().code(), Some(1), "{stderr}");
    assert_eq!(fs::read_to_string(dir.path().join("stdout")).unwrap(), "");
    assert!(
        stderr.ends_with(&format!(
            "error: cannot read or create the hive id in {}: Not a directory (os error 20)\n",
            state.display()
        )),
        "{stderr}"
    );
}

/// Connects a health client to the hive.
async fn health_client(hive: &TestHive) -> HealthClient<tonic::transport::Channel> {
    let channel = tonic::transport::Endpoint::from_shared(hive.url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    HealthClient::new(channel)
}

/// Sends `DeleteWorkerProcess` of `pid` as job `job_id` from a task with its own connection, and
/// returns once the job has started.
async fn start_delete(
    hive: &TestHive,
    job_id: &str,
    pid: i32,
    grace_period: Duration,
) -> JoinHandle<Result<tonic::Response<DeleteWorkerProcessResponse>, tonic::Status>> {
    let request = DeleteWorkerProcessRequest {
        job_id: job_id.into(),
        pid,
        grace_period: Some(grace_period.try_into().unwrap()),
    };
    let url = hive.url();
    let call = tokio::spawn(async move {
        let mut client = HiveServiceClient::connect(url).await.unwrap();
        client.delete_worker_process(request).await
    });
    wait_for_job(&mut hive.client().await, job_id).await;
    call
}

/// Waits until the job `job_id` has started on the hive.
async fn wait_for_job(client: &mut HiveServiceClient<tonic::transport::Channel>, job_id: &str) {
    client
        .narrate(NarrateRequest {
            job_id: job_id.into(),
            wait_for_start: Some(Duration::from_secs(10).try_into().unwrap()),
        })
        .await
        .unwrap();
}
