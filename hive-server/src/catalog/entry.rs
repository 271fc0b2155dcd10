//! Reading one catalog entry: its layout, manifest and the metadata derived from its file.

use std::{
    cell::Cell,
    collections::HashMap,
    fs::{File, OpenOptions},
    io::{self, Read, Seek, SeekFrom},
    os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt},
    path::{Component, Path, PathBuf},
    sync::Mutex,
    time::{Duration, SystemTime},
};

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{MANIFEST_FILE, WorkerName};

/// Storage layout of a catalog entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// A file directly in the catalog directory.
    File,
    /// A folder holding the binary and an optional manifest.
    Directory,
    /// A symbolic link in the catalog directory.
    Symlink,
}

/// A worker binary with the metadata the hive derives from its file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerBinary {
    /// Catalog name.
    pub name: WorkerName,
    /// Path of the executable file (for a symbolic link, the link itself).
    pub path: PathBuf,
    /// Storage layout.
    pub layout: Layout,
    /// Size of the executable in bytes; zero for a dangling link.
    pub size_bytes: u64,
    /// Lowercase hex SHA-256 of the executable; empty for a dangling link.
    pub sha256: String,
    /// Modification time of the executable.
    pub modified_at: SystemTime,
    /// Whether any execute bit is set.
    pub executable: bool,
    /// Target platform read from the file header.
    pub platform: String,
    /// Version recorded in the manifest.
    pub version: Option<String>,
    /// Source recorded in the manifest.
    pub source: Option<String>,
    /// Target of a symbolic link entry, as stored in the link.
    pub symlink_target: Option<PathBuf>,
    /// Manifest of a folder entry; the defaults for other layouts.
    pub manifest: Manifest,
    /// Reason a broken entry cannot be used; `None` for a usable entry.
    pub problem: Option<String>,
}

/// Contents of `manifest.json` in a folder entry. Unknown fields are ignored so that newer hives
/// can add fields without breaking older ones.
///
/// Templates (`command`, `args`, `env` values) may contain `{model}`, `{device}`, `{port}`,
/// `{worker_id}`, `{hive_addr}` and `{binary}`, replaced at spawn.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct Manifest {
    /// Path of the executable relative to the folder; defaults to the entry name.
    pub binary: Option<PathBuf>,
    /// Version of the binary.
    pub version: Option<String>,
    /// Origin of the binary: a URL or a source path.
    pub source: Option<String>,
    /// Full command line template, for workers run by an interpreter or a program outside the
    /// catalog (`["python3", "-m", "http.server", "{port}"]`). Replaces `binary` and `args`.
    pub command: Option<Vec<String>>,
    /// Argument template for the binary; default
    /// `["--model", "{model}", "--device", "{device}", "--port", "{port}"]`.
    pub args: Option<Vec<String>>,
    /// Extra environment variables, values as templates.
    pub env: BTreeMap<String, String>,
    /// Readiness check of the worker; by default, its port accepts connections.
    pub readiness: Option<Readiness>,
    /// Launch preset: `llama-server` for llama.cpp's server, whose arguments, readiness check
    /// and completion API the hive then applies. Entries named `llama-server` use it by default.
    pub preset: Option<String>,
}

/// Readiness check of a worker.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Readiness {
    /// The port accepts TCP connections on loopback.
    Tcp,
    /// `GET` of this path on the port returns 200.
    Http(String),
}

/// How long ago a file or a directory must have last changed before what was read from it is
/// cached. Longer than the timestamp tick of local file systems (a few milliseconds) and of
/// network file systems that keep whole seconds.
pub(crate) const SETTLE_TIME: Duration = Duration::from_secs(2);

/// Values read from files, keyed by path and valid while the file's identity is unchanged.
#[derive(Debug)]
pub(crate) struct FileCache<V> {
    entries: Mutex<HashMap<PathBuf, (FileIdentity, V)>>,
}

impl<V> Default for FileCache<V> {
    fn default() -> Self {
        Self {
            entries: Mutex::new(HashMap::new()),
        }
    }
}

