//! The `rbee.hive.v1.HiveService` implementation.
//!
//! Each RPC runs as a job. [`HiveApi::begin`] takes a concurrency slot and starts the job.
//! The handler in the file of its noun does the work. [`HiveApi::finish`] records the outcome
//! and turns it into the response or the error status.

mod active_workers;
mod binaries;
mod hive_info;
mod infer;
mod models;
mod narration;
mod processes;
mod provision;
mod slots;

use std::{
    borrow::Cow,
    future::Future,
    pin::Pin,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use futures::Stream;
use rbee_proto::v1::{self as proto, hive_service_server::HiveService};
use tonic::{Request, Response, Status, metadata::MetadataValue};

use self::slots::{Slot, Slots};
use crate::{
    catalog::Catalog,
    error::Error,
    host::HostFacts,
    jobs::{JobId, Jobs, Narrator, Outcome, StartedJob},
    models::ModelCatalog,
    process::Identity,
    provision::Provisioner,
    workers::Workers,
};

/// Limits on the work a hive accepts at once.
#[derive(Debug, Clone, Copy)]
pub struct ServiceLimits {
    /// Requests running at once; more are rejected with RESOURCE_EXHAUSTED.
    pub max_concurrent_requests: usize,
    /// Narration streams open at once; more are rejected with RESOURCE_EXHAUSTED.
    pub max_narration_streams: usize,
}

impl Default for ServiceLimits {
    fn default() -> Self {
        Self {
            max_concurrent_requests: 256,
            max_narration_streams: 1024,
        }
    }
}

/// Identity of a hive.
#[derive(Debug, Clone)]
pub struct HiveIdentity {
    /// Stable id.
    pub id: String,
    /// Display name.
    pub name: String,
}

/// The domain parts a hive serves.
#[derive(Debug)]
pub struct HiveParts {
    /// Identity of the hive.
    pub identity: HiveIdentity,
    /// Worker catalog.
    pub catalog: Arc<Catalog>,
    /// Job registry.
    pub jobs: Arc<Jobs>,
    /// Active workers.
    pub workers: Arc<Workers>,
    /// Model catalog.
    pub models: Arc<ModelCatalog>,
    /// Downloads and builds.
    pub provisioner: Arc<Provisioner>,
}

/// State shared by all requests.
#[derive(Debug)]
struct Shared {
    identity: HiveIdentity,
    host: HostFacts,
    cpu_model: String,
    gpus: crate::host::GpuCache,
    catalog: Arc<Catalog>,
    jobs: Arc<Jobs>,
    workers: Arc<Workers>,
    models: Arc<ModelCatalog>,
    provisioner: Arc<Provisioner>,
    /// HTTP client for workers on loopback, never through a proxy.
    worker_client: reqwest::Client,
    started: Instant,
    started_at: SystemTime,
    requests: Arc<Slots>,
    narration_streams: Arc<Slots>,
}

/// The hive's gRPC service.
#[derive(Debug, Clone)]
pub struct HiveApi {
    shared: Arc<Shared>,
}

/// A job in progress, holding its concurrency slot until it finishes.
struct RunningJob {
    job: StartedJob,
    _slot: Slot,
}

impl RunningJob {
    fn narrator(&self) -> &Narrator {
        self.job.narrator()
    }
}

impl HiveApi {
    /// Creates the service over the hive's catalogs, job registry, active workers and
    /// provisioner.
    pub fn new(parts: HiveParts, limits: ServiceLimits) -> Self {
        let HiveParts {
            identity,
            catalog,
            jobs,
            workers,
            models,
            provisioner,
        } = parts;
        Self {
            shared: Arc::new(Shared {
                identity,
                host: HostFacts::read(),
                cpu_model: crate::host::cpu_model(),
                gpus: crate::host::GpuCache::default(),
                catalog,
                jobs,
                workers,
                models,
                provisioner,
                worker_client: reqwest::Client::builder()
                    .no_proxy()
                    .connect_timeout(Duration::from_secs(5))
                    .build()
                    .unwrap_or_default(),
                started: Instant::now(),
                started_at: SystemTime::now(),
                requests: Slots::new(limits.max_concurrent_requests),
                narration_streams: Slots::new(limits.max_narration_streams),
            }),
        }
    }

    /// Starts a job for a request, or sheds the request when the hive is at its limit.
    fn begin(
        &self,
        job_id: &str,
        action: &'static str,
        message: impl Into<Cow<'static, str>>,
    ) -> Result<RunningJob, Status> {
        let slot = self.shared.requests.try_take().ok_or(Error::Overloaded {
            limit: self.shared.requests.limit(),
        })?;
        let job_id = JobId::parse_optional(job_id)
            .map_err(crate::jobs::JobError::from)
            .map_err(Error::from)?;
        let job = self
            .shared
            .jobs
            .start(job_id, action, message)
            .map_err(Error::from)?;
        tracing::debug!(job_id = %job.job_id(), action, "job started");
        Ok(RunningJob { job, _slot: slot })
    }

    /// Records the outcome of a job and turns it into the RPC result. A failure carries the job
    /// id in the `rbee-job-id` metadata.
    fn finish<T>(&self, job: RunningJob, result: Result<T, Error>) -> Result<Response<T>, Status> {
        let RunningJob { job, _slot } = job;
        let job_id = job.job_id().clone();
        match result {
            Ok(response) => {
                job.finish(Outcome::ok());
                Ok(Response::new(response))
            }
            Err(error) => {
                let mut status = Status::from(error);
                job.finish(Outcome::failed(status.code() as i32, status.message()));
                if let Ok(value) = MetadataValue::try_from(job_id.as_str()) {
                    status
                        .metadata_mut()
                        .insert(rbee_proto::JOB_ID_METADATA_KEY, value);
                }
                Err(status)
            }
        }
    }

    /// Runs an operation that changes something in a task of its own, so that it runs to the end
    /// and records its outcome even when the caller disconnects and tonic drops the request.
    async fn detached<T, F, Fut>(
        &self,
        job: RunningJob,
        operation: F,
    ) -> Result<Response<T>, Status>
    where
        T: Send + 'static,
        F: FnOnce(HiveApi, Narrator) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, Error>> + Send + 'static,
    {
        let api = self.clone();
        let task = tokio::spawn(async move {
            let narrator = job.narrator().clone();
            let result = operation(api.clone(), narrator).await;
            api.finish(job, result)
        });
        task.await
            .unwrap_or_else(|e| Err(Error::Internal(format!("job task failed: {e}")).into()))
    }

    fn catalog(&self) -> Arc<Catalog> {
        Arc::clone(&self.shared.catalog)
    }

    fn models(&self) -> Arc<ModelCatalog> {
        Arc::clone(&self.shared.models)
    }

    fn workers(&self) -> Arc<Workers> {
        Arc::clone(&self.shared.workers)
    }
}

/// Runs `work` with the current identity of worker processes: catalog binaries, plus the
/// processes this hive spawned.
fn with_identity<T>(workers: &Workers, work: impl FnOnce(Identity<'_>) -> T) -> T {
    let spawned = workers.spawned();
    work(Identity {
        catalog: workers.catalog(),
        spawned: &spawned,
    })
}

/// Runs blocking file system or `/proc` work off the async threads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, Error> + Send + 'static,
) -> Result<T, Error> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| Error::Internal(format!("background task failed: {e}")))?
}

