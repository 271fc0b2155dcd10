//! Builds and runs the tonic server: the hive service, reflection, health, limits, shutdown.

use std::{future::Future, path::PathBuf, sync::Arc, time::Duration};

use rbee_proto::v1::hive_service_server::HiveServiceServer;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;

use crate::{
    catalog::Catalog,
    host,
    jobs::{JobLimits, Jobs},
    service::{HiveApi, HiveIdentity, ServiceLimits},
};

/// Everything a hive needs to start.
#[derive(Debug, Clone)]
pub struct HiveConfig {
    /// Worker catalog directory; created if missing.
    pub catalog_dir: PathBuf,
    /// Directory for the hive's own state (its id); created if missing.
    pub state_dir: PathBuf,
    /// Display name; the host name when `None`.
    pub name: Option<String>,
    /// Request and stream limits.
    pub limits: ServiceLimits,
    /// Bounds of the job registry.
    pub job_limits: JobLimits,
    /// How long shutdown waits for requests in flight before it exits anyway.
    pub drain_timeout: Duration,
}

/// Errors that stop a hive from starting or serving.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The catalog directory cannot be used.
    #[error("cannot open the worker catalog: {0}")]
    Catalog(#[from] crate::catalog::CatalogError),
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
}

/// Serves the hive on `listener` until `shutdown` completes, then drains.
///
/// On shutdown the health service reports NOT_SERVING, open narration streams receive a final
/// event and end, and requests in flight get up to `drain_timeout` to finish.
pub async fn serve(
    config: HiveConfig,
    listener: TcpListener,
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

    let stopping = CancellationToken::new();
    let jobs = Arc::new(Jobs::new(config.job_limits, stopping.clone()));
    let api = HiveApi::new(
        HiveIdentity {
            id: hive_id.clone(),
            name: name.clone(),
        },
        Arc::clone(&catalog),
        jobs,
        config.limits,
    );

    let (health, health_service) = tonic_health::server::health_reporter();
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
        address = ?listener.local_addr().ok(),
        "hive started"
    );

    let server = tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(HiveServiceServer::new(api))
        .serve_with_incoming_shutdown(
            TcpListenerStream::new(listener),
            stopping.clone().cancelled_owned(),
        );
    tokio::pin!(server);

    tokio::select! {
        result = &mut server => return result.map_err(ServeError::from),
        () = shutdown => {}
    }

    tracing::info!(drain_timeout = ?config.drain_timeout, "hive shutting down");
    health.set_not_serving::<HiveServiceServer<HiveApi>>().await;
    stopping.cancel();
    match tokio::time::timeout(config.drain_timeout, server).await {
        Ok(result) => result?,
        Err(_) => tracing::warn!("requests still running after the drain timeout; exiting"),
    }
    tracing::info!("hive stopped");
    Ok(())
}
