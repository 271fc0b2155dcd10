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
    /// File holding the bearer token sent to the hive.
    token_file: Option<PathBuf>,
    /// Whether to connect with TLS; `ca`, `client_cert` and `server_name` imply it.
    tls: Option<bool>,
    /// PEM CA certificates that the hive's certificate must be signed by.
    ca: Option<PathBuf>,
    /// PEM client certificate, for hives that require one (mutual TLS).
    client_cert: Option<PathBuf>,
    /// PEM private key of `client_cert`.
    client_key: Option<PathBuf>,
    /// Name the hive's certificate must be valid for.
    server_name: Option<String>,
}

/// A hive a command talks to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HiveTarget {
    /// Name from the hives file, `localhost`, or the address itself when given as HOST:PORT.
    pub name: String,
    /// `HOST:PORT` to connect to.
    pub address: String,
    /// Token and TLS settings of the connection.
    pub security: HiveSecurity,
}

/// Authentication and TLS settings of the keeper's connection to a hive. It holds file paths
/// only, and the files are read when the connection is made.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HiveSecurity {
    /// File holding the bearer token; `None` sends no token.
    pub token_file: Option<PathBuf>,
    /// TLS settings; `None` connects in plaintext.
    pub tls: Option<TlsSettings>,
}

/// TLS settings of a connection to a hive.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsSettings {
    /// PEM CA certificates to trust; `None` trusts the system's root certificates.
    pub ca: Option<PathBuf>,
    /// Client certificate and key, for hives that require one.
    pub client_identity: Option<ClientIdentity>,
    /// Name the hive's certificate must be valid for; `None` uses the host of the address.
    pub server_name: Option<String>,
}

/// PEM files of a client certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientIdentity {
    /// Certificate chain, leaf first.
    pub cert: PathBuf,
    /// Private key of the leaf certificate.
    pub key: PathBuf,
}

impl HiveSecurity {
    /// Settings with only a token file, or none, as for HOST:PORT targets.
    pub fn token_only(token_file: Option<PathBuf>) -> Self {
        Self {
            token_file,
            tls: None,
        }
    }

    /// Short description: `token+mtls`, `token+tls`, `mtls`, `tls`, `token` or `none`.
    pub fn label(&self) -> &'static str {
        let token = self.token_file.is_some();
        let client_certificate = self
            .tls
            .as_ref()
            .is_some_and(|tls| tls.client_identity.is_some());
        match (token, self.tls.is_some(), client_certificate) {
            (true, _, true) => "token+mtls",
            (true, true, false) => "token+tls",
            (true, false, false) => "token",
            (false, _, true) => "mtls",
            (false, true, false) => "tls",
            (false, false, false) => "none",
        }
    }
}

/// Address of the built-in `localhost` hive, and the token file it was started with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalhostHive {
    /// `HOST:PORT` of the hive.
    pub address: String,
    /// Token file given to `rbee hive start`, if any.
    pub token_file: Option<PathBuf>,
}

impl HiveTarget {
    /// Returns whether this is the built-in `localhost`, which `rbee hive start` can bring up.
    pub fn is_builtin_localhost(&self) -> bool {
        self.name == LOCALHOST
    }
}

/// Errors in reading the hives file or in choosing hives.
///
/// Each message names its cause, so no variant exposes it as a `source` as well: `rbee` prints
/// the chain of sources after the message, which would repeat the cause.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file exists but could not be read, or a file given explicitly is missing.
    #[error("failed to read hives file {}: {error}", path.display())]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },

    /// The file is not valid TOML of the expected shape.
    ///
    /// The message leaves out the excerpt of the file that the TOML parser shows, because that
    /// line may hold a secret, as in `token = "..."`.
    #[error("invalid hives file {}{location}: {message}", path.display())]
    Parse {
        path: PathBuf,
        location: String,
        message: String,
    },

    /// `--hive` was given but names no hive.
    #[error("no hives targeted: --hive is empty; name at least one hive or HOST:PORT")]
    NoTargets,

    /// A hive name in the file cannot be used on the command line.
    #[error(
        "invalid hive name {name:?} in {}: use letters, digits, `-`, `_` and `.`",
        path.display()
    )]
    InvalidName { path: PathBuf, name: String },

    /// The token or TLS keys of a hive contradict each other.
    #[error("invalid settings of hive {name:?} in {}: {reason}", path.display())]
    InvalidSecurity {
        path: PathBuf,
        name: String,
        reason: String,
    },

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
    hives: BTreeMap<String, HiveDefinition>,
    /// Token file for HOST:PORT targets and the built-in `localhost` (`--token-file`).
    fallback_token_file: Option<PathBuf>,
}

