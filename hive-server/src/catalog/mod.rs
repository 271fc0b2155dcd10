//! The worker catalog: worker binaries installed in one directory on disk.
//!
//! An entry is either a file placed directly in the catalog directory (`cp my-worker
//! ~/.cache/rbee/workers/`), a symbolic link placed there, or a folder named after the entry
//! that holds the binary and an optional `manifest.json`. Names starting with `.` are never
//! entries: the hive uses them for its own temporary work.

mod entry;
mod name;
mod names;

use std::{
    io,
    path::{Component, Path, PathBuf},
    sync::Arc,
    time::Duration,
};

pub use entry::{Layout, Manifest, Readiness, WorkerBinary};
pub use name::{InvalidName, MAX_NAME_BYTES, WorkerName, check_entry_name};

pub(crate) use entry::{DigestCache, digest, sha256_hex};
use entry::{DigestSource, FileFactsCache, SETTLE_TIME};
use names::EntryNames;

/// File name of the manifest inside a folder entry.
pub const MANIFEST_FILE: &str = "manifest.json";

/// Prefix of the hidden folders a folder entry is moved to while it is deleted.
const TRASH_PREFIX: &str = ".rbee-trash-";

/// Prefix of the hidden folders new entries are assembled in before they are installed.
const STAGING_PREFIX: &str = ".rbee-install-";

