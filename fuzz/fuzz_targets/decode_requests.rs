//! Fuzzes decoding of every request message of `rbee.hive.v1`, as the hive's gRPC server does
//! with each request body, then the first checks the hive runs on the decoded fields: names,
//! job ids, worker ids and durations. Nothing may panic, and a decoded message must survive an
//! encode and decode unchanged.

#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use rbee_hive::{catalog::WorkerName, jobs::JobId, workers::WorkerId};
use rbee_proto::v1 as proto;

/// Decodes `data` as `M`; when it decodes, checks that it round-trips and returns it.
fn decode<M: Message + Default + PartialEq + std::fmt::Debug>(data: &[u8]) -> Option<M> {
    let message = M::decode(data).ok()?;
    let encoded = message.encode_to_vec();
    let again = M::decode(encoded.as_slice()).expect("a re-encoded message decodes");
    assert_eq!(again, message, "message changed in an encode and decode");
    Some(message)
}

/// Runs the hive's checks of a client-chosen job id and name; their results do not matter,
/// only that they return.
fn check_job_and_name(job_id: &str, name: &str) {
    let _ = JobId::parse_optional(job_id);
    let _ = WorkerName::parse(name);
}

/// Converts a request duration the way the hive does before checking its range.
fn check_duration(duration: Option<prost_types::Duration>) {
    if let Some(duration) = duration {
        let _ = std::time::Duration::try_from(duration);
    }
}

fuzz_target!(|data: &[u8]| {
    if let Some(r) = decode::<proto::GetHiveInfoRequest>(data) {
        check_job_and_name(&r.job_id, "");
    }
    if let Some(r) = decode::<proto::ListWorkerBinariesRequest>(data) {
        check_job_and_name(&r.job_id, "");
    }
    if let Some(r) = decode::<proto::GetWorkerBinaryRequest>(data) {
        check_job_and_name(&r.job_id, &r.name);
    }
    if let Some(r) = decode::<proto::DeleteWorkerBinaryRequest>(data) {
        check_job_and_name(&r.job_id, &r.name);
    }
    if let Some(r) = decode::<proto::ListWorkerProcessesRequest>(data) {
        check_job_and_name(&r.job_id, &r.worker_name);
    }
    if let Some(r) = decode::<proto::GetWorkerProcessRequest>(data) {
        check_job_and_name(&r.job_id, "");
    }
    if let Some(r) = decode::<proto::DeleteWorkerProcessRequest>(data) {
        check_job_and_name(&r.job_id, "");
        check_duration(r.grace_period);
    }
    if let Some(r) = decode::<proto::SpawnWorkerRequest>(data) {
        check_job_and_name(&r.job_id, &r.binary);
        check_duration(r.ready_timeout);
    }
    if let Some(r) = decode::<proto::HeartbeatRequest>(data) {
        let _ = WorkerId::parse(&r.worker_id);
    }
    if let Some(r) = decode::<proto::ListActiveWorkersRequest>(data) {
        check_job_and_name(&r.job_id, "");
    }
    if let Some(r) = decode::<proto::GetActiveWorkerRequest>(data) {
        check_job_and_name(&r.job_id, "");
        let _ = WorkerId::parse(&r.worker_id);
    }
    if let Some(r) = decode::<proto::RetireActiveWorkerRequest>(data) {
        check_job_and_name(&r.job_id, "");
        let _ = WorkerId::parse(&r.worker_id);
        check_duration(r.grace_period);
    }
    if let Some(r) = decode::<proto::NarrateRequest>(data) {
        let _ = JobId::parse(&r.job_id);
        check_duration(r.wait_for_start);
    }
});
