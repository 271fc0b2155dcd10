//! Fetching a file from an `http`, `https` or `file` URL into a temporary file, with resume,
//! progress narration, a free-space check and checksum verification.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use futures::StreamExt;
use reqwest::{StatusCode, header};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use super::ProvisionError;
use crate::jobs::{Narrator, Progress};

/// Attempts per download before a network failure fails the job.
const ATTEMPTS: u32 = 5;

/// Shortest time between two progress events.
const PROGRESS_EVERY: Duration = Duration::from_millis(250);

/// Source of a download.
#[derive(Debug, Clone)]
pub enum Source {
    /// An `http` or `https` URL.
    Http(reqwest::Url),
    /// A local file, from a `file` URL.
    File(PathBuf),
}

impl Source {
    /// Parses a URL, accepting the `http`, `https` and `file` schemes.
    pub fn parse(url: &str) -> Result<Self, ProvisionError> {
        let parsed = reqwest::Url::parse(url)
            .map_err(|e| ProvisionError::InvalidArgument(format!("invalid URL {url:?}: {e}")))?;
        match parsed.scheme() {
            "http" | "https" => Ok(Self::Http(parsed)),
            "file" => parsed.to_file_path().map(Self::File).map_err(|()| {
                ProvisionError::InvalidArgument(format!(
                    "invalid file URL {url:?}: it must name an absolute local path"
                ))
            }),
            other => Err(ProvisionError::InvalidArgument(format!(
                "unsupported URL scheme {other:?} in {url:?}: use http, https or file"
            ))),
        }
    }
}

/// Checks an expected SHA-256 from a request and returns it in lowercase.
pub fn parse_sha256(sha256: &str) -> Result<Option<String>, ProvisionError> {
    if sha256.is_empty() {
        return Ok(None);
    }
    if sha256.len() == 64 && sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(Some(sha256.to_ascii_lowercase()))
    } else {
        Err(ProvisionError::InvalidArgument(format!(
            "invalid sha256 {:?}: expected 64 hex digits",
            sha256.chars().take(80).collect::<String>()
        )))
    }
}

/// Downloads `source` into `part`, continuing a partial file left by an earlier attempt, and
/// verifies it against `expected`. Returns the file's SHA-256.
///
/// On cancellation or a checksum mismatch the partial file is removed. On other failures it is
/// kept, so that a retry of the same download resumes where this one stopped.
pub async fn fetch(
    client: &reqwest::Client,
    source: &Source,
    part: &Path,
    expected: Option<&str>,
    narrator: &Narrator,
    cancel: &CancellationToken,
) -> Result<String, ProvisionError> {
    let fetched = tokio::select! {
        result = fetch_unverified(client, source, part, narrator) => result,
        () = cancel.cancelled() => Err(ProvisionError::Cancelled),
    };
    if let Err(error) = fetched {
        if matches!(error, ProvisionError::Cancelled) {
            remove_quietly(part).await;
        }
        return Err(error);
    }

    let path = part.to_owned();
    let actual = tokio::task::spawn_blocking(move || {
        let mut file = std::fs::File::open(&path)?;
        crate::catalog::sha256_hex(&mut file)
    })
    .await
    .map_err(|e| ProvisionError::Io {
        action: "hash",
        path: part.to_owned(),
        source: std::io::Error::other(e),
    })?
    .map_err(|source| ProvisionError::Io {
        action: "hash",
        path: part.to_owned(),
        source,
    })?;
    if let Some(expected) = expected
        && expected != actual
    {
        remove_quietly(part).await;
        return Err(ProvisionError::ChecksumMismatch {
            expected: expected.to_owned(),
            actual,
        });
    }
    narrator.info("download.verify", format!("sha256 {actual}"));
    Ok(actual)
}

async fn fetch_unverified(
    client: &reqwest::Client,
    source: &Source,
    part: &Path,
    narrator: &Narrator,
) -> Result<(), ProvisionError> {
    match source {
        Source::File(path) => copy_file(path, part, narrator).await,
        Source::Http(url) => download(client, url, part, narrator).await,
    }
}

