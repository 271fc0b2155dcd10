//! Bearer tokens on a real hive: missing, wrong and right tokens, the open services, the
//! sources of the token, and what the hive rejects at start-up.

mod security_common;

use std::{
    fs,
    process::{Command, Stdio},
    time::Duration,
};

use rbee_proto::v1::{
    GetHiveInfoRequest, HeartbeatRequest, ListWorkerBinariesRequest, SpawnWorkerRequest,
    hive_service_client::HiveServiceClient,
};
use rbee_tests::{HIVE_SECURITY_ENV, HiveOptions, TestHive, wait_with_timeout, workspace_bin};
use security_common::{TOKEN, token_file};
use tonic::{Code, Request, transport::Channel};
use tonic_health::pb::health_check_response::ServingStatus;

/// Starts a hive that requires [`TOKEN`], read from a file, and returns it with its temp dir.
fn token_hive() -> (TestHive, tempfile::TempDir) {
    let secrets = tempfile::tempdir().unwrap();
    let path = token_file(secrets.path(), "token", &format!("{TOKEN}\n"));
    let hive = TestHive::start_with(HiveOptions {
        args: vec!["--token-file".into(), path.display().to_string()],
    });
    (hive, secrets)
}

fn with_authorization<T>(message: T, value: &str) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", value.parse().unwrap());
    request
}

async fn hive_info(
    client: &mut HiveServiceClient<Channel>,
    authorization: Option<&str>,
) -> Result<String, tonic::Status> {
    let message = GetHiveInfoRequest::default();
    let request = match authorization {
        Some(value) => with_authorization(message, value),
        None => Request::new(message),
    };
    let response = client.get_hive_info(request).await?;
    Ok(response.into_inner().hive.unwrap().name)
}

#[tokio::test]
async fn missing_token_is_unauthenticated() {
    let (hive, _secrets) = token_hive();
    let mut client = hive.client().await;

    let status = hive_info(&mut client, None).await.unwrap_err();

    assert_eq!(status.code(), Code::Unauthenticated);
    assert_eq!(
        status.message(),
        "missing bearer token: this hive requires the metadata `authorization: Bearer <token>`"
    );
}

#[tokio::test]
async fn wrong_token_is_unauthenticated_without_echo() {
    let (hive, _secrets) = token_hive();
    let mut client = hive.client().await;

    for wrong in [
        "Bearer not-the-token",
        "Bearer rbee-test-token-6f1d0c3a9b8e47d",
        "Bearer rbee-test-token-6f1d0c3a9b8e47d2x",
    ] {
        let status = hive_info(&mut client, Some(wrong)).await.unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{wrong}");
        assert_eq!(status.message(), "invalid bearer token", "{wrong}");
    }

    let status = hive_info(&mut client, Some(TOKEN)).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert_eq!(
        status.message(),
        "invalid authorization metadata: expected `Bearer <token>`"
    );
    assert!(!status.message().contains(TOKEN));
}

#[tokio::test]
async fn right_token_is_served() {
    let (hive, _secrets) = token_hive();
    let mut client = hive.client().await;

    let name = hive_info(&mut client, Some(&format!("Bearer {TOKEN}")))
        .await
        .unwrap();
    assert_eq!(name, "test-hive");

    // The scheme is case-insensitive, as HTTP defines it.
    let name = hive_info(&mut client, Some(&format!("bearer {TOKEN}")))
        .await
        .unwrap();
    assert_eq!(name, "test-hive");
}

