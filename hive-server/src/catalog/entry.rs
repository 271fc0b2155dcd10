//! Reading one catalog entry: its layout, manifest and the metadata derived from its file.

use std::{
    collections::HashMap,
    fs::File,
    io::{self, Read},
    os::unix::fs::{MetadataExt, PermissionsExt},
    path::{Component, Path, PathBuf},
    time::SystemTime,
};

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{CatalogError, MANIFEST_FILE, WorkerName};

/// How a catalog entry is stored.
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
    /// How the entry is stored.
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
}

/// Contents of `manifest.json` in a folder entry. Unknown fields are ignored so that newer hives
/// can add fields without breaking older ones.
///
/// Templates (`command`, `args`, `env` values) may contain `{model}`, `{device}`, `{port}`,
/// `{worker_id}`, `{hive_addr}` and `{binary}`, replaced at spawn.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct Manifest {
    /// Path of the executable relative to the folder; defaults to the entry name.
    pub binary: Option<PathBuf>,
    /// Version of the binary.
    pub version: Option<String>,
    /// Where the binary came from: a URL or a source path.
    pub source: Option<String>,
    /// Full command line template, for workers run by an interpreter or a program outside the
    /// catalog (`["python3", "-m", "http.server", "{port}"]`). Replaces `binary` and `args`.
    pub command: Option<Vec<String>>,
    /// Argument template for the binary; default
    /// `["--model", "{model}", "--device", "{device}", "--port", "{port}"]`.
    pub args: Option<Vec<String>>,
    /// Extra environment variables, values as templates.
    pub env: BTreeMap<String, String>,
    /// How the hive tells that the worker is ready; default: its port accepts connections.
    pub readiness: Option<Readiness>,
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

/// Digests already computed, keyed by path and checked against the file's identity, so listing
/// a catalog of large binaries does not hash them again.
pub(super) type DigestCache = HashMap<PathBuf, (FileIdentity, String)>;

/// What must be unchanged for a cached digest to still be valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct FileIdentity {
    dev: u64,
    ino: u64,
    len: u64,
    mtime_ns: i128,
}

impl FileIdentity {
    fn of(metadata: &std::fs::Metadata) -> Self {
        Self {
            dev: metadata.dev(),
            ino: metadata.ino(),
            len: metadata.len(),
            mtime_ns: i128::from(metadata.mtime()) * 1_000_000_000
                + i128::from(metadata.mtime_nsec()),
        }
    }
}

pub(super) fn read_file(
    name: &WorkerName,
    path: &Path,
    layout: Layout,
    manifest: Option<Manifest>,
    digests: &mut DigestCache,
) -> Result<WorkerBinary, CatalogError> {
    let metadata = std::fs::metadata(path).map_err(|e| CatalogError::io("read", path, e))?;
    let manifest = manifest.unwrap_or_default();
    Ok(WorkerBinary {
        name: name.clone(),
        path: path.to_owned(),
        layout,
        size_bytes: metadata.len(),
        sha256: digest(path, &metadata, digests)?,
        modified_at: metadata.modified().unwrap_or(SystemTime::UNIX_EPOCH),
        executable: metadata.permissions().mode() & 0o111 != 0,
        platform: detect_platform(path)?,
        version: manifest.version.clone(),
        source: manifest.source.clone(),
        symlink_target: None,
        manifest,
    })
}

pub(super) fn read_symlink(
    name: &WorkerName,
    path: &Path,
    digests: &mut DigestCache,
) -> Result<WorkerBinary, CatalogError> {
    let target = std::fs::read_link(path).map_err(|e| CatalogError::io("read", path, e))?;
    let binary = match read_file(name, path, Layout::Symlink, None, digests) {
        Ok(binary) => binary,
        Err(CatalogError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
            // A dangling link is still an entry, so that it can be seen and deleted.
            let metadata =
                std::fs::symlink_metadata(path).map_err(|e| CatalogError::io("read", path, e))?;
            WorkerBinary {
                name: name.clone(),
                path: path.to_owned(),
                layout: Layout::Symlink,
                size_bytes: 0,
                sha256: String::new(),
                modified_at: metadata.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                executable: false,
                platform: "unknown".to_owned(),
                version: None,
                source: None,
                symlink_target: None,
                manifest: Manifest::default(),
            }
        }
        Err(e) => return Err(e),
    };
    Ok(WorkerBinary {
        symlink_target: Some(target),
        ..binary
    })
}

