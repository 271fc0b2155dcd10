//! Building a worker binary from Rust source with cargo, and installing the result.

use std::{
    collections::VecDeque,
    path::{Path, PathBuf},
    process::Stdio,
};

use serde::Deserialize;
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::Command,
};
use tokio_util::sync::CancellationToken;

use super::ProvisionError;
use crate::{
    catalog::{Catalog, WorkerBinary, WorkerName},
    jobs::{Level, Narrator},
};

/// Output lines kept for the error message of a failed build.
const TAIL_LINES: usize = 20;

/// A build, as requested.
#[derive(Debug, Clone)]
pub struct BuildRequest {
    /// Catalog name, and name of the cargo binary target.
    pub name: WorkerName,
    /// Absolute source directory, or git URL.
    pub source: String,
    /// Cargo features.
    pub features: Vec<String>,
    /// Cargo profile.
    pub profile: String,
    /// Replace an existing entry.
    pub replace: bool,
}

/// Where the source comes from.
enum Origin {
    Directory(PathBuf),
    Git(String),
}

fn origin_of(source: &str) -> Result<Origin, ProvisionError> {
    let path = Path::new(source);
    if path.is_absolute() {
        if !path.join("Cargo.toml").is_file() {
            return Err(ProvisionError::SourceNotFound(format!(
                "Cargo.toml in {}",
                path.display()
            )));
        }
        return Ok(Origin::Directory(path.to_owned()));
    }
    let git = ["https://", "http://", "ssh://", "git://", "git@"]
        .iter()
        .any(|prefix| source.starts_with(prefix));
    if git {
        Ok(Origin::Git(source.to_owned()))
    } else {
        Err(ProvisionError::InvalidArgument(format!(
            "invalid source {source:?}: give an absolute directory on the hive or a git URL"
        )))
    }
}

/// Checks the request's features and profile: names cargo accepts, nothing that reads as a flag.
pub fn check_build_names(features: &[String], profile: &str) -> Result<(), ProvisionError> {
    let plain = |s: &str| {
        !s.is_empty()
            && !s.starts_with('-')
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'/' | b'+' | b'.'))
    };
    if let Some(bad) = features.iter().find(|f| !plain(f)) {
        return Err(ProvisionError::InvalidArgument(format!(
            "invalid feature {bad:?}: use cargo feature names"
        )));
    }
    if !plain(profile) || profile.contains('/') {
        return Err(ProvisionError::InvalidArgument(format!(
            "invalid profile {profile:?}: use a cargo profile name such as release"
        )));
    }
    Ok(())
}

