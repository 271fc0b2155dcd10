//! Provisioning: getting worker binaries and models onto the hive, by download or by build.
//!
//! Downloads land in a hidden temporary file inside the target catalog, so installing is one
//! rename on the same file system and a catalog never shows a partial entry. Two requests for
//! the same artifact at once share one transfer: the second joins the first job and relays its
//! narration.

mod build;
mod fetch;

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{Arc, Mutex},
};

use futures::StreamExt;

pub use build::BuildRequest;
pub use fetch::{Source, parse_sha256};

use crate::{
    catalog::{Catalog, CatalogError, WorkerBinary, WorkerName},
    jobs::{JobId, Jobs, Narrator},
    models::{Model, ModelCatalog, ModelError, ModelName},
};

/// Errors of provisioning.
#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    /// A request field is invalid.
    #[error("{0}")]
    InvalidArgument(String),
    /// A worker catalog operation failed.
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    /// A model catalog operation failed.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// The URL or source path does not exist.
    #[error("{0} not found")]
    SourceNotFound(String),
    /// The server returned an error status that retrying will not fix.
    #[error("download of {url} failed: the server answered {status}")]
    Http {
        /// The URL.
        url: String,
        /// The status line.
        status: String,
    },
    /// The server could not be reached, or kept dropping the connection.
    #[error("download of {url} failed: {reason}")]
    Unreachable {
        /// The URL.
        url: String,
        /// What went wrong.
        reason: String,
    },
    /// The file does not have the expected checksum; nothing was installed.
    #[error("sha256 mismatch: expected {expected}, got {actual}; nothing was installed")]
    ChecksumMismatch {
        /// The expected digest.
        expected: String,
        /// The digest of the downloaded file.
        actual: String,
    },
    /// Not enough disk space for the file.
    #[error(
        "not enough disk space in {}: the file needs {needed} bytes, {available} are available",
        .dir.display()
    )]
    DiskFull {
        /// Directory checked.
        dir: PathBuf,
        /// Bytes needed.
        needed: u64,
        /// Bytes available.
        available: u64,
    },
    /// The job was cancelled.
    #[error("cancelled")]
    Cancelled,
    /// Another job is downloading the same name from another URL.
    #[error("job {job} is already installing {name} from {url}; wait for it or cancel it")]
    Busy {
        /// The name.
        name: String,
        /// The other job.
        job: JobId,
        /// The URL the other job downloads.
        url: String,
    },
    /// The job this request joined failed.
    #[error("job {job}, which this request joined, failed: {message}")]
    JoinedJobFailed {
        /// The job joined.
        job: JobId,
        /// Its error message.
        message: String,
    },
    /// The build command failed.
    #[error("{command} failed ({status}); last output lines:\n{output}")]
    BuildFailed {
        /// The command that failed, for example `cargo build`.
        command: String,
        /// How the build command ended.
        status: String,
        /// Its last output lines.
        output: String,
    },
    /// The build succeeded but produced no binary of the requested name.
    #[error("the build produced no binary named {name}; it produced: {found}")]
    NoArtifact {
        /// The name looked for.
        name: String,
        /// The binaries it produced, comma-separated.
        found: String,
    },
    /// A file system operation failed.
    #[error("failed to {action} {path}: {source}")]
    Io {
        /// What the hive was doing.
        action: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

/// Artifact being installed, for joining concurrent requests.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Artifact {
    Worker(String),
    Model(String),
}

/// A download in progress.
#[derive(Debug, Clone)]
struct InFlight {
    url: String,
    job: JobId,
}

/// Downloads and builds for one hive.
#[derive(Debug)]
pub struct Provisioner {
    catalog: Arc<Catalog>,
    models: Arc<ModelCatalog>,
    jobs: Arc<Jobs>,
    client: reqwest::Client,
    /// Directory for build work trees.
    work_dir: PathBuf,
    in_flight: Mutex<HashMap<Artifact, InFlight>>,
}