/// Converts a duration from a request, rejecting negative values and values over `max`.
fn request_duration(
    field: &str,
    value: Option<prost_types::Duration>,
    default: Duration,
    max: Duration,
) -> Result<Duration, Error> {
    let Some(value) = value else {
        return Ok(default);
    };
    // Checked before converting: prost's conversion negates negative values, which overflows
    // for the most negative seconds.
    if value.seconds < 0 || value.nanos < 0 {
        return Err(Error::InvalidArgument(format!(
            "invalid {field}: it must be zero or positive, got {}s {}ns",
            value.seconds, value.nanos
        )));
    }
    let duration = Duration::try_from(value).map_err(|_| {
        Error::InvalidArgument(format!(
            "invalid {field}: it must be zero or positive, got {}s {}ns",
            value.seconds, value.nanos
        ))
    })?;
    if duration > max {
        return Err(Error::InvalidArgument(format!(
            "invalid {field}: {}s is longer than the maximum of {}s",
            duration.as_secs_f64(),
            max.as_secs()
        )));
    }
    Ok(duration)
}

fn proto_duration(duration: Duration) -> prost_types::Duration {
    prost_types::Duration::try_from(duration).unwrap_or_default()
}

/// Stream type of `Infer`.
pub type InferStream = Pin<Box<dyn Stream<Item = Result<proto::InferResponse, Status>> + Send>>;

/// Stream type of `Narrate`.
pub type NarrateStream = Pin<Box<dyn Stream<Item = Result<proto::NarrationEvent, Status>> + Send>>;

#[tonic::async_trait]
impl HiveService for HiveApi {
    async fn get_hive_info(
        &self,
        request: Request<proto::GetHiveInfoRequest>,
    ) -> Result<Response<proto::GetHiveInfoResponse>, Status> {
        let request = request.into_inner();
        let job = self.begin(&request.job_id, "hive.info", "describing the hive")?;
        let result = self.hive_info(job.narrator()).await;
        self.finish(job, result)
    }

