//! The shared secret that callers present as `authorization: Bearer <token>`.

use std::{fmt, path::Path};

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Environment variable that may hold the token itself, instead of `--token-file`.
pub const TOKEN_ENV: &str = "RBEE_HIVE_TOKEN";

/// Length below which a token is accepted with a warning, because it may be guessable.
const SHORT_TOKEN_BYTES: usize = 16;

/// A bearer token, kept only as its SHA-256 digest.
///
/// A presented token is hashed and the two digests are compared in constant time, so the time a
/// check takes depends neither on how much of the token matched nor on its length.
#[derive(Clone)]
pub struct BearerToken {
    digest: [u8; 32],
    short: bool,
}

impl fmt::Debug for BearerToken {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("BearerToken(<redacted>)")
    }
}

/// Errors in reading the hive's token.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// Both `--token-file` and `RBEE_HIVE_TOKEN` are set.
    #[error("set the token either with --token-file or with {TOKEN_ENV}, not both")]
    TwoSources,

    /// The token file cannot be read.
    #[error("failed to read the token file {}: {source}", path.display())]
    Read {
        /// The token file.
        path: std::path::PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// The token is empty once surrounding whitespace is removed.
    #[error(
        "the token {origin} is empty; write a random secret into it, for example the output of \
         `openssl rand -hex 32`"
    )]
    Empty {
        /// Source of the token: `in FILE` or `in RBEE_HIVE_TOKEN`.
        origin: String,
    },

    /// The token contains a character that cannot travel in gRPC metadata.
    #[error(
        "the token {origin} contains whitespace inside it or a character other than visible \
         ASCII (`!` to `~`); use for example the output of `openssl rand -hex 32`"
    )]
    InvalidCharacter {
        /// Source of the token: `in FILE` or `in RBEE_HIVE_TOKEN`.
        origin: String,
    },
}

impl BearerToken {
    /// Parses a token. Whitespace around it, such as the newline at the end of a file, is
    /// removed. `origin` names where it came from, for error messages.
    pub fn parse(text: &str, origin: &str) -> Result<Self, TokenError> {
        let token = text.trim_matches(|c: char| c.is_ascii_whitespace());
        if token.is_empty() {
            return Err(TokenError::Empty {
                origin: origin.to_owned(),
            });
        }
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(TokenError::InvalidCharacter {
                origin: origin.to_owned(),
            });
        }
        Ok(Self {
            digest: Sha256::digest(token.as_bytes()).into(),
            short: token.len() < SHORT_TOKEN_BYTES,
        })
    }

    /// Loads the token from `token_file` or from the value of `RBEE_HIVE_TOKEN`; `None` when
    /// neither is set. Warns when the file is readable by other users or the token is short.
    pub fn load(
        token_file: Option<&Path>,
        env_value: Option<std::ffi::OsString>,
    ) -> Result<Option<Self>, TokenError> {
        let token = match (token_file, env_value) {
            (Some(_), Some(_)) => return Err(TokenError::TwoSources),
            (None, None) => return Ok(None),
            (Some(path), None) => {
                let text = std::fs::read_to_string(path).map_err(|source| TokenError::Read {
                    path: path.to_owned(),
                    source,
                })?;
                super::warn_if_readable_by_others(path, "token file");
                Self::parse(&text, &format!("in {}", path.display()))?
            }
            (None, Some(value)) => {
                let origin = format!("in {TOKEN_ENV}");
                let text = value
                    .into_string()
                    .map_err(|_| TokenError::InvalidCharacter {
                        origin: origin.clone(),
                    })?;
                Self::parse(&text, &origin)?
            }
        };
        if token.short {
            tracing::warn!(
                min_bytes = SHORT_TOKEN_BYTES,
                "the bearer token is short and may be guessed; use a longer random one"
            );
        }
        Ok(Some(token))
    }

    /// Checks a presented token against this one, in constant time.
    pub fn matches(&self, presented: &[u8]) -> bool {
        let digest: [u8; 32] = Sha256::digest(presented).into();
        digest.ct_eq(&self.digest).into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_trims_surrounding_whitespace() {
        let token = BearerToken::parse("  s3cret-token-0123456789\r\n", "in test").unwrap();
        assert!(token.matches(b"s3cret-token-0123456789"));
        assert!(!token.matches(b"s3cret-token-0123456789\n"));
        assert!(!token.matches(b"s3cret-token-012345678"));
        assert!(!token.matches(b""));
    }

    #[test]
    fn parse_rejects_empty_and_inner_whitespace() {
        for empty in ["", "\n", "  \t\r\n "] {
            assert!(
                matches!(
                    BearerToken::parse(empty, "in f"),
                    Err(TokenError::Empty { .. })
                ),
                "{empty:?} was accepted"
            );
        }
        for bad in ["two words", "tab\there", "caf\u{e9}", "bell\u{7}"] {
            assert!(
                matches!(
                    BearerToken::parse(bad, "in f"),
                    Err(TokenError::InvalidCharacter { .. })
                ),
                "{bad:?} was accepted"
            );
        }
    }

    #[test]
    fn debug_does_not_show_the_token() {
        let token = BearerToken::parse("visible-secret", "in test").unwrap();
        assert_eq!(format!("{token:?}"), "BearerToken(<redacted>)");
    }

    #[test]
    fn load_rejects_two_sources_and_reads_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "from-the-file-0123456789\n").unwrap();

        let two = BearerToken::load(Some(&path), Some("x".into()));
        assert!(matches!(two, Err(TokenError::TwoSources)));

        let token = BearerToken::load(Some(&path), None).unwrap().unwrap();
        assert!(token.matches(b"from-the-file-0123456789"));
        assert!(BearerToken::load(None, None).unwrap().is_none());

        let missing = BearerToken::load(Some(&dir.path().join("nope")), None);
        assert!(matches!(missing, Err(TokenError::Read { .. })));
    }
}
