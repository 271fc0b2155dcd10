//! Load faults: a hundred narration streams open when the hive shuts down, and many clients
//! beyond the concurrency limit.

use std::time::{Duration, Instant};

use rbee_proto::v1::{
    DeleteWorkerProcessRequest, ListWorkerBinariesRequest, NarrateRequest, NarrationEvent,
    hive_service_client::HiveServiceClient,
};
use rbee_tests::{HiveOptions, TestHive, TestWorker};
use tokio::{sync::mpsc, task::JoinSet};
use tonic::{Code, Status, transport::Channel};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

fn seconds(secs: u64) -> Option<prost_types::Duration> {
    Some(Duration::from_secs(secs).try_into().unwrap())
}

async fn connect(hive: &TestHive) -> Channel {
    tonic::transport::Endpoint::from_shared(hive.url())
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// Starts a delete of `worker` (which ignores SIGTERM) under `job_id`, which occupies a request
/// slot for `grace`, and waits until its job has started.
async fn hold_slot(
    hive: &TestHive,
    worker: &TestWorker,
    job_id: &str,
    grace: u64,
) -> tokio::task::JoinHandle<Result<(), Status>> {
    let request = DeleteWorkerProcessRequest {
        job_id: job_id.into(),
        pid: worker.pid(),
        grace_period: seconds(grace),
    };
    let url = hive.url();
    let running = tokio::spawn(async move {
        let mut client = HiveServiceClient::connect(url).await.unwrap();
        client.delete_worker_process(request).await.map(drop)
    });
    hive.client()
        .await
        .narrate(NarrateRequest {
            job_id: job_id.into(),
            wait_for_start: seconds(10),
        })
        .await
        .unwrap();
    running
}

/// Narration streams on jobs that run until the hive stops.
const LIVE_STREAMS: usize = 100;

/// Narration requests that wait for a job that never starts.
const WAITING_STREAMS: usize = 10;

/// Streams multiplexed on one connection.
const STREAMS_PER_CONNECTION: usize = 10;

/// Drain timeout of the hive under test.
const DRAIN: Duration = Duration::from_secs(2);

#[tokio::test]
async fn hundred_narration_streams_end_at_shutdown() {
    let mut hive = TestHive::start_with(HiveOptions {
        args: vec!["--drain-timeout-secs".into(), DRAIN.as_secs().to_string()],
    });
    let workers: Vec<TestWorker> = (0..3)
        .map(|_| hive.start_worker("stubborn", &["--ignore-sigterm"]))
        .collect();
    let mut running = Vec::new();
    let jobs = ["job-a", "job-b", "job-c"];
    for (worker, job_id) in workers.iter().zip(jobs) {
        running.push(hold_slot(&hive, worker, job_id, 60).await);
    }

    let (opened, mut opened_rx) = mpsc::unbounded_channel();
    let mut live = JoinSet::new();
    let mut channel = connect(&hive).await;
    for stream in 0..LIVE_STREAMS {
        if stream % STREAMS_PER_CONNECTION == 0 {
            channel = connect(&hive).await;
        }
        let mut client = HiveServiceClient::new(channel.clone());
        let job_id = jobs[stream % jobs.len()];
        let opened = opened.clone();
        live.spawn(async move {
            let mut events = client
                .narrate(NarrateRequest {
                    job_id: job_id.into(),
                    wait_for_start: None,
                })
                .await
                .unwrap()
                .into_inner();
            let mut seen: Vec<NarrationEvent> = Vec::new();
            while let Some(event) = events.message().await.unwrap() {
                if seen.is_empty() {
                    opened.send(()).unwrap();
                }
                seen.push(event);
            }
            seen
        });
    }
    for _ in 0..LIVE_STREAMS {
        opened_rx.recv().await.unwrap();
    }
    let mut waiting = JoinSet::new();
    for stream in 0..WAITING_STREAMS {
        let mut client = HiveServiceClient::new(channel.clone());
        waiting.spawn(async move {
            client
                .narrate(NarrateRequest {
                    job_id: format!("job-never-started-{stream}"),
                    wait_for_start: seconds(60),
                })
                .await
                .map(drop)
        });
    }
    tokio::time::sleep(Duration::from_millis(200)).await;

    let shutdown = Instant::now();
    let stopped = tokio::task::spawn_blocking(move || {
        let status = hive.terminate(DRAIN + Duration::from_secs(10));
        (status, hive)
    });
    let margin = Duration::from_secs(3);
    let streams = tokio::time::timeout(DRAIN + margin, live.join_all())
        .await
        .expect("every narration stream ends within the drain timeout");
    let waits = tokio::time::timeout(DRAIN + margin, waiting.join_all())
        .await
        .expect("every waiting narration request ends within the drain timeout");
    let (status, hive) = stopped.await.unwrap();
    let exited_after = shutdown.elapsed();

    assert_eq!(streams.len(), LIVE_STREAMS);
    for events in &streams {
        let last = events.last().unwrap();
        assert_eq!(last.action, "hive.shutdown");
        let outcome = last
            .outcome
            .as_ref()
            .expect("the final event has an outcome");
        assert_eq!(outcome.code, Code::Unavailable as i32);
        let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
        let expected: Vec<u64> = (0..events.len() as u64).collect();
        assert_eq!(seqs, expected, "no event lost or repeated");
    }
    for wait in waits {
        assert_eq!(wait.unwrap_err().code(), Code::Unavailable);
    }
    let status = status.expect("the hive exits");
    assert!(
        status.success(),
        "hive exit {status:?}; log:\n{}",
        hive.log()
    );
    assert!(
        exited_after < DRAIN + margin,
        "the hive took {exited_after:?} to exit"
    );
    // The deletes holding the slots had their grace period cut at the drain timeout.
    for worker in &workers {
        assert!(
            !worker.is_running(),
            "the delete in flight ended with SIGKILL"
        );
    }
    drop(running);
}

/// Request slots of the hive under load.
const LIMIT: usize = 4;

/// Clients, each on a connection of its own.
const CLIENTS: usize = 100;

#[tokio::test]
async fn overload_sheds_many_clients_and_recovers() {
    let mut hive = TestHive::start_with(HiveOptions {
        args: vec!["--max-concurrent-requests".into(), LIMIT.to_string()],
    });
    let workers: Vec<TestWorker> = (0..LIMIT)
        .map(|_| hive.start_worker("stubborn", &["--ignore-sigterm"]))
        .collect();
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        clients.push(HiveServiceClient::new(connect(&hive).await));
    }
    let mut holds = Vec::new();
    for (index, worker) in workers.iter().enumerate() {
        holds.push(hold_slot(&hive, worker, &format!("job-hold-{index}"), 3).await);
    }

    // Every slot is held: every client is shed at once.
    let mut shed = JoinSet::new();
    for client in &clients {
        let mut client = client.clone();
        shed.spawn(async move {
            let started = Instant::now();
            let result = client
                .list_worker_binaries(ListWorkerBinariesRequest::default())
                .await;
            (result.map(drop), started.elapsed())
        });
    }
    for (result, took) in shed.join_all().await {
        let status = result.expect_err("shed while every slot is held");
        assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
        assert!(took < Duration::from_secs(2), "shedding took {took:?}");
    }

    for hold in holds {
        hold.await
            .unwrap()
            .expect("the held requests finish normally");
    }
    for (index, client) in clients.iter_mut().enumerate() {
        client
            .list_worker_binaries(ListWorkerBinariesRequest::default())
            .await
            .unwrap_or_else(|status| panic!("client {index} after the load: {status:?}"));
    }

    // A storm without held slots: each request is served or shed, nothing else.
    let mut storm = JoinSet::new();
    for _ in 0..5 {
        for client in &clients {
            let mut client = client.clone();
            storm.spawn(async move {
                client
                    .list_worker_binaries(ListWorkerBinariesRequest::default())
                    .await
                    .map(drop)
            });
        }
    }
    let mut served = 0;
    for result in storm.join_all().await {
        match result {
            Ok(()) => served += 1,
            Err(status) => assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}"),
        }
    }
    assert!(served > 0, "some requests of the storm are served");

    assert!(
        hive.process().child_mut().try_wait().unwrap().is_none(),
        "the hive exited; log:\n{}",
        hive.log()
    );
    let health = HealthClient::new(connect(&hive).await)
        .check(HealthCheckRequest {
            service: "rbee.hive.v1.HiveService".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(health.status(), ServingStatus::Serving);
}
