//! Credentials for secured hives: the bearer token the keeper sends with every request, and the
//! TLS configuration it connects with. Files are read when a connection is made.

use std::{fmt, path::Path};

use tonic::{
    Request, Status,
    metadata::{Ascii, MetadataValue},
    service::Interceptor,
    transport::{Certificate, ClientTlsConfig, Identity},
};

use crate::config::{HiveSecurity, TlsSettings};

/// Adds `authorization: Bearer <token>` to every request on a connection, when a token is
/// configured. The value is marked sensitive, so HTTP/2 never stores it in its header
/// compression table and `Debug` output never shows it.
#[derive(Clone, Default)]
pub struct Authorization(Option<MetadataValue<Ascii>>);

impl fmt::Debug for Authorization {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(_) => formatter.write_str("Authorization(Bearer <redacted>)"),
            None => formatter.write_str("Authorization(None)"),
        }
    }
}

impl Interceptor for Authorization {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// Reads the token file of `security`, if it names one.
pub fn authorization(security: &HiveSecurity) -> Result<Authorization, String> {
    let Some(path) = &security.token_file else {
        return Ok(Authorization::default());
    };
    let text = read_text(path, "token file")?;
    let token = text.trim_matches(|c: char| c.is_ascii_whitespace());
    if token.is_empty() {
        return Err(format!("the token file {} is empty", path.display()));
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "the token file {} contains whitespace inside the token or a character other than \
             visible ASCII (`!` to `~`)",
            path.display()
        ));
    }
    let mut value = MetadataValue::try_from(format!("Bearer {token}"))
        .map_err(|_| format!("the token in {} is not valid metadata", path.display()))?;
    value.set_sensitive(true);
    Ok(Authorization(Some(value)))
}

/// Builds the TLS configuration for a hive at `address` (`HOST:PORT`).
pub fn client_tls(tls: &TlsSettings, address: &str) -> Result<ClientTlsConfig, String> {
    let server_name = match &tls.server_name {
        Some(name) => name.clone(),
        None => host_of(address).to_owned(),
    };
    let mut config = ClientTlsConfig::new().domain_name(server_name);
    config = match &tls.ca {
        Some(ca) => config.ca_certificate(Certificate::from_pem(read_bytes(ca, "CA file")?)),
        None => config.with_native_roots(),
    };
    if let Some(identity) = &tls.client_identity {
        let cert = read_bytes(&identity.cert, "client certificate")?;
        let key = read_bytes(&identity.key, "client key")?;
        config = config.identity(Identity::from_pem(cert, key));
    }
    Ok(config)
}

/// Returns the host part of `HOST:PORT`, without the brackets of an IPv6 address.
fn host_of(address: &str) -> &str {
    let host = address.rsplit_once(':').map_or(address, |(host, _)| host);
    host.strip_prefix('[')
        .and_then(|inner| inner.strip_suffix(']'))
        .unwrap_or(host)
}

fn read_text(path: &Path, what: &str) -> Result<String, String> {
    std::fs::read_to_string(path)
        .map_err(|error| format!("failed to read the {what} {}: {error}", path.display()))
}

fn read_bytes(path: &Path, what: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path)
        .map_err(|error| format!("failed to read the {what} {}: {error}", path.display()))
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn with_token_file(text: &str) -> (tempfile::TempDir, HiveSecurity) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, text).unwrap();
        (dir, HiveSecurity::token_only(Some(path)))
    }

    #[test]
    fn token_file_becomes_a_sensitive_bearer_header() {
        let (_dir, security) = with_token_file("keeper-secret-0123456789\n");
        let mut authorization = authorization(&security).unwrap();
        assert!(!format!("{authorization:?}").contains("keeper-secret"));

        let request = authorization.call(Request::new(())).unwrap();
        let value = request.metadata().get("authorization").unwrap();
        assert_eq!(value.to_str().unwrap(), "Bearer keeper-secret-0123456789");
        assert!(value.is_sensitive());
    }

    #[test]
    fn no_token_file_sends_no_header() {
        let mut authorization = authorization(&HiveSecurity::default()).unwrap();
        let request = authorization.call(Request::new(())).unwrap();
        assert!(request.metadata().get("authorization").is_none());
    }

    #[test]
    fn bad_token_files_are_rejected_without_echoing_them() {
        for text in ["", " \n", "two words-0123456789"] {
            let (_dir, security) = with_token_file(text);
            let error = authorization(&security).unwrap_err();
            assert!(!error.contains("words"), "{error}");
        }
        let missing = HiveSecurity::token_only(Some(PathBuf::from("/nonexistent/token")));
        let error = authorization(&missing).unwrap_err();
        assert!(error.contains("/nonexistent/token"), "{error}");
    }

    #[test]
    fn host_of_strips_port_and_brackets() {
        assert_eq!(host_of("gpu1.lan:7835"), "gpu1.lan");
        assert_eq!(host_of("10.0.0.5:7835"), "10.0.0.5");
        assert_eq!(host_of("[::1]:7835"), "::1");
    }
}
