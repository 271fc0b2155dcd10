//! Worker log files: bounded by rotation, and followed for narration.
//!
//! The worker writes its stdout and stderr straight into the log file (opened with `O_APPEND`),
//! not through a pipe to the hive, so it keeps running and logging when the hive restarts. The
//! hive bounds the file by copying it to `<log>.1` and truncating it once it grows past the
//! limit; writes opened with `O_APPEND` then continue at the new end.

use std::{
    collections::VecDeque,
    fs::{File, OpenOptions},
    io::{self, Read, Seek, SeekFrom},
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
};

/// Lines of log kept for error messages.
const TAIL_LINES: usize = 10;

/// Longest log line narrated; longer lines are cut.
const MAX_LINE_CHARS: usize = 1000;

/// Creates the log file for a new worker, readable only by the hive's user, and returns it for
/// appending.
pub fn create(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
}

/// Rotates the log at `path` when it is larger than `max_bytes`: copies it to `<path>.1`,
/// replacing an older copy, then truncates it.
pub fn rotate_if_larger(path: &Path, max_bytes: u64) -> io::Result<bool> {
    let len = std::fs::metadata(path)?.len();
    if len <= max_bytes {
        return Ok(false);
    }
    let mut rotated = path.as_os_str().to_owned();
    rotated.push(".1");
    std::fs::copy(path, PathBuf::from(rotated))?;
    OpenOptions::new().write(true).open(path)?.set_len(0)?;
    Ok(true)
}

/// Follows a log file from its start, returning complete new lines as they appear and keeping
/// the last few for error messages.
#[derive(Debug)]
pub struct LogFollower {
    path: PathBuf,
    offset: u64,
    partial: Vec<u8>,
    last_lines: VecDeque<String>,
}

impl LogFollower {
    /// Follows `path` from its start.
    pub fn new(path: PathBuf) -> Self {
        Self {
            path,
            offset: 0,
            partial: Vec::new(),
            last_lines: VecDeque::new(),
        }
    }

    /// Reads the lines written since the last call.
    pub fn read_new_lines(&mut self) -> Vec<String> {
        let Ok(mut file) = File::open(&self.path) else {
            return Vec::new();
        };
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        if len < self.offset {
            // Rotated: the file starts over.
            self.offset = 0;
        }
        let mut bytes = Vec::new();
        if file.seek(SeekFrom::Start(self.offset)).is_err() || file.read_to_end(&mut bytes).is_err()
        {
            return Vec::new();
        }
        self.offset += bytes.len() as u64;
        self.partial.extend_from_slice(&bytes);

        // Complete lines end at the last newline; the rest waits for more output.
        let Some(last_newline) = self.partial.iter().rposition(|&b| b == b'\n') else {
            return Vec::new();
        };
        let complete: Vec<u8> = self.partial.drain(..=last_newline).collect();
        let lines: Vec<String> = complete[..complete.len() - 1]
            .split(|&b| b == b'\n')
            .map(|raw| {
                String::from_utf8_lossy(raw)
                    .trim_end_matches('\r')
                    .chars()
                    .take(MAX_LINE_CHARS)
                    .collect()
            })
            .collect();
        for line in lines.iter().rev().take(TAIL_LINES).rev() {
            self.remember(line);
        }
        lines
    }

    /// Returns the last lines read, including an unfinished last line.
    pub fn last_lines(&self) -> Vec<String> {
        let mut lines: Vec<String> = self.last_lines.iter().cloned().collect();
        if !self.partial.is_empty() {
            lines.push(String::from_utf8_lossy(&self.partial).into_owned());
        }
        lines
    }

    fn remember(&mut self, line: &str) {
        if self.last_lines.len() == TAIL_LINES {
            self.last_lines.pop_front();
        }
        self.last_lines.push_back(line.to_owned());
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    #[test]
    fn follower_returns_complete_lines_and_survives_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("worker.log");
        let mut log = create(&path).unwrap();
        let mut follower = LogFollower::new(path.clone());

        write!(log, "one\ntw").unwrap();
        assert_eq!(follower.read_new_lines(), ["one"]);
        writeln!(log, "o").unwrap();
        assert_eq!(follower.read_new_lines(), ["two"]);

        assert!(rotate_if_larger(&path, 3).unwrap());
        assert_eq!(
            std::fs::read_to_string(dir.path().join("worker.log.1")).unwrap(),
            "one\ntwo\n"
        );
        writeln!(log, "three").unwrap();
        assert_eq!(follower.read_new_lines(), ["three"]);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 6);
        assert_eq!(follower.last_lines(), ["one", "two", "three"]);
    }
}
