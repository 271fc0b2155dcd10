//! TLS of the hive: the certificate and key it presents, and the CA that client certificates
//! must chain to when mutual TLS is on.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use tonic::transport::{Certificate, Identity, ServerTlsConfig};

/// Time a client gets to finish the TLS handshake. tonic runs handshakes in tasks of their own,
/// and the limit keeps clients that never finish from piling up.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// PEM files of the hive's TLS.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// Certificate chain that the hive presents, leaf first.
    pub cert: PathBuf,
    /// Private key of the leaf certificate.
    pub key: PathBuf,
    /// CA certificates that client certificates must chain to; `None` accepts clients without
    /// certificates.
    pub client_ca: Option<PathBuf>,
}

/// Errors in setting up TLS.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file cannot be read.
    #[error("failed to read the {what} {}: {source}", path.display())]
    Read {
        /// Role of the file: `TLS certificate`, `TLS key` or `client CA`.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// The files can be read, but do not form a usable TLS configuration.
    #[error(
        "invalid TLS configuration ({files}): {reason}; give PEM files, the key matching the certificate"
    )]
    Invalid {
        /// The files involved.
        files: String,
        /// Reason that tonic or rustls reported.
        reason: String,
    },
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_owned(),
        source,
    })
}

/// Reads the PEM files and builds the server's TLS configuration. Warns when the private key is
/// readable by other users.
pub fn server_config(files: &TlsFiles) -> Result<ServerTlsConfig, TlsError> {
    let cert = read("TLS certificate", &files.cert)?;
    let key = read("TLS key", &files.key)?;
    super::warn_if_readable_by_others(&files.key, "TLS key");

    let mut config = ServerTlsConfig::new()
        .identity(Identity::from_pem(cert, key))
        .timeout(HANDSHAKE_TIMEOUT);
    if let Some(client_ca) = &files.client_ca {
        let ca = read("client CA", client_ca)?;
        config = config
            .client_ca_root(Certificate::from_pem(ca))
            .client_auth_optional(false);
    }

    // tonic parses the PEM files only when it builds the acceptor, so build one here: a bad
    // certificate or key is then reported before the hive listens.
    if let Err(error) = tonic::transport::Server::builder().tls_config(config.clone()) {
        let mut names = vec![
            files.cert.display().to_string(),
            files.key.display().to_string(),
        ];
        names.extend(files.client_ca.iter().map(|ca| ca.display().to_string()));
        return Err(TlsError::Invalid {
            files: names.join(", "),
            reason: innermost_message(&error),
        });
    }
    Ok(config)
}

/// Returns the message of the deepest error in a chain, because tonic's own message is only
/// "transport error".
fn innermost_message(error: &(dyn std::error::Error + 'static)) -> String {
    let mut current = error;
    while let Some(source) = current.source() {
        current = source;
    }
    current.to_string()
}
