//! Narration events.

use std::{borrow::Cow, time::SystemTime};

use super::JobId;

/// Severity of a narration event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// Fine detail.
    Debug,
    /// Normal progress.
    Info,
    /// Something unexpected that the job survived.
    Warn,
    /// A failure.
    Error,
}

/// Progress of a measurable step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    /// Amount done.
    pub current: u64,
    /// Total amount; zero when unknown.
    pub total: u64,
    /// Unit of both amounts, for example `bytes`.
    pub unit: &'static str,
}

/// How a job ended: a gRPC status code number (0 for OK) and a message.
///
/// Kept as a plain number so this module does not depend on the RPC layer, which chooses codes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// gRPC status code number.
    pub code: i32,
    /// Error message; empty on success.
    pub message: String,
}

impl Outcome {
    /// gRPC code number of CANCELLED.
    const CANCELLED: i32 = 1;
    /// gRPC code number of UNAVAILABLE.
    const UNAVAILABLE: i32 = 14;

    /// Returns a successful outcome.
    pub fn ok() -> Self {
        Self {
            code: 0,
            message: String::new(),
        }
    }

    /// Returns a failed outcome with gRPC code number `code`.
    pub fn failed(code: i32, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    /// Returns the outcome of a job cancelled before it finished.
    pub fn cancelled(message: impl Into<String>) -> Self {
        Self::failed(Self::CANCELLED, message)
    }

    /// Returns the outcome a subscriber sees when the hive goes away before the job ends.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::failed(Self::UNAVAILABLE, message)
    }

    /// Returns whether the job succeeded.
    pub fn is_ok(&self) -> bool {
        self.code == 0
    }
}

/// One narration event of a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Job the event belongs to.
    pub job_id: JobId,
    /// Position in the job, from 0 with no gaps.
    pub seq: u64,
    /// When it happened.
    pub at: SystemTime,
    /// Severity.
    pub level: Level,
    /// Machine-readable step, for example `process.stop`.
    pub action: &'static str,
    /// Human-readable description.
    pub message: Cow<'static, str>,
    /// Progress of a measurable step.
    pub progress: Option<Progress>,
    /// Outcome; set only on the final event.
    pub outcome: Option<Outcome>,
}
