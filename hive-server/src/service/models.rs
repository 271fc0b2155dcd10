//! `ListModels`, `GetModel` and `DeleteModel`.

use rbee_proto::v1 as proto;

use super::{HiveApi, blocking, counted, processes::DEFAULT_GRACE};
use crate::{
    error::Error,
    jobs::Narrator,
    models::{Model, ModelError, ModelName},
    workers::WorkerState,
};

impl HiveApi {
    pub(super) async fn list_models(
        &self,
        narrator: &Narrator,
    ) -> Result<proto::ListModelsResponse, Error> {
        let models = self.models();
        let models = blocking(move || Ok(models.list()?)).await?;
        narrator.info("model.list", counted(models.len(), "model", "models"));
        Ok(proto::ListModelsResponse {
            job_id: narrator.job_id().to_string(),
            models: models.into_iter().map(model_to_proto).collect(),
        })
    }

    pub(super) async fn get_model(
        &self,
        narrator: &Narrator,
        request: proto::GetModelRequest,
    ) -> Result<proto::GetModelResponse, Error> {
        let name = ModelName::parse(&request.name).map_err(ModelError::from)?;
        let models = self.models();
        let model = blocking(move || Ok(models.get(&name)?)).await?;
        Ok(proto::GetModelResponse {
            job_id: narrator.job_id().to_string(),
            model: Some(model_to_proto(model)),
        })
    }

    /// Deletes a model. While active workers serve it, fails naming them, or with `force`
    /// retires them first.
    pub(super) async fn delete_model(
        &self,
        narrator: &Narrator,
        request: proto::DeleteModelRequest,
    ) -> Result<proto::DeleteModelResponse, Error> {
        let name = ModelName::parse(&request.name).map_err(ModelError::from)?;
        let models = self.models();
        let model = {
            let name = name.clone();
            blocking(move || Ok(models.get(&name)?)).await?
        };

        // Compared as resolved files, so a worker spawned through a link to the model counts.
        let file = model
            .path
            .canonicalize()
            .unwrap_or_else(|_| model.path.clone());
        let serving: Vec<_> = self
            .shared
            .workers
            .list()
            .into_iter()
            .filter(|worker| worker.state != WorkerState::Lost)
            .filter(|worker| {
                std::path::Path::new(&worker.model)
                    .canonicalize()
                    .is_ok_and(|served| served == file)
            })
            .map(|worker| worker.id)
            .collect();
        if !serving.is_empty() && !request.force {
            return Err(Error::ModelInUse {
                name: name.to_string(),
                workers: serving.iter().map(ToString::to_string).collect(),
            });
        }
        let mut retired = Vec::new();
        for id in serving {
            self.shared
                .workers
                .retire(&id, DEFAULT_GRACE, narrator)
                .await?;
            retired.push(id.to_string());
        }

        let models = self.models();
        let model = blocking(move || Ok(models.remove(&name)?)).await?;
        narrator.info("model.delete", format!("deleted {}", model.path.display()));
        Ok(proto::DeleteModelResponse {
            job_id: narrator.job_id().to_string(),
            model: Some(model_to_proto(model)),
            retired_workers: retired,
        })
    }
}

pub(super) fn model_to_proto(model: Model) -> proto::Model {
    proto::Model {
        name: model.name.to_string(),
        path: model.path.display().to_string(),
        size_bytes: model.size_bytes,
        sha256: model.sha256,
        format: model.format.to_owned(),
        source_url: model.source_url.unwrap_or_default(),
        modified_at: Some(model.modified_at.into()),
    }
}
