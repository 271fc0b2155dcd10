//! Narration: late and early subscribers, unknown jobs, outcomes.

use std::time::Duration;

use rbee_proto::v1::{
    DeleteWorkerProcessRequest, GetWorkerBinaryRequest, ListWorkerBinariesRequest, NarrateRequest,
    NarrationEvent,
};
use rbee_tests::TestHive;
use tokio_stream::StreamExt;
use tonic::Code;

async fn collect(hive: &TestHive, job_id: &str, wait: Duration) -> Vec<NarrationEvent> {
    let mut client = hive.client().await;
    let stream = client
        .narrate(NarrateRequest {
            job_id: job_id.into(),
            wait_for_start: Some(wait.try_into().unwrap()),
        })
        .await
        .unwrap()
        .into_inner();
    stream.map(|event| event.unwrap()).collect().await
}

#[tokio::test]
async fn late_subscriber_sees_every_event_and_outcome() {
    let hive = TestHive::start();
    let mut worker = hive.start_worker("w", &["--exit-code", "0"]);
    let mut client = hive.client().await;
    client
        .delete_worker_process(DeleteWorkerProcessRequest {
            job_id: "job-late".into(),
            pid: worker.pid(),
            ..Default::default()
        })
        .await
        .unwrap();
    worker.process().wait();

    let events = collect(&hive, "job-late", Duration::ZERO).await;

    let actions: Vec<_> = events.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(
        actions,
        [
            "process.delete",
            "process.signal",
            "process.exit",
            "job.finish"
        ]
    );
    let seqs: Vec<_> = events.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, [0, 1, 2, 3]);
    assert!(events.iter().all(|e| e.job_id == "job-late"));
    assert_eq!(
        events[1].message,
        format!("sending SIGTERM to worker process {} (w)", worker.pid())
    );
    let outcome = events[3].outcome.clone().unwrap();
    assert_eq!(outcome.code, 0);
    assert!(events[..3].iter().all(|e| e.outcome.is_none()));
}

#[tokio::test]
async fn failed_job_ends_with_its_status() {
    let hive = TestHive::start();
    let mut client = hive.client().await;
    let status = client
        .get_worker_binary(GetWorkerBinaryRequest {
            job_id: "job-fails".into(),
            name: "missing".into(),
        })
        .await
        .unwrap_err();

    let events = collect(&hive, "job-fails", Duration::ZERO).await;

    let outcome = events.last().unwrap().outcome.clone().unwrap();
    assert_eq!(outcome.code, Code::NotFound as i32);
    assert_eq!(outcome.message, status.message());
}

#[tokio::test]
async fn subscriber_waiting_for_start_follows_live() {
    let hive = TestHive::start();
    let subscriber = {
        let url = hive.url();
        tokio::spawn(async move {
            let mut client = rbee_proto::v1::hive_service_client::HiveServiceClient::connect(url)
                .await
                .unwrap();
            let stream = client
                .narrate(NarrateRequest {
                    job_id: "job-early".into(),
                    wait_for_start: Some(Duration::from_secs(10).try_into().unwrap()),
                })
                .await
                .unwrap()
                .into_inner();
            stream.map(|e| e.unwrap()).collect::<Vec<_>>().await
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;

    let mut client = hive.client().await;
    client
        .list_worker_binaries(ListWorkerBinariesRequest {
            job_id: "job-early".into(),
        })
        .await
        .unwrap();

    let events = tokio::time::timeout(Duration::from_secs(10), subscriber)
        .await
        .expect("stream ends after the final event")
        .unwrap();
    assert_eq!(events.first().unwrap().action, "binary.list");
    assert_eq!(events.last().unwrap().outcome.as_ref().unwrap().code, 0);
}

#[tokio::test]
async fn unknown_job_is_not_found() {
    let hive = TestHive::start();
    let mut client = hive.client().await;

    let status = client
        .narrate(NarrateRequest {
            job_id: "job-never-ran".into(),
            wait_for_start: None,
        })
        .await
        .unwrap_err();

    assert_eq!(status.code(), Code::NotFound);
    assert_eq!(
        status.message(),
        "job job-never-ran not found; it never ran here or finished too long ago"
    );
}

#[tokio::test]
async fn reused_and_malformed_job_ids_are_rejected() {
    let hive = TestHive::start();
    let mut client = hive.client().await;
    let request = ListWorkerBinariesRequest {
        job_id: "job-once".into(),
    };
    client.list_worker_binaries(request.clone()).await.unwrap();

    let again = client.list_worker_binaries(request).await.unwrap_err();
    assert_eq!(again.code(), Code::AlreadyExists);

    let malformed = client
        .list_worker_binaries(ListWorkerBinariesRequest {
            job_id: "bad id with spaces".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(malformed.code(), Code::InvalidArgument);
}
