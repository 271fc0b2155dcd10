//! Builds and runs the tonic server: the hive service, reflection, health, limits,
//! authentication, TLS, shutdown.

use std::{future::Future, path::PathBuf, sync::Arc, time::Duration};

use rbee_proto::v1::hive_service_server::HiveServiceServer;
use tokio::net::TcpListener;
use tokio_stream::{StreamExt, wrappers::TcpListenerStream};
use tokio_util::sync::CancellationToken;

use crate::{
    catalog::Catalog,
    host,
    jobs::{JobLimits, Jobs},
    models::ModelCatalog,
    provision::Provisioner,
    security::{Security, layer::AuthLayer},
    service::{HiveApi, HiveIdentity, HiveParts, ServiceLimits},
    workers::{Workers, WorkersConfig},
};

/// Everything a hive needs to start.
#[derive(Debug, Clone)]
pub struct HiveConfig {
    /// Worker catalog directory; created if missing.
    pub catalog_dir: PathBuf,
    /// Directory for the hive's own state (its id, spawned workers and their logs); created if
    /// missing.
    pub state_dir: PathBuf,
    /// Directory of models named by catalog name.
    pub model_dir: PathBuf,
    /// How often workers are expected to send heartbeats.
    pub heartbeat_interval: Duration,
    /// Readiness timeout of a spawn that sets none.
    pub default_ready_timeout: Duration,
    /// Size at which a worker log is rotated, in bytes.
    pub worker_log_max_bytes: u64,
    /// Stop the workers this hive spawned when it shuts down, instead of leaving them running
    /// for the next hive to adopt.
    pub stop_workers_on_shutdown: bool,
    /// Display name; the host name when `None`.
    pub name: Option<String>,
    /// Request and stream limits.
    pub limits: ServiceLimits,
    /// Bounds of the job registry.
    pub job_limits: JobLimits,
    /// How long shutdown waits for requests in flight before it exits anyway.
    pub drain_timeout: Duration,
    /// Bearer token and TLS of the listener.
    pub security: Security,
}

