use std::time::Duration;

use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use super::*;

fn jobs_with(limits: JobLimits) -> Jobs {
    Jobs::new(limits, CancellationToken::new())
}

async fn collect(jobs: &Jobs, id: &JobId) -> Vec<Event> {
    jobs.subscribe(id, Duration::ZERO)
        .await
        .unwrap()
        .collect()
        .await
}

#[tokio::test]
async fn late_subscriber_sees_whole_history() {
    let jobs = jobs_with(JobLimits::default());
    let narrator = jobs.start(None, "test.start", "starting").unwrap();
    let id = narrator.job_id().clone();
    narrator.info("test.step", "step one");
    narrator.finish(Outcome::ok());

    let events = collect(&jobs, &id).await;
    let actions: Vec<_> = events.iter().map(|e| e.action).collect();
    assert_eq!(actions, ["test.start", "test.step", "job.finish"]);
    let seqs: Vec<_> = events.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, [0, 1, 2]);
    assert_eq!(events[2].outcome, Some(Outcome::ok()));
}

#[tokio::test]
async fn live_subscriber_follows_until_final_event() {
    let jobs = Arc::new(jobs_with(JobLimits::default()));
    let id = JobId::parse("job-live").unwrap();

    let subscriber = {
        let jobs = Arc::clone(&jobs);
        let id = id.clone();
        tokio::spawn(async move {
            jobs.subscribe(&id, Duration::from_secs(5))
                .await
                .unwrap()
                .collect::<Vec<_>>()
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(20)).await;

    let narrator = jobs
        .start(Some(id.clone()), "test.start", "starting")
        .unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    narrator.info("test.step", "step");
    narrator.finish(Outcome::failed(5, "gone"));

    let events = subscriber.await.unwrap();
    assert_eq!(events.len(), 3);
    assert_eq!(events[2].outcome, Some(Outcome::failed(5, "gone")));
    assert_eq!(events[2].level, Level::Error);
}

#[tokio::test]
async fn unknown_job_is_not_found() {
    let jobs = jobs_with(JobLimits::default());
    let id = JobId::parse("job-missing").unwrap();
    let err = jobs
        .subscribe(&id, Duration::from_millis(10))
        .await
        .err()
        .unwrap();
    assert!(matches!(err, JobError::NotFound(ref missing) if *missing == id));
}

#[tokio::test]
async fn duplicate_job_id_is_rejected() {
    let jobs = jobs_with(JobLimits::default());
    let id = JobId::parse("job-1").unwrap();
    let _first = jobs.start(Some(id.clone()), "a", String::new()).unwrap();
    let err = jobs.start(Some(id), "a", String::new()).unwrap_err();
    assert!(matches!(err, JobError::AlreadyExists(_)));
}

#[tokio::test]
async fn history_is_bounded_and_gap_is_reported() {
    let jobs = jobs_with(JobLimits {
        max_events_per_job: 10,
        ..JobLimits::default()
    });
    let narrator = jobs.start(None, "test.start", String::new()).unwrap();
    let id = narrator.job_id().clone();
    for i in 0..100 {
        narrator.info("test.step", format!("step {i}"));
    }
    narrator.finish(Outcome::ok());

    let events = collect(&jobs, &id).await;
    assert_eq!(events.len(), 11, "gap notice plus the 10 kept events");
    assert_eq!(events[0].action, "narration.gap");
    assert_eq!(
        events[0].message,
        "92 earlier events were dropped from this job's bounded history"
    );
    assert_eq!(events[1].seq, 92);
    assert_eq!(events.last().unwrap().seq, 101);
    assert!(events.last().unwrap().outcome.is_some());
}

#[tokio::test]
async fn dropped_narrator_finishes_as_cancelled() {
    let jobs = jobs_with(JobLimits::default());
    let narrator = jobs.start(None, "test.start", String::new()).unwrap();
    let id = narrator.job_id().clone();
    drop(narrator);

    let events = collect(&jobs, &id).await;
    let outcome = events.last().unwrap().outcome.clone().unwrap();
    assert_eq!(outcome.code, 1);
}

#[tokio::test]
async fn shutdown_ends_open_streams_with_final_event() {
    let shutdown = CancellationToken::new();
    let jobs = Jobs::new(JobLimits::default(), shutdown.clone());
    let narrator = jobs.start(None, "test.start", String::new()).unwrap();
    let stream = jobs
        .subscribe(narrator.job_id(), Duration::ZERO)
        .await
        .unwrap();
    let reader = tokio::spawn(stream.collect::<Vec<_>>());
    tokio::time::sleep(Duration::from_millis(20)).await;
    shutdown.cancel();

    let events = reader.await.unwrap();
    assert_eq!(events.len(), 2);
    assert_eq!(events[1].action, "hive.shutdown");
    assert_eq!(events[1].outcome.as_ref().unwrap().code, 14);
}

#[tokio::test]
async fn finished_jobs_are_forgotten_beyond_the_limit() {
    let jobs = jobs_with(JobLimits {
        max_finished_jobs: 2,
        ..JobLimits::default()
    });
    let mut ids = Vec::new();
    for _ in 0..4 {
        let narrator = jobs.start(None, "a", String::new()).unwrap();
        ids.push(narrator.job_id().clone());
        narrator.finish(Outcome::ok());
    }
    let running = jobs.start(None, "a", String::new()).unwrap();

    assert!(jobs.get(&ids[0]).is_none());
    assert!(jobs.get(&ids[1]).is_none());
    assert!(jobs.get(&ids[2]).is_some());
    assert!(jobs.get(&ids[3]).is_some());
    // A running job counts against no limit.
    assert!(jobs.get(running.job_id()).is_some());
}

#[tokio::test]
async fn default_limits_keep_1024_finished_jobs() {
    let jobs = jobs_with(JobLimits::default());
    let mut ids = Vec::new();
    for _ in 0..1025 {
        let narrator = jobs.start(None, "a", String::new()).unwrap();
        ids.push(narrator.job_id().clone());
        narrator.finish(Outcome::ok());
    }

    assert!(jobs.get(&ids[0]).is_none());
    assert!(jobs.get(&ids[1]).is_some());
    assert!(jobs.get(&ids[1024]).is_some());
    assert_eq!(JobLimits::default().retention, Duration::from_secs(15 * 60));
}

#[tokio::test]
async fn finished_jobs_expire_after_retention() {
    let jobs = jobs_with(JobLimits {
        retention: Duration::from_millis(50),
        ..JobLimits::default()
    });
    let finished = jobs.start(None, "a", String::new()).unwrap();
    let finished_id = finished.job_id().clone();
    finished.finish(Outcome::ok());
    let running = jobs.start(None, "a", String::new()).unwrap();
    assert!(jobs.get(&finished_id).is_some());

    tokio::time::sleep(Duration::from_millis(80)).await;
    let _next = jobs.start(None, "a", String::new()).unwrap();
    assert!(jobs.get(&finished_id).is_none());
    assert!(jobs.get(running.job_id()).is_some());
}

#[test]
fn job_id_validation() {
    assert!(JobId::parse("job-0d1e:attempt.2_x").is_ok());
    for bad in ["", "has space", "slash/", "é", &"x".repeat(129)] {
        assert!(JobId::parse(bad).is_err(), "{bad:?}");
    }
    assert_eq!(JobId::parse_optional("").unwrap(), None);
    assert!(JobId::generate().as_str().starts_with("job-"));
}