impl<V: Clone> FileCache<V> {
    /// Returns the value cached for `path` if the file's identity is still `identity`.
    pub(crate) fn get(&self, path: &Path, identity: FileIdentity) -> Option<V> {
        self.lock()
            .get(path)
            .filter(|(known, _)| *known == identity)
            .map(|(_, value)| value.clone())
    }

    /// Caches `value`, read from the file at `path` from `read_at` on, if the file last changed
    /// at least `settle` before that.
    ///
    /// A write still in progress, or one within the same timestamp tick, may not have changed
    /// the file's times yet, so the next read reads such a file again.
    pub(crate) fn insert_settled(
        &self,
        path: &Path,
        identity: FileIdentity,
        value: V,
        read_at: SystemTime,
        settle: Duration,
    ) {
        if identity.settled(read_at, settle) {
            self.lock().insert(path.to_owned(), (identity, value));
        }
    }

    /// Forgets the value of `path`.
    pub(crate) fn remove(&self, path: &Path) {
        self.lock().remove(path);
    }

    /// Forgets the values of the paths for which `keep` returns false.
    pub(crate) fn retain(&self, keep: impl Fn(&Path) -> bool) {
        self.lock().retain(|path, _| keep(path));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PathBuf, (FileIdentity, V)>> {
        self.entries.lock().expect("file cache lock poisoned")
    }
}

/// Digests of files, so listing a catalog of large binaries does not hash them again.
pub(crate) type DigestCache = FileCache<String>;

/// Facts derived from the contents of entry files, so reading an unchanged entry opens no file.
pub(crate) type FileFactsCache = FileCache<FileFacts>;

/// Digest and platform of a file's contents.
#[derive(Debug, Clone)]
pub(crate) struct FileFacts {
    /// Lowercase hex SHA-256, empty when a read that may not hash found no cached digest.
    sha256: String,
    platform: &'static str,
}

/// File identity that must be unchanged for a cached digest to stay valid.
///
/// Limitation: some changes keep every field, and are not seen until the file changes again.
/// Examples are a write through a shared memory map, and a single `write` call that outlasts
/// the settle time while the file is hashed. A file system image with the same stored times,
/// swapped in for another, is a third.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FileIdentity {
    dev: u64,
    ino: u64,
    len: u64,
    mtime_ns: i128,
    /// Change time. `cp -p` or `touch -r` can give new content the size and modification time
    /// of the old, but cannot set the change time.
    ctime_ns: i128,
}

impl FileIdentity {
    /// Returns the identity of the file `metadata` was read from.
    pub(crate) fn of(metadata: &std::fs::Metadata) -> Self {
        Self {
            dev: metadata.dev(),
            ino: metadata.ino(),
            len: metadata.len(),
            mtime_ns: i128::from(metadata.mtime()) * 1_000_000_000
                + i128::from(metadata.mtime_nsec()),
            ctime_ns: i128::from(metadata.ctime()) * 1_000_000_000
                + i128::from(metadata.ctime_nsec()),
        }
    }

    /// Returns whether the file last changed at least `settle` before `read_at`, by its change
    /// time: every write and every change of metadata sets it to the current time, and no
    /// system call sets it back.
    pub(crate) fn settled(&self, read_at: SystemTime, settle: Duration) -> bool {
        let Some(since_epoch) = read_at
            .checked_sub(settle)
            .and_then(|time| time.duration_since(SystemTime::UNIX_EPOCH).ok())
        else {
            return false;
        };
        let time_ns = i128::try_from(since_epoch.as_nanos()).unwrap_or(i128::MAX);
        self.ctime_ns < time_ns
    }
}

/// Reads the entry `name` at `path`, whose metadata (links not followed) is `metadata`. Returns
/// `None` for things that are never entries, such as sockets or FIFOs placed in the catalog
/// directory.
///
/// An entry that cannot be used (a broken manifest, a dangling link, a binary that is not a
/// regular file) is still returned, with `problem` set, so that it can be seen and deleted.
pub(super) fn read_entry(
    name: &WorkerName,
    path: &Path,
    metadata: std::fs::Metadata,
    digests: &DigestSource<'_>,
) -> Option<WorkerBinary> {
    let file_type = metadata.file_type();
    let (layout, read) = if file_type.is_symlink() {
        (Layout::Symlink, read_symlink(name, path, digests))
    } else if file_type.is_file() {
        (
            Layout::File,
            read_file(name, path, Layout::File, None, Some(metadata), digests),
        )
    } else if file_type.is_dir() {
        (Layout::Directory, read_folder(name, path, digests))
    } else {
        return None;
    };
    Some(read.unwrap_or_else(|problem| broken(name, path, layout, problem)))
}

