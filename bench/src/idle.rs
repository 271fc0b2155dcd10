//! Memory of an idle hive against the idle baseline server.

use std::time::Duration;

use rbee_proto::v1::{ListWorkerBinariesRequest, hive_service_client::HiveServiceClient};

use crate::{
    fixture::{Baseline, Hive, connect, rss_bytes},
    report::{Measure, Row, Target},
};

/// RSS of an idle hive against the idle baseline server.
pub async fn idle_rss() -> anyhow::Result<Row> {
    let hive = Hive::start(&[])?;
    let baseline = Baseline::start()?;
    // One request each, so both have set up their connection handling, then a pause.
    HiveServiceClient::new(connect(&hive.url()).await?)
        .list_worker_binaries(ListWorkerBinariesRequest::default())
        .await?;
    HiveServiceClient::new(connect(&baseline.url()).await?)
        .list_worker_binaries(ListWorkerBinariesRequest::default())
        .await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    Ok(Row {
        name: "idle RSS after one request".to_owned(),
        rbee: Measure::bytes(rss_bytes(hive.pid())?),
        baseline: Measure::bytes(rss_bytes(baseline.pid())?),
        target: Target::None,
    })
}
