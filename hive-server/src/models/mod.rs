//! The model catalog: model files in one directory, named by their file names.
//!
//! A model is a regular file (or a link to one) placed directly in the model directory. The
//! hive records where a downloaded model came from in a hidden `.meta/<name>.json` beside it.
//! Names starting with `.` are never models: downloads in progress use them.

use std::{
    fs::{File, OpenOptions},
    io::{self, Read},
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
    time::SystemTime,
};

use serde::{Deserialize, Serialize};

use crate::catalog::{DigestCache, InvalidName, check_entry_name, digest};

/// Folder, inside the model directory, of the metadata the hive records about models.
const META_DIR: &str = ".meta";

/// Name of a model in the model catalog: a single, visible file name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ModelName(String);

impl ModelName {
    /// Parses a model name; the rules are those of every catalog name.
    pub fn parse(name: &str) -> Result<Self, InvalidName> {
        check_entry_name(name, "model")?;
        Ok(Self(name.to_owned()))
    }

    /// Returns the name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for ModelName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Errors of model catalog operations.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The name is not a valid model name.
    #[error(transparent)]
    InvalidName(#[from] InvalidName),
    /// No model has that name.
    #[error("model {name:?} not found in the model catalog at {dir}")]
    NotFound {
        /// The name looked up.
        name: String,
        /// The model directory.
        dir: PathBuf,
    },
    /// A model of that name exists and replacing it was not requested.
    #[error("model {0} already exists; set replace (rbee: --replace) to overwrite it")]
    AlreadyExists(ModelName),
    /// A file system operation failed.
    #[error("failed to {action} {path}: {source}")]
    Io {
        /// What the hive was doing.
        action: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

fn io_error<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> ModelError + 'a {
    move |source| ModelError::Io {
        action,
        path: path.to_owned(),
        source,
    }
}

/// A model with the metadata the hive derives from its file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Model {
    /// Catalog name.
    pub name: ModelName,
    /// Path of the file in the model directory.
    pub path: PathBuf,
    /// Size in bytes.
    pub size_bytes: u64,
    /// Lowercase hex SHA-256.
    pub sha256: String,
    /// Format read from the first bytes.
    pub format: &'static str,
    /// URL it was downloaded from.
    pub source_url: Option<String>,
    /// Last modification time.
    pub modified_at: SystemTime,
}

/// What the hive records about a downloaded model.
#[derive(Debug, Default, Serialize, Deserialize)]
struct ModelMeta {
    source_url: Option<String>,
}

/// The model catalog of one hive.
#[derive(Debug)]
pub struct ModelCatalog {
    dir: PathBuf,
    /// Digests by path, reused while a file is unchanged.
    digests: DigestCache,
}

impl ModelCatalog {
    /// Opens the model catalog at `dir`, creating the directory if needed.
    pub fn open(dir: &Path) -> Result<Self, ModelError> {
        crate::catalog::create_dir(dir).map_err(io_error("create", dir))?;
        let dir = dir.canonicalize().map_err(io_error("resolve", dir))?;
        Ok(Self {
            dir,
            digests: DigestCache::default(),
        })
    }

    /// Returns the canonical model directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Returns the path a model called `name` has, whether or not it exists.
    pub fn path_of(&self, name: &ModelName) -> PathBuf {
        self.dir.join(name.as_str())
    }

    /// Lists every model, sorted by name. Files that cannot be read are skipped and logged.
    pub fn list(&self) -> Result<Vec<Model>, ModelError> {
        let read_dir = std::fs::read_dir(&self.dir).map_err(io_error("read", &self.dir))?;
        let mut models = Vec::new();
        for dir_entry in read_dir.flatten() {
            let Some(name) = dir_entry
                .file_name()
                .to_str()
                .and_then(|n| ModelName::parse(n).ok())
            else {
                continue;
            };
            match self.read(&name) {
                Ok(Some(model)) => models.push(model),
                Ok(None) | Err(ModelError::NotFound { .. }) => {}
                Err(error) => tracing::warn!(%name, %error, "skipping unreadable model"),
            }
        }
        models.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(models)
    }

    /// Returns the model called `name`.
    pub fn get(&self, name: &ModelName) -> Result<Model, ModelError> {
        self.read(name)?.ok_or_else(|| self.not_found(name))
    }

    /// Removes the model called `name` (a link is removed, never its target) and its metadata.
    pub fn remove(&self, name: &ModelName) -> Result<Model, ModelError> {
        let model = self.get(name)?;
        std::fs::remove_file(&model.path).map_err(io_error("remove", &model.path))?;
        let meta = self.meta_path(name);
        if let Err(error) = std::fs::remove_file(&meta)
            && error.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(path = %meta.display(), %error, "failed to remove model metadata");
        }
        tracing::info!(%name, "model deleted");
        Ok(model)
    }

    /// Fails with [`ModelError::AlreadyExists`] when a model called `name` exists.
    pub fn check_absent(&self, name: &ModelName) -> Result<(), ModelError> {
        match std::fs::symlink_metadata(self.path_of(name)) {
            Ok(_) => Err(ModelError::AlreadyExists(name.clone())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_error("read", &self.path_of(name))(e)),
        }
    }