/// Builds the record of an entry that cannot be used, with what is wrong with it.
fn broken(name: &WorkerName, path: &Path, layout: Layout, problem: String) -> WorkerBinary {
    let modified_at = std::fs::symlink_metadata(path)
        .and_then(|m| m.modified())
        .unwrap_or(SystemTime::UNIX_EPOCH);
    WorkerBinary {
        name: name.clone(),
        path: path.to_owned(),
        layout,
        size_bytes: 0,
        sha256: String::new(),
        modified_at,
        executable: false,
        platform: "unknown".to_owned(),
        version: None,
        source: None,
        symlink_target: std::fs::read_link(path).ok(),
        manifest: Manifest::default(),
        problem: Some(problem),
    }
}

/// Reads the executable at `path` (following links) and derives its metadata. `known` is its
/// metadata when the caller has it already.
///
/// While the file's identity matches a cached read, its contents are not read again. Otherwise
/// the file is opened without blocking and checked to be a regular file before anything is
/// read from it: a link to `/dev/zero` or a FIFO must not hang the hive.
fn read_file(
    name: &WorkerName,
    path: &Path,
    layout: Layout,
    manifest: Option<Manifest>,
    known: Option<std::fs::Metadata>,
    digests: &DigestSource<'_>,
) -> Result<WorkerBinary, String> {
    let cached = known
        .or_else(|| std::fs::metadata(path).ok())
        .filter(std::fs::Metadata::is_file)
        .and_then(|metadata| {
            let facts = digests.cached(path, &metadata)?;
            Some((metadata, facts))
        });
    let (metadata, facts) = match cached {
        Some(cached) => cached,
        None => read_facts(path, digests)?,
    };

    let manifest = manifest.unwrap_or_default();
    Ok(WorkerBinary {
        name: name.clone(),
        path: path.to_owned(),
        layout,
        size_bytes: metadata.len(),
        sha256: facts.sha256,
        modified_at: metadata.modified().unwrap_or(SystemTime::UNIX_EPOCH),
        executable: metadata.permissions().mode() & 0o111 != 0,
        platform: facts.platform.to_owned(),
        version: manifest.version.clone(),
        source: manifest.source.clone(),
        symlink_target: None,
        manifest,
        problem: None,
    })
}

/// Opens the file at `path` and reads its metadata and the facts of its contents.
fn read_facts(
    path: &Path,
    digests: &DigestSource<'_>,
) -> Result<(std::fs::Metadata, FileFacts), String> {
    let mut file = OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
        .open(path)
        .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    let metadata = file
        .metadata()
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if !metadata.is_file() {
        return Err(format!("{} is not a regular file", path.display()));
    }
    let read_error = |e: io::Error| format!("cannot read {}: {e}", path.display());
    let platform = platform_of(&read_header(&mut file).map_err(read_error)?);
    let facts = digests
        .facts(path, &mut file, &metadata, platform)
        .map_err(read_error)?;
    Ok((metadata, facts))
}

fn read_symlink(
    name: &WorkerName,
    path: &Path,
    digests: &DigestSource<'_>,
) -> Result<WorkerBinary, String> {
    let target = std::fs::read_link(path)
        .map_err(|e| format!("cannot read link {}: {e}", path.display()))?;
    let metadata = match std::fs::metadata(path) {
        Ok(metadata) if metadata.is_file() => metadata,
        Ok(_) => {
            return Err(format!(
                "link target {} is not a regular file",
                target.display()
            ));
        }
        Err(e) => return Err(format!("link target {}: {e}", target.display())),
    };
    let binary = read_file(name, path, Layout::Symlink, None, Some(metadata), digests)?;
    Ok(WorkerBinary {
        symlink_target: Some(target),
        ..binary
    })
}

