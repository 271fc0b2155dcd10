//! Helpers for the security tests: certificates made with rcgen (a CA, hive certificates for
//! loopback, client certificates), token files, and health checks over plaintext or TLS that
//! report a failure with its whole error chain.

#![allow(dead_code)]

use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

/// A token long enough that the hive does not warn about it.
pub const TOKEN: &str = "rbee-test-token-6f1d0c3a9b8e47d2";

/// A PEM certificate and its private key, as files.
#[derive(Debug, Clone)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A certificate authority whose certificate is written to `cert`.
pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
    dir: PathBuf,
    /// The CA certificate, PEM.
    pub cert: PathBuf,
}

impl TestCa {
    /// Creates a CA named `name`, with its files in `dir`.
    pub fn new(dir: &Path, name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, format!("{name} test CA"));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().expect("CA key");
        let issuer = CertifiedIssuer::self_signed(params, key).expect("self-signed CA");

        let cert = dir.join(format!("{name}-ca.pem"));
        fs::write(&cert, issuer.pem()).expect("write the CA certificate");
        Self {
            issuer,
            dir: dir.to_owned(),
            cert,
        }
    }

    /// Issues a hive certificate valid for 127.0.0.1, ::1 and localhost.
    pub fn issue_server(&self, name: &str) -> CertFiles {
        let names = ["127.0.0.1", "::1", "localhost"].map(String::from);
        self.issue(name, &names, ExtendedKeyUsagePurpose::ServerAuth)
    }

    /// Issues a client certificate.
    pub fn issue_client(&self, name: &str) -> CertFiles {
        self.issue(name, &[], ExtendedKeyUsagePurpose::ClientAuth)
    }

    fn issue(
        &self,
        name: &str,
        subject_alt_names: &[String],
        usage: ExtendedKeyUsagePurpose,
    ) -> CertFiles {
        let mut params = CertificateParams::new(subject_alt_names.to_vec()).expect("parameters");
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![usage];
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.issuer).expect("sign");

        let files = CertFiles {
            cert: self.dir.join(format!("{name}.pem")),
            key: self.dir.join(format!("{name}.key")),
        };
        fs::write(&files.cert, cert.pem()).expect("write the certificate");
        write_private(&files.key, &key.serialize_pem());
        files
    }
}

/// Writes `text` to `path`, readable by its owner only, as secrets should be.
pub fn write_private(path: &Path, text: &str) {
    fs::write(path, text).expect("write the secret file");
    fs::set_permissions(path, fs::Permissions::from_mode(0o600)).expect("chmod 600");
}

/// Writes a token file and returns its path.
pub fn token_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    write_private(&path, text);
    path
}

/// TLS settings of a test client: the CA it trusts and the certificate it presents, if any.
pub struct ClientTls<'a> {
    pub ca: &'a Path,
    pub identity: Option<&'a CertFiles>,
}

impl ClientTls<'_> {
    fn config(&self) -> ClientTlsConfig {
        let ca = fs::read(self.ca).expect("read the CA");
        let mut config = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca));
        if let Some(identity) = self.identity {
            let cert = fs::read(&identity.cert).expect("read the client certificate");
            let key = fs::read(&identity.key).expect("read the client key");
            config = config.identity(Identity::from_pem(cert, key));
        }
        config
    }
}

/// Connects to `address`: plaintext without `tls`, else TLS. Errors carry their whole chain.
pub async fn connect(address: &str, tls: Option<&ClientTls<'_>>) -> Result<Channel, String> {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let mut endpoint = Endpoint::from_shared(format!("{scheme}://{address}")).unwrap();
    if let Some(tls) = tls {
        endpoint = endpoint.tls_config(tls.config()).map_err(|e| chain(&e))?;
    }
    endpoint.connect().await.map_err(|e| chain(&e))
}

/// Connects and checks the health of the hive API. Errors carry their whole chain.
pub async fn health_check(address: &str, tls: Option<&ClientTls<'_>>) -> Result<i32, String> {
    let channel = connect(address, tls).await?;
    let response = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: "rbee.hive.v1.HiveService".into(),
        })
        .await
        .map_err(|status| format!("{status:?}: {}", chain(&status)))?;
    Ok(response.into_inner().status)
}

/// Joins every message of an error chain with `: `.
pub fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut messages = vec![error.to_string()];
    let mut source = error.source();
    while let Some(error) = source {
        messages.push(error.to_string());
        source = error.source();
    }
    messages.join(": ")
}
