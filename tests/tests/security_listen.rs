//! Safe defaults of the listen address: a hive reachable beyond loopback starts only with a
//! token, client certificates, or the flag that allows it without, and then warns. Every hive
//! here that does start is reached through 127.0.0.1 only.

mod security_common;

use std::{
    fs,
    io::{BufRead, BufReader},
    net::SocketAddr,
    process::{Command, Stdio},
    time::Duration,
};

use rbee_tests::{ChildGuard, HIVE_SECURITY_ENV, wait_with_timeout, workspace_bin};
use security_common::{TOKEN, health_check, token_file};
use tonic_health::pb::health_check_response::ServingStatus;

/// `rbee-hive` listening on `listen`, with private directories and stderr in a file.
struct Hive {
    dir: tempfile::TempDir,
    command: Command,
}

impl Hive {
    fn new(listen: &str, args: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut command = Command::new(workspace_bin("rbee-hive"));
        for variable in HIVE_SECURITY_ENV {
            command.env_remove(variable);
        }
        command
            .args(["--listen", listen, "--catalog-dir"])
            .arg(dir.path().join("catalog"))
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .args(args)
            .env("RUST_LOG", "rbee_hive=info,warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(fs::File::create(dir.path().join("stderr")).unwrap());
        Self { dir, command }
    }

    fn stderr(&self) -> String {
        fs::read_to_string(self.dir.path().join("stderr")).unwrap_or_default()
    }

    /// Runs a hive that must fail to start; returns its exit code and stderr.
    fn expect_failure(mut self) -> (Option<i32>, String) {
        let mut child = self.command.spawn().unwrap();
        let status = wait_with_timeout(&mut child, Duration::from_secs(10));
        if status.is_none() {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the hive started:\n{}", self.stderr());
        }
        (status.unwrap().code(), self.stderr())
    }

    /// Runs a hive that must start; returns it with its port, to be reached on 127.0.0.1.
    fn expect_start(mut self) -> (ChildGuard, u16, Self) {
        let mut child = self.command.spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let guard = ChildGuard::new(child);
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        let address: SocketAddr = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("no address in {line:?}; stderr:\n{}", self.stderr()))
            .parse()
            .unwrap();
        (guard, address.port(), self)
    }
}

#[test]
fn unspecified_ipv4_without_authentication_is_rejected() {
    let (code, stderr) = Hive::new("0.0.0.0:0", &[]).expect_failure();

    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("will not listen on 0.0.0.0:0 without authentication"),
        "{stderr}"
    );
    assert!(stderr.contains("--token-file"), "{stderr}");
    assert!(
        stderr.contains("--insecure-allow-unauthenticated-remote"),
        "{stderr}"
    );
}

#[test]
fn unspecified_ipv6_without_authentication_is_rejected() {
    let (code, stderr) = Hive::new("[::]:0", &[]).expect_failure();

    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("will not listen on [::]:0 without authentication"),
        "{stderr}"
    );
}

#[tokio::test]
async fn unspecified_address_with_token_starts() {
    let secrets = tempfile::tempdir().unwrap();
    let token = token_file(secrets.path(), "token", TOKEN);
    let token = token.display().to_string();

    let (_guard, port, hive) = Hive::new("0.0.0.0:0", &["--token-file", &token]).expect_start();

    let status = health_check(&format!("127.0.0.1:{port}"), None)
        .await
        .unwrap();
    assert_eq!(status, ServingStatus::Serving as i32);
    // Without TLS the token crosses the network in clear text, which the hive points out.
    let stderr = hive.stderr();
    assert!(stderr.contains("without TLS"), "{stderr}");
    assert!(!stderr.contains(TOKEN), "{stderr}");
}

#[tokio::test]
async fn insecure_flag_starts_with_a_warning() {
    let (_guard, port, hive) =
        Hive::new("0.0.0.0:0", &["--insecure-allow-unauthenticated-remote"]).expect_start();

    let status = health_check(&format!("127.0.0.1:{port}"), None)
        .await
        .unwrap();
    assert_eq!(status, ServingStatus::Serving as i32);
    let stderr = hive.stderr();
    assert!(
        stderr.contains("INSECURE: listening beyond loopback without authentication"),
        "{stderr}"
    );
}

#[tokio::test]
async fn any_loopback_address_needs_no_token() {
    // All of 127.0.0.0/8 is loopback.
    let (_guard, port, hive) = Hive::new("127.0.0.2:0", &[]).expect_start();

    let status = health_check(&format!("127.0.0.2:{port}"), None)
        .await
        .unwrap();
    assert_eq!(status, ServingStatus::Serving as i32);
    let stderr = hive.stderr();
    assert!(!stderr.contains("WARN"), "{stderr}");
}