fn read_folder(
    name: &WorkerName,
    folder: &Path,
    digests: &DigestSource<'_>,
) -> Result<WorkerBinary, String> {
    let manifest_path = folder.join(MANIFEST_FILE);
    let manifest = match std::fs::read(&manifest_path) {
        Ok(bytes) => serde_json::from_slice::<Manifest>(&bytes)
            .map_err(|e| format!("invalid manifest {}: {e}", manifest_path.display()))?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => Manifest::default(),
        Err(e) => return Err(format!("cannot read {}: {e}", manifest_path.display())),
    };

    if manifest.binary.is_none()
        && let Some(command) = &manifest.command
    {
        let program = command.first().ok_or_else(|| {
            format!(
                "invalid manifest {}: `command` is empty",
                manifest_path.display()
            )
        })?;
        let program = find_program(program).ok_or_else(|| {
            format!(
                "invalid manifest {}: program {program:?} of `command` not found on PATH",
                manifest_path.display()
            )
        })?;
        return read_file(
            name,
            &program,
            Layout::Directory,
            Some(manifest),
            None,
            digests,
        );
    }

    let relative = manifest
        .binary
        .clone()
        .unwrap_or_else(|| PathBuf::from(name.as_str()));
    if !relative
        .components()
        .all(|c| matches!(c, Component::Normal(_)))
    {
        return Err(format!(
            "invalid manifest {}: `binary` must be a relative path inside the folder, got {}",
            manifest_path.display(),
            relative.display()
        ));
    }
    let binary_path = folder.join(&relative);
    match binary_path.canonicalize() {
        Ok(resolved) if resolved.starts_with(folder) => {}
        Ok(resolved) => {
            return Err(format!(
                "binary {} resolves to {}, outside the entry folder",
                binary_path.display(),
                resolved.display()
            ));
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(format!("no binary: expected {}", binary_path.display()));
        }
        Err(e) => return Err(format!("cannot resolve {}: {e}", binary_path.display())),
    }
    read_file(
        name,
        &binary_path,
        Layout::Directory,
        Some(manifest),
        None,
        digests,
    )
}