#[tokio::test]
async fn every_hive_method_needs_the_token() {
    let (hive, _secrets) = token_hive();
    let mut client = hive.client().await;

    let status = client
        .list_worker_binaries(ListWorkerBinariesRequest::default())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);

    // A spawn without a token is rejected before the hive looks at the request.
    let status = client
        .spawn_worker(SpawnWorkerRequest {
            binary: "anything".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
}

#[tokio::test]
async fn health_and_heartbeat_stay_open() {
    let (hive, _secrets) = token_hive();

    let status = security_common::health_check(&hive.address(), None)
        .await
        .unwrap();
    assert_eq!(status, ServingStatus::Serving as i32);

    // NOT_FOUND for an unknown worker id comes from the hive itself, past authentication.
    let mut client = hive.client().await;
    let status = client
        .heartbeat(HeartbeatRequest {
            worker_id: "worker-0123456789ab".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
}

#[tokio::test]
async fn token_from_environment_is_accepted() {
    let hive = TestHive::start_with_env(HiveOptions::default(), &[("RBEE_HIVE_TOKEN", TOKEN)]);
    let mut client = hive.client().await;

    let missing = hive_info(&mut client, None).await.unwrap_err();
    assert_eq!(missing.code(), Code::Unauthenticated);

    let name = hive_info(&mut client, Some(&format!("Bearer {TOKEN}")))
        .await
        .unwrap();
    assert_eq!(name, "test-hive");
}

#[tokio::test]
async fn spawned_workers_do_not_inherit_the_token() {
    let hive = TestHive::start_with_env(HiveOptions::default(), &[("RBEE_HIVE_TOKEN", TOKEN)]);
    hive.install(&rbee_tests::test_worker_bin(), "echo-worker");
    let models = tempfile::tempdir().unwrap();
    let model = models.path().join("tiny.gguf");
    fs::write(&model, b"GGUF test model").unwrap();
    let mut client = hive.client().await;

    let request = SpawnWorkerRequest {
        binary: "echo-worker".into(),
        model: model.display().to_string(),
        device: "cpu".into(),
        ready_timeout: Some(Duration::from_secs(20).try_into().unwrap()),
        ..Default::default()
    };
    let worker = client
        .spawn_worker(with_authorization(request, &format!("Bearer {TOKEN}")))
        .await
        .unwrap()
        .into_inner()
        .worker
        .unwrap();

    let environ = fs::read(format!("/proc/{}/environ", worker.pid)).unwrap();
    let variables: Vec<String> = environ
        .split(|b| *b == 0)
        .map(|entry| String::from_utf8_lossy(entry).into_owned())
        .collect();
    assert!(
        variables.iter().any(|v| v.starts_with("RBEE_WORKER_ID=")),
        "the worker environment was not read: {variables:?}"
    );
    assert!(
        !variables.iter().any(|v| v.starts_with("RBEE_HIVE_TOKEN=")),
        "the worker inherited the token"
    );

    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(worker.pid),
        nix::sys::signal::Signal::SIGKILL,
    );
}

#[tokio::test]
async fn log_never_contains_the_token() {
    let (hive, _secrets) = token_hive();
    let mut client = hive.client().await;

    let _ = hive_info(&mut client, Some("Bearer a-wrong-guess")).await;
    let _ = hive_info(&mut client, None).await;
    hive_info(&mut client, Some(&format!("Bearer {TOKEN}")))
        .await
        .unwrap();

    let log = hive.log();
    assert!(log.contains("security=\"token\""), "{log}");
    assert!(log.contains("rejected"), "{log}");
    assert!(!log.contains(TOKEN), "{log}");
    assert!(!log.contains("a-wrong-guess"), "{log}");
}

/// Runs `rbee-hive` with `args` and `env` on loopback and returns its exit code and stderr. A
/// hive that starts instead is killed and fails the test.
fn start_failure(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let mut command = Command::new(workspace_bin("rbee-hive"));
    for variable in HIVE_SECURITY_ENV {
        command.env_remove(variable);
    }
    let mut child = command
        .args(["--listen", "127.0.0.1:0", "--catalog-dir"])
        .arg(dir.path().join("catalog"))
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(dir.path().join("stderr")).unwrap())
        .spawn()
        .unwrap();
    let status = wait_with_timeout(&mut child, Duration::from_secs(10));
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
        panic!("rbee-hive {args:?} started instead of failing");
    }
    let stderr = fs::read_to_string(dir.path().join("stderr")).unwrap();
    (status.unwrap().code(), stderr)
}

#[test]
fn empty_or_blank_token_file_fails_start_up() {
    let secrets = tempfile::tempdir().unwrap();
    for (name, text) in [("empty", ""), ("blank", " \n\t\n")] {
        let path = token_file(secrets.path(), name, text);
        let path = path.display().to_string();

        let (code, stderr) = start_failure(&["--token-file", &path], &[]);

        assert_eq!(code, Some(1), "{name}: {stderr}");
        assert!(
            stderr.contains(&format!("the token in {path} is empty")),
            "{name}: {stderr}"
        );
    }
}

#[test]
fn unusable_token_sources_fail_start_up() {
    let secrets = tempfile::tempdir().unwrap();
    let path = token_file(secrets.path(), "token", TOKEN);
    let path = path.display().to_string();

    let (code, stderr) = start_failure(&["--token-file", &path], &[("RBEE_HIVE_TOKEN", TOKEN)]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("either with --token-file or with RBEE_HIVE_TOKEN, not both"),
        "{stderr}"
    );
    assert!(!stderr.contains(TOKEN), "{stderr}");

    let (code, stderr) = start_failure(&[], &[("RBEE_HIVE_TOKEN", "two words")]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("in RBEE_HIVE_TOKEN contains whitespace"),
        "{stderr}"
    );

    let missing = secrets.path().join("missing").display().to_string();
    let (code, stderr) = start_failure(&["--token-file", &missing], &[]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "error: failed to read the token file {missing}: No such file or directory (os error \
             2)\n"
        )),
        "{stderr}"
    );
    assert_eq!(
        stderr.matches("No such file or directory").count(),
        1,
        "{stderr}"
    );
}

#[test]
fn token_is_not_a_command_line_argument() {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(workspace_bin("rbee-hive"))
        .args(["--token", TOKEN])
        .arg("--state-dir")
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("unexpected argument '--token'"), "{stderr}");
}

#[test]
fn world_readable_token_file_warns() {
    use std::os::unix::fs::PermissionsExt;

    let secrets = tempfile::tempdir().unwrap();
    let path = token_file(secrets.path(), "token", TOKEN);
    fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();

    let hive = TestHive::start_with(HiveOptions {
        args: vec!["--token-file".into(), path.display().to_string()],
    });
    // The warning is logged before the hive listens, so it is in the log already.
    let log = hive.log();
    assert!(log.contains("can be read by other users"), "{log}");
}