/// Builds `request.name` in `work` and installs it into `catalog`.
pub(super) async fn build(
    catalog: &Catalog,
    request: &BuildRequest,
    work: &Path,
    narrator: &Narrator,
    cancel: &CancellationToken,
) -> Result<WorkerBinary, ProvisionError> {
    check_build_names(&request.features, &request.profile)?;
    let origin = origin_of(&request.source)?;
    tokio::fs::create_dir_all(work)
        .await
        .map_err(|source| ProvisionError::Io {
            action: "create",
            path: work.to_owned(),
            source,
        })?;

    let source_dir = match origin {
        Origin::Directory(dir) => dir,
        Origin::Git(url) => {
            let checkout = work.join("src");
            narrator.info("build.clone", format!("cloning {url}"));
            let mut git = Command::new("git");
            git.args(["clone", "--depth", "1", "--", &url])
                .arg(&checkout)
                .env("GIT_TERMINAL_PROMPT", "0");
            run(git, "git clone", narrator, cancel, None).await?;
            checkout
        }
    };

    let target_dir = work.join("target");
    let mut cargo = Command::new("cargo");
    cargo
        .arg("build")
        .arg("--profile")
        .arg(&request.profile)
        .arg("--message-format=json-render-diagnostics")
        .arg("--target-dir")
        .arg(&target_dir)
        .arg("--bin")
        .arg(request.name.as_str())
        .current_dir(&source_dir);
    if !request.features.is_empty() {
        cargo.arg("--features").arg(request.features.join(","));
    }
    narrator.info(
        "build.start",
        format!(
            "cargo build --profile {} --bin {} in {}",
            request.profile,
            request.name,
            source_dir.display()
        ),
    );
    let mut executables = Vec::new();
    run(
        cargo,
        "cargo build",
        narrator,
        cancel,
        Some(&mut executables),
    )
    .await?;

    let artifact = executables
        .iter()
        .find(|(target, _)| target == request.name.as_str())
        .map(|(_, path)| path.clone())
        .ok_or_else(|| ProvisionError::NoArtifact {
            name: request.name.to_string(),
            found: executables
                .iter()
                .map(|(target, _)| target.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        })?;

    // Copied next to the catalog entries first, so the install itself is a rename.
    let scratch = catalog.scratch_path(request.name.as_str());
    tokio::fs::copy(&artifact, &scratch)
        .await
        .map_err(|source| ProvisionError::Io {
            action: "copy",
            path: artifact.clone(),
            source,
        })?;
    let installed = catalog.install(
        &request.name,
        &scratch,
        None,
        &request.source,
        request.replace,
    );
    if installed.is_err() {
        let _ = tokio::fs::remove_file(&scratch).await;
    }
    let binary = installed?;
    narrator.info(
        "build.install",
        format!("installed {} at {}", binary.name, binary.path.display()),
    );
    Ok(binary)
}

/// The part of a cargo JSON message that names a built executable.
#[derive(Deserialize)]
struct CargoMessage {
    reason: String,
    #[serde(default)]
    target: Option<CargoTarget>,
    #[serde(default)]
    executable: Option<PathBuf>,
}

#[derive(Deserialize)]
struct CargoTarget {
    name: String,
}

/// Runs `command` in its own process group, narrating its stderr line by line. When
/// `executables` is given, stdout is read as cargo JSON messages and the executables built are
/// collected as (target name, path). Cancellation kills the whole process group.
async fn run(
    mut command: Command,
    what: &str,
    narrator: &Narrator,
    cancel: &CancellationToken,
    executables: Option<&mut Vec<(String, PathBuf)>>,
) -> Result<(), ProvisionError> {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| ProvisionError::Io {
            action: "run",
            path: PathBuf::from(what),
            source,
        })?;
    let pid = child.id().and_then(|pid| i32::try_from(pid).ok());
    let mut stdout = BuildLines::new(child.stdout.take());
    let mut stderr = BuildLines::new(child.stderr.take());
    let mut tail: VecDeque<String> = VecDeque::new();
    let mut found = Vec::new();

    let status = loop {
        tokio::select! {
            line = stderr.next(), if !stderr.done => match line {
                Some(line) => {
                    if tail.len() == TAIL_LINES {
                        tail.pop_front();
                    }
                    tail.push_back(line.clone());
                    narrator.narrate(Level::Info, "build.output", line);
                }
                None => stderr.done = true,
            },
            line = stdout.next(), if !stdout.done => match line {
                Some(line) => {
                    if let Ok(message) = serde_json::from_str::<CargoMessage>(&line)
                        && message.reason == "compiler-artifact"
                        && let (Some(target), Some(executable)) = (message.target, message.executable)
                    {
                        found.push((target.name, executable));
                    }
                }
                None => stdout.done = true,
            },
            status = child.wait(), if stdout.done && stderr.done => break status,
            () = cancel.cancelled() => {
                if let Some(pid) = pid {
                    // The child is not reaped yet, so its process group is still its own.
                    crate::process::kill_group(pid);
                }
                let _ = child.wait().await;
                return Err(ProvisionError::Cancelled);
            }
        }
    };

    let status = status.map_err(|source| ProvisionError::Io {
        action: "wait for",
        path: PathBuf::from(what),
        source,
    })?;
    if !status.success() {
        return Err(ProvisionError::BuildFailed {
            command: what.to_owned(),
            status: status.to_string(),
            output: tail.into_iter().collect::<Vec<_>>().join("\n"),
        });
    }
    if let Some(executables) = executables {
        *executables = found;
    }
    Ok(())
}

/// Lines of a child's output stream.
struct BuildLines<R> {
    lines: Option<tokio::io::Lines<BufReader<R>>>,
    done: bool,
}

impl<R: tokio::io::AsyncRead + Unpin> BuildLines<R> {
    fn new(stream: Option<R>) -> Self {
        Self {
            done: stream.is_none(),
            lines: stream.map(|s| BufReader::new(s).lines()),
        }
    }

    async fn next(&mut self) -> Option<String> {
        self.lines.as_mut()?.next_line().await.ok().flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_names_are_checked() {
        assert!(check_build_names(&["cuda".into(), "serde/std".into()], "release").is_ok());
        assert!(check_build_names(&["--config=x".into()], "release").is_err());
        assert!(check_build_names(&[String::new()], "release").is_err());
        assert!(check_build_names(&[], "../x").is_err());
        assert!(check_build_names(&[], "").is_err());
    }

    #[test]
    fn sources_are_directories_or_git_urls() {
        assert!(matches!(
            origin_of("https://example.com/w.git"),
            Ok(Origin::Git(_))
        ));
        assert!(matches!(
            origin_of("git@example.com:w.git"),
            Ok(Origin::Git(_))
        ));
        assert!(matches!(
            origin_of("relative/dir"),
            Err(ProvisionError::InvalidArgument(_))
        ));
        assert!(matches!(
            origin_of("/nonexistent"),
            Err(ProvisionError::SourceNotFound(_))
        ));
    }
}