async fn copy_file(from: &Path, part: &Path, narrator: &Narrator) -> Result<(), ProvisionError> {
    let io_error = |action| {
        move |source| ProvisionError::Io {
            action,
            path: from.to_owned(),
            source,
        }
    };
    let mut input = tokio::fs::File::open(from).await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            ProvisionError::SourceNotFound(from.display().to_string())
        } else {
            io_error("open")(e)
        }
    })?;
    let metadata = input.metadata().await.map_err(io_error("read"))?;
    if !metadata.is_file() {
        return Err(ProvisionError::InvalidArgument(format!(
            "{} is not a regular file",
            from.display()
        )));
    }
    let total = metadata.len();
    check_free_space(part, total)?;

    let mut output = tokio::fs::File::create(part)
        .await
        .map_err(|source| ProvisionError::Io {
            action: "create",
            path: part.to_owned(),
            source,
        })?;
    let mut meter = Meter::new(narrator, 0, Some(total));
    let mut buffer = vec![0; 256 * 1024];
    loop {
        let read = input.read(&mut buffer).await.map_err(io_error("read"))?;
        if read == 0 {
            break;
        }
        write_all(&mut output, &buffer[..read], part).await?;
        meter.advance(read as u64);
    }
    flush(&mut output, part).await?;
    meter.finish();
    Ok(())
}

async fn download(
    client: &reqwest::Client,
    url: &reqwest::Url,
    part: &Path,
    narrator: &Narrator,
) -> Result<(), ProvisionError> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        match download_once(client, url, part, narrator).await {
            Ok(()) => return Ok(()),
            Err(Attempt::Fatal(error)) => return Err(error),
            Err(Attempt::Retry(reason)) if attempt < ATTEMPTS => {
                let wait = Duration::from_millis(200 * 2u64.pow(attempt - 1));
                narrator.warn(
                    "download.retry",
                    format!(
                        "{reason}; retrying in {:.1}s (attempt {} of {ATTEMPTS})",
                        wait.as_secs_f64(),
                        attempt + 1
                    ),
                );
                tokio::time::sleep(wait).await;
            }
            Err(Attempt::Retry(reason)) => {
                return Err(ProvisionError::Unreachable {
                    url: url.to_string(),
                    reason: format!("{reason}, after {ATTEMPTS} attempts"),
                });
            }
        }
    }
}

/// How one attempt failed.
enum Attempt {
    /// Worth another attempt: a dropped connection, a server error.
    Retry(String),
    /// Final: the file does not exist, the disk is too small, ...
    Fatal(ProvisionError),
}

async fn download_once(
    client: &reqwest::Client,
    url: &reqwest::Url,
    part: &Path,
    narrator: &Narrator,
) -> Result<(), Attempt> {
    let have = tokio::fs::metadata(part)
        .await
        .map(|m| m.len())
        .unwrap_or(0);
    let mut request = client.get(url.clone());
    if have > 0 {
        request = request.header(header::RANGE, format!("bytes={have}-"));
    }
    let response = request
        .send()
        .await
        .map_err(|e| Attempt::Retry(format!("request failed: {}", error_chain(&e))))?;

    let status = response.status();
    let resumed = status == StatusCode::PARTIAL_CONTENT && starts_at(&response) == Some(have);
    if status == StatusCode::RANGE_NOT_SATISFIABLE && have > 0 {
        // The partial file is no prefix of what the server has now: start over.
        remove_quietly(part).await;
        return Err(Attempt::Retry(
            "the partial file does not match; starting over".into(),
        ));
    }
    if status == StatusCode::NOT_FOUND {
        return Err(Attempt::Fatal(ProvisionError::SourceNotFound(
            url.to_string(),
        )));
    }
    if status.is_server_error() {
        return Err(Attempt::Retry(format!("server answered {status}")));
    }
    if !status.is_success() {
        return Err(Attempt::Fatal(ProvisionError::Http {
            url: url.to_string(),
            status: status.to_string(),
        }));
    }

    let offset = if resumed { have } else { 0 };
    let total = response.content_length().map(|len| offset + len);
    if let Some(total) = total {
        check_free_space(part, total - offset).map_err(Attempt::Fatal)?;
    }
    if resumed {
        narrator.info("download.resume", format!("resuming at byte {have}"));
    }

    let mut file = tokio::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .append(resumed)
        .truncate(!resumed)
        .open(part)
        .await
        .map_err(|source| {
            Attempt::Fatal(ProvisionError::Io {
                action: "create",
                path: part.to_owned(),
                source,
            })
        })?;
    let mut meter = Meter::new(narrator, offset, total);
    let mut body = response.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk = match chunk {
            Ok(chunk) => chunk,
            Err(error) => {
                flush(&mut file, part).await.map_err(Attempt::Fatal)?;
                return Err(Attempt::Retry(format!(
                    "connection dropped after {} bytes: {}",
                    meter.done,
                    error_chain(&error)
                )));
            }
        };
        write_all(&mut file, &chunk, part)
            .await
            .map_err(Attempt::Fatal)?;
        meter.advance(chunk.len() as u64);
    }
    flush(&mut file, part).await.map_err(Attempt::Fatal)?;
    if let Some(total) = total
        && meter.done < total
    {
        return Err(Attempt::Retry(format!(
            "connection closed after {} of {total} bytes",
            meter.done
        )));
    }
    meter.finish();
    Ok(())
}

