//! Malformed requests: a thousand requests with invalid names, pids, ids, durations, unknown
//! fields and undecodable bodies. Each must fail with the code the protocol documents, and the
//! hive must stay up without its memory growing from one round of them to the next.

use std::{
    collections::HashMap,
    task::{Context, Poll},
};

use rbee_proto::v1::{
    DeleteWorkerBinaryRequest, DeleteWorkerProcessRequest, GetActiveWorkerRequest,
    GetHiveInfoRequest, GetWorkerBinaryRequest, GetWorkerProcessRequest, HeartbeatRequest,
    ListActiveWorkersRequest, ListWorkerBinariesRequest, ListWorkerProcessesRequest,
    NarrateRequest, RetireActiveWorkerRequest, SpawnWorkerRequest,
    hive_service_client::HiveServiceClient,
};
use rbee_tests::{TestHive, rss_bytes};
use tokio::task::JoinSet;
use tonic::{
    Code, Status,
    body::Body,
    codegen::{Service, http},
    transport::Channel,
};

/// Requests of one round.
const ROUND: usize = 1_000;

/// Requests in flight at once.
const IN_FLIGHT: usize = 16;

/// Growth of the hive's RSS allowed from the end of the first round to the end of the second.
/// The first round fills the bounded job registry and the allocator's pools. A leak of even a few
/// KiB per request would exceed this over a second round.
const MAX_SECOND_ROUND_GROWTH: u64 = 8 << 20;

/// Growth of the hive's RSS allowed over both rounds.
const MAX_TOTAL_GROWTH: u64 = 64 << 20;

/// A pid above any `pid_max` Linux allows (2^22), so no process can have it.
const NO_SUCH_PID: i32 = i32::MAX;

/// One request and the code it must fail with.
#[derive(Debug, Clone)]
struct Case {
    request: Request,
    expected: Code,
}

/// A request of any RPC, or a message sent to the path of another RPC.
#[derive(Debug, Clone)]
enum Request {
    GetHiveInfo(GetHiveInfoRequest),
    ListBinaries(ListWorkerBinariesRequest),
    GetBinary(GetWorkerBinaryRequest),
    DeleteBinary(DeleteWorkerBinaryRequest),
    ListProcesses(ListWorkerProcessesRequest),
    GetProcess(GetWorkerProcessRequest),
    DeleteProcess(DeleteWorkerProcessRequest),
    Spawn(SpawnWorkerRequest),
    Heartbeat(HeartbeatRequest),
    ListActive(ListActiveWorkersRequest),
    GetActive(GetActiveWorkerRequest),
    Retire(RetireActiveWorkerRequest),
    Narrate(NarrateRequest),
    /// A `SpawnWorkerRequest` sent to `GetWorkerBinary`: field 2 (`binary`) decodes as the
    /// name and fields 3 to 8 are unknown there.
    SpawnAsGetBinary(SpawnWorkerRequest),
    /// A `GetWorkerProcessRequest` sent to `GetWorkerBinary`: field 2 is a varint where a string
    /// is expected, so the body does not decode.
    GetProcessAsGetBinary(GetWorkerProcessRequest),
    /// A `DeleteWorkerProcessRequest` sent to `SpawnWorker`: the encoded `grace_period` lands in
    /// the string field `model` and is not UTF-8.
    DeleteProcessAsSpawn(DeleteWorkerProcessRequest),
    /// A `GetWorkerBinaryRequest` sent to a method the service does not have.
    UnknownMethod(GetWorkerBinaryRequest),
}

fn duration(seconds: i64, nanos: i32) -> Option<prost_types::Duration> {
    Some(prost_types::Duration { seconds, nanos })
}

