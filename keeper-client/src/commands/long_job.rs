//! Downloads and builds: jobs that last as long as a transfer or a compiler takes. While `rbee`
//! waits for one, Ctrl-C sends CancelJob for its job id to each hive where it still runs, then
//! the command exits with 130.

use std::{future::Future, sync::Mutex, time::Duration};

use rbee_proto::v1::CancelJobRequest;

use super::Context;
use crate::{
    fanout::{Call, HiveResult, code_name},
    render::{format, write_stderr},
};

/// Call timeout of downloads and builds when `--timeout` is not given. The transfer or the build
/// bounds these calls, not the RPC, so the limit only catches a hive that never responds.
pub const LONG_JOB_TIMEOUT: Duration = Duration::from_secs(3600);

/// Time each hive gets to respond to CancelJob after Ctrl-C. Cancelling is best effort, and a
/// user who pressed Ctrl-C should not wait long.
const CANCEL_TIMEOUT: Duration = Duration::from_secs(3);

/// Jobs whose request was sent and whose response has not arrived yet.
#[derive(Default)]
struct RunningJobs {
    calls: Mutex<Vec<Call>>,
}

impl RunningJobs {
    fn insert(&self, call: Call) {
        self.lock().push(call);
    }

    fn remove(&self, job_id: &str) {
        self.lock().retain(|call| call.job_id() != job_id);
    }

    fn take(&self) -> Vec<Call> {
        std::mem::take(&mut *self.lock())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Call>> {
        self.calls.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Runs a download or build on every target, like [`Context::run_jobs`]. Returns `None` when
/// Ctrl-C interrupted the wait, after CancelJob was sent to each hive where the job still ran
/// and the outcome of each was printed on stderr.
///
/// The caller must not also end the process on Ctrl-C, because that would drop this future
/// before the cancellations are sent (see `main.rs`).
pub async fn run_cancellable<T, F, Fut>(context: &Context, call: F) -> Option<Vec<HiveResult<T>>>
where
    F: Fn(Call) -> Fut,
    Fut: Future<Output = Result<T, tonic::Status>>,
{
    let running = RunningJobs::default();
    let jobs = context.run_jobs(|hive_call| {
        // The closure runs right before the request is sent, once the connection is up.
        let job_id = hive_call.job_id();
        running.insert(hive_call.clone());
        let request = call(hive_call);
        let running = &running;
        async move {
            let result = request.await;
            running.remove(&job_id);
            result
        }
    });
    tokio::pin!(jobs);

    tokio::select! {
        results = &mut jobs => Some(results),
        () = interrupted() => {
            if let Some(narrator) = &context.narrator {
                narrator.finish();
            }
            // `jobs` stays alive, so the requests stay open until the cancellations are sent.
            cancel_all(running.take()).await;
            None
        }
    }
}

/// Completes on Ctrl-C. Never completes when the signal handler cannot be installed, so the
/// command then runs to its end.
async fn interrupted() {
    if let Err(error) = tokio::signal::ctrl_c().await {
        tracing::warn!(%error, "failed to listen for Ctrl-C; it will not cancel running jobs");
        std::future::pending::<()>().await;
    }
}

/// Sends CancelJob for every call, all hives at once, and prints one line per hive. A second
/// Ctrl-C stops waiting for the responses.
async fn cancel_all(calls: Vec<Call>) {
    if calls.is_empty() {
        write_stderr("interrupted: in-flight requests were cancelled");
        return;
    }
    write_stderr(&format!(
        "interrupted: cancelling {} on {}",
        super::count(calls.len(), "job", "jobs"),
        super::count(calls.len(), "hive", "hives")
    ));
    let cancels = futures::future::join_all(calls.iter().map(cancel_one));
    tokio::select! {
        lines = cancels => {
            for line in lines {
                write_stderr(&line);
            }
        }
        () = interrupted() => {
            write_stderr("interrupted again: stopped waiting for the hives to confirm");
        }
    }
}

/// Sends CancelJob for the job of `call` and returns a line that describes the outcome.
async fn cancel_one(call: &Call) -> String {
    let job_id = call.job_id();
    let hive = call.hive_name();
    let mut request = call.request(CancelJobRequest {
        job_id: job_id.clone(),
    });
    request.set_timeout(CANCEL_TIMEOUT);

    let retry = format!(
        "it may still run; retry with `rbee job cancel {job_id} --hive {hive}`, or watch it \
         with `rbee job follow {job_id} --hive {hive}`"
    );
    let mut client = call.hive_client();
    match tokio::time::timeout(CANCEL_TIMEOUT, client.cancel_job(request)).await {
        Ok(Ok(_)) => format!("cancelled job {job_id} on hive {hive}"),
        Ok(Err(status)) if status.code() == tonic::Code::FailedPrecondition => format!(
            "job {job_id} on hive {hive} was not cancelled: {}: {}",
            code_name(status.code()),
            status.message()
        ),
        Ok(Err(status)) => format!(
            "error: failed to cancel job {job_id} on hive {hive}: {}: {}; {retry}",
            code_name(status.code()),
            status.message()
        ),
        Err(_elapsed) => format!(
            "error: failed to cancel job {job_id} on hive {hive}: no answer within {}; {retry}",
            format::duration(CANCEL_TIMEOUT)
        ),
    }
}
