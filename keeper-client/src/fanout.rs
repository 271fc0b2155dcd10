//! Concurrent calls to many hives. Each call is bounded by a connect timeout and a call
//! timeout, and ends in a typed outcome, so a dead, refusing or stalled hive costs at most the
//! timeout and never hides or delays the other hives' results.

use std::{future::Future, time::Duration};

use futures::{StreamExt, stream};
use rbee_proto::v1::hive_service_client::HiveServiceClient;
use tokio::time::Instant;
use tonic::{
    service::interceptor::InterceptedService,
    transport::{Channel, Endpoint},
};

use crate::{
    config::HiveTarget,
    credentials::{self, Authorization},
    render::narration::Narrator,
};

/// Connection to one hive that sends the hive's bearer token, when one is configured, with
/// every request.
pub type HiveChannel = InterceptedService<Channel, Authorization>;

/// Margin before the call's deadline within which a DEADLINE_EXCEEDED from the hive counts as
/// the call's own timeout. The hive receives the time left in `grpc-timeout` and may give up
/// slightly before the keeper does.
const DEADLINE_SLACK: Duration = Duration::from_secs(1);

/// Limits that apply to every hive call of a command.
#[derive(Debug, Clone, Copy)]
pub struct FanoutOptions {
    /// Maximum number of hives called at the same time.
    pub concurrency: usize,
    /// Time allowed to establish the connection.
    pub connect_timeout: Duration,
    /// Time allowed for the whole call, connecting included; `None` waits forever.
    pub timeout: Option<Duration>,
}

/// Failure of a call to one hive.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CallError {
    /// No connection could be made: refused, unresolvable, or slower than the connect timeout.
    #[error("{reason}")]
    Unreachable { reason: String },

    /// No connection was tried, because of a problem on this machine: the hive's token or TLS
    /// files cannot be used, or the local hive did not start. Reported as unreachable, but
    /// without the hint to start a hive.
    #[error("{reason}")]
    Local { reason: String },

    /// Connected, but the call did not finish within the call timeout.
    #[error("no answer within {}", crate::render::format::duration(*after))]
    Timeout { after: Duration },

    /// The hive returned a gRPC error.
    #[error("{message}")]
    Status { code: tonic::Code, message: String },
}

impl CallError {
    /// Value of `outcome` in JSON output.
    pub fn outcome(&self) -> &'static str {
        match self {
            Self::Unreachable { .. } | Self::Local { .. } => "unreachable",
            Self::Timeout { .. } => "timeout",
            Self::Status { .. } => "error",
        }
    }

    /// Label of the RESULT column: UNREACHABLE, TIMEOUT, or the gRPC code name.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Unreachable { .. } | Self::Local { .. } => "UNREACHABLE",
            Self::Timeout { .. } => "TIMEOUT",
            Self::Status { code, .. } => code_name(*code),
        }
    }

    /// Returns whether the hive was reached, so that a request may have been sent.
    pub fn reached_hive(&self) -> bool {
        !matches!(self, Self::Unreachable { .. } | Self::Local { .. })
    }

    /// gRPC code name for JSON output, only for errors the hive returned.
    pub fn code(&self) -> Option<&'static str> {
        match self {
            Self::Status { code, .. } => Some(code_name(*code)),
            _ => None,
        }
    }
}

/// The result of one hive's call.
#[derive(Debug)]
pub struct HiveResult<T> {
    /// The hive called.
    pub hive: HiveTarget,
    /// Job id the request ran under; `None` when no request was sent or the call runs no job.
    pub job_id: Option<String>,
    /// The data on success, or why the call failed.
    pub outcome: Result<T, CallError>,
}

/// Whether calls run as hive jobs, and whether their narration is shown.
#[derive(Clone, Copy)]
pub enum CallMode<'a> {
    /// A hive operation: the keeper chooses the job id and, with a narrator, streams the job's
    /// narration while the request runs.
    Job(Option<&'a Narrator>),
    /// A call that runs no job, such as a health check.
    Plain,
}

/// Connection, job id and deadline that a call closure makes its request with.
#[derive(Debug, Clone)]
pub struct Call {
    hive_name: String,
    channel: HiveChannel,
    job_id: String,
    deadline: Option<Instant>,
}

impl Call {
    /// Name of the hive this call goes to.
    pub fn hive_name(&self) -> &str {
        &self.hive_name
    }

    /// Client of the hive API over this hive's connection.
    pub fn hive_client(&self) -> HiveServiceClient<HiveChannel> {
        HiveServiceClient::new(self.channel.clone())
    }

    /// The connection, for clients of other services on the hive (health).
    pub fn channel(&self) -> HiveChannel {
        self.channel.clone()
    }

    /// Job id to put in the request.
    pub fn job_id(&self) -> String {
        self.job_id.clone()
    }

