//! Worker ids.

use std::fmt;

/// Id of an active worker, `worker-` and 12 hex digits; given to the worker process in
/// `RBEE_WORKER_ID`.
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(transparent)]
pub struct WorkerId(String);

/// A worker id that is malformed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid worker id {shown}: worker ids look like worker-0123456789ab")]
pub struct InvalidWorkerId {
    shown: String,
}

impl WorkerId {
    /// Generates a new id.
    pub fn generate() -> Self {
        let hex = uuid::Uuid::new_v4().simple().to_string();
        Self(format!("worker-{}", &hex[..12]))
    }

    /// Parses an id from a request.
    pub fn parse(id: &str) -> Result<Self, InvalidWorkerId> {
        let valid = id.strip_prefix("worker-").is_some_and(|hex| {
            !hex.is_empty() && hex.len() <= 64 && hex.bytes().all(|b| b.is_ascii_hexdigit())
        });
        if valid {
            Ok(Self(id.to_owned()))
        } else {
            let shown: String = id.chars().take(64).collect();
            Err(InvalidWorkerId {
                shown: format!("{shown:?}"),
            })
        }
    }

    /// Returns the id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for WorkerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::WorkerId;

    #[test]
    fn generated_ids_parse() {
        let id = WorkerId::generate();
        assert_eq!(WorkerId::parse(id.as_str()).unwrap(), id);
        assert_eq!(id.as_str().len(), "worker-".len() + 12);
    }

    #[test]
    fn malformed_ids_are_rejected() {
        for bad in ["", "worker-", "worker-xyz", "../worker-12", "w-0123"] {
            assert!(WorkerId::parse(bad).is_err(), "{bad:?}");
        }
    }
}
