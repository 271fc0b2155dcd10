//! Narration: events per second to one subscriber that reads as fast as it can, and the hive's
//! memory and job time with a subscriber that never reads.
//!
//! The job is a spawn of a "chatty" worker that writes many log lines before it listens: the
//! hive narrates each line as an event, so the job emits a burst of events.

use std::{
    fs,
    time::{Duration, Instant},
};

use anyhow::{Context, ensure};
use rbee_proto::v1::{
    NarrateRequest, RetireActiveWorkerRequest, SpawnWorkerRequest,
    hive_service_client::HiveServiceClient,
};
use tonic::transport::Channel;

use crate::{
    baseline::EVENTS_JOB_PREFIX,
    fixture::{Adopted, Baseline, Hive, connect, rss_bytes},
    report::{Measure, Row, Target},
};

/// A worker in Python that prints `argv[2]` log lines, the ones the baseline streams, in
/// batches of `argv[3]` lines 100 ms apart, then listens on the port `argv[1]` until stopped.
const CHATTY_WORKER: &str = r#"
import socket, sys, time
port, count, batch = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
out = sys.stdout
for seq in range(count):
    out.write("log line %8d of a worker that narrates a lot while it loads its model\n" % seq)
    if (seq + 1) % batch == 0 and seq + 1 < count:
        out.flush()
        time.sleep(0.1)
out.flush()
listener = socket.socket()
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind(("127.0.0.1", port))
listener.listen()
time.sleep(3600)
"#;

/// Installs the chatty worker as the folder entry `chatty`, printing `lines` lines in batches
/// of `batch`.
fn install_chatty(hive: &Hive, lines: u64, batch: u64) -> anyhow::Result<()> {
    let folder = hive.catalog_dir().join("chatty");
    fs::create_dir_all(&folder)?;
    let manifest = serde_json::json!({
        "command": ["python3", "-c", CHATTY_WORKER, "{port}", lines.to_string(),
            batch.to_string()],
    });
    fs::write(folder.join("manifest.json"), manifest.to_string())?;
    Ok(())
}

/// Narration a subscriber received of one job.
struct Seen {
    /// Events received, gap notices not counted.
    events: u64,
    /// Events the subscriber missed because they left the job's bounded history first.
    missed: u64,
    /// Time from the first `worker.log` event (the first of any kind when there is none) to the
    /// final event.
    first_to_last: Duration,
}

/// Reads a narration stream to its end as fast as possible.
async fn read_all(
    mut client: HiveServiceClient<Channel>,
    job_id: String,
    wait: Duration,
) -> anyhow::Result<Seen> {
    let mut stream = client
        .narrate(NarrateRequest {
            job_id,
            wait_for_start: Some(wait.try_into()?),
        })
        .await?
        .into_inner();
    let mut seen = Seen {
        events: 0,
        missed: 0,
        first_to_last: Duration::ZERO,
    };
    let mut first: Option<(Instant, bool)> = None;
    let mut next_seq = 0;
    while let Some(event) = stream.message().await? {
        let now = Instant::now();
        let is_log = event.action == "worker.log";
        if first.is_none_or(|(_, was_log)| is_log && !was_log) {
            first = Some((now, is_log));
        }
        seen.first_to_last = now - first.map_or(now, |(at, _)| at);
        if event.action == "narration.gap" {
            continue;
        }
        seen.events += 1;
        seen.missed += event.seq.saturating_sub(next_seq);
        next_seq = event.seq + 1;
    }
    Ok(seen)
}

/// Spawns the chatty worker under `job_id` and retires it; returns how long the spawn took.
async fn chatty_job(hive: &Hive, model: &str, job_id: &str) -> anyhow::Result<Duration> {
    let mut client = hive.client().await?;
    let started = Instant::now();
    let worker = client
        .spawn_worker(SpawnWorkerRequest {
            job_id: job_id.to_owned(),
            binary: "chatty".into(),
            model: model.to_owned(),
            device: "cpu".into(),
            ready_timeout: Some(Duration::from_secs(120).try_into()?),
            ..Default::default()
        })
        .await
        .context("the chatty worker did not start")?
        .into_inner()
        .worker
        .context("spawn returned no worker")?;
    let took = started.elapsed();
    let _guard = Adopted::new(worker.pid);
    client
        .retire_active_worker(RetireActiveWorkerRequest {
            worker_id: worker.worker_id,
            grace_period: Some(Duration::ZERO.try_into()?),
            ..Default::default()
        })
        .await?;
    Ok(took)
}

