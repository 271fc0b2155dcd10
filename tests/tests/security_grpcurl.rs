//! grpcurl, through server reflection, against hives that require a token or client
//! certificates. Needs grpcurl in `.tools/bin/`, which scripts/install-grpcurl puts there.

mod security_common;

use std::{
    path::PathBuf,
    process::{Command, Output},
};

use rbee_tests::{HiveOptions, TestHive};
use security_common::{TOKEN, TestCa, token_file};

/// Path of grpcurl, failing the test with what to do when it is missing.
fn grpcurl() -> PathBuf {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ inside the repository")
        .join(".tools/bin/grpcurl");
    assert!(
        path.is_file(),
        "grpcurl is missing at {}; run scripts/install-grpcurl",
        path.display()
    );
    path
}

fn text(output: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn token_hive() -> (TestHive, tempfile::TempDir) {
    let secrets = tempfile::tempdir().unwrap();
    let path = token_file(secrets.path(), "token", TOKEN);
    let hive = TestHive::start_with(HiveOptions {
        args: vec!["--token-file".into(), path.display().to_string()],
    });
    (hive, secrets)
}

#[test]
fn reflection_lists_services_without_a_token() {
    let (hive, _secrets) = token_hive();

    let output = Command::new(grpcurl())
        .args(["-plaintext", &hive.address(), "list"])
        .output()
        .unwrap();

    let (stdout, stderr) = text(&output);
    assert!(output.status.success(), "{stderr}");
    assert!(
        stdout
            .lines()
            .any(|line| line == "rbee.hive.v1.HiveService"),
        "{stdout}"
    );
}

#[test]
fn call_without_token_is_unauthenticated() {
    let (hive, _secrets) = token_hive();

    let output = Command::new(grpcurl())
        .args(["-plaintext", "-d", "{}", &hive.address()])
        .arg("rbee.hive.v1.HiveService/GetHiveInfo")
        .output()
        .unwrap();

    let (_, stderr) = text(&output);
    assert!(!output.status.success());
    assert!(stderr.contains("Code: Unauthenticated"), "{stderr}");
    assert!(stderr.contains("missing bearer token"), "{stderr}");
}

#[test]
fn call_with_token_from_environment_succeeds() {
    let (hive, _secrets) = token_hive();

    // `-expand-headers` reads the token from the environment, keeping it out of the arguments.
    let output = Command::new(grpcurl())
        .env("RBEE_TOKEN", TOKEN)
        .args(["-plaintext", "-expand-headers"])
        .args(["-H", "authorization: Bearer ${RBEE_TOKEN}"])
        .args(["-d", "{}", &hive.address()])
        .arg("rbee.hive.v1.HiveService/GetHiveInfo")
        .output()
        .unwrap();

    let (stdout, stderr) = text(&output);
    assert!(output.status.success(), "{stderr}");
    let response: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(response["hive"]["name"], "test-hive", "{stdout}");
}

#[test]
fn call_with_wrong_token_is_unauthenticated() {
    let (hive, _secrets) = token_hive();

    let output = Command::new(grpcurl())
        .args(["-plaintext", "-H", "authorization: Bearer not-the-token"])
        .args(["-d", "{}", &hive.address()])
        .arg("rbee.hive.v1.HiveService/GetHiveInfo")
        .output()
        .unwrap();

    let (_, stderr) = text(&output);
    assert!(!output.status.success());
    assert!(stderr.contains("Code: Unauthenticated"), "{stderr}");
    assert!(stderr.contains("Message: invalid bearer token"), "{stderr}");
}

#[test]
fn mutual_tls_call_succeeds_with_a_client_certificate() {
    let pki = tempfile::tempdir().unwrap();
    let ca = TestCa::new(pki.path(), "fleet");
    let server = ca.issue_server("hive");
    let client = ca.issue_client("grpcurl");
    let hive = TestHive::start_with(HiveOptions {
        args: vec![
            "--tls-cert".into(),
            server.cert.display().to_string(),
            "--tls-key".into(),
            server.key.display().to_string(),
            "--tls-client-ca".into(),
            ca.cert.display().to_string(),
        ],
    });

    let with_certificate = Command::new(grpcurl())
        .arg("-cacert")
        .arg(&ca.cert)
        .arg("-cert")
        .arg(&client.cert)
        .arg("-key")
        .arg(&client.key)
        .args(["-d", "{}", &hive.address()])
        .arg("rbee.hive.v1.HiveService/GetHiveInfo")
        .output()
        .unwrap();
    let (stdout, stderr) = text(&with_certificate);
    assert!(with_certificate.status.success(), "{stderr}");
    assert!(stdout.contains("\"test-hive\""), "{stdout}");

    let without_certificate = Command::new(grpcurl())
        .arg("-cacert")
        .arg(&ca.cert)
        .args([&hive.address(), "list"])
        .output()
        .unwrap();
    assert!(!without_certificate.status.success());
}