    /// Wraps a message in a request that tells the hive the time left (`grpc-timeout`).
    pub fn request<M>(&self, message: M) -> tonic::Request<M> {
        let mut request = tonic::Request::new(message);
        if let Some(deadline) = self.deadline {
            request.set_timeout(deadline.saturating_duration_since(Instant::now()));
        }
        request
    }
}

/// Calls every target with `call`, at most `options.concurrency` at a time, and returns one
/// result per target in target order.
pub async fn fan_out<T, F, Fut>(
    targets: &[HiveTarget],
    options: &FanoutOptions,
    mode: CallMode<'_>,
    call: F,
) -> Vec<HiveResult<T>>
where
    F: Fn(Call) -> Fut,
    Fut: Future<Output = Result<T, tonic::Status>>,
{
    // Calls are polled concurrently inside this one task rather than spawned, so dropping the
    // returned future (on Ctrl-C) cancels every in-flight call at once.
    stream::iter(targets)
        .map(|target| call_one(target, options, mode, &call))
        .buffered(options.concurrency.max(1))
        .collect()
        .await
}

async fn call_one<T, F, Fut>(
    target: &HiveTarget,
    options: &FanoutOptions,
    mode: CallMode<'_>,
    call: &F,
) -> HiveResult<T>
where
    F: Fn(Call) -> Fut,
    Fut: Future<Output = Result<T, tonic::Status>>,
{
    let job_id = format!("job-{}", uuid::Uuid::new_v4());
    let deadline = options.timeout.map(|timeout| Instant::now() + timeout);
    let mut connected = false;
    let mut job_id_from_hive = None;
    let work = async {
        let channel = connect(target, options.connect_timeout).await?;
        connected = true;
        tracing::debug!(hive = %target.name, job_id, "connected, sending request");

        let request = call(Call {
            hive_name: target.name.clone(),
            channel: channel.clone(),
            job_id: job_id.clone(),
            deadline,
        });
        let result = match mode {
            CallMode::Job(Some(narrator)) => {
                narrator
                    .narrate_while(channel, &job_id, &target.name, request)
                    .await
            }
            CallMode::Job(None) | CallMode::Plain => request.await,
        };
        result.map_err(|status| {
            job_id_from_hive = status
                .metadata()
                .get(rbee_proto::JOB_ID_METADATA_KEY)
                .and_then(|value| value.to_str().ok())
                .map(str::to_owned);
            status_error(status, options.timeout, deadline)
        })
    };

    let outcome = match deadline {
        Some(deadline) => match tokio::time::timeout_at(deadline, work).await {
            Ok(outcome) => outcome,
            Err(_elapsed) => Err(CallError::Timeout {
                after: options.timeout.unwrap_or_default(),
            }),
        },
        None => work.await,
    };

    if let Err(error) = &outcome {
        tracing::debug!(hive = %target.name, %error, "call failed");
    }
    let sent = connected && matches!(mode, CallMode::Job(_));
    HiveResult {
        hive: target.clone(),
        job_id: job_id_from_hive.or(sent.then_some(job_id)),
        outcome,
    }
}

/// Opens a connection, with TLS when the hive's settings ask for it, failing as `Unreachable`
/// when that takes longer than `timeout`. The token and TLS files are read here, and a file that
/// cannot be used also fails as `Unreachable`, with the reason, for this hive only.
///
/// The whole connect is bounded here, not only the TCP handshake that tonic's own connect
/// timeout covers, because a stopped process still completes TCP handshakes from its listen
/// backlog.
pub async fn connect(target: &HiveTarget, timeout: Duration) -> Result<HiveChannel, CallError> {
    let address = &target.address;
    let unusable = |reason: String| CallError::Local { reason };
    let authorization = credentials::authorization(&target.security).map_err(unusable)?;

    let scheme = if target.security.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let mut endpoint = Endpoint::from_shared(format!("{scheme}://{address}"))
        .map_err(|error| CallError::Unreachable {
            reason: format!("invalid address {address:?}: {error}"),
        })?
        .connect_timeout(timeout)
        .tcp_nodelay(true);
    if let Some(tls) = &target.security.tls {
        let config = credentials::client_tls(tls, address).map_err(unusable)?;
        endpoint = endpoint
            .tls_config(config)
            .map_err(|error| CallError::Unreachable {
                reason: format!("invalid TLS settings: {}", innermost_message(&error)),
            })?;
    }

    match tokio::time::timeout(timeout, endpoint.connect()).await {
        Ok(Ok(channel)) => Ok(InterceptedService::new(channel, authorization)),
        Ok(Err(error)) => Err(CallError::Unreachable {
            reason: format!("failed to connect: {}", innermost_message(&error)),
        }),
        Err(_elapsed) => Err(CallError::Unreachable {
            reason: format!(
                "failed to connect: timed out after {}",
                crate::render::format::duration(timeout)
            ),
        }),
    }
}