/// Returns the first byte of a `206` response's `Content-Range: bytes START-END/TOTAL`.
fn starts_at(response: &reqwest::Response) -> Option<u64> {
    let range = response
        .headers()
        .get(header::CONTENT_RANGE)?
        .to_str()
        .ok()?;
    let (start, _) = range.strip_prefix("bytes ")?.split_once('-')?;
    start.parse().ok()
}

/// Fails with [`ProvisionError::DiskFull`] when the file system of `part` has less than
/// `needed` bytes available.
fn check_free_space(part: &Path, needed: u64) -> Result<(), ProvisionError> {
    let dir = part.parent().unwrap_or(Path::new("."));
    let Ok(stats) = nix::sys::statvfs::statvfs(dir) else {
        return Ok(());
    };
    let available = stats
        .blocks_available()
        .saturating_mul(stats.fragment_size());
    if available < needed {
        return Err(ProvisionError::DiskFull {
            dir: dir.to_owned(),
            needed,
            available,
        });
    }
    Ok(())
}

async fn write_all(
    file: &mut tokio::fs::File,
    bytes: &[u8],
    part: &Path,
) -> Result<(), ProvisionError> {
    file.write_all(bytes)
        .await
        .map_err(|source| ProvisionError::Io {
            action: "write",
            path: part.to_owned(),
            source,
        })
}

async fn flush(file: &mut tokio::fs::File, part: &Path) -> Result<(), ProvisionError> {
    file.flush().await.map_err(|source| ProvisionError::Io {
        action: "write",
        path: part.to_owned(),
        source,
    })
}

async fn remove_quietly(path: &Path) {
    if let Err(error) = tokio::fs::remove_file(path).await
        && error.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(path = %path.display(), %error, "failed to remove a temporary file");
    }
}

/// Joins an error with its sources, because reqwest's top-level messages alone are vague.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Narrates transfer progress at most every [`PROGRESS_EVERY`].
struct Meter<'a> {
    narrator: &'a Narrator,
    done: u64,
    total: Option<u64>,
    started: Instant,
    start_offset: u64,
    last_report: Option<Instant>,
}

impl<'a> Meter<'a> {
    fn new(narrator: &'a Narrator, done: u64, total: Option<u64>) -> Self {
        Self {
            narrator,
            done,
            total,
            started: Instant::now(),
            start_offset: done,
            last_report: None,
        }
    }

    fn advance(&mut self, bytes: u64) {
        self.done += bytes;
        let due = self
            .last_report
            .is_none_or(|at| at.elapsed() >= PROGRESS_EVERY);
        if due {
            self.report();
        }
    }

    fn finish(mut self) {
        self.report();
    }

    fn report(&mut self) {
        self.last_report = Some(Instant::now());
        let elapsed = self.started.elapsed().as_secs_f64();
        let rate = if elapsed > 0.0 {
            (self.done - self.start_offset) as f64 / elapsed
        } else {
            0.0
        };
        let done = human_bytes(self.done);
        let mut message = match self.total {
            Some(total) => format!("{done} of {}", human_bytes(total)),
            None => done,
        };
        message.push_str(&format!(" ({}/s", human_bytes(rate as u64)));
        if let Some(total) = self.total
            && rate > 0.0
            && total > self.done
        {
            let eta = (total - self.done) as f64 / rate;
            message.push_str(&format!(", ETA {}s", eta.ceil() as u64));
        }
        message.push(')');
        self.narrator.progress(
            "download.progress",
            message,
            Progress {
                current: self.done,
                total: self.total.unwrap_or(0),
                unit: "bytes",
            },
        );
    }
}

/// Formats a byte count with a binary unit, for narration.
fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_by_scheme() {
        assert!(matches!(
            Source::parse("https://example.com/w").unwrap(),
            Source::Http(_)
        ));
        assert!(
            matches!(Source::parse("file:///opt/w").unwrap(), Source::File(p) if p == Path::new("/opt/w"))
        );
        assert!(Source::parse("ftp://example.com/w").is_err());
        assert!(Source::parse("not a url").is_err());
    }

    #[test]
    fn sha256_is_checked_and_lowercased() {
        let upper = "A".repeat(64);
        assert_eq!(parse_sha256(&upper).unwrap(), Some("a".repeat(64)));
        assert_eq!(parse_sha256("").unwrap(), None);
        assert!(parse_sha256("abc").is_err());
        assert!(parse_sha256(&"g".repeat(64)).is_err());
    }

    #[test]
    fn byte_counts_read_well() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(10 * 1024 * 1024), "10.0 MiB");
    }
}
