//! `DownloadWorker`, `BuildWorker`, `DownloadModel` and `CancelJob`.

use rbee_proto::v1 as proto;

use super::{HiveApi, binaries::binary_to_proto, models::model_to_proto};
use crate::{
    catalog::{CatalogError, WorkerName},
    error::Error,
    jobs::{JobError, JobId, Narrator},
    models::{ModelError, ModelName},
    provision::{BuildRequest, parse_sha256},
};

impl HiveApi {
    pub(super) async fn download_worker(
        &self,
        narrator: &Narrator,
        request: proto::DownloadWorkerRequest,
    ) -> Result<proto::DownloadWorkerResponse, Error> {
        let name = WorkerName::parse(&request.name).map_err(CatalogError::from)?;
        let sha256 = parse_sha256(&request.sha256)?;
        let version = Some(request.version.as_str()).filter(|v| !v.is_empty());
        let binary = self
            .shared
            .provisioner
            .download_worker(
                &name,
                &request.url,
                sha256.as_deref(),
                version,
                request.replace,
                narrator,
            )
            .await?;
        Ok(proto::DownloadWorkerResponse {
            job_id: narrator.job_id().to_string(),
            binary: Some(binary_to_proto(binary)),
        })
    }

    pub(super) async fn build_worker(
        &self,
        narrator: &Narrator,
        request: proto::BuildWorkerRequest,
    ) -> Result<proto::BuildWorkerResponse, Error> {
        let name = WorkerName::parse(&request.name).map_err(CatalogError::from)?;
        let profile = if request.profile.is_empty() {
            "release".to_owned()
        } else {
            request.profile
        };
        let build = BuildRequest {
            name,
            source: request.source,
            features: request.features,
            profile,
            replace: request.replace,
        };
        let binary = self
            .shared
            .provisioner
            .build_worker(build, narrator)
            .await?;
        Ok(proto::BuildWorkerResponse {
            job_id: narrator.job_id().to_string(),
            binary: Some(binary_to_proto(binary)),
        })
    }

    pub(super) async fn download_model(
        &self,
        narrator: &Narrator,
        request: proto::DownloadModelRequest,
    ) -> Result<proto::DownloadModelResponse, Error> {
        let name = ModelName::parse(&request.name).map_err(ModelError::from)?;
        let sha256 = parse_sha256(&request.sha256)?;
        let model = self
            .shared
            .provisioner
            .download_model(
                &name,
                &request.url,
                sha256.as_deref(),
                request.replace,
                narrator,
            )
            .await?;
        Ok(proto::DownloadModelResponse {
            job_id: narrator.job_id().to_string(),
            model: Some(model_to_proto(model)),
        })
    }

    pub(super) fn cancel_job(
        &self,
        request: proto::CancelJobRequest,
    ) -> Result<proto::CancelJobResponse, Error> {
        let id = JobId::parse(&request.job_id).map_err(JobError::from)?;
        self.shared.jobs.cancel(&id)?;
        Ok(proto::CancelJobResponse {
            job_id: id.to_string(),
        })
    }
}
