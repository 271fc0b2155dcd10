//! `ListWorkerProcesses` through gRPC against `ps aux | grep worker`, with a crowd of idle
//! processes on the machine beside a few catalog workers.

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, ensure};
use rbee_proto::v1::ListWorkerProcessesRequest;

use crate::{
    fixture::{Crowd, Guarded, Hive, sibling_binary},
    median,
    report::{Measure, Row, Target},
};

/// Catalog workers running during the measurement.
const WORKERS: usize = 4;

pub async fn run(crowd_size: usize, samples: usize) -> anyhow::Result<Row> {
    let hive = Hive::start(&[])?;
    let path = hive.install(&sibling_binary("test-worker")?, "llm-worker")?;
    let mut workers = Vec::new();
    for _ in 0..WORKERS {
        let child = Command::new(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .context("failed to start a catalog worker")?;
        workers.push(Guarded::new(child, Duration::ZERO));
    }
    let _crowd = Crowd::start(crowd_size)?;
    let mut client = hive.client().await?;

    let mut hive_times = Vec::new();
    let mut ps_times = Vec::new();
    // One warm-up round, then the samples; the two are interleaved so both see the same load.
    for sample in 0..=samples {
        let started = Instant::now();
        let listed = client
            .list_worker_processes(ListWorkerProcessesRequest::default())
            .await?
            .into_inner()
            .processes;
        let hive_time = started.elapsed();
        ensure!(
            listed.len() == WORKERS,
            "the hive listed {} worker processes, not {WORKERS}",
            listed.len()
        );

        let started = Instant::now();
        let output = Command::new("sh")
            .args(["-c", "ps aux | grep worker"])
            .stdin(Stdio::null())
            .output()
            .context("failed to run ps aux | grep worker")?;
        let ps_time = started.elapsed();
        ensure!(output.status.success(), "ps aux | grep worker failed");

        if sample > 0 {
            hive_times.push(hive_time);
            ps_times.push(ps_time);
        }
    }
    drop(workers);

    Ok(Row {
        name: format!("ListWorkerProcesses, {crowd_size} extra processes (vs ps aux | grep)"),
        rbee: Measure::millis(median(&mut hive_times)),
        baseline: Measure::millis(median(&mut ps_times)),
        target: Target::AtMost(0.2),
    })
}