/// Errors that stop a hive from starting or serving.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The catalog directory cannot be used.
    #[error("cannot open the worker catalog: {0}")]
    Catalog(#[from] crate::catalog::CatalogError),
    /// The model catalog cannot be opened.
    #[error("cannot open the model catalog: {0}")]
    Models(#[from] crate::models::ModelError),
    /// The provisioner cannot be set up.
    #[error("cannot set up downloads: {0}")]
    Provision(#[from] crate::provision::ProvisionError),
    /// The worker registry cannot be opened.
    #[error("cannot open the worker registry: {0}")]
    Workers(#[from] crate::workers::WorkerError),
    /// The state directory cannot be used.
    #[error("cannot read or create the hive id in {dir}: {source}")]
    State {
        /// The state directory.
        dir: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Reflection could not load the descriptor set.
    #[error("cannot build the reflection service: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The transport failed.
    #[error("server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// The `ready` callback failed, for example to write to a closed stdout.
    #[error("failed to announce that the hive is ready: {0}")]
    Ready(#[source] std::io::Error),
}

/// Time given to requests after the drain timeout, once stops in their grace period have sent
/// SIGKILL, to finish and send their responses.
const GRACE_CUT_WAIT: Duration = Duration::from_secs(2);

/// Serves the hive on `listener` until `shutdown` completes, then drains. Calls `ready` once
/// the catalogs and the state directory are open, just before the first connection is accepted.
///
/// On shutdown the health service reports NOT_SERVING, open narration streams receive a final
/// event and end, and requests in flight get up to `drain_timeout` to finish.
pub async fn serve(
    config: HiveConfig,
    listener: TcpListener,
    ready: impl FnOnce() -> std::io::Result<()>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let catalog = Arc::new(Catalog::open(&config.catalog_dir)?);
    let hive_id =
        host::load_or_create_hive_id(&config.state_dir).map_err(|source| ServeError::State {
            dir: config.state_dir.clone(),
            source,
        })?;
    let name = config
        .name
        .clone()
        .unwrap_or_else(|| host::HostFacts::read().hostname);

    let local_addr = listener.local_addr().ok();
    let models = Arc::new(ModelCatalog::open(&config.model_dir)?);
    let workers = Workers::open(
        WorkersConfig {
            state_dir: config.state_dir.clone(),
            model_dir: models.dir().to_owned(),
            // NOTE: with TLS on, a worker that sends heartbeats must connect to this address with
            // TLS, and a client certificate too when client certificates are required. Workers
            // that cannot fall back to readiness checks.
            hive_addr: local_addr.map(reachable_address).unwrap_or_default(),
            heartbeat_interval: config.heartbeat_interval,
            log_max_bytes: config.worker_log_max_bytes,
            default_ready_timeout: config.default_ready_timeout,
        },
        Arc::clone(&catalog),
    )?;

    let stopping = CancellationToken::new();
    let jobs = Arc::new(Jobs::new(config.job_limits, stopping.clone()));
    let provisioner = Arc::new(Provisioner::new(
        Arc::clone(&catalog),
        Arc::clone(&models),
        Arc::clone(&jobs),
        config.state_dir.join("builds"),
    )?);
    let api = HiveApi::new(
        HiveParts {
            identity: HiveIdentity {
                id: hive_id.clone(),
                name: name.clone(),
            },
            catalog: Arc::clone(&catalog),
            jobs: Arc::clone(&jobs),
            workers: Arc::clone(&workers),
            models,
            provisioner,
        },
        config.limits,
    );
    let monitor = tokio::spawn(Arc::clone(&workers).monitor(stopping.clone()));

    let (health, health_service) = crate::health::service(stopping.clone());
    health.set_serving::<HiveServiceServer<HiveApi>>().await;
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(rbee_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(rbee_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;

    tracing::info!(
        hive_id,
        name,
        catalog = %catalog.dir().display(),
        address = ?local_addr,
        security = config.security.label(),
        "hive started"
    );

    ready().map_err(ServeError::Ready)?;
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = &config.security.tls {
        builder = builder.tls_config(tls.clone())?;
    }
    let server = builder
        .layer(AuthLayer::new(config.security.token.clone()))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(HiveServiceServer::new(api))
        .serve_with_incoming_shutdown(
            TcpListenerStream::new(listener).map(|connection| {
                // Small gRPC frames must not wait for Nagle's algorithm.
                if let Ok(stream) = &connection
                    && let Err(error) = stream.set_nodelay(true)
                {
                    tracing::debug!(%error, "failed to set TCP_NODELAY");
                }
                connection
            }),
            stopping.clone().cancelled_owned(),
        );
    tokio::pin!(server);

    tokio::select! {
        result = &mut server => return result.map_err(ServeError::from),
        () = shutdown => {}
    }

    tracing::info!(drain_timeout = ?config.drain_timeout, "hive shutting down");
    health.set_not_serving::<HiveServiceServer<HiveApi>>().await;
    // The empty name stands for the whole server, which probes ask about by default.
    health
        .set_service_status("", tonic_health::ServingStatus::NotServing)
        .await;
    stopping.cancel();
    monitor.abort();
    if config.stop_workers_on_shutdown {
        match jobs.start(None, "hive.shutdown", "stopping all workers".to_owned()) {
            Ok(narrator) => {
                workers.retire_all(config.drain_timeout, &narrator).await;
                narrator.finish(crate::jobs::Outcome::ok());
            }
            Err(error) => tracing::warn!(%error, "failed to start the shutdown job"),
        }
    }
    if let Ok(result) = tokio::time::timeout(config.drain_timeout, server.as_mut()).await {
        result?;
    } else {
        // A stop still in its grace period sends SIGKILL now rather than end with the hive and
        // leave its worker running after SIGTERM.
        workers.end_grace_periods();
        match tokio::time::timeout(GRACE_CUT_WAIT, server).await {
            Ok(result) => result?,
            Err(_) => tracing::warn!("requests still running after the drain timeout; exiting"),
        }
    }
    tracing::info!("hive stopped");
    Ok(())
}

/// Returns an address a local worker can connect to: the listen address, with an unspecified IP
/// (`0.0.0.0`, `::`) replaced by loopback.
fn reachable_address(addr: std::net::SocketAddr) -> String {
    let ip = match addr.ip() {
        std::net::IpAddr::V4(ip) if ip.is_unspecified() => std::net::Ipv4Addr::LOCALHOST.into(),
        std::net::IpAddr::V6(ip) if ip.is_unspecified() => std::net::Ipv6Addr::LOCALHOST.into(),
        ip => ip,
    };
    std::net::SocketAddr::new(ip, addr.port()).to_string()
}