/// Errors of catalog operations.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// The name is not a valid catalog name.
    #[error(transparent)]
    InvalidName(#[from] InvalidName),
    /// No entry has that name.
    #[error("worker binary {name:?} not found in the catalog at {dir}")]
    NotFound {
        /// The name looked up.
        name: String,
        /// The catalog directory.
        dir: PathBuf,
    },
    /// An entry of that name exists and replacing it was not requested.
    #[error("worker binary {0} already exists; set replace (rbee: --replace) to overwrite it")]
    AlreadyExists(WorkerName),
    /// The entry exists but cannot be used, for example because its manifest is invalid.
    #[error("worker binary {name} cannot be used: {problem}")]
    Unusable {
        /// The entry.
        name: String,
        /// What is wrong with it.
        problem: String,
    },
    /// A file system operation failed.
    #[error("failed to {action} {path}: {source}")]
    Io {
        /// What the hive was doing, for example "read" or "remove".
        action: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

impl CatalogError {
    pub(crate) fn io(action: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        Self::Io {
            action,
            path: path.into(),
            source,
        }
    }
}

/// The worker catalog of one hive.
#[derive(Debug)]
pub struct Catalog {
    dir: PathBuf,
    digests: FileFactsCache,
    /// Entry names kept between listings.
    names: EntryNames,
    /// How long ago a file or the directory must have last changed for what was read from it
    /// to be cached.
    settle: Duration,
}

impl Catalog {
    /// Opens the catalog at `dir`, creating the directory if needed.
    ///
    /// The path is canonicalized so it compares equal to the executable paths the kernel reports
    /// in `/proc/PID/exe`. Leftovers of deletions interrupted by a crash are removed.
    pub fn open(dir: &Path) -> Result<Self, CatalogError> {
        Self::open_with_settle_time(dir, SETTLE_TIME)
    }

    /// Opens the catalog at `dir` like [`Catalog::open`], caching what was read from a file or
    /// the directory once it last changed `settle` ago.
    fn open_with_settle_time(dir: &Path, settle: Duration) -> Result<Self, CatalogError> {
        create_dir(dir).map_err(|e| CatalogError::io("create", dir, e))?;
        let dir = dir
            .canonicalize()
            .map_err(|e| CatalogError::io("resolve", dir, e))?;
        let catalog = Self {
            dir,
            digests: FileFactsCache::default(),
            names: EntryNames::new(settle),
            settle,
        };
        catalog.remove_leftover_trash();
        Ok(catalog)
    }

    /// Returns the canonical catalog directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Lists every entry, sorted by name. Entries that cannot be read are skipped and logged.
    pub fn list(&self) -> Result<Vec<WorkerBinary>, CatalogError> {
        self.list_with(&DigestSource::hashing(&self.digests, self.settle))
    }

    /// Lists every entry like [`Catalog::list`] but hashes no file: returns `None` when the
    /// digest of an entry is not cached yet, and [`Catalog::list`] must run off the async threads.
    pub fn list_cached(&self) -> Result<Option<Vec<WorkerBinary>>, CatalogError> {
        let digests = DigestSource::cached_only(&self.digests, self.settle);
        let binaries = self.list_with(&digests)?;
        Ok((!digests.missed()).then_some(binaries))
    }

    fn list_with(&self, digests: &DigestSource<'_>) -> Result<Vec<WorkerBinary>, CatalogError> {
        let names = self.entry_names()?;
        let mut binaries = Vec::with_capacity(names.len());
        for name in names.iter() {
            match self.read_entry(name, digests) {
                Ok(Some(binary)) => binaries.push(binary),
                // Removed since the names were read, or never an entry.
                Ok(None) | Err(CatalogError::NotFound { .. }) => {}
                Err(error) => tracing::warn!(%name, %error, "skipping unreadable catalog entry"),
            }
        }

        // Forget digests of files that are gone, so renamed files do not pile up.
        let listed: std::collections::HashSet<&Path> =
            binaries.iter().map(|b| b.path.as_path()).collect();
        self.digests.retain(|path| listed.contains(path));
        Ok(binaries)
    }

    /// Returns the entry called `name`.
    pub fn get(&self, name: &WorkerName) -> Result<WorkerBinary, CatalogError> {
        self.look_up(name, &DigestSource::hashing(&self.digests, self.settle))
    }

    /// Returns the entry called `name` like [`Catalog::get`] but hashes no file: returns `None`
    /// when its digest is not cached yet, and [`Catalog::get`] must run off the async threads.
    pub fn get_cached(&self, name: &WorkerName) -> Result<Option<WorkerBinary>, CatalogError> {
        let digests = DigestSource::cached_only(&self.digests, self.settle);
        let binary = self.look_up(name, &digests)?;
        Ok((!digests.missed()).then_some(binary))
    }

    /// Returns the entry called `name` if it can be used, else why not.
    pub fn get_usable(&self, name: &WorkerName) -> Result<WorkerBinary, CatalogError> {
        let binary = self.get(name)?;
        match &binary.problem {
            Some(problem) => Err(CatalogError::Unusable {
                name: name.to_string(),
                problem: problem.clone(),
            }),
            None => Ok(binary),
        }
    }

    /// Removes the entry called `name` and returns it as it was.
    ///
    /// Works on broken entries too. A symbolic link is removed, never its target. A folder entry
    /// is first renamed to a hidden name in one atomic step, so the catalog never lists a
    /// half-deleted entry, then removed without following any link inside it.
    pub fn remove(&self, name: &WorkerName) -> Result<WorkerBinary, CatalogError> {
        let binary = self.get(name)?;
        let path = self.dir.join(name.as_str());
        // The type as it is now, not as it was read: the entry may have been replaced since.
        let file_type = std::fs::symlink_metadata(&path)
            .map_err(|e| self.map_missing(name, "read", e))?
            .file_type();
        let layout = if file_type.is_dir() {
            Layout::Directory
        } else {
            Layout::File
        };

        match layout {
            Layout::File | Layout::Symlink => match std::fs::remove_file(&path) {
                Ok(()) => {}
                // Replaced by a folder since it was looked at: delete that instead.
                Err(e) if e.kind() == io::ErrorKind::IsADirectory => self.remove_folder(name)?,
                Err(e) => return Err(self.map_missing(name, "remove", e)),
            },
            Layout::Directory => self.remove_folder(name)?,
        }
        self.digests.remove(&binary.path);
        tracing::info!(%name, path = %binary.path.display(), "worker binary deleted");
        Ok(binary)
    }

    /// Removes the folder entry `name`: renamed to a hidden name in one atomic step, so it
    /// disappears from the catalog at once, then removed without following any link inside it.
    fn remove_folder(&self, name: &WorkerName) -> Result<(), CatalogError> {
        let path = self.dir.join(name.as_str());
        let trash = self.dir.join(format!(
            "{TRASH_PREFIX}{name}-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::rename(&path, &trash).map_err(|e| self.map_missing(name, "move", e))?;
        // Whatever was renamed is removed by its type now, in case the entry was swapped since.
        let removed = match std::fs::symlink_metadata(&trash) {
            Ok(metadata) if metadata.is_dir() => std::fs::remove_dir_all(&trash),
            _ => std::fs::remove_file(&trash),
        };
        if let Err(error) = removed {
            // The entry is already gone from the catalog; the next start retries.
            tracing::warn!(path = %trash.display(), %error, "failed to remove deleted entry");
        }
        Ok(())
    }

    /// Returns the catalog name of the worker binary at `exe`, an executable path as read from
    /// `/proc/PID/exe`, or `None` when the executable does not live in the catalog.
    ///
    /// Only the path counts: a symbolic link in the catalog that points elsewhere does not make
    /// the processes of its target workers, or every `sleep` on the machine could be one.
    pub fn worker_name_of(&self, exe: &Path) -> Option<WorkerName> {
        // The kernel appends " (deleted)" when the file was removed or replaced after exec.
        let exe = exe
            .to_str()
            .and_then(|s| s.strip_suffix(" (deleted)"))
            .map_or(exe, Path::new);
        let relative = exe.strip_prefix(&self.dir).ok()?;
        match relative.components().next()? {
            Component::Normal(first) => first.to_str().and_then(valid_name),
            _ => None,
        }
    }

    fn look_up(
        &self,
        name: &WorkerName,
        digests: &DigestSource<'_>,
    ) -> Result<WorkerBinary, CatalogError> {
        self.read_entry(name, digests)?
            .ok_or_else(|| self.not_found(name))
    }

    /// Sorted names of the directory's entries: remembered while the directory is unchanged,
    /// else read from it.
    fn entry_names(&self) -> Result<Arc<[WorkerName]>, CatalogError> {
        self.names.get(&self.dir, || self.scan_names())
    }

    fn scan_names(&self) -> Result<Vec<WorkerName>, CatalogError> {
        let read_dir =
            std::fs::read_dir(&self.dir).map_err(|e| CatalogError::io("read", &self.dir, e))?;
        let mut names = Vec::new();
        for dir_entry in read_dir {
            let dir_entry = dir_entry.map_err(|e| CatalogError::io("read", &self.dir, e))?;
            names.extend(dir_entry.file_name().to_str().and_then(valid_name));
        }
        Ok(names)
    }

    fn read_entry(
        &self,
        name: &WorkerName,
        digests: &DigestSource<'_>,
    ) -> Result<Option<WorkerBinary>, CatalogError> {
        let path = self.dir.join(name.as_str());
        let metadata =
            std::fs::symlink_metadata(&path).map_err(|e| self.map_missing(name, "read", e))?;
        Ok(entry::read_entry(name, &path, metadata, digests))
    }

    /// Fails with [`CatalogError::AlreadyExists`] when an entry called `name` exists.
    pub fn check_absent(&self, name: &WorkerName) -> Result<(), CatalogError> {
        let path = self.dir.join(name.as_str());
        match std::fs::symlink_metadata(&path) {
            Ok(_) => Err(CatalogError::AlreadyExists(name.clone())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(CatalogError::io("read", path, e)),
        }
    }

    /// Returns a new hidden path in the catalog directory for a file being prepared, on the same
    /// file system as the entries so it can be installed by renaming.
    pub fn scratch_path(&self, label: &str) -> PathBuf {
        self.dir.join(format!(
            "{STAGING_PREFIX}{label}-{}",
            uuid::Uuid::new_v4().simple()
        ))
    }

    /// Installs `file` (a path inside the catalog directory, which is moved) as the folder entry
    /// `name`, executable, with a manifest recording `version` and `source`.
    ///
    /// The entry is assembled in a hidden folder and appears with one atomic rename, so the
    /// catalog never shows a partial entry. With `replace`, the new entry is exchanged with the
    /// old one atomically, then the old one is removed.
    pub fn install(
        &self,
        name: &WorkerName,
        file: &Path,
        version: Option<&str>,
        source: &str,
        replace: bool,
    ) -> Result<WorkerBinary, CatalogError> {
        let staging = self.scratch_path(name.as_str());
        let result = self.assemble(&staging, name, file, version, source);
        let result = result.and_then(|()| self.publish(&staging, name, replace));
        if result.is_err() {
            let _ = std::fs::remove_dir_all(&staging);
        }
        result?;
        tracing::info!(%name, source, "worker binary installed");
        self.get(name)
    }

    fn assemble(
        &self,
        staging: &Path,
        name: &WorkerName,
        file: &Path,
        version: Option<&str>,
        source: &str,
    ) -> Result<(), CatalogError> {
        use std::os::unix::fs::PermissionsExt;

        std::fs::create_dir(staging).map_err(|e| CatalogError::io("create", staging, e))?;
        let binary = staging.join(name.as_str());
        std::fs::rename(file, &binary).map_err(|e| CatalogError::io("move", file, e))?;
        std::fs::set_permissions(&binary, std::fs::Permissions::from_mode(0o755))
            .map_err(|e| CatalogError::io("make executable", &binary, e))?;
        let manifest = serde_json::json!({
            "binary": name.as_str(),
            "version": version,
            "source": source,
        });
        let manifest_path = staging.join(MANIFEST_FILE);
        let json = serde_json::to_vec_pretty(&manifest)
            .map_err(|e| CatalogError::io("encode", &manifest_path, io::Error::other(e)))?;
        std::fs::write(&manifest_path, json)
            .map_err(|e| CatalogError::io("write", &manifest_path, e))
    }

    fn publish(
        &self,
        staging: &Path,
        name: &WorkerName,
        replace: bool,
    ) -> Result<(), CatalogError> {
        use rustix::fs::{CWD, RenameFlags, renameat_with};

        let entry = self.dir.join(name.as_str());
        if replace {
            match renameat_with(CWD, staging, CWD, &entry, RenameFlags::EXCHANGE) {
                Ok(()) => {
                    // The old entry now sits at the staging path.
                    let old = std::fs::symlink_metadata(staging);
                    let removed = match old {
                        Ok(m) if m.is_dir() => std::fs::remove_dir_all(staging),
                        _ => std::fs::remove_file(staging),
                    };
                    if let Err(error) = removed {
                        tracing::warn!(path = %staging.display(), %error, "failed to remove replaced entry");
                    }
                    return Ok(());
                }
                Err(rustix::io::Errno::NOENT) => {}
                Err(errno) => return Err(CatalogError::io("replace", &entry, errno.into())),
            }
        }
        match renameat_with(CWD, staging, CWD, &entry, RenameFlags::NOREPLACE) {
            Ok(()) => Ok(()),
            Err(rustix::io::Errno::EXIST) => Err(CatalogError::AlreadyExists(name.clone())),
            Err(errno) => Err(CatalogError::io("install", &entry, errno.into())),
        }
    }

    fn remove_leftover_trash(&self) {
        let Ok(read_dir) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for dir_entry in read_dir.flatten() {
            let name = dir_entry.file_name();
            let leftover = name
                .to_str()
                .is_some_and(|n| n.starts_with(TRASH_PREFIX) || n.starts_with(STAGING_PREFIX));
            if leftover {
                let path = dir_entry.path();
                let removed = match dir_entry.file_type() {
                    Ok(kind) if kind.is_dir() => std::fs::remove_dir_all(&path),
                    _ => std::fs::remove_file(&path),
                };
                if let Err(error) = removed {
                    tracing::warn!(path = %path.display(), %error, "failed to remove leftover");
                }
            }
        }
    }

    fn not_found(&self, name: &WorkerName) -> CatalogError {
        CatalogError::NotFound {
            name: name.to_string(),
            dir: self.dir.clone(),
        }
    }

    fn map_missing(&self, name: &WorkerName, action: &'static str, e: io::Error) -> CatalogError {
        if e.kind() == io::ErrorKind::NotFound {
            self.not_found(name)
        } else {
            CatalogError::io(action, self.dir.join(name.as_str()), e)
        }
    }
}

/// Creates the directory `dir` and its parents unless they exist. A file in its place fails
/// with "not a directory", where `create_dir_all` reports "File exists".
pub(crate) fn create_dir(dir: &Path) -> io::Result<()> {
    match std::fs::create_dir_all(dir) {
        Err(error) if error.kind() == io::ErrorKind::AlreadyExists => Err(io::Error::new(
            io::ErrorKind::NotADirectory,
            "it exists and is not a directory",
        )),
        result => result,
    }
}

fn valid_name(name: &str) -> Option<WorkerName> {
    WorkerName::parse(name).ok()
}

#[cfg(test)]
mod tests;
