//! Authentication of the hive's callers: a bearer token ([`token`], checked by [`layer`]), TLS
//! with optional client certificates ([`tls`]), and the rule that a hive reachable beyond
//! loopback must authenticate its callers.

pub mod layer;
pub mod tls;
pub mod token;

use std::{
    net::{IpAddr, SocketAddr},
    os::unix::fs::PermissionsExt,
    path::Path,
};

use tonic::transport::ServerTlsConfig;

use self::token::BearerToken;

/// Authentication and transport settings of the hive's listener.
#[derive(Debug, Clone, Default)]
pub struct Security {
    /// Token every call must carry, except on the open services; `None` requires none.
    pub token: Option<BearerToken>,
    /// TLS of the listener; `None` serves plaintext HTTP/2.
    pub tls: Option<ServerTlsConfig>,
    /// Whether TLS requires a client certificate signed by the configured CA.
    pub client_certificates: bool,
}

impl Security {
    /// Returns whether callers must prove who they are, by token or by client certificate.
    pub fn authenticates(&self) -> bool {
        self.token.is_some() || self.client_certificates
    }

    /// Short description for logs: `token+mtls`, `token+tls`, `mtls`, `tls`, `token` or `none`.
    pub fn label(&self) -> &'static str {
        match (
            self.token.is_some(),
            self.tls.is_some(),
            self.client_certificates,
        ) {
            (true, _, true) => "token+mtls",
            (true, true, false) => "token+tls",
            (true, false, false) => "token",
            (false, _, true) => "mtls",
            (false, true, false) => "tls",
            (false, false, false) => "none",
        }
    }
}

/// A listen address beyond loopback without any way to authenticate callers.
#[derive(Debug, thiserror::Error)]
#[error(
    "will not listen on {listen} without authentication, because anyone who reaches that address \
     could start and stop processes on this machine. Set a token with --token-file or \
     RBEE_HIVE_TOKEN, or require client certificates with --tls-client-ca, or listen on \
     loopback (127.0.0.1). On a trusted network, --insecure-allow-unauthenticated-remote \
     allows it anyway"
)]
pub struct UnauthenticatedRemote {
    /// The rejected listen address.
    pub listen: SocketAddr,
}

/// Checks that a hive listening on `listen` authenticates its callers, unless it listens on
/// loopback only or `allow_unauthenticated` is set. Logs a warning for every exposure that is
/// allowed but unsafe.
pub fn check_exposure(
    listen: SocketAddr,
    security: &Security,
    allow_unauthenticated: bool,
) -> Result<(), UnauthenticatedRemote> {
    if is_loopback(listen.ip()) {
        return Ok(());
    }
    if !security.authenticates() {
        if !allow_unauthenticated {
            return Err(UnauthenticatedRemote { listen });
        }
        tracing::warn!(
            %listen,
            "INSECURE: listening beyond loopback without authentication \
             (--insecure-allow-unauthenticated-remote); anyone who reaches this address can \
             start and stop processes as this user"
        );
        return Ok(());
    }
    if security.tls.is_none() {
        tracing::warn!(
            %listen,
            "listening beyond loopback without TLS: the bearer token travels in clear text; add \
             --tls-cert and --tls-key"
        );
    }
    Ok(())
}

/// Returns whether `ip` is a loopback address, including IPv4 loopback written as an
/// IPv4-mapped IPv6 address (`::ffff:127.0.0.1`). The unspecified addresses (`0.0.0.0`, `::`)
/// listen on every interface, so they are not loopback.
pub fn is_loopback(ip: IpAddr) -> bool {
    ip.to_canonical().is_loopback()
}

/// Warns when a file holding a secret can be read by users other than its owner.
fn warn_if_readable_by_others(path: &Path, what: &str) {
    let Ok(metadata) = std::fs::metadata(path) else {
        return;
    };
    let mode = metadata.permissions().mode();
    if mode & 0o077 != 0 {
        tracing::warn!(
            path = %path.display(),
            mode = format!("{:o}", mode & 0o777),
            "the {what} can be read by other users; restrict it with `chmod 600`"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token() -> Option<BearerToken> {
        Some(BearerToken::parse("a-long-enough-test-token", "in test").unwrap())
    }

    #[test]
    fn loopback_includes_all_of_127_and_mapped_addresses() {
        for ip in [
            "127.0.0.1",
            "127.0.0.2",
            "127.255.255.254",
            "::1",
            "::ffff:127.0.0.1",
        ] {
            assert!(is_loopback(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["0.0.0.0", "::", "10.0.0.5", "::ffff:10.0.0.5", "fe80::1"] {
            assert!(!is_loopback(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn remote_listen_needs_authentication_or_the_flag() {
        let remote: SocketAddr = "0.0.0.0:7835".parse().unwrap();
        let open = Security::default();
        assert!(check_exposure(remote, &open, false).is_err());
        assert!(check_exposure(remote, &open, true).is_ok());
        assert!(check_exposure("127.0.0.1:7835".parse().unwrap(), &open, false).is_ok());

        let with_token = Security {
            token: token(),
            ..Security::default()
        };
        assert!(check_exposure(remote, &with_token, false).is_ok());

        let with_client_certificates = Security {
            client_certificates: true,
            ..Security::default()
        };
        assert!(check_exposure(remote, &with_client_certificates, false).is_ok());
    }

    #[test]
    fn label_names_each_mechanism() {
        let tls = Some(ServerTlsConfig::new());
        let cases = [
            (token(), tls.clone(), true, "token+mtls"),
            (token(), tls.clone(), false, "token+tls"),
            (token(), None, false, "token"),
            (None, tls.clone(), true, "mtls"),
            (None, tls, false, "tls"),
            (None, None, false, "none"),
        ];
        for (token, tls, client_certificates, label) in cases {
            let security = Security {
                token,
                tls,
                client_certificates,
            };
            assert_eq!(security.label(), label);
        }
    }
}