impl Provisioner {
    /// Creates a provisioner installing into `catalog` and `models`, building under `work_dir`.
    pub fn new(
        catalog: Arc<Catalog>,
        models: Arc<ModelCatalog>,
        jobs: Arc<Jobs>,
        work_dir: PathBuf,
    ) -> Result<Self, ProvisionError> {
        let client = reqwest::Client::builder()
            .user_agent(concat!("rbee-hive/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(std::time::Duration::from_secs(15))
            .read_timeout(std::time::Duration::from_secs(60))
            .build()
            .map_err(|e| {
                ProvisionError::InvalidArgument(format!("cannot build HTTP client: {e}"))
            })?;
        Ok(Self {
            catalog,
            models,
            jobs,
            client,
            work_dir,
            in_flight: Mutex::new(HashMap::new()),
        })
    }

    /// Downloads a worker binary and installs it as the folder entry `name`.
    pub async fn download_worker(
        &self,
        name: &WorkerName,
        url: &str,
        sha256: Option<&str>,
        version: Option<&str>,
        replace: bool,
        narrator: &Narrator,
    ) -> Result<WorkerBinary, ProvisionError> {
        let source = Source::parse(url)?;
        if !replace {
            self.catalog.check_absent(name)?;
        }
        let artifact = Artifact::Worker(name.to_string());
        let Some(_claim) = self.claim(&artifact, url, narrator).await? else {
            return Ok(self.catalog.get(name)?);
        };

        let cancel = narrator.cancellation();
        let part = self.catalog.dir().join(part_name(name.as_str(), url));
        narrator.info("download.start", format!("downloading {url}"));
        fetch::fetch(&self.client, &source, &part, sha256, narrator, &cancel).await?;
        let binary = self.catalog.install(name, &part, version, url, replace)?;
        narrator.info(
            "download.install",
            format!("installed {name} at {}", binary.path.display()),
        );
        Ok(binary)
    }

    /// Downloads a model and installs it as `name`.
    pub async fn download_model(
        &self,
        name: &ModelName,
        url: &str,
        sha256: Option<&str>,
        replace: bool,
        narrator: &Narrator,
    ) -> Result<Model, ProvisionError> {
        let source = Source::parse(url)?;
        if !replace {
            self.models.check_absent(name)?;
        }
        let artifact = Artifact::Model(name.to_string());
        let Some(_claim) = self.claim(&artifact, url, narrator).await? else {
            return Ok(self.models.get(name)?);
        };

        let cancel = narrator.cancellation();
        let part = self.models.dir().join(part_name(name.as_str(), url));
        narrator.info("download.start", format!("downloading {url}"));
        fetch::fetch(&self.client, &source, &part, sha256, narrator, &cancel).await?;
        let model = self.models.install(name, &part, url, replace)?;
        narrator.info(
            "download.install",
            format!("installed {name} at {}", model.path.display()),
        );
        Ok(model)
    }

    /// Claims `artifact` for this job. Returns `None` after joining a job that already installs
    /// it from the same URL (and succeeded), so the caller returns the installed result.
    async fn claim(
        &self,
        artifact: &Artifact,
        url: &str,
        narrator: &Narrator,
    ) -> Result<Option<Claim<'_>>, ProvisionError> {
        let running = {
            let mut in_flight = self.in_flight.lock().expect("in-flight lock poisoned");
            match in_flight.get(artifact) {
                Some(other) => other.clone(),
                None => {
                    in_flight.insert(
                        artifact.clone(),
                        InFlight {
                            url: url.to_owned(),
                            job: narrator.job_id().clone(),
                        },
                    );
                    return Ok(Some(Claim {
                        provisioner: self,
                        artifact: artifact.clone(),
                    }));
                }
            }
        };
        let name = match artifact {
            Artifact::Worker(name) | Artifact::Model(name) => name.clone(),
        };
        if running.url != url {
            return Err(ProvisionError::Busy {
                name,
                job: running.job,
                url: running.url,
            });
        }
        self.join(&running.job, narrator).await?;
        Ok(None)
    }

    /// Follows job `other` to its end, relaying its narration into this job.
    async fn join(&self, other: &JobId, narrator: &Narrator) -> Result<(), ProvisionError> {
        narrator.info(
            "download.join",
            format!("joining job {other}, which is downloading the same file"),
        );
        let mut events = match self.jobs.subscribe(other, std::time::Duration::ZERO).await {
            Ok(events) => events,
            Err(error) => {
                return Err(ProvisionError::JoinedJobFailed {
                    job: other.clone(),
                    message: error.to_string(),
                });
            }
        };
        // Cancelling this job stops only the waiting; the other job's transfer goes on.
        let cancel = narrator.cancellation();
        loop {
            let event = tokio::select! {
                event = events.next() => event,
                () = cancel.cancelled() => return Err(ProvisionError::Cancelled),
            };
            let Some(event) = event else { break };
            if let Some(outcome) = event.outcome {
                return if outcome.is_ok() {
                    Ok(())
                } else {
                    Err(ProvisionError::JoinedJobFailed {
                        job: other.clone(),
                        message: outcome.message,
                    })
                };
            }
            match event.progress {
                Some(progress) => narrator.progress(event.action, event.message, progress),
                None => narrator.narrate(event.level, event.action, event.message),
            }
        }
        Ok(())
    }

    /// Builds a worker binary from source and installs it.
    pub async fn build_worker(
        &self,
        request: BuildRequest,
        narrator: &Narrator,
    ) -> Result<WorkerBinary, ProvisionError> {
        if !request.replace {
            self.catalog.check_absent(&request.name)?;
        }
        let artifact = Artifact::Worker(request.name.to_string());
        let Some(_claim) = self.claim(&artifact, &request.source, narrator).await? else {
            return Ok(self.catalog.get(&request.name)?);
        };
        let cancel = narrator.cancellation();
        let work = self.work_dir.join(narrator.job_id().as_str());
        let result = build::build(&self.catalog, &request, &work, narrator, &cancel).await;
        if let Err(error) = tokio::fs::remove_dir_all(&work).await
            && error.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(path = %work.display(), %error, "failed to remove a build work tree");
        }
        result
    }
}

/// Ownership of an artifact by the job installing it; released on drop.
struct Claim<'a> {
    provisioner: &'a Provisioner,
    artifact: Artifact,
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        self.provisioner
            .in_flight
            .lock()
            .expect("in-flight lock poisoned")
            .remove(&self.artifact);
    }
}

/// Name of the temporary file of a download: hidden, and the same for the same name and URL,
/// so a retry resumes the file an earlier attempt left.
fn part_name(name: &str, url: &str) -> String {
    let url_digest = crate::catalog::sha256_hex(&mut url.as_bytes()).unwrap_or_default();
    format!(".download-{name}-{}.part", &url_digest[..12])
}