/// Reads a folder entry. Returns `None` for a folder that holds no binary, which is not an
/// entry (for example a folder an install is still writing).
pub(super) fn read_folder(
    name: &WorkerName,
    folder: &Path,
    digests: &mut DigestCache,
) -> Result<Option<WorkerBinary>, CatalogError> {
    let manifest_path = folder.join(MANIFEST_FILE);
    let manifest = match std::fs::read(&manifest_path) {
        Ok(bytes) => serde_json::from_slice::<Manifest>(&bytes).map_err(|e| {
            CatalogError::InvalidManifest {
                path: manifest_path.clone(),
                reason: e.to_string(),
            }
        })?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => Manifest::default(),
        Err(e) => return Err(CatalogError::io("read", manifest_path, e)),
    };

    if manifest.binary.is_none()
        && let Some(command) = &manifest.command
    {
        let program = command
            .first()
            .ok_or_else(|| CatalogError::InvalidManifest {
                path: manifest_path.clone(),
                reason: "`command` is empty".to_owned(),
            })?;
        let program = find_program(program).ok_or_else(|| CatalogError::InvalidManifest {
            path: manifest_path.clone(),
            reason: format!("program {program:?} of `command` not found on PATH"),
        })?;
        return read_file(name, &program, Layout::Directory, Some(manifest), digests).map(Some);
    }

    let relative = manifest
        .binary
        .clone()
        .unwrap_or_else(|| PathBuf::from(name.as_str()));
    if !relative
        .components()
        .all(|c| matches!(c, Component::Normal(_)))
    {
        return Err(CatalogError::InvalidManifest {
            path: manifest_path,
            reason: format!(
                "`binary` must be a relative path inside the folder, got {}",
                relative.display()
            ),
        });
    }

    let binary_path = folder.join(&relative);
    match std::fs::symlink_metadata(&binary_path) {
        Ok(m) if m.is_file() => {}
        Ok(_) => {
            return Err(CatalogError::InvalidManifest {
                path: manifest_path,
                reason: format!("{} is not a regular file", binary_path.display()),
            });
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(CatalogError::io("read", binary_path, e)),
    }
    read_file(
        name,
        &binary_path,
        Layout::Directory,
        Some(manifest),
        digests,
    )
    .map(Some)
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

fn digest(
    path: &Path,
    metadata: &std::fs::Metadata,
    digests: &mut DigestCache,
) -> Result<String, CatalogError> {
    let identity = FileIdentity::of(metadata);
    if let Some((cached, hex)) = digests.get(path)
        && *cached == identity
    {
        return Ok(hex.clone());
    }

    let mut file = File::open(path).map_err(|e| CatalogError::io("open", path, e))?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0; 64 * 1024];
    loop {
        let read = file
            .read(&mut buffer)
            .map_err(|e| CatalogError::io("read", path, e))?;
        if read == 0 {
            break;
        }
        hasher.update(&buffer[..read]);
    }
    let hex = hex::encode(hasher.finalize());
    digests.insert(path.to_owned(), (identity, hex.clone()));
    Ok(hex)
}

/// Names the platform a file runs on from its first bytes: the ELF header's class, byte order
/// and machine, or `script` for a `#!` interpreter script.
fn detect_platform(path: &Path) -> Result<String, CatalogError> {
    let mut header = [0u8; 20];
    let mut file = File::open(path).map_err(|e| CatalogError::io("open", path, e))?;
    let mut filled = 0;
    while filled < header.len() {
        match file.read(&mut header[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(CatalogError::io("read", path, e)),
        }
    }
    Ok(platform_of(&header[..filled]).to_owned())
}

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