    /// Installs the downloaded file at `temporary` (in the model directory) as `name`, with one
    /// atomic rename, and records its source.
    pub fn install(
        &self,
        name: &ModelName,
        temporary: &Path,
        source_url: &str,
        replace: bool,
    ) -> Result<Model, ModelError> {
        if !replace {
            self.check_absent(name)?;
        }
        let meta_dir = self.dir.join(META_DIR);
        std::fs::create_dir_all(&meta_dir).map_err(io_error("create", &meta_dir))?;
        let meta = ModelMeta {
            source_url: Some(source_url.to_owned()),
        };
        let json =
            serde_json::to_vec(&meta).map_err(|e| io_error("encode", &meta_dir)(e.into()))?;
        let meta_path = self.meta_path(name);
        std::fs::write(&meta_path, json).map_err(io_error("write", &meta_path))?;

        let path = self.path_of(name);
        std::fs::rename(temporary, &path).map_err(io_error("install", &path))?;
        tracing::info!(%name, source_url, "model installed");
        self.get(name)
    }

    fn read(&self, name: &ModelName) -> Result<Option<Model>, ModelError> {
        let path = self.path_of(name);
        let link = std::fs::symlink_metadata(&path).map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                self.not_found(name)
            } else {
                io_error("read", &path)(e)
            }
        })?;
        if link.is_dir() {
            // Limitation: models spread over several files in a folder are not catalogued yet.
            return Ok(None);
        }

        // Opened without blocking, then checked, so a link to a FIFO cannot hang the hive.
        let mut file = OpenOptions::new()
            .read(true)
            .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
            .open(&path)
            .map_err(io_error("open", &path))?;
        let metadata = file.metadata().map_err(io_error("read", &path))?;
        if !metadata.is_file() {
            return Ok(None);
        }
        let format = detect_format(&mut file, &path).map_err(io_error("read", &path))?;
        let sha256 =
            digest(&path, &mut file, &metadata, &self.digests).map_err(io_error("read", &path))?;
        let source_url = std::fs::read(self.meta_path(name))
            .ok()
            .and_then(|bytes| serde_json::from_slice::<ModelMeta>(&bytes).ok())
            .and_then(|meta| meta.source_url);
        Ok(Some(Model {
            name: name.clone(),
            path,
            size_bytes: metadata.len(),
            sha256,
            format,
            source_url,
            modified_at: metadata.modified().unwrap_or(SystemTime::UNIX_EPOCH),
        }))
    }

    fn meta_path(&self, name: &ModelName) -> PathBuf {
        self.dir.join(META_DIR).join(format!("{name}.json"))
    }

    fn not_found(&self, name: &ModelName) -> ModelError {
        ModelError::NotFound {
            name: name.to_string(),
            dir: self.dir.clone(),
        }
    }
}

/// Names a model's format from its first bytes, or its extension where the format has no magic
/// number.
fn detect_format(file: &mut File, path: &Path) -> io::Result<&'static str> {
    let mut header = Vec::with_capacity(16);
    file.take(16).read_to_end(&mut header)?;
    Ok(format_of(&header, path))
}

fn format_of(header: &[u8], path: &Path) -> &'static str {
    if header.starts_with(b"GGUF") {
        return "gguf";
    }
    if header.starts_with(b"PK\x03\x04") {
        // PyTorch checkpoints are zip archives.
        return "pytorch";
    }
    // safetensors: an 8-byte little-endian header length, then the JSON header.
    if header.len() > 8 && header[8] == b'{' {
        return "safetensors";
    }
    match path.extension().and_then(|e| e.to_str()) {
        Some("onnx") => "onnx",
        _ => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_from_headers() {
        let plain = Path::new("m.bin");
        assert_eq!(format_of(b"GGUF\x03\0\0\0", plain), "gguf");
        assert_eq!(format_of(b"PK\x03\x04rest", plain), "pytorch");
        assert_eq!(format_of(b"\x10\0\0\0\0\0\0\0{\"a\"", plain), "safetensors");
        assert_eq!(format_of(b"\x08\x01", Path::new("m.onnx")), "onnx");
        assert_eq!(format_of(b"hello", plain), "unknown");
    }

    #[test]
    fn install_list_and_remove() {
        let dir = tempfile::tempdir().unwrap();
        let models = ModelCatalog::open(dir.path()).unwrap();
        let name = ModelName::parse("tiny.gguf").unwrap();
        let temporary = models.dir().join(".download-tiny.part");
        std::fs::write(&temporary, b"GGUF tiny").unwrap();

        let model = models
            .install(&name, &temporary, "http://127.0.0.1/tiny.gguf", false)
            .unwrap();

        assert_eq!(model.format, "gguf");
        assert_eq!(model.size_bytes, 9);
        assert_eq!(
            model.source_url.as_deref(),
            Some("http://127.0.0.1/tiny.gguf")
        );
        let listed = models.list().unwrap();
        assert_eq!(listed, vec![model]);

        std::fs::write(&temporary, b"again").unwrap();
        let err = models
            .install(&name, &temporary, "http://127.0.0.1/x", false)
            .unwrap_err();
        assert!(matches!(err, ModelError::AlreadyExists(_)), "{err:?}");

        models.remove(&name).unwrap();
        assert!(models.list().unwrap().is_empty());
        assert!(!models.dir().join(".meta/tiny.gguf.json").exists());
    }
}