/// Events per second to one fast subscriber, against the bare server streaming as many events
/// of the same shape. The worker writes its lines in batches of [`PACED_BATCH`], 100 ms apart.
/// The hive reads a worker's log every 100 ms and a job keeps 1,024 events, so this is about
/// the fastest narration a subscriber can follow without missing events.
pub async fn events_per_second(lines: u64) -> anyhow::Result<Row> {
    let hive = Hive::start(&[])?;
    install_chatty(&hive, lines, PACED_BATCH)?;
    let model = hive.catalog_dir();
    let model = model.to_str().context("temp path is not UTF-8")?;

    let job_id = "bench-chatty".to_owned();
    let subscriber = tokio::spawn(read_all(
        hive.client().await?,
        job_id.clone(),
        Duration::from_secs(30),
    ));
    // Lets the subscriber's request reach the hive before the job starts.
    tokio::time::sleep(Duration::from_millis(200)).await;
    chatty_job(&hive, model, &job_id).await?;
    let seen = subscriber.await??;
    ensure!(seen.events > 0, "no narration event arrived");
    eprintln!(
        "narration of {lines} log lines: {} events received, {} missed, in {:?}",
        seen.events, seen.missed, seen.first_to_last
    );

    let baseline = Baseline::start()?;
    let client = HiveServiceClient::new(connect(&baseline.url()).await?);
    let bare = read_all(
        client,
        format!("{EVENTS_JOB_PREFIX}{lines}"),
        Duration::ZERO,
    )
    .await?;

    Ok(Row {
        name: format!("narration events/s to one subscriber, {lines} events"),
        rbee: Measure::per_second(seen.events as f64 / seen.first_to_last.as_secs_f64()),
        baseline: Measure::per_second(bare.events as f64 / bare.first_to_last.as_secs_f64()),
        target: Target::None,
    })
}

/// Lines per batch of the paced chatty worker: fewer than the 1,024 events a job keeps, so a
/// reader that keeps up misses none.
const PACED_BATCH: u64 = 1000;

/// Measures the hive's RSS and job time with a subscriber that never reads, against a hive
/// running the same job without subscribers. The paced worker makes the job last long enough for the hive's
/// 100 ms log polling not to dominate its time.
pub async fn stalled_subscriber(lines: u64) -> anyhow::Result<[Row; 2]> {
    let quiet = Hive::start(&[])?;
    install_chatty(&quiet, lines, PACED_BATCH)?;
    let model = quiet.catalog_dir().display().to_string();
    let quiet_time = chatty_job(&quiet, &model, "bench-no-subscriber").await?;
    let quiet_rss = rss_bytes(quiet.pid())?;
    drop(quiet);

    let stalled = Hive::start(&[])?;
    install_chatty(&stalled, lines, PACED_BATCH)?;
    let model = stalled.catalog_dir().display().to_string();
    let mut client = stalled.client().await?;
    let job_id = "bench-stalled-subscriber";
    let subscription = tokio::spawn(async move {
        let response = client
            .narrate(NarrateRequest {
                job_id: job_id.to_owned(),
                wait_for_start: Some(Duration::from_secs(30).try_into()?),
            })
            .await?;
        // Kept open, never read, until the measurement is over.
        anyhow::Ok((client, response))
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let stalled_time = chatty_job(&stalled, &model, job_id).await?;
    let stalled_rss = rss_bytes(stalled.pid())?;
    let open_stream = subscription.await??;
    drop(open_stream);

    Ok([
        Row {
            name: format!("hive RSS after a {lines}-event job, stalled subscriber vs none"),
            rbee: Measure::bytes(stalled_rss),
            baseline: Measure::bytes(quiet_rss),
            target: Target::AtMost(1.2),
        },
        Row {
            name: format!("time of a {lines}-event job, stalled subscriber vs none"),
            rbee: Measure::millis(stalled_time),
            baseline: Measure::millis(quiet_time),
            target: Target::AtMost(1.2),
        },
    ])
}