    async fn list_worker_binaries(
        &self,
        request: Request<proto::ListWorkerBinariesRequest>,
    ) -> Result<Response<proto::ListWorkerBinariesResponse>, Status> {
        let request = request.into_inner();
        let job = self.begin(&request.job_id, "binary.list", "listing worker binaries")?;
        let result = self.list_binaries(job.narrator()).await;
        self.finish(job, result)
    }

    async fn get_worker_binary(
        &self,
        request: Request<proto::GetWorkerBinaryRequest>,
    ) -> Result<Response<proto::GetWorkerBinaryResponse>, Status> {
        let request = request.into_inner();
        let message = format!("reading worker binary {:?}", shorten(&request.name));
        let job = self.begin(&request.job_id, "binary.get", message)?;
        let result = self.get_binary(job.narrator(), request).await;
        self.finish(job, result)
    }

    async fn delete_worker_binary(
        &self,
        request: Request<proto::DeleteWorkerBinaryRequest>,
    ) -> Result<Response<proto::DeleteWorkerBinaryResponse>, Status> {
        let request = request.into_inner();
        let message = format!("deleting worker binary {:?}", shorten(&request.name));
        let job = self.begin(&request.job_id, "binary.delete", message)?;
        self.detached(job, |api, narrator| async move {
            api.delete_binary(&narrator, request).await
        })
        .await
    }

    async fn list_worker_processes(
        &self,
        request: Request<proto::ListWorkerProcessesRequest>,
    ) -> Result<Response<proto::ListWorkerProcessesResponse>, Status> {
        let request = request.into_inner();
        let job = self.begin(&request.job_id, "process.list", "listing worker processes")?;
        let result = self.list_processes(job.narrator(), request).await;
        self.finish(job, result)
    }

    async fn get_worker_process(
        &self,
        request: Request<proto::GetWorkerProcessRequest>,
    ) -> Result<Response<proto::GetWorkerProcessResponse>, Status> {
        let request = request.into_inner();
        let message = format!("reading worker process {}", request.pid);
        let job = self.begin(&request.job_id, "process.get", message)?;
        let result = self.get_process(job.narrator(), request).await;
        self.finish(job, result)
    }

    async fn delete_worker_process(
        &self,
        request: Request<proto::DeleteWorkerProcessRequest>,
    ) -> Result<Response<proto::DeleteWorkerProcessResponse>, Status> {
        let request = request.into_inner();
        let message = format!("stopping worker process {}", request.pid);
        let job = self.begin(&request.job_id, "process.delete", message)?;
        self.detached(job, |api, narrator| async move {
            api.delete_process(&narrator, request).await
        })
        .await
    }

    async fn spawn_worker(
        &self,
        request: Request<proto::SpawnWorkerRequest>,
    ) -> Result<Response<proto::SpawnWorkerResponse>, Status> {
        let request = request.into_inner();
        let message = format!("spawning a worker from {:?}", shorten(&request.binary));
        let job = self.begin(&request.job_id, "worker.spawn", message)?;
        self.detached(job, |api, narrator| async move {
            api.spawn(&narrator, request).await
        })
        .await
    }

    async fn heartbeat(
        &self,
        request: Request<proto::HeartbeatRequest>,
    ) -> Result<Response<proto::HeartbeatResponse>, Status> {
        // Heartbeats are frequent bookkeeping, not operations, so they run without a job.
        let response = self.record_heartbeat(request.into_inner())?;
        Ok(Response::new(response))
    }

    async fn list_active_workers(
        &self,
        request: Request<proto::ListActiveWorkersRequest>,
    ) -> Result<Response<proto::ListActiveWorkersResponse>, Status> {
        let request = request.into_inner();
        let job = self.begin(&request.job_id, "worker.list", "listing active workers")?;
        let result = self.list_active(job.narrator());
        self.finish(job, result)
    }

    async fn get_active_worker(
        &self,
        request: Request<proto::GetActiveWorkerRequest>,
    ) -> Result<Response<proto::GetActiveWorkerResponse>, Status> {
        let request = request.into_inner();
        let message = format!("reading active worker {:?}", shorten(&request.worker_id));
        let job = self.begin(&request.job_id, "worker.get", message)?;
        let result = self.get_active(job.narrator(), request);
        self.finish(job, result)
    }

    async fn retire_active_worker(
        &self,
        request: Request<proto::RetireActiveWorkerRequest>,
    ) -> Result<Response<proto::RetireActiveWorkerResponse>, Status> {
        let request = request.into_inner();
        let message = format!("retiring active worker {:?}", shorten(&request.worker_id));
        let job = self.begin(&request.job_id, "worker.retire", message)?;
        self.detached(job, |api, narrator| async move {
            api.retire(&narrator, request).await
        })
        .await
    }