/// Returns a worker name that `WorkerName::parse` rejects, varied by `i`.
fn bad_name(i: usize) -> String {
    match i % 12 {
        0 => format!("../{i}"),
        1 => format!("../../etc/passwd{i}"),
        2 => format!("dir/{i}"),
        3 => "/".to_owned(),
        4 => ".".to_owned(),
        5 => "..".to_owned(),
        6 => format!("nul\0{i}"),
        7 => format!("line\n{i}"),
        8 => format!("rm\u{202e}{i}"),
        9 => format!(".hidden{i}"),
        10 => "x".repeat(256 + i % 200),
        // Huge: far beyond any name, well within the 4 MiB message limit.
        _ => "y".repeat(1 << 20),
    }
}

/// Returns a job id that `JobId::parse` rejects, varied by `i`.
fn bad_job_id(i: usize) -> String {
    match i % 5 {
        0 => format!("job with spaces {i}"),
        1 => "j".repeat(129 + i % 50),
        2 => format!("job/{i}"),
        3 => format!("jöb-{i}"),
        _ => format!("job\0{i}"),
    }
}

/// Returns the `i`-th malformed request of a round.
fn case(i: usize) -> Case {
    use Code::{Internal, InvalidArgument, NotFound, Unimplemented};
    let name = bad_name(i / 24);
    let job_id = bad_job_id(i / 24);
    let unknown = format!("missing-{i}");
    let (request, expected) = match i % 24 {
        0 => (
            Request::GetBinary(GetWorkerBinaryRequest {
                name,
                ..Default::default()
            }),
            InvalidArgument,
        ),
        1 => (
            Request::DeleteBinary(DeleteWorkerBinaryRequest {
                name,
                force: true,
                ..Default::default()
            }),
            InvalidArgument,
        ),
        2 => (
            Request::ListProcesses(ListWorkerProcessesRequest {
                worker_name: name,
                ..Default::default()
            }),
            InvalidArgument,
        ),
        3 => (
            Request::Spawn(SpawnWorkerRequest {
                binary: name,
                model: "/".into(),
                device: "cpu".into(),
                ..Default::default()
            }),
            InvalidArgument,
        ),
        4 => (
            Request::DeleteBinary(DeleteWorkerBinaryRequest {
                name: unknown,
                force: true,
                ..Default::default()
            }),
            NotFound,
        ),
        5 => {
            let pid = [0, -1, -(i as i32), i32::MIN][i / 24 % 4];
            (
                Request::GetProcess(GetWorkerProcessRequest {
                    pid,
                    ..Default::default()
                }),
                InvalidArgument,
            )
        }
        6 => {
            let pid = [0, -1, -(i as i32), i32::MIN][i / 24 % 4];
            (
                Request::DeleteProcess(DeleteWorkerProcessRequest {
                    pid,
                    grace_period: duration(0, 0),
                    ..Default::default()
                }),
                InvalidArgument,
            )
        }
        7 => {
            // Negative, over the 1 h maximum, and the extremes of the wire format.
            let grace = [
                duration(-1, 0),
                duration(0, -1),
                duration(3601, 0),
                duration(i64::MAX, 999_999_999),
                duration(i64::MIN + 1, 0),
            ][i / 24 % 5];
            (
                Request::DeleteProcess(DeleteWorkerProcessRequest {
                    pid: NO_SUCH_PID,
                    grace_period: grace,
                    ..Default::default()
                }),
                InvalidArgument,
            )
        }
        8 => (
            Request::DeleteProcess(DeleteWorkerProcessRequest {
                pid: NO_SUCH_PID - i as i32,
                grace_period: duration(0, 0),
                ..Default::default()
            }),
            NotFound,
        ),
        9 => (
            Request::ListBinaries(ListWorkerBinariesRequest { job_id }),
            InvalidArgument,
        ),
        10 => (
            Request::GetHiveInfo(GetHiveInfoRequest { job_id }),
            InvalidArgument,
        ),
        11 => (
            Request::ListActive(ListActiveWorkersRequest { job_id }),
            InvalidArgument,
        ),
        12 => (
            Request::Narrate(NarrateRequest {
                job_id,
                wait_for_start: None,
            }),
            InvalidArgument,
        ),
        13 => (
            Request::Narrate(NarrateRequest {
                job_id: format!("job-never-ran-{i}"),
                wait_for_start: None,
            }),
            NotFound,
        ),
        14 => (
            Request::Narrate(NarrateRequest {
                job_id: format!("job-{i}"),
                wait_for_start: [duration(-5, 0), duration(61, 0), duration(0, -1)][i / 24 % 3],
            }),
            InvalidArgument,
        ),
        15 => {
            // Checked before the catalog: a device the hive lacks, a reserved variable, a
            // relative model path, a negative readiness timeout.
            let mut request = SpawnWorkerRequest {
                binary: unknown,
                model: "/".into(),
                device: "cpu".into(),
                ..Default::default()
            };
            match i / 24 % 4 {
                0 => request.device = format!("cuda:{}", 1000 + i),
                1 => {
                    request.env = HashMap::from([("RBEE_WORKER_ID".into(), "x".into())]);
                }
                2 => request.model = format!("../models/{i}"),
                _ => request.ready_timeout = duration(-1, 0),
            }
            (Request::Spawn(request), InvalidArgument)
        }
        16 => (
            Request::Spawn(SpawnWorkerRequest {
                binary: unknown,
                model: "/".into(),
                device: "cpu".into(),
                port: 1,
                ..Default::default()
            }),
            NotFound,
        ),
        17 => (
            Request::GetActive(GetActiveWorkerRequest {
                worker_id: [format!("worker-{i}z"), "worker-".into(), name][i / 24 % 3].clone(),
                ..Default::default()
            }),
            InvalidArgument,
        ),
        18 => (
            Request::Retire(RetireActiveWorkerRequest {
                worker_id: format!("worker-{i:012x}"),
                grace_period: duration(-1, 0),
                ..Default::default()
            }),
            InvalidArgument,
        ),
        19 if (i / 24).is_multiple_of(2) => (
            Request::Heartbeat(HeartbeatRequest {
                worker_id: format!("worker-{i:012x}"),
                ready: true,
            }),
            NotFound,
        ),
        19 => (
            Request::Heartbeat(HeartbeatRequest {
                worker_id: format!("not-a-worker-{i}"),
                ready: true,
            }),
            InvalidArgument,
        ),
        20 => (
            Request::SpawnAsGetBinary(SpawnWorkerRequest {
                binary: format!("missing-{i}"),
                model: "extra field 3".into(),
                device: "extra field 4".into(),
                port: 65_535,
                args: vec!["extra".into(); 3],
                env: HashMap::from([("EXTRA".into(), "field 7".into())]),
                ready_timeout: duration(1, 0),
                ..Default::default()
            }),
            NotFound,
        ),
        21 => (
            Request::GetProcessAsGetBinary(GetWorkerProcessRequest {
                pid: i as i32 + 1,
                ..Default::default()
            }),
            Internal,
        ),
        22 => (
            Request::DeleteProcessAsSpawn(DeleteWorkerProcessRequest {
                grace_period: duration(-1, 0),
                ..Default::default()
            }),
            Internal,
        ),
        _ => (
            Request::UnknownMethod(GetWorkerBinaryRequest {
                name: unknown,
                ..Default::default()
            }),
            Unimplemented,
        ),
    };
    Case { request, expected }
}

