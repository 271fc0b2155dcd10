//! `ListWorkerBinaries`, `GetWorkerBinary` and `DeleteWorkerBinary`.

use rbee_proto::v1 as proto;

use super::{HiveApi, blocking, counted, number_of, processes::stopped_to_proto, with_identity};
use crate::{
    catalog::{Layout, WorkerBinary, WorkerName},
    error::Error,
    jobs::Narrator,
    process::{self, ProcessError},
};

/// Grace period for worker processes stopped by a forced delete.
const FORCED_DELETE_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

impl HiveApi {
    pub(super) async fn list_binaries(
        &self,
        narrator: &Narrator,
    ) -> Result<proto::ListWorkerBinariesResponse, Error> {
        // NOTE: the cached read runs on the async thread. It takes a `stat` per entry and of the
        // directory, and a directory read after a change: fast on a local disk, but able to
        // stall other requests on a slow network mount.
        let binaries = match self.shared.catalog.list_cached()? {
            Some(binaries) => binaries,
            None => {
                let catalog = self.catalog();
                blocking(move || Ok(catalog.list()?)).await?
            }
        };
        narrator.info(
            "binary.list",
            counted(binaries.len(), "worker binary", "worker binaries"),
        );
        Ok(proto::ListWorkerBinariesResponse {
            job_id: narrator.job_id().to_string(),
            binaries: binaries.into_iter().map(binary_to_proto).collect(),
        })
    }

    pub(super) async fn get_binary(
        &self,
        narrator: &Narrator,
        request: proto::GetWorkerBinaryRequest,
    ) -> Result<proto::GetWorkerBinaryResponse, Error> {
        let name = WorkerName::parse(&request.name).map_err(crate::catalog::CatalogError::from)?;
        let binary = match self.shared.catalog.get_cached(&name)? {
            Some(binary) => binary,
            None => {
                let catalog = self.catalog();
                blocking(move || Ok(catalog.get(&name)?)).await?
            }
        };
        Ok(proto::GetWorkerBinaryResponse {
            job_id: narrator.job_id().to_string(),
            binary: Some(binary_to_proto(binary)),
        })
    }

    /// Deletes a catalog entry. While worker processes run it, fails with the pids, or with
    /// `force` stops them first.
    pub(super) async fn delete_binary(
        &self,
        narrator: &Narrator,
        request: proto::DeleteWorkerBinaryRequest,
    ) -> Result<proto::DeleteWorkerBinaryResponse, Error> {
        let name = WorkerName::parse(&request.name).map_err(crate::catalog::CatalogError::from)?;
        let registry = self.workers();
        let running = {
            let name = name.clone();
            blocking(move || {
                registry.catalog().get(&name)?;
                Ok(with_identity(&registry, |identity| {
                    process::list_workers(identity, Some(&name))
                })?)
            })
            .await?
        };

        let mut stopped = Vec::new();
        if !running.is_empty() {
            let pids: Vec<i32> = running.iter().map(|w| w.pid).collect();
            if !request.force {
                return Err(Error::BinaryInUse { name, pids });
            }
            narrator.info(
                "binary.delete",
                format!(
                    "stopping {} of {name} first",
                    number_of(pids.len(), "worker process", "worker processes")
                ),
            );
            let workers = &self.shared.workers;
            for pid in pids {
                match workers
                    .stop_process(pid, FORCED_DELETE_GRACE, narrator)
                    .await
                {
                    Ok(process) => {
                        workers.forget_process(pid)?;
                        stopped.push(stopped_to_proto(process));
                    }
                    // Exited on its own in the meantime: nothing left to stop.
                    Err(ProcessError::NotFound { .. }) => {}
                    Err(error) => return Err(error.into()),
                }
            }
        }

        let catalog = self.catalog();
        let binary = blocking(move || Ok(catalog.remove(&name)?)).await?;
        narrator.info(
            "binary.delete",
            format!("deleted {} ({})", binary.name, binary.path.display()),
        );
        Ok(proto::DeleteWorkerBinaryResponse {
            job_id: narrator.job_id().to_string(),
            binary: Some(binary_to_proto(binary)),
            stopped,
        })
    }
}

/// Converts a path to a string without copying it when it is valid UTF-8, as paths almost
/// always are, and replaces invalid sequences otherwise.
fn path_to_string(path: std::path::PathBuf) -> String {
    path.into_os_string()
        .into_string()
        .unwrap_or_else(|path| path.to_string_lossy().into_owned())
}

pub(super) fn binary_to_proto(binary: WorkerBinary) -> proto::WorkerBinary {
    let layout = match binary.layout {
        Layout::File => proto::BinaryLayout::File,
        Layout::Directory => proto::BinaryLayout::Directory,
        Layout::Symlink => proto::BinaryLayout::Symlink,
    };
    proto::WorkerBinary {
        name: binary.name.into_string(),
        path: path_to_string(binary.path),
        layout: layout.into(),
        size_bytes: binary.size_bytes,
        sha256: binary.sha256,
        modified_at: Some(binary.modified_at.into()),
        executable: binary.executable,
        platform: binary.platform,
        version: binary.version.unwrap_or_default(),
        source: binary.source.unwrap_or_default(),
        symlink_target: binary
            .symlink_target
            .map(|target| target.display().to_string())
            .unwrap_or_default(),
        problem: binary.problem.unwrap_or_default(),
    }
}
