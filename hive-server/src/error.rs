//! Errors of hive operations, and the one place where they become gRPC status codes.

use std::{fmt::Write as _, io};

use tonic::{Code, Status};

use crate::{
    catalog::{CatalogError, WorkerName},
    jobs::JobError,
    models::ModelError,
    process::ProcessError,
    provision::ProvisionError,
    workers::WorkerError,
};

/// Any error a hive operation returns.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A catalog operation failed.
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    /// A process operation failed.
    #[error(transparent)]
    Process(#[from] ProcessError),
    /// A job could not be started or found.
    #[error(transparent)]
    Job(#[from] JobError),
    /// An active-worker operation failed.
    #[error(transparent)]
    Worker(#[from] WorkerError),
    /// A model catalog operation failed.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// A download or build failed.
    #[error(transparent)]
    Provision(#[from] ProvisionError),
    /// A model cannot be deleted while active workers serve it.
    #[error(
        "model {name} is in use by active workers {workers}; retire them first or delete with force (rbee: --force)",
        workers = .workers.join(", ")
    )]
    ModelInUse {
        /// The model.
        name: String,
        /// Ids of the workers serving it.
        workers: Vec<String>,
    },
    /// A request field is invalid.
    #[error("{0}")]
    InvalidArgument(String),
    /// A worker binary cannot be deleted while worker processes run it.
    #[error(
        "worker binary {name} is in use by worker processes {pids}; \
         stop them first or delete with force (rbee: --force)",
        pids = join_pids(.pids)
    )]
    BinaryInUse {
        /// The binary.
        name: WorkerName,
        /// Pids of the worker processes running it.
        pids: Vec<i32>,
    },
    /// Too many requests are running at once.
    #[error("the hive is busy: {limit} requests are already running; retry shortly")]
    Overloaded {
        /// The concurrency limit.
        limit: usize,
    },
    /// Too many narration streams are open at once.
    #[error("the hive has {limit} narration streams open already; close one or retry later")]
    TooManyStreams {
        /// The stream limit.
        limit: usize,
    },
    /// A background task of the hive failed.
    #[error("internal error: {0}")]
    Internal(String),
}

fn join_pids(pids: &[i32]) -> String {
    let pids: Vec<String> = pids.iter().map(i32::to_string).collect();
    pids.join(", ")
}

impl Error {
    /// Returns the gRPC code for this error.
    pub fn code(&self) -> Code {
        match self {
            Self::Catalog(error) => catalog_code(error),
            Self::Process(error) => process_code(error),
            Self::Job(error) => match error {
                JobError::InvalidId(_) => Code::InvalidArgument,
                JobError::AlreadyExists(_) => Code::AlreadyExists,
                JobError::NotFound(_) => Code::NotFound,
                JobError::ShuttingDown => Code::Unavailable,
                JobError::AlreadyFinished(_) | JobError::NotCancellable(_) => {
                    Code::FailedPrecondition
                }
            },
            Self::Worker(error) => worker_code(error),
            Self::Model(error) => model_code(error),
            Self::Provision(error) => provision_code(error),
            Self::ModelInUse { .. } => Code::FailedPrecondition,
            Self::InvalidArgument(_) => Code::InvalidArgument,
            Self::BinaryInUse { .. } => Code::FailedPrecondition,
            Self::Overloaded { .. } | Self::TooManyStreams { .. } => Code::ResourceExhausted,
            Self::Internal(_) => Code::Internal,
        }
    }
}

fn catalog_code(error: &CatalogError) -> Code {
    match error {
        CatalogError::InvalidName(_) => Code::InvalidArgument,
        CatalogError::NotFound { .. } => Code::NotFound,
        CatalogError::Unusable { .. } => Code::FailedPrecondition,
        CatalogError::AlreadyExists(_) => Code::AlreadyExists,
        CatalogError::Io { source, .. } => io_code(source),
    }
}

fn process_code(error: &ProcessError) -> Code {
    match error {
        ProcessError::NotFound { .. } => Code::NotFound,
        ProcessError::PermissionDenied { .. } => Code::PermissionDenied,
        ProcessError::Unkillable { .. } => Code::DeadlineExceeded,
        ProcessError::Os { source, .. } => io_code(source),
    }
}

/// Returns the gRPC code for an active-worker error.
pub(crate) fn worker_code(error: &WorkerError) -> Code {
    match error {
        WorkerError::Catalog(error) => catalog_code(error),
        WorkerError::Process(error) => process_code(error),
        WorkerError::InvalidId(_)
        | WorkerError::InvalidArgument(_)
        | WorkerError::UnknownDevice { .. } => Code::InvalidArgument,
        WorkerError::ModelNotFound { .. } | WorkerError::NotFound(_) => Code::NotFound,
        WorkerError::PortInUse(_) | WorkerError::Template(_) | WorkerError::Launch { .. } => {
            Code::FailedPrecondition
        }
        WorkerError::NotServing(_) => Code::FailedPrecondition,
        WorkerError::WorkerFailed { .. } => Code::Unavailable,
        WorkerError::ExitedDuringStart { .. } => Code::Aborted,
        WorkerError::NotReady { .. } => Code::DeadlineExceeded,
        WorkerError::State { .. } => Code::Internal,
    }
}

fn model_code(error: &ModelError) -> Code {
    match error {
        ModelError::InvalidName(_) => Code::InvalidArgument,
        ModelError::NotFound { .. } => Code::NotFound,
        ModelError::AlreadyExists(_) => Code::AlreadyExists,
        ModelError::Io { source, .. } => io_code(source),
    }
}

fn provision_code(error: &ProvisionError) -> Code {
    match error {
        ProvisionError::InvalidArgument(_) => Code::InvalidArgument,
        ProvisionError::Catalog(error) => catalog_code(error),
        ProvisionError::Model(error) => model_code(error),
        ProvisionError::SourceNotFound(_) => Code::NotFound,
        ProvisionError::Http { .. } => Code::FailedPrecondition,
        ProvisionError::Unreachable { .. } => Code::Unavailable,
        ProvisionError::ChecksumMismatch { .. } => Code::DataLoss,
        ProvisionError::DiskFull { .. } => Code::ResourceExhausted,
        ProvisionError::Cancelled => Code::Cancelled,
        ProvisionError::Busy { .. } | ProvisionError::JoinedJobFailed { .. } => Code::Aborted,
        ProvisionError::BuildFailed { .. } | ProvisionError::NoArtifact { .. } => {
            Code::FailedPrecondition
        }
        ProvisionError::Io { source, .. } => io_code(source),
    }
}

fn io_code(error: &io::Error) -> Code {
    match error.kind() {
        io::ErrorKind::NotFound => Code::NotFound,
        io::ErrorKind::PermissionDenied => Code::PermissionDenied,
        _ => Code::Internal,
    }
}

impl From<Error> for Status {
    fn from(error: Error) -> Self {
        let code = error.code();
        if code == Code::Internal {
            tracing::error!(%error, "request failed");
        } else {
            tracing::debug!(%error, ?code, "request rejected");
        }
        // Sized for most messages up front, so formatting does not grow it several times.
        let mut message = String::with_capacity(160);
        let _ = write!(message, "{error}");
        Status::new(code, message)
    }
}
