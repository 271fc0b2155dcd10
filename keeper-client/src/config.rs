//! The hives file (`hives.toml`), XDG directories, and turning `--hive` / `--all` into the list
//! of hives a command targets.

use std::{
    collections::BTreeMap,
    env,
    path::{Path, PathBuf},
};

use serde::Deserialize;

/// Name of the hive that is always known: the hive on this machine.
pub const LOCALHOST: &str = "localhost";

/// Contents of the hives file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct HivesFile {
    /// Hives by name.
    #[serde(default)]
    hives: BTreeMap<String, HiveEntry>,
}

/// One `[hives.NAME]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HiveEntry {
    /// `HOST:PORT` of the hive's gRPC endpoint.
    address: String,
}

/// A hive a command talks to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HiveTarget {
    /// Name from the hives file, `localhost`, or the address itself when given as HOST:PORT.
    pub name: String,
    /// `HOST:PORT` to connect to.
    pub address: String,
}

impl HiveTarget {
    /// Returns whether this is the built-in `localhost`, which `rbee hive start` can bring up.
    pub fn is_builtin_localhost(&self) -> bool {
        self.name == LOCALHOST
    }
}

/// Errors in reading the hives file or in choosing hives.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file exists but could not be read, or a file given explicitly is missing.
    #[error("failed to read hives file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The file is not valid TOML of the expected shape.
    #[error("invalid hives file {}: {source}", path.display())]
    Parse {
        path: PathBuf,
        #[source]
        source: Box<toml::de::Error>,
    },

    /// A hive name in the file cannot be used on the command line.
    #[error(
        "invalid hive name {name:?} in {}: use letters, digits, `-`, `_` and `.`",
        path.display()
    )]
    InvalidName { path: PathBuf, name: String },

    /// An address in the file or on the command line is not HOST:PORT.
    #[error(
        "invalid hive address {address:?}{context}: expected HOST:PORT, for example 10.0.0.5:7835"
    )]
    InvalidAddress { address: String, context: String },

    /// `--hive` named a hive the file does not define.
    #[error(
        "unknown hive {name:?}: {known}; give a name from the hives file or a HOST:PORT address"
    )]
    UnknownHive { name: String, known: String },

    /// Neither HOME nor the XDG variable is set, so no default path exists.
    #[error("cannot find the {what} directory: set HOME or {variable}")]
    NoHome {
        what: &'static str,
        variable: &'static str,
    },
}

/// The hives file, loaded.
#[derive(Debug)]
pub struct Config {
    path: PathBuf,
    hives: BTreeMap<String, String>,
}

impl Config {
    /// Loads the hives file: `explicit` (from `--config` or `RBEE_CONFIG`) must exist, the
    /// default path may be missing, which means no configured hives.
    pub fn load(explicit: Option<&Path>) -> Result<Self, ConfigError> {
        let path = match explicit {
            Some(path) => path.to_owned(),
            None => config_dir()?.join("hives.toml"),
        };

        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(error) if explicit.is_none() && error.kind() == std::io::ErrorKind::NotFound => {
                tracing::debug!(path = %path.display(), "no hives file, only localhost is known");
                String::new()
            }
            Err(source) => return Err(ConfigError::Read { path, source }),
        };

        Self::parse(path, &text)
    }

    fn parse(path: PathBuf, text: &str) -> Result<Self, ConfigError> {
        let file: HivesFile = toml::from_str(text).map_err(|source| ConfigError::Parse {
            path: path.clone(),
            source: Box::new(source),
        })?;

        let mut hives = BTreeMap::new();
        for (name, entry) in file.hives {
            if !is_valid_hive_name(&name) {
                return Err(ConfigError::InvalidName { path, name });
            }
            check_address(&entry.address).map_err(|()| ConfigError::InvalidAddress {
                address: entry.address.clone(),
                context: format!(" of hive {name:?} in {}", path.display()),
            })?;
            hives.insert(name, entry.address);
        }
        Ok(Self { path, hives })
    }

    /// Hives targeted by `--all`: every hive of the file, or the built-in `localhost` when the
    /// file defines none.
    pub fn all_hives(&self, localhost_address: impl FnOnce() -> String) -> Vec<HiveTarget> {
        if self.hives.is_empty() {
            return vec![HiveTarget {
                name: LOCALHOST.to_owned(),
                address: localhost_address(),
            }];
        }
        self.hives
            .iter()
            .map(|(name, address)| HiveTarget {
                name: name.clone(),
                address: address.clone(),
            })
            .collect()
    }

    /// Resolves `--hive` entries, in order and without duplicates. An empty list means
    /// `localhost`. `localhost_address` gives the built-in hive's address, unless the file
    /// defines `localhost` itself.
    pub fn resolve(
        &self,
        entries: &[String],
        localhost_address: impl Fn() -> String,
    ) -> Result<Vec<HiveTarget>, ConfigError> {
        let default = [LOCALHOST.to_owned()];
        let entries = if entries.is_empty() {
            &default[..]
        } else {
            entries
        };

        let mut targets: Vec<HiveTarget> = Vec::new();
        for entry in entries {
            let entry = entry.trim();
            if entry.is_empty() {
                continue;
            }
            let target = self.resolve_one(entry, &localhost_address)?;
            if !targets.iter().any(|known| known.name == target.name) {
                targets.push(target);
            }
        }
        Ok(targets)
    }

    fn resolve_one(
        &self,
        entry: &str,
        localhost_address: &impl Fn() -> String,
    ) -> Result<HiveTarget, ConfigError> {
        if let Some(address) = self.hives.get(entry) {
            return Ok(HiveTarget {
                name: entry.to_owned(),
                address: address.clone(),
            });
        }
        if entry == LOCALHOST {
            return Ok(HiveTarget {
                name: LOCALHOST.to_owned(),
                address: localhost_address(),
            });
        }
        if entry.contains(':') {
            check_address(entry).map_err(|()| ConfigError::InvalidAddress {
                address: entry.to_owned(),
                context: String::new(),
            })?;
            return Ok(HiveTarget {
                name: entry.to_owned(),
                address: entry.to_owned(),
            });
        }

        let known = if self.hives.is_empty() {
            format!("{} defines no hives", self.path.display())
        } else {
            let names: Vec<&str> = self.hives.keys().map(String::as_str).collect();
            format!("{} defines {}", self.path.display(), names.join(", "))
        };
        Err(ConfigError::UnknownHive {
            name: entry.to_owned(),
            known,
        })
    }
}