/// Maps a gRPC error to a call error. A deadline that passed is reported as a timeout, whether
/// the hive saw it (DEADLINE_EXCEEDED) or tonic's client did (CANCELLED with `TimeoutExpired`
/// as the source, from the `grpc-timeout` of the request).
///
/// A DEADLINE_EXCEEDED that arrives well before the call's deadline is the hive's own error,
/// such as a worker that did not become ready within its readiness timeout, and keeps its code
/// and message.
fn status_error(
    status: tonic::Status,
    timeout: Option<Duration>,
    deadline: Option<Instant>,
) -> CallError {
    if let (Some(after), Some(deadline)) = (timeout, deadline) {
        let deadline_passed = Instant::now() + DEADLINE_SLACK >= deadline;
        let hive_deadline = status.code() == tonic::Code::DeadlineExceeded && deadline_passed;
        if hive_deadline || is_client_timeout(&status) {
            return CallError::Timeout { after };
        }
    }

    let mut message = status.message().to_owned();
    if let Some(source) = std::error::Error::source(&status) {
        let detail = innermost_message(source);
        if message.is_empty() {
            message = detail;
        } else if !message.contains(&detail) {
            message = format!("{message}: {detail}");
        }
    }
    CallError::Status {
        code: status.code(),
        message,
    }
}

fn is_client_timeout(status: &tonic::Status) -> bool {
    let mut source = std::error::Error::source(status);
    while let Some(error) = source {
        if error.is::<tonic::TimeoutExpired>() {
            return true;
        }
        source = error.source();
    }
    false
}

/// The message of the deepest error in a chain, which names the actual cause ("Connection
/// refused") where the outer ones only say "transport error".
fn innermost_message(error: &(dyn std::error::Error + 'static)) -> String {
    let mut current = error;
    while let Some(source) = current.source() {
        current = source;
    }
    let message = current.to_string();
    let mut chars = message.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => message,
    }
}

/// Upper-case gRPC code name, as in the gRPC specification (`NOT_FOUND`).
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn closed_port_is_unreachable() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let target = HiveTarget {
            name: "closed".to_owned(),
            address: listener.local_addr().unwrap().to_string(),
            security: Default::default(),
        };
        drop(listener);

        let error = connect(&target, Duration::from_secs(2)).await.unwrap_err();
        assert_eq!(error.label(), "UNREACHABLE");
        assert!(error.to_string().contains("refused"), "{error}");
    }

    #[tokio::test]
    async fn silent_listener_costs_at_most_the_timeout() {
        // Accepts TCP connections but never speaks HTTP/2, like a stopped hive.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = HiveTarget {
            name: "silent".to_owned(),
            address: listener.local_addr().unwrap().to_string(),
            security: Default::default(),
        };
        let options = FanoutOptions {
            concurrency: 4,
            connect_timeout: Duration::from_millis(300),
            timeout: Some(Duration::from_millis(600)),
        };

        let started = std::time::Instant::now();
        let results = fan_out(
            &[target],
            &options,
            CallMode::Job(None),
            |call| async move {
                let request = call.request(rbee_proto::v1::GetHiveInfoRequest {
                    job_id: call.job_id(),
                });
                call.hive_client().get_hive_info(request).await
            },
        )
        .await;

        assert!(started.elapsed() < Duration::from_secs(2));
        let error = results[0].outcome.as_ref().unwrap_err();
        // TCP connects, and the HTTP/2 handshake does not wait for the server, so the call
        // itself is what runs out of time.
        assert_eq!(error.label(), "TIMEOUT", "{error:?}");
    }

    #[test]
    fn deadline_exceeded_counts_as_timeout() {
        let status = tonic::Status::deadline_exceeded("deadline passed");
        let error = status_error(status, Some(Duration::from_secs(3)), Some(Instant::now()));
        assert_eq!(error.label(), "TIMEOUT");
    }

    #[test]
    fn early_deadline_exceeded_is_the_hives_error() {
        let status = tonic::Status::deadline_exceeded("worker did not become ready within 5s");
        let deadline = Instant::now() + Duration::from_secs(60);
        let error = status_error(status, Some(Duration::from_secs(70)), Some(deadline));
        assert_eq!(error.label(), "DEADLINE_EXCEEDED");
        assert_eq!(error.to_string(), "worker did not become ready within 5s");
    }

    #[test]
    fn client_side_timeout_counts_as_timeout() {
        let status = tonic::Status::from_error(Box::new(tonic::TimeoutExpired(())));
        let deadline = Instant::now() + Duration::from_secs(3);
        let error = status_error(status, Some(Duration::from_secs(3)), Some(deadline));
        assert_eq!(error.label(), "TIMEOUT");
    }

    #[test]
    fn status_keeps_code_and_message() {
        let error = status_error(tonic::Status::not_found("no such worker"), None, None);
        assert_eq!(error.label(), "NOT_FOUND");
        assert_eq!(error.code(), Some("NOT_FOUND"));
        assert_eq!(error.to_string(), "no such worker");
    }
}
