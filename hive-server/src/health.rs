//! `grpc.health.v1.Health`, with `Watch` streams that end when the hive shuts down and that
//! report SERVICE_UNKNOWN for a service the hive does not have.
//!
//! A `Watch` stream otherwise stays open for as long as the client keeps it, so one watching
//! client would hold a shutting-down hive for the whole drain timeout.

use std::pin::Pin;

use futures::{Stream, StreamExt};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use tonic_health::{
    pb::{
        HealthCheckRequest, HealthCheckResponse,
        health_check_response::ServingStatus,
        health_server::{Health, HealthServer},
    },
    server::{HealthReporter, HealthService},
};

/// Returns the reporter through which the hive sets its serving status, and the health service
/// to serve. Cancelling `stopping` ends every `Watch` stream after it has sent the status set
/// before the cancellation.
pub fn service(stopping: CancellationToken) -> (HealthReporter, HealthServer<DrainingHealth>) {
    let reporter = HealthReporter::new();
    let inner = HealthService::from_health_reporter(reporter.clone());
    (
        reporter,
        HealthServer::new(DrainingHealth { inner, stopping }),
    )
}

/// The standard health service, with `Watch` streams bounded by the hive's shutdown.
#[derive(Debug)]
pub struct DrainingHealth {
    inner: HealthService,
    stopping: CancellationToken,
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<HealthCheckResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Health for DrainingHealth {
    async fn check(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        self.inner.check(request).await
    }

    type WatchStream = WatchStream;

    async fn watch(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let updates: WatchStream = match self.inner.watch(request).await {
            Ok(updates) => Box::pin(updates.into_inner()),
            // For an unknown service, the health checking protocol fails a check with NOT_FOUND
            // but has a watch send SERVICE_UNKNOWN and stay open.
            Err(status) if status.code() == tonic::Code::NotFound => {
                let unknown = HealthCheckResponse {
                    status: ServingStatus::ServiceUnknown as i32,
                };
                Box::pin(futures::stream::iter([Ok(unknown)]).chain(futures::stream::pending()))
            }
            Err(status) => return Err(status),
        };
        let stopping = self.stopping.clone();
        let stream = futures::stream::unfold(updates, move |mut updates| {
            let stopping = stopping.clone();
            async move {
                tokio::select! {
                    // Updates come first, so a status set just before shutdown, such as
                    // NOT_SERVING, still reaches the client before the stream ends.
                    biased;
                    update = updates.next() => update.map(|update| (update, updates)),
                    () = stopping.cancelled() => None,
                }
            }
        });
        Ok(Response::new(Box::pin(stream)))
    }
}
