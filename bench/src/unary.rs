//! Throughput of cheap unary RPCs: the hive against the bare baseline server, with the same
//! load client (concurrent requests multiplexed on one HTTP/2 connection) over loopback.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::bail;
use rbee_proto::v1::{
    GetWorkerBinaryRequest, ListWorkerBinariesRequest, hive_service_client::HiveServiceClient,
};
use tokio::task::JoinSet;
use tonic::Code;

use crate::{
    baseline::PRESENT_BINARY,
    fixture::{Baseline, Hive, connect},
    median,
    report::{Measure, Row, Target},
};

/// Requests in flight at once on the one connection.
const CONCURRENCY: usize = 50;

/// Alternating rounds per server; the median round counts.
const ROUNDS: usize = 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    /// `GetWorkerBinary` of a name the catalog does not have: NOT_FOUND.
    GetUnknownBinary,
    /// `GetWorkerBinary` of a script installed in the catalog.
    GetInstalledBinary,
    /// `ListWorkerBinaries` of an empty catalog.
    ListEmptyCatalog,
}

impl Call {
    fn name(self) -> &'static str {
        match self {
            Self::GetUnknownBinary => "GetWorkerBinary (unknown name)",
            Self::GetInstalledBinary => "GetWorkerBinary (installed script)",
            Self::ListEmptyCatalog => "ListWorkerBinaries (empty catalog)",
        }
    }
}

pub async fn run(call: Call, round_time: Duration) -> anyhow::Result<Row> {
    let hive = Hive::start(&[])?;
    let baseline = Baseline::start()?;
    if call == Call::GetInstalledBinary {
        let script = tempfile::NamedTempFile::new()?;
        std::fs::write(script.path(), "#!/bin/sh\n")?;
        hive.install(script.path(), PRESENT_BINARY)?;
    }

    let mut hive_rates = Vec::new();
    let mut baseline_rates = Vec::new();
    for _ in 0..ROUNDS {
        baseline_rates.push(requests_per_second(&baseline.url(), call, round_time).await?);
        hive_rates.push(requests_per_second(&hive.url(), call, round_time).await?);
    }

    Ok(Row {
        name: format!("{} throughput, {CONCURRENCY} streams", call.name()),
        rbee: Measure::per_second(median(&mut hive_rates)),
        baseline: Measure::per_second(median(&mut baseline_rates)),
        target: Target::AtLeast(0.8),
    })
}

/// Sends `call` from `CONCURRENCY` tasks for `round_time` after a short warm-up, and returns the
/// completed requests per second. Fails if any request gets an unexpected response, such as being
/// shed, which would make the rate meaningless.
async fn requests_per_second(url: &str, call: Call, round_time: Duration) -> anyhow::Result<f64> {
    let client = HiveServiceClient::new(connect(url).await?);
    let warm_up = Duration::from_millis(300);
    let counting = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let completed = Arc::new(AtomicU64::new(0));

    let mut tasks = JoinSet::new();
    for _ in 0..CONCURRENCY {
        let mut client = client.clone();
        let (counting, stop, completed) = (
            Arc::clone(&counting),
            Arc::clone(&stop),
            Arc::clone(&completed),
        );
        tasks.spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let expected = match call {
                    Call::GetUnknownBinary => client
                        .get_worker_binary(GetWorkerBinaryRequest {
                            name: "missing-worker".into(),
                            ..Default::default()
                        })
                        .await
                        .map(drop)
                        .is_err_and(|status| status.code() == Code::NotFound),
                    Call::GetInstalledBinary => client
                        .get_worker_binary(GetWorkerBinaryRequest {
                            name: PRESENT_BINARY.into(),
                            ..Default::default()
                        })
                        .await
                        .is_ok_and(|response| {
                            response
                                .into_inner()
                                .binary
                                .is_some_and(|binary| binary.name == PRESENT_BINARY)
                        }),
                    Call::ListEmptyCatalog => client
                        .list_worker_binaries(ListWorkerBinariesRequest::default())
                        .await
                        .is_ok_and(|response| response.into_inner().binaries.is_empty()),
                };
                if !expected {
                    return false;
                }
                if counting.load(Ordering::Relaxed) {
                    completed.fetch_add(1, Ordering::Relaxed);
                }
            }
            true
        });
    }

    tokio::time::sleep(warm_up).await;
    counting.store(true, Ordering::Relaxed);
    let started = Instant::now();
    tokio::time::sleep(round_time).await;
    counting.store(false, Ordering::Relaxed);
    let elapsed = started.elapsed();
    let count = completed.load(Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    for ok in tasks.join_all().await {
        if !ok {
            bail!(
                "{url} returned an unexpected response to a {} request",
                call.name()
            );
        }
    }
    Ok(count as f64 / elapsed.as_secs_f64())
}