/// A channel that sends every request to `path`, whatever method the client called, so a
/// generated client can put one message type on the wire of another RPC.
#[derive(Debug, Clone)]
struct Reroute {
    channel: Channel,
    path: &'static str,
}

impl Service<http::Request<Body>> for Reroute {
    type Response = <Channel as Service<http::Request<Body>>>::Response;
    type Error = <Channel as Service<http::Request<Body>>>::Error;
    type Future = <Channel as Service<http::Request<Body>>>::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Service::<http::Request<Body>>::poll_ready(&mut self.channel, cx)
    }

    fn call(&mut self, mut request: http::Request<Body>) -> Self::Future {
        let mut parts = request.uri().clone().into_parts();
        parts.path_and_query = Some(http::uri::PathAndQuery::from_static(self.path));
        *request.uri_mut() = http::Uri::from_parts(parts).expect("valid rerouted URI");
        self.channel.call(request)
    }
}

fn rerouted(channel: &Channel, method: &'static str) -> HiveServiceClient<Reroute> {
    HiveServiceClient::new(Reroute {
        channel: channel.clone(),
        path: method,
    })
}

/// Sends `request` and returns its status; `Ok` means the hive accepted a malformed request.
async fn send(channel: Channel, request: Request) -> Result<(), Status> {
    let mut client = HiveServiceClient::new(channel.clone());
    match request {
        Request::GetHiveInfo(r) => client.get_hive_info(r).await.map(drop),
        Request::ListBinaries(r) => client.list_worker_binaries(r).await.map(drop),
        Request::GetBinary(r) => client.get_worker_binary(r).await.map(drop),
        Request::DeleteBinary(r) => client.delete_worker_binary(r).await.map(drop),
        Request::ListProcesses(r) => client.list_worker_processes(r).await.map(drop),
        Request::GetProcess(r) => client.get_worker_process(r).await.map(drop),
        Request::DeleteProcess(r) => client.delete_worker_process(r).await.map(drop),
        Request::Spawn(r) => client.spawn_worker(r).await.map(drop),
        Request::Heartbeat(r) => client.heartbeat(r).await.map(drop),
        Request::ListActive(r) => client.list_active_workers(r).await.map(drop),
        Request::GetActive(r) => client.get_active_worker(r).await.map(drop),
        Request::Retire(r) => client.retire_active_worker(r).await.map(drop),
        Request::Narrate(r) => client.narrate(r).await.map(drop),
        Request::SpawnAsGetBinary(r) => {
            let path = "/rbee.hive.v1.HiveService/GetWorkerBinary";
            rerouted(&channel, path).spawn_worker(r).await.map(drop)
        }
        Request::GetProcessAsGetBinary(r) => {
            let path = "/rbee.hive.v1.HiveService/GetWorkerBinary";
            rerouted(&channel, path)
                .get_worker_process(r)
                .await
                .map(drop)
        }
        Request::DeleteProcessAsSpawn(r) => {
            let path = "/rbee.hive.v1.HiveService/SpawnWorker";
            rerouted(&channel, path)
                .delete_worker_process(r)
                .await
                .map(drop)
        }
        Request::UnknownMethod(r) => {
            let path = "/rbee.hive.v1.HiveService/DropEverything";
            rerouted(&channel, path)
                .get_worker_binary(r)
                .await
                .map(drop)
        }
    }
}

