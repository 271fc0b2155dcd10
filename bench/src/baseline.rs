//! The baseline server: the three RPCs of the hive's interface that the benchmarks call
//! (`proto/baseline.proto`), served without doing any work. `GetWorkerBinary` returns a fixed
//! entry for [`PRESENT_BINARY`] and NOT_FOUND for other names, `ListWorkerBinaries` an empty list, and `Narrate` for a job id `events-N` streams
//! N events shaped like a worker's log lines and a final one. The hive's own client calls it, so
//! the hive and the baseline differ only in what the hive does between request and response.

use std::{pin::Pin, time::SystemTime};

use anyhow::Context;
use tokio_stream::{Stream, StreamExt, wrappers::TcpListenerStream};
use tonic::{Request, Response, Status};

mod proto {
    #![allow(missing_docs, clippy::all)]
    tonic::include_proto!("rbee.hive.v1");
}

use proto::hive_service_server::{HiveService, HiveServiceServer};

/// Job id prefix that requests a stream of that many events from the baseline.
pub const EVENTS_JOB_PREFIX: &str = "events-";

/// Name for which `GetWorkerBinary` returns an entry.
pub const PRESENT_BINARY: &str = "present";

/// `BINARY_LAYOUT_FILE` of `rbee.hive.v1.BinaryLayout`.
const LAYOUT_FILE: i32 = 1;

/// `NARRATION_LEVEL_INFO` of `rbee.hive.v1.NarrationLevel`.
const LEVEL_INFO: i32 = 2;

/// Runs the baseline server on `127.0.0.1:0` until killed; prints `listening on ADDRESS`.
pub fn serve() -> anyhow::Result<()> {
    // The same runtime as `rbee-hive`: multi-threaded, one worker thread per CPU.
    let runtime = tokio::runtime::Runtime::new().context("failed to start the runtime")?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        println!("listening on {}", listener.local_addr()?);
        let incoming = TcpListenerStream::new(listener).map(|connection| {
            if let Ok(stream) = &connection {
                let _ = stream.set_nodelay(true);
            }
            connection
        });
        tonic::transport::Server::builder()
            .add_service(HiveServiceServer::new(BareHive))
            .serve_with_incoming(incoming)
            .await?;
        Ok(())
    })
}

#[derive(Debug, Clone, Copy)]
struct BareHive;

type EventStream = Pin<Box<dyn Stream<Item = Result<proto::NarrationEvent, Status>> + Send>>;

fn event(job_id: &str, seq: u64, outcome: Option<proto::JobOutcome>) -> proto::NarrationEvent {
    proto::NarrationEvent {
        job_id: job_id.to_owned(),
        seq,
        timestamp: Some(SystemTime::now().into()),
        level: LEVEL_INFO,
        action: "worker.log".to_owned(),
        // The line the chatty worker of the narration benchmark prints.
        message: format!(
            "log line {seq:>8} of a worker that narrates a lot while it loads its model"
        ),
        outcome,
    }
}

#[tonic::async_trait]
impl HiveService for BareHive {
    async fn get_worker_binary(
        &self,
        request: Request<proto::GetWorkerBinaryRequest>,
    ) -> Result<Response<proto::GetWorkerBinaryResponse>, Status> {
        let name = request.into_inner().name;
        if name == PRESENT_BINARY {
            return Ok(Response::new(proto::GetWorkerBinaryResponse {
                job_id: "job-00000000-0000-0000-0000-000000000000".to_owned(),
                binary: Some(present_binary()),
            }));
        }
        Err(Status::not_found(format!(
            "worker binary {name:?} not found in the catalog at /tmp/.tmp000000/catalog"
        )))
    }

    async fn list_worker_binaries(
        &self,
        _: Request<proto::ListWorkerBinariesRequest>,
    ) -> Result<Response<proto::ListWorkerBinariesResponse>, Status> {
        Ok(Response::new(proto::ListWorkerBinariesResponse {
            job_id: "job-00000000-0000-0000-0000-000000000000".to_owned(),
        }))
    }

    type NarrateStream = EventStream;

    async fn narrate(
        &self,
        request: Request<proto::NarrateRequest>,
    ) -> Result<Response<Self::NarrateStream>, Status> {
        let job_id = request.into_inner().job_id;
        let count: u64 = job_id
            .strip_prefix(EVENTS_JOB_PREFIX)
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| Status::not_found(format!("job {job_id} not found")))?;
        let events = (0..=count).map(move |seq| {
            let outcome = (seq == count).then(|| proto::JobOutcome {
                code: 0,
                message: String::new(),
            });
            Ok(event(&job_id, seq, outcome))
        });
        Ok(Response::new(Box::pin(tokio_stream::iter(events))))
    }
}

/// The entry the hive returns for the script the benchmark installs, with fields of the same
/// lengths: the hive's catalog sits in a temporary directory named like this one.
fn present_binary() -> proto::WorkerBinary {
    proto::WorkerBinary {
        name: PRESENT_BINARY.to_owned(),
        path: format!("/tmp/.tmp000000/catalog/{PRESENT_BINARY}"),
        layout: LAYOUT_FILE,
        size_bytes: 10,
        sha256: "0".repeat(64),
        modified_at: Some(SystemTime::now().into()),
        executable: true,
        platform: "script".to_owned(),
    }
}