    async fn download_worker(
        &self,
        request: Request<proto::DownloadWorkerRequest>,
    ) -> Result<Response<proto::DownloadWorkerResponse>, Status> {
        let request = request.into_inner();
        let message = format!("downloading worker binary {:?}", shorten(&request.name));
        let job = self.begin(&request.job_id, "worker.download", message)?;
        self.detached(job, |api, narrator| async move {
            api.download_worker(&narrator, request).await
        })
        .await
    }

    async fn build_worker(
        &self,
        request: Request<proto::BuildWorkerRequest>,
    ) -> Result<Response<proto::BuildWorkerResponse>, Status> {
        let request = request.into_inner();
        let message = format!("building worker binary {:?}", shorten(&request.name));
        let job = self.begin(&request.job_id, "worker.build", message)?;
        self.detached(job, |api, narrator| async move {
            api.build_worker(&narrator, request).await
        })
        .await
    }

    async fn download_model(
        &self,
        request: Request<proto::DownloadModelRequest>,
    ) -> Result<Response<proto::DownloadModelResponse>, Status> {
        let request = request.into_inner();
        let message = format!("downloading model {:?}", shorten(&request.name));
        let job = self.begin(&request.job_id, "model.download", message)?;
        self.detached(job, |api, narrator| async move {
            api.download_model(&narrator, request).await
        })
        .await
    }

    async fn list_models(
        &self,
        request: Request<proto::ListModelsRequest>,
    ) -> Result<Response<proto::ListModelsResponse>, Status> {
        let request = request.into_inner();
        let job = self.begin(&request.job_id, "model.list", "listing models")?;
        let result = self.list_models(job.narrator()).await;
        self.finish(job, result)
    }

    async fn get_model(
        &self,
        request: Request<proto::GetModelRequest>,
    ) -> Result<Response<proto::GetModelResponse>, Status> {
        let request = request.into_inner();
        let message = format!("reading model {:?}", shorten(&request.name));
        let job = self.begin(&request.job_id, "model.get", message)?;
        let result = self.get_model(job.narrator(), request).await;
        self.finish(job, result)
    }

    async fn delete_model(
        &self,
        request: Request<proto::DeleteModelRequest>,
    ) -> Result<Response<proto::DeleteModelResponse>, Status> {
        let request = request.into_inner();
        let message = format!("deleting model {:?}", shorten(&request.name));
        let job = self.begin(&request.job_id, "model.delete", message)?;
        self.detached(job, |api, narrator| async move {
            api.delete_model(&narrator, request).await
        })
        .await
    }

    async fn cancel_job(
        &self,
        request: Request<proto::CancelJobRequest>,
    ) -> Result<Response<proto::CancelJobResponse>, Status> {
        // Cancelling is about another job, and must work even when the hive is at its request
        // limit, so it runs without a job of its own.
        let response = self.cancel_job(request.into_inner())?;
        Ok(Response::new(response))
    }

    type InferStream = InferStream;

    async fn infer(
        &self,
        request: Request<proto::InferRequest>,
    ) -> Result<Response<Self::InferStream>, Status> {
        let request = request.into_inner();
        let message = format!("generating text with model {:?}", shorten(&request.model));
        let job = self.begin(&request.job_id, "infer", message)?;
        match self.prepare_inference(job.narrator(), &request) {
            Ok(prepared) => Ok(Response::new(self.stream_inference(job, prepared))),
            Err(error) => self.finish(job, Err(error)),
        }
    }

    type NarrateStream = NarrateStream;

    async fn narrate(
        &self,
        request: Request<proto::NarrateRequest>,
    ) -> Result<Response<Self::NarrateStream>, Status> {
        let stream = self.narrate_job(request.into_inner()).await?;
        Ok(Response::new(stream))
    }
}

/// Says how many of a thing were found, in the right number.
fn counted(count: usize, one: &str, many: &str) -> String {
    format!("found {}", number_of(count, one, many))
}

/// Writes `count` with the singular or plural noun that fits it.
fn number_of(count: usize, one: &str, many: &str) -> String {
    let noun = if count == 1 { one } else { many };
    format!("{count} {noun}")
}

/// Characters of a client-supplied string kept in a narration message.
const SHORTENED_CHARS: usize = 64;

/// Cuts a client-supplied string for a narration message, so a huge request field does not turn
/// into a huge event.
fn shorten(value: &str) -> &str {
    match value.char_indices().nth(SHORTENED_CHARS) {
        Some((end, _)) => &value[..end],
        None => value,
    }
}