/// Sends every case, `IN_FLIGHT` at a time. Returns how many requests completed, and the cases
/// whose code was wrong with the status they got.
async fn run_round(
    channel: &Channel,
    cases: Vec<Case>,
) -> (usize, Vec<(Case, Result<(), Status>)>) {
    let mut completed = 0;
    let mut wrong = Vec::new();
    let mut in_flight = JoinSet::new();
    let mut cases = cases.into_iter();
    loop {
        while in_flight.len() < IN_FLIGHT {
            let Some(case) = cases.next() else { break };
            let channel = channel.clone();
            in_flight.spawn(async move {
                let result = send(channel, case.request.clone()).await;
                (case, result)
            });
        }
        let Some(joined) = in_flight.join_next().await else {
            break;
        };
        let (case, result) = joined.expect("request task");
        completed += 1;
        let right = matches!(&result, Err(status) if status.code() == case.expected);
        if !right {
            wrong.push((case, result));
        }
    }
    (completed, wrong)
}

fn describe(wrong: &[(Case, Result<(), Status>)]) -> String {
    wrong
        .iter()
        .take(10)
        .map(|(case, result)| {
            let got = match result {
                Ok(()) => "OK".to_owned(),
                Err(status) => format!("{:?}: {}", status.code(), status.message()),
            };
            let request: String = format!("{:?}", case.request).chars().take(200).collect();
            format!("expected {:?}, got {got}\n  {request}", case.expected)
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test]
async fn thousand_malformed_requests_get_the_right_codes() {
    let mut hive = TestHive::start();
    let channel = tonic::transport::Endpoint::from_shared(hive.url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let rss_at_start = rss_bytes(hive.pid()).expect("hive RSS");

    let first: Vec<Case> = (0..ROUND).map(case).collect();
    let (completed, wrong) = run_round(&channel, first).await;
    assert_eq!(completed, ROUND);
    assert!(
        wrong.is_empty(),
        "{} of {ROUND} requests got the wrong code; first ones:\n{}",
        wrong.len(),
        describe(&wrong)
    );
    let rss_after_first = rss_bytes(hive.pid()).expect("hive RSS after the first round");

    let second: Vec<Case> = (ROUND..2 * ROUND).map(case).collect();
    let (completed, wrong) = run_round(&channel, second).await;
    assert_eq!(completed, ROUND);
    assert!(
        wrong.is_empty(),
        "{} requests of the second round got the wrong code:\n{}",
        wrong.len(),
        describe(&wrong)
    );
    let rss_after_second = rss_bytes(hive.pid()).expect("hive RSS after the second round");
    eprintln!(
        "hive RSS: {rss_at_start} at start, {rss_after_first} after one round, {rss_after_second} after two"
    );

    assert!(
        hive.process().child_mut().try_wait().unwrap().is_none(),
        "the hive exited; log:\n{}",
        hive.log()
    );
    let mut client = HiveServiceClient::new(channel);
    client
        .list_worker_binaries(ListWorkerBinariesRequest::default())
        .await
        .expect("the hive still serves well-formed requests");
    assert!(
        rss_after_second.saturating_sub(rss_after_first) <= MAX_SECOND_ROUND_GROWTH,
        "RSS grew from {rss_after_first} to {rss_after_second} bytes over the second round"
    );
    assert!(
        rss_after_second.saturating_sub(rss_at_start) <= MAX_TOTAL_GROWTH,
        "RSS grew from {rss_at_start} to {rss_after_second} bytes"
    );
}

#[tokio::test]
async fn message_over_the_size_limit_is_rejected() {
    let mut hive = TestHive::start();
    let mut client = hive.client().await;

    // tonic's default limit for a received message is 4 MiB.
    let status = client
        .get_worker_binary(GetWorkerBinaryRequest {
            name: "n".repeat(5 << 20),
            ..Default::default()
        })
        .await
        .unwrap_err();

    assert_eq!(status.code(), Code::OutOfRange, "{}", status.message());
    assert!(
        hive.process().child_mut().try_wait().unwrap().is_none(),
        "the hive exited; log:\n{}",
        hive.log()
    );
    client
        .list_worker_binaries(ListWorkerBinariesRequest::default())
        .await
        .expect("the same connection still serves");
}

#[tokio::test]
async fn minimum_duration_is_invalid_argument() {
    let mut hive = TestHive::start();
    let mut client = hive.client().await;

    let grace = client
        .delete_worker_process(DeleteWorkerProcessRequest {
            pid: NO_SUCH_PID,
            grace_period: duration(i64::MIN, 0),
            ..Default::default()
        })
        .await
        .unwrap_err();
    let wait = client
        .narrate(NarrateRequest {
            job_id: "job-x".into(),
            wait_for_start: duration(i64::MIN, 0),
        })
        .await
        .unwrap_err();

    assert_eq!(wait.code(), Code::InvalidArgument, "{}", wait.message());
    assert_eq!(grace.code(), Code::InvalidArgument, "{}", grace.message());
    assert!(
        hive.process().child_mut().try_wait().unwrap().is_none(),
        "the hive exited; log:\n{}",
        hive.log()
    );
}