/// Finds `program` the way `execvp` would: as given when it contains `/`, else in `$PATH`.
fn find_program(program: &str) -> Option<PathBuf> {
    if program.contains('/') {
        let path = PathBuf::from(program);
        return path.is_file().then_some(path);
    }
    let search = std::env::var_os("PATH")?;
    std::env::split_paths(&search)
        .map(|dir| dir.join(program))
        .find(|candidate| {
            std::fs::metadata(candidate)
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// Returns the SHA-256 of the open `file` at `path`, from `digests` while the file's identity
/// is unchanged, else by reading it from the start.
pub(crate) fn digest(
    path: &Path,
    file: &mut File,
    metadata: &std::fs::Metadata,
    digests: &DigestCache,
) -> io::Result<String> {
    let identity = FileIdentity::of(metadata);
    if let Some(hex) = digests.get(path, identity) {
        return Ok(hex);
    }

    // Hashed without holding the lock, so one large file does not stall other requests.
    let hashed_at = SystemTime::now();
    file.seek(SeekFrom::Start(0))?;
    let hex = sha256_hex(file)?;
    digests.insert_settled(path, identity, hex.clone(), hashed_at, SETTLE_TIME);
    Ok(hex)
}

/// Source of the file facts of a catalog read: the cache, and reading the file when its facts
/// are not cached, hashing it unless the read may only use the cache.
pub(super) struct DigestSource<'a> {
    cache: &'a FileFactsCache,
    /// How long ago a file must have last changed for its facts to be cached.
    settle: Duration,
    may_hash: bool,
    /// Set when a digest was needed that the cache did not have, in a read that may not hash.
    missed: Cell<bool>,
}

impl<'a> DigestSource<'a> {
    /// Returns a source that hashes files whose digest is not cached.
    pub(super) fn hashing(cache: &'a FileFactsCache, settle: Duration) -> Self {
        Self {
            cache,
            settle,
            may_hash: true,
            missed: Cell::new(false),
        }
    }

    /// Returns a source that only uses the cache, for reads on async threads, which must not
    /// read whole binaries. A digest it does not have is left empty and marks the read missed.
    pub(super) fn cached_only(cache: &'a FileFactsCache, settle: Duration) -> Self {
        Self {
            cache,
            settle,
            may_hash: false,
            missed: Cell::new(false),
        }
    }

    /// Returns whether a digest was missing from the cache in a read that may not hash.
    pub(super) fn missed(&self) -> bool {
        self.missed.get()
    }

    /// Returns the cached facts of the file at `path` if its identity is still `metadata`'s.
    fn cached(&self, path: &Path, metadata: &std::fs::Metadata) -> Option<FileFacts> {
        self.cache.get(path, FileIdentity::of(metadata))
    }

    /// Returns the facts of the open `file` at `path`, whose header names `platform`. Hashes
    /// the file and caches the result once the file has settled, or in a read that may not
    /// hash, leaves the digest empty.
    fn facts(
        &self,
        path: &Path,
        file: &mut File,
        metadata: &std::fs::Metadata,
        platform: &'static str,
    ) -> io::Result<FileFacts> {
        if !self.may_hash {
            self.missed.set(true);
            return Ok(FileFacts {
                sha256: String::new(),
                platform,
            });
        }
        // Hashed without holding the lock, so one large file does not stall other requests.
        let hashed_at = SystemTime::now();
        file.seek(SeekFrom::Start(0))?;
        let facts = FileFacts {
            sha256: sha256_hex(file)?,
            platform,
        };
        let identity = FileIdentity::of(metadata);
        self.cache
            .insert_settled(path, identity, facts.clone(), hashed_at, self.settle);
        Ok(facts)
    }
}

/// Returns the lowercase hex SHA-256 of everything `reader` yields.
pub(crate) fn sha256_hex(reader: &mut impl Read) -> io::Result<String> {
    let mut hasher = Sha256::new();
    let mut buffer = vec![0; 64 * 1024];
    loop {
        let read = match reader.read(&mut buffer) {
            Ok(0) => break,
            Ok(read) => read,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buffer[..read]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// Reads up to the first 20 bytes: enough for the ELF identification and machine fields.
fn read_header(file: &mut File) -> io::Result<Vec<u8>> {
    let mut header = Vec::with_capacity(20);
    file.take(20).read_to_end(&mut header)?;
    Ok(header)
}

/// Names the platform a file runs on from its first bytes: the ELF header's class, byte order
/// and machine, or `script` for a `#!` interpreter script.
fn platform_of(header: &[u8]) -> &'static str {
    if header.starts_with(b"#!") {
        return "script";
    }
    if header.len() < 20 || !header.starts_with(b"\x7fELF") {
        return "unknown";
    }
    let is_64 = header[4] == 2;
    let machine = match header[5] {
        1 => u16::from_le_bytes([header[18], header[19]]),
        2 => u16::from_be_bytes([header[18], header[19]]),
        _ => return "unknown",
    };
    // e_machine values from the System V ABI (elf.h).
    match (machine, is_64) {
        (0x3e, true) => "x86_64-linux",
        (0x03, false) => "i686-linux",
        (0xb7, true) => "aarch64-linux",
        (0x28, false) => "arm-linux",
        (0xf3, true) => "riscv64-linux",
        (0x15, true) => "powerpc64-linux",
        (0x16, true) => "s390x-linux",
        _ => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::platform_of;

    #[test]
    fn platform_of_headers() {
        let mut x86_64 = [0u8; 20];
        x86_64[..4].copy_from_slice(b"\x7fELF");
        x86_64[4] = 2;
        x86_64[5] = 1;
        x86_64[18] = 0x3e;
        assert_eq!(platform_of(&x86_64), "x86_64-linux");

        let mut aarch64 = x86_64;
        aarch64[18] = 0xb7;
        assert_eq!(platform_of(&aarch64), "aarch64-linux");

        assert_eq!(platform_of(b"#!/bin/sh\n"), "script");
        assert_eq!(platform_of(b"hello"), "unknown");
        assert_eq!(platform_of(b""), "unknown");
    }
}
