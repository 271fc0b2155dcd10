//! A tower layer in front of every gRPC service of the hive. With a token configured, it lets a
//! request through only when it carries `authorization: Bearer <token>`, except on the few open
//! methods, and rejects every other request with UNAUTHENTICATED.
//!
//! Checking the HTTP path here, rather than in an interceptor of `HiveService`, denies by
//! default: a service or method added later needs the token unless it is listed as open.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::{Duration, Instant},
};

use futures::future::{Either, Ready, ready};
use tonic::{
    Status,
    codegen::http::{self, HeaderMap, header::AUTHORIZATION},
    transport::server::{TcpConnectInfo, TlsConnectInfo},
};
use tower::{Layer, Service};

use super::token::BearerToken;

/// Services open without a token: health, so that load balancers and `rbee hive list` can
/// probe a hive, and reflection, which describes only the published `hive.proto` and no state.
const OPEN_SERVICES: &[&str] = &[
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1.ServerReflection/",
    "/grpc.reflection.v1alpha.ServerReflection/",
];

/// Methods of `HiveService` open without a token. Workers send heartbeats without the hive's
/// token, and a heartbeat only counts for a known worker id: a random, unguessable value that
/// the hive gives each worker it spawns.
const OPEN_METHODS: &[&str] = &["/rbee.hive.v1.HiveService/Heartbeat"];

/// Minimum time between two warnings about rejected requests. The requests in between are only
/// counted, so a client that retries in a loop cannot flood the log.
const WARNING_INTERVAL: Duration = Duration::from_secs(60);

/// Maximum length of a request path written to the log, in bytes.
const MAX_LOGGED_PATH_BYTES: usize = 128;

/// Reason a request was rejected. The messages never contain the token, nor anything the client
/// sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// No `authorization` metadata.
    Missing,
    /// `authorization` metadata that is not `Bearer <token>`.
    NotBearer,
    /// A bearer token that does not match.
    WrongToken,
}

impl Rejection {
    /// Returns the message of the UNAUTHENTICATED status.
    pub fn message(self) -> &'static str {
        match self {
            Self::Missing => {
                "missing bearer token: this hive requires the metadata \
                 `authorization: Bearer <token>`"
            }
            Self::NotBearer => "invalid authorization metadata: expected `Bearer <token>`",
            Self::WrongToken => "invalid bearer token",
        }
    }
}

/// Checks the `authorization` metadata of a request against `token`.
pub fn authorize(token: &BearerToken, headers: &HeaderMap) -> Result<(), Rejection> {
    let value = headers.get(AUTHORIZATION).ok_or(Rejection::Missing)?;
    let value = value.as_bytes();

    // The scheme name is case-insensitive (RFC 7235, section 2.1).
    let scheme = b"bearer ";
    if value.len() <= scheme.len() || !value[..scheme.len()].eq_ignore_ascii_case(scheme) {
        return Err(Rejection::NotBearer);
    }
    let presented = value[scheme.len()..].trim_ascii();
    if token.matches(presented) {
        Ok(())
    } else {
        Err(Rejection::WrongToken)
    }
}

fn is_open(path: &str) -> bool {
    OPEN_SERVICES.iter().any(|prefix| path.starts_with(prefix)) || OPEN_METHODS.contains(&path)
}

/// Layer that adds [`Authenticate`] to a service. Without a token it lets everything through.
#[derive(Debug, Clone)]
pub struct AuthLayer {
    token: Option<Arc<BearerToken>>,
    rejections: Arc<Rejections>,
}

impl AuthLayer {
    /// Creates the layer; `None` means no token is required.
    pub fn new(token: Option<BearerToken>) -> Self {
        Self {
            token: token.map(Arc::new),
            rejections: Arc::default(),
        }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = Authenticate<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Authenticate {
            inner,
            token: self.token.clone(),
            rejections: Arc::clone(&self.rejections),
        }
    }
}

/// The service that [`AuthLayer`] wraps around the hive's routes.
#[derive(Debug, Clone)]
pub struct Authenticate<S> {
    inner: S,
    token: Option<Arc<BearerToken>>,
    rejections: Arc<Rejections>,
}