/// A hive of the file, checked.
#[derive(Debug)]
struct HiveDefinition {
    address: String,
    security: HiveSecurity,
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
            Err(error) => return Err(ConfigError::Read { path, error }),
        };

        Self::parse(path, &text)
    }

    fn parse(path: PathBuf, text: &str) -> Result<Self, ConfigError> {
        let file: HivesFile =
            toml::from_str(text).map_err(|error| parse_error(&path, text, &error))?;

        let base_dir = path.parent().map(Path::to_owned).unwrap_or_default();
        let mut hives = BTreeMap::new();
        for (name, entry) in file.hives {
            if !is_valid_hive_name(&name) {
                return Err(ConfigError::InvalidName { path, name });
            }
            check_address(&entry.address).map_err(|()| ConfigError::InvalidAddress {
                address: entry.address.clone(),
                context: format!(" of hive {name:?} in {}", path.display()),
            })?;
            let address = entry.address.clone();
            let security = entry_security(entry, &base_dir).map_err(|reason| {
                ConfigError::InvalidSecurity {
                    path: path.clone(),
                    name: name.clone(),
                    reason,
                }
            })?;
            hives.insert(name, HiveDefinition { address, security });
        }
        Ok(Self {
            path,
            hives,
            fallback_token_file: None,
        })
    }

    /// Sets the token file sent to HOST:PORT targets and to the built-in `localhost`, whose
    /// settings the hives file does not give. Hives of the file use their own `token_file`
    /// only, so that a token meant for some hives is never sent to the others.
    pub fn with_fallback_token_file(mut self, token_file: Option<PathBuf>) -> Self {
        self.fallback_token_file = token_file;
        self
    }

    /// Hives targeted by `--all`: every hive of the file, or the built-in `localhost` when the
    /// file defines none.
    pub fn all_hives(&self, localhost: impl FnOnce() -> LocalhostHive) -> Vec<HiveTarget> {
        if self.hives.is_empty() {
            return vec![self.builtin_localhost(localhost())];
        }
        self.hives
            .iter()
            .map(|(name, hive)| HiveTarget {
                name: name.clone(),
                address: hive.address.clone(),
                security: hive.security.clone(),
            })
            .collect()
    }

    /// Returns the built-in `localhost`. `--token-file` wins over the token file it was started
    /// with.
    fn builtin_localhost(&self, localhost: LocalhostHive) -> HiveTarget {
        let token_file = self.fallback_token_file.clone().or(localhost.token_file);
        HiveTarget {
            name: LOCALHOST.to_owned(),
            address: localhost.address,
            security: HiveSecurity::token_only(token_file),
        }
    }

    /// Resolves `--hive` entries, in order and without duplicates. An empty list means
    /// `localhost`. `localhost` gives the built-in hive, unless the file defines `localhost`
    /// itself.
    pub fn resolve(
        &self,
        entries: &[String],
        localhost: impl Fn() -> LocalhostHive,
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
            let target = self.resolve_one(entry, &localhost)?;
            if !targets.iter().any(|known| known.name == target.name) {
                targets.push(target);
            }
        }
        // An empty `--hive ''` (often an unset variable) must not quietly do nothing.
        if targets.is_empty() {
            return Err(ConfigError::NoTargets);
        }
        Ok(targets)
    }

    fn resolve_one(
        &self,
        entry: &str,
        localhost: &impl Fn() -> LocalhostHive,
    ) -> Result<HiveTarget, ConfigError> {
        if let Some(hive) = self.hives.get(entry) {
            return Ok(HiveTarget {
                name: entry.to_owned(),
                address: hive.address.clone(),
                security: hive.security.clone(),
            });
        }
        if entry == LOCALHOST {
            return Ok(self.builtin_localhost(localhost()));
        }
        if entry.contains(':') {
            check_address(entry).map_err(|()| ConfigError::InvalidAddress {
                address: entry.to_owned(),
                context: String::new(),
            })?;
            return Ok(HiveTarget {
                name: entry.to_owned(),
                address: entry.to_owned(),
                security: HiveSecurity::token_only(self.fallback_token_file.clone()),
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

fn parse_error(path: &Path, text: &str, error: &toml::de::Error) -> ConfigError {
    let location = match error.span() {
        Some(span) => {
            let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
            format!(", line {line}")
        }
        None => String::new(),
    };
    let mut message = error.message().trim_end().to_owned();
    if message.starts_with("unknown field `token`") {
        message.push_str("; write the token into a file and name it with token_file");
    }
    ConfigError::Parse {
        path: path.to_owned(),
        location,
        message,
    }
}

/// Checks the token and TLS keys of a hive entry and resolves its paths: `~/` is the home
/// directory, and a relative path is relative to the directory of the hives file.
fn entry_security(entry: HiveEntry, base_dir: &Path) -> Result<HiveSecurity, String> {
    let resolve = |path: PathBuf| resolve_path(path, base_dir);

    let client_identity = match (entry.client_cert, entry.client_key) {
        (Some(cert), Some(key)) => Some(ClientIdentity {
            cert: resolve(cert),
            key: resolve(key),
        }),
        (None, None) => None,
        (Some(_), None) => return Err("client_cert needs client_key".to_owned()),
        (None, Some(_)) => return Err("client_key needs client_cert".to_owned()),
    };
    if let Some(name) = &entry.server_name
        && (name.is_empty() || name.contains(|c: char| c.is_whitespace() || c == '/'))
    {
        return Err(format!(
            "invalid server_name {name:?}: expected a DNS name or IP"
        ));
    }

    let implied_by = [
        (entry.ca.is_some(), "ca"),
        (client_identity.is_some(), "client_cert"),
        (entry.server_name.is_some(), "server_name"),
    ];
    let implying: Vec<&str> = implied_by
        .iter()
        .filter(|(set, _)| *set)
        .map(|(_, key)| *key)
        .collect();
    let tls = match entry.tls {
        Some(false) if !implying.is_empty() => {
            return Err(format!(
                "tls = false contradicts {}, which need TLS; remove one of them",
                implying.join(", ")
            ));
        }
        Some(tls) => tls,
        None => !implying.is_empty(),
    };

    Ok(HiveSecurity {
        token_file: entry.token_file.map(resolve),
        tls: tls.then(|| TlsSettings {
            ca: entry.ca.map(resolve),
            client_identity,
            server_name: entry.server_name,
        }),
    })
}

/// Expands a leading `~/` to the home directory and joins a relative path to `base_dir`.
fn resolve_path(path: PathBuf, base_dir: &Path) -> PathBuf {
    if let Ok(rest) = path.strip_prefix("~")
        && let Some(home) = env::var_os("HOME").filter(|home| !home.is_empty())
    {
        return PathBuf::from(home).join(rest);
    }
    if path.is_absolute() {
        path
    } else {
        base_dir.join(path)
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

    fn local() -> LocalhostHive {
        LocalhostHive {
            address: "127.0.0.1:7835".to_owned(),
            token_file: None,
        }
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

    #[test]
    fn security_keys_resolve_paths_and_imply_tls() {
        let text = r#"
            [hives.plain]
            address = "a:1"

            [hives.token]
            address = "b:1"
            token_file = "tokens/b"

            [hives.tls]
            address = "c:1"
            tls = true

            [hives.mtls]
            address = "d:1"
            token_file = "/etc/rbee/d.token"
            ca = "ca.pem"
            client_cert = "/pki/keeper.pem"
            client_key = "/pki/keeper.key"
            server_name = "d.lan"
        "#;
        let config = config(text);
        let targets = config.all_hives(local);
        let by_name = |name: &str| {
            targets
                .iter()
                .find(|t| t.name == name)
                .unwrap()
                .security
                .clone()
        };

        assert_eq!(by_name("plain"), HiveSecurity::default());
        assert_eq!(by_name("plain").label(), "none");
        assert_eq!(
            by_name("token").token_file,
            Some(PathBuf::from("/etc/tokens/b"))
        );
        assert_eq!(by_name("token").label(), "token");
        assert_eq!(by_name("tls").tls, Some(TlsSettings::default()));
        assert_eq!(by_name("tls").label(), "tls");

        let mtls = by_name("mtls");
        assert_eq!(mtls.label(), "token+mtls");
        let tls = mtls.tls.unwrap();
        assert_eq!(tls.ca, Some(PathBuf::from("/etc/ca.pem")));
        assert_eq!(tls.server_name.as_deref(), Some("d.lan"));
        assert_eq!(
            tls.client_identity,
            Some(ClientIdentity {
                cert: PathBuf::from("/pki/keeper.pem"),
                key: PathBuf::from("/pki/keeper.key"),
            })
        );
    }

    #[test]
    fn security_keys_must_agree() {
        let path = PathBuf::from("/x.toml");
        for bad in [
            "[hives.a]\naddress = \"a:1\"\nclient_cert = \"c.pem\"\n",
            "[hives.a]\naddress = \"a:1\"\nclient_key = \"c.key\"\n",
            "[hives.a]\naddress = \"a:1\"\ntls = false\nca = \"ca.pem\"\n",
            "[hives.a]\naddress = \"a:1\"\nserver_name = \"a b\"\n",
            "[hives.a]\naddress = \"a:1\"\ntoken = \"inline-secret\"\n",
        ] {
            let error = Config::parse(path.clone(), bad).unwrap_err();
            assert!(
                !error.to_string().contains("inline-secret"),
                "the error repeats a secret: {error}"
            );
        }

        let inline = "[hives.a]\naddress = \"a:1\"\ntoken = \"inline-secret\"\n";
        let error = Config::parse(path, inline).unwrap_err().to_string();
        assert!(error.contains("line 3"), "{error}");
        assert!(error.contains("token_file"), "{error}");
    }

    #[test]
    fn fallback_token_file_reaches_addresses_and_localhost_only() {
        let config = config("[hives.gpu1]\naddress = \"10.0.0.5:7835\"\n")
            .with_fallback_token_file(Some(PathBuf::from("/run/token")));
        let entries = ["gpu1", "10.0.0.9:7835", "localhost"].map(String::from);
        let targets = config.resolve(&entries, local).unwrap();
        let tokens: Vec<Option<&Path>> = targets
            .iter()
            .map(|t| t.security.token_file.as_deref())
            .collect();
        assert_eq!(
            tokens,
            [
                None,
                Some(Path::new("/run/token")),
                Some(Path::new("/run/token"))
            ]
        );
    }

    #[test]
    fn localhost_uses_its_start_token_unless_overridden() {
        let started = || LocalhostHive {
            address: "127.0.0.1:7835".to_owned(),
            token_file: Some(PathBuf::from("/state/token")),
        };
        let plain = config("").resolve(&[], started).unwrap();
        assert_eq!(
            plain[0].security.token_file.as_deref(),
            Some(Path::new("/state/token"))
        );

        let overridden = config("")
            .with_fallback_token_file(Some(PathBuf::from("/flag/token")))
            .resolve(&[], started)
            .unwrap();
        assert_eq!(
            overridden[0].security.token_file.as_deref(),
            Some(Path::new("/flag/token"))
        );
    }
}
