//! Validated catalog names.

use std::fmt;

/// Longest name a catalog entry may have, in bytes: the usual file name limit (`NAME_MAX`).
pub const MAX_NAME_BYTES: usize = 255;

/// Name of a worker binary in the catalog, checked to be a single, visible file name.
///
/// A valid name is never a path: it cannot climb out of the catalog directory, name a hidden
/// file the hive uses for temporary work, or smuggle control characters into logs.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub struct WorkerName(String);

impl<'de> serde::Deserialize<'de> for WorkerName {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        Self::parse(&name).map_err(serde::de::Error::custom)
    }
}

/// A catalog name that was rejected, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {kind} name {shown}: {reason}")]
pub struct InvalidName {
    kind: &'static str,
    shown: String,
    reason: &'static str,
}

impl WorkerName {
    /// Parses a worker catalog name; see [`check_entry_name`] for the rules.
    pub fn parse(name: &str) -> Result<Self, InvalidName> {
        check_entry_name(name, "worker")?;
        Ok(Self(name.to_owned()))
    }

    /// Returns the name as an owned string.
    pub fn into_string(self) -> String {
        self.0
    }

    /// Returns the name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Checks that `name` is a single, visible file name, as every catalog entry name must be;
/// `kind` names the catalog in the error (`worker`, `model`).
///
/// # Errors
///
/// Rejects empty names, `.` and `..`, names containing `/`, NUL, control characters or invisible
/// formatting characters, names starting with `.`, and names longer than [`MAX_NAME_BYTES`].
pub fn check_entry_name(name: &str, kind: &'static str) -> Result<(), InvalidName> {
    {
        let reason = if name.is_empty() {
            Some("it is empty")
        } else if name == "." || name == ".." {
            Some("`.` and `..` are not names")
        } else if name.len() > MAX_NAME_BYTES {
            Some("it is longer than 255 bytes")
        } else if name.contains('/') {
            Some("it contains `/`")
        } else if name.contains('\0') {
            Some("it contains a NUL byte")
        } else if name.chars().any(char::is_control) {
            Some("it contains a control character")
        } else if name.chars().any(is_invisible_format) {
            Some("it contains an invisible formatting character")
        } else if name.starts_with('.') {
            Some("it starts with `.`")
        } else {
            None
        };
        match reason {
            Some(reason) => Err(InvalidName {
                kind,
                shown: shorten_for_display(name),
                reason,
            }),
            None => Ok(()),
        }
    }
}

impl fmt::Display for WorkerName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Returns whether `c` changes how text around it displays without showing itself: bidirectional
/// controls (which can make `rm-worker` display as `rekrow-mr`), zero-width characters and the
/// byte order mark.
fn is_invisible_format(c: char) -> bool {
    matches!(
        c,
        '\u{061c}'
            | '\u{200b}'..='\u{200f}'
            | '\u{202a}'..='\u{202e}'
            | '\u{2060}'..='\u{2064}'
            | '\u{2066}'..='\u{2069}'
            | '\u{feff}'
    )
}

/// Quotes and escapes a rejected name for an error message, cut to a readable length so a
/// huge request does not turn into a huge error.
fn shorten_for_display(name: &str) -> String {
    const SHOWN_CHARS: usize = 64;
    let mut shown: String = name.chars().take(SHOWN_CHARS).collect();
    let cut = shown.len() < name.len();
    if cut {
        shown.push('…');
    }
    format!("{shown:?}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_names() {
        for name in [
            "llm-worker",
            "worker_1.2",
            "llama-server",
            "a",
            &"x".repeat(255),
        ] {
            assert_eq!(WorkerName::parse(name).unwrap().as_str(), name);
        }
    }

    #[test]
    fn rejects_each_bad_form_with_its_reason() {
        let cases = [
            ("", "it is empty"),
            (".", "`.` and `..` are not names"),
            ("..", "`.` and `..` are not names"),
            ("../etc", "it contains `/`"),
            ("a/b", "it contains `/`"),
            ("/", "it contains `/`"),
            ("a\0b", "it contains a NUL byte"),
            ("a\nb", "it contains a control character"),
            ("a\u{7f}", "it contains a control character"),
            (
                "rm\u{202e}worker",
                "it contains an invisible formatting character",
            ),
            (
                "zero\u{200b}width",
                "it contains an invisible formatting character",
            ),
            (".hidden", "it starts with `.`"),
        ];
        for (name, reason) in cases {
            let err = WorkerName::parse(name).unwrap_err();
            assert_eq!(err.reason, reason, "name {name:?}");
        }
    }

    #[test]
    fn rejects_names_over_255_bytes() {
        // 128 two-byte characters: 256 bytes but only 128 chars.
        let name = "é".repeat(128);
        let err = WorkerName::parse(&name).unwrap_err();
        assert_eq!(err.reason, "it is longer than 255 bytes");
        assert!(err.to_string().len() < 200, "message is cut: {err}");
    }

    #[test]
    fn message_quotes_and_escapes_the_name() {
        let err = WorkerName::parse("a\nb").unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"invalid worker name "a\nb": it contains a control character"#
        );
    }
}