impl<S, RequestBody, ResponseBody> Service<http::Request<RequestBody>> for Authenticate<S>
where
    S: Service<http::Request<RequestBody>, Response = http::Response<ResponseBody>>,
    ResponseBody: Default,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Either<S::Future, Ready<Result<S::Response, S::Error>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<RequestBody>) -> Self::Future {
        let Some(token) = &self.token else {
            return Either::Left(self.inner.call(request));
        };
        if is_open(request.uri().path()) {
            return Either::Left(self.inner.call(request));
        }
        match authorize(token, request.headers()) {
            Ok(()) => Either::Left(self.inner.call(request)),
            Err(rejection) => {
                self.rejections
                    .record(rejection, peer_address(&request), request.uri().path());
                let status = Status::unauthenticated(rejection.message());
                Either::Right(ready(Ok(status.into_http())))
            }
        }
    }
}

/// Address of the client, from the connection info tonic stores in the request.
fn peer_address<B>(request: &http::Request<B>) -> Option<SocketAddr> {
    let extensions = request.extensions();
    if let Some(info) = extensions.get::<TcpConnectInfo>() {
        return info.remote_addr();
    }
    extensions
        .get::<TlsConnectInfo<TcpConnectInfo>>()
        .and_then(|info| info.get_ref().remote_addr())
}

/// Counts rejected requests and warns about them at most once per [`WARNING_INTERVAL`].
#[derive(Debug, Default)]
struct Rejections {
    state: Mutex<RejectionCount>,
}

#[derive(Debug, Default)]
struct RejectionCount {
    since_warning: u64,
    last_warning: Option<Instant>,
}

impl Rejections {
    fn record(&self, rejection: Rejection, peer: Option<SocketAddr>, path: &str) {
        let path = shorten(path);
        let reason = rejection.message();
        tracing::debug!(?peer, path, reason, "rejected an unauthenticated request");

        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.since_warning += 1;
        let due = state
            .last_warning
            .is_none_or(|last| last.elapsed() >= WARNING_INTERVAL);
        if due {
            tracing::warn!(
                ?peer,
                path,
                reason,
                rejected = state.since_warning,
                "rejected unauthenticated requests (the latest is shown; warned at most once a \
                 minute)"
            );
            state.since_warning = 0;
            state.last_warning = Some(Instant::now());
        }
    }
}

fn shorten(path: &str) -> &str {
    if path.len() <= MAX_LOGGED_PATH_BYTES {
        return path;
    }
    let mut end = MAX_LOGGED_PATH_BYTES;
    while !path.is_char_boundary(end) {
        end -= 1;
    }
    &path[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(authorization: Option<&str>) -> HeaderMap {
        let mut headers = HeaderMap::new();
        if let Some(value) = authorization {
            headers.insert(AUTHORIZATION, value.parse().unwrap());
        }
        headers
    }

    #[test]
    fn authorize_accepts_only_the_bearer_token() {
        let token = BearerToken::parse("right-token-0123456789", "in test").unwrap();
        let check = |value| authorize(&token, &headers(value));

        assert_eq!(check(Some("Bearer right-token-0123456789")), Ok(()));
        assert_eq!(check(Some("bearer right-token-0123456789")), Ok(()));
        assert_eq!(check(Some("Bearer  right-token-0123456789 ")), Ok(()));
        assert_eq!(check(None), Err(Rejection::Missing));
        assert_eq!(check(Some("Basic cmJlZTpwYXNz")), Err(Rejection::NotBearer));
        assert_eq!(check(Some("Bearer")), Err(Rejection::NotBearer));
        assert_eq!(
            check(Some("right-token-0123456789")),
            Err(Rejection::NotBearer)
        );
        assert_eq!(check(Some("Bearer wrong")), Err(Rejection::WrongToken));
        assert_eq!(check(Some("Bearer ")), Err(Rejection::NotBearer));
    }

    #[test]
    fn only_health_reflection_and_heartbeat_are_open() {
        assert!(is_open("/grpc.health.v1.Health/Check"));
        assert!(is_open(
            "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
        ));
        assert!(is_open("/rbee.hive.v1.HiveService/Heartbeat"));
        assert!(!is_open("/rbee.hive.v1.HiveService/SpawnWorker"));
        assert!(!is_open("/rbee.hive.v1.HiveService/HeartbeatX"));
        assert!(!is_open("/grpc.health.v1.HealthX/Check"));
        assert!(!is_open("/"));
    }

    #[test]
    fn shorten_keeps_char_boundaries() {
        let long = "é".repeat(100);
        assert!(shorten(&long).len() <= MAX_LOGGED_PATH_BYTES);
        assert_eq!(shorten("/a/b"), "/a/b");
    }
}
