//! The state file: the workers this hive spawned, so a restarted hive can adopt them.

use std::{
    fs::OpenOptions,
    io::{self, Write},
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
    time::SystemTime,
};

use serde::{Deserialize, Serialize};

use super::WorkerId;
use crate::catalog::{Readiness, WorkerName};

/// Version of the file format, bumped on incompatible changes.
const FORMAT_VERSION: u32 = 1;

/// What the hive records about a worker it spawned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct PersistedWorker {
    pub(super) id: WorkerId,
    pub(super) binary: WorkerName,
    pub(super) model: String,
    pub(super) device: String,
    pub(super) pid: i32,
    pub(super) start_ticks: u64,
    pub(super) port: u16,
    pub(super) log_path: PathBuf,
    pub(super) argv: Vec<String>,
    pub(super) readiness: Readiness,
    /// API the worker serves for inference; absent in files of older hives.
    #[serde(default)]
    pub(super) api: Option<String>,
    pub(super) started_at: SystemTime,
}

#[derive(Serialize, Deserialize)]
struct Contents<W> {
    version: u32,
    workers: Vec<W>,
}

/// The state file at one path.
#[derive(Debug)]
pub(super) struct StateFile {
    path: PathBuf,
}

impl StateFile {
    pub(super) fn new(path: PathBuf) -> Self {
        Self { path }
    }

    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the recorded workers. A missing file means none; an unreadable one is set aside as
    /// `<file>.corrupt` and logged, so the hive still starts.
    pub(super) fn load(&self) -> Vec<PersistedWorker> {
        let bytes = match std::fs::read(&self.path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Vec::new(),
            Err(error) => {
                tracing::warn!(path = %self.path.display(), %error, "failed to read worker state");
                return Vec::new();
            }
        };
        match serde_json::from_slice::<Contents<PersistedWorker>>(&bytes) {
            Ok(contents) if contents.version == FORMAT_VERSION => contents.workers,
            Ok(contents) => {
                tracing::warn!(
                    version = contents.version,
                    "ignoring worker state of another format version"
                );
                Vec::new()
            }
            Err(error) => {
                let mut aside = self.path.as_os_str().to_owned();
                aside.push(".corrupt");
                let _ = std::fs::rename(&self.path, PathBuf::from(&aside));
                tracing::warn!(path = %self.path.display(), %error, "worker state unreadable; set aside");
                Vec::new()
            }
        }
    }

    /// Writes the workers atomically: a temporary file, flushed to disk, renamed over the old one.
    pub(super) fn save(&self, workers: &[&PersistedWorker]) -> io::Result<()> {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir)?;
        let contents = Contents {
            version: FORMAT_VERSION,
            workers: workers.to_vec(),
        };
        let json = serde_json::to_vec_pretty(&contents).map_err(io::Error::other)?;

        let temporary = dir.join(format!(".workers.json.{}", std::process::id()));
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&temporary)?;
        file.write_all(&json)?;
        file.sync_all()?;
        std::fs::rename(&temporary, &self.path)?;
        std::fs::File::open(dir)?.sync_all()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn worker() -> PersistedWorker {
        PersistedWorker {
            id: WorkerId::parse("worker-0123456789ab").unwrap(),
            binary: WorkerName::parse("w").unwrap(),
            model: "/m".into(),
            device: "cpu".into(),
            pid: 42,
            start_ticks: 7,
            port: 9000,
            log_path: "/l".into(),
            argv: vec!["w".into()],
            readiness: Readiness::Http("/health".into()),
            api: Some("llama.cpp".into()),
            started_at: SystemTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let file = StateFile::new(dir.path().join("workers.json"));
        assert!(file.load().is_empty());
        file.save(&[&worker()]).unwrap();
        assert_eq!(file.load(), vec![worker()]);
    }

    #[test]
    fn corrupt_file_is_set_aside() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("workers.json");
        std::fs::write(&path, "{not json").unwrap();
        let file = StateFile::new(path.clone());
        assert!(file.load().is_empty());
        assert!(!path.exists());
        assert!(dir.path().join("workers.json.corrupt").exists());
    }
}