/// Hive names appear in `--hive` lists and table columns, so they exclude `,`, `:` and blanks.
fn is_valid_hive_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Checks `HOST:PORT`, with IPv6 hosts in brackets (`[::1]:7835`).
fn check_address(address: &str) -> Result<(), ()> {
    let (host, port) = address.rsplit_once(':').ok_or(())?;
    let port_ok = port.parse::<u16>().is_ok_and(|port| port != 0);
    let host_ok = if let Some(inner) = host.strip_prefix('[') {
        inner
            .strip_suffix(']')
            .is_some_and(|ip| ip.parse::<std::net::Ipv6Addr>().is_ok())
    } else {
        !host.is_empty()
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
    };
    if port_ok && host_ok { Ok(()) } else { Err(()) }
}

/// `$XDG_CONFIG_HOME/rbee`, else `~/.config/rbee`.
pub fn config_dir() -> Result<PathBuf, ConfigError> {
    xdg_dir("XDG_CONFIG_HOME", ".config", "configuration")
}

/// `$XDG_STATE_HOME/rbee`, else `~/.local/state/rbee`.
pub fn state_dir() -> Result<PathBuf, ConfigError> {
    xdg_dir("XDG_STATE_HOME", ".local/state", "state")
}

/// `$XDG_CACHE_HOME/rbee`, else `~/.cache/rbee`.
pub fn cache_dir() -> Result<PathBuf, ConfigError> {
    xdg_dir("XDG_CACHE_HOME", ".cache", "cache")
}

/// Follows the XDG base directory rules: the variable counts only when it is an absolute path.
fn xdg_dir(
    variable: &'static str,
    fallback: &str,
    what: &'static str,
) -> Result<PathBuf, ConfigError> {
    if let Some(dir) = env::var_os(variable).map(PathBuf::from)
        && dir.is_absolute()
    {
        return Ok(dir.join("rbee"));
    }
    match env::var_os("HOME").map(PathBuf::from) {
        Some(home) if home.is_absolute() => Ok(home.join(fallback).join("rbee")),
        _ => Err(ConfigError::NoHome { what, variable }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> Config {
        Config::parse(PathBuf::from("/etc/hives.toml"), text).expect("valid hives file")
    }

    fn local() -> String {
        "127.0.0.1:7835".to_owned()
    }

    #[test]
    fn resolve_defaults_to_localhost() {
        let targets = config("").resolve(&[], local).unwrap();
        assert_eq!(targets.len(), 1);
        assert_eq!(targets[0].name, "localhost");
        assert_eq!(targets[0].address, "127.0.0.1:7835");
    }

    #[test]
    fn resolve_mixes_names_and_addresses_without_duplicates() {
        let config = config("[hives.gpu1]\naddress = \"10.0.0.5:7835\"\n");
        let entries = ["gpu1", "[::1]:9000", "gpu1", "host.lan:1"].map(String::from);
        let targets = config.resolve(&entries, local).unwrap();
        let names: Vec<&str> = targets.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["gpu1", "[::1]:9000", "host.lan:1"]);
        assert_eq!(targets[0].address, "10.0.0.5:7835");
    }

    #[test]
    fn resolve_rejects_unknown_names_and_bad_addresses() {
        let config = config("[hives.gpu1]\naddress = \"10.0.0.5:7835\"\n");
        let unknown = config.resolve(&["gpu2".to_owned()], local).unwrap_err();
        assert!(unknown.to_string().contains("defines gpu1"), "{unknown}");
        for bad in ["host:", "host:0", ":80", "host:99999", "::1:80", "a b:1"] {
            assert!(config.resolve(&[bad.to_owned()], local).is_err(), "{bad}");
        }
    }

    #[test]
    fn file_defined_localhost_wins() {
        let config = config("[hives.localhost]\naddress = \"127.0.0.1:9999\"\n");
        let targets = config.resolve(&[], local).unwrap();
        assert_eq!(targets[0].address, "127.0.0.1:9999");
    }

    #[test]
    fn all_falls_back_to_localhost_only_when_empty() {
        assert_eq!(config("").all_hives(local)[0].name, "localhost");
        let two = config("[hives.b]\naddress = \"b:1\"\n[hives.a]\naddress = \"a:1\"\n");
        let names: Vec<String> = two.all_hives(local).into_iter().map(|t| t.name).collect();
        assert_eq!(names, ["a", "b"]);
    }

    #[test]
    fn parse_rejects_unknown_fields_and_bad_entries() {
        let path = PathBuf::from("/x.toml");
        assert!(Config::parse(path.clone(), "[hives.a]\naddres = \"a:1\"\n").is_err());
        assert!(Config::parse(path.clone(), "[hives.\"a,b\"]\naddress = \"a:1\"\n").is_err());
        assert!(Config::parse(path, "[hives.a]\naddress = \"nope\"\n").is_err());
    }
}
