//! The real `rbee` against token-protected and mutual-TLS hives: the keys of the hives file,
//! `--token-file` for HOST:PORT targets, the SECURITY column of `hive list`, and `rbee hive
//! start` with a token. No output ever contains a token.

mod cli_common;
mod security_common;

use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
};

use cli_common::{Rbee, Run};
use nix::{sys::signal, unistd::Pid};
use rbee_tests::{HiveOptions, TestHive, workspace_bin};
use security_common::{TOKEN, TestCa, token_file};

/// A token file of the right token and one of a wrong token, in a temp dir.
struct Secrets {
    dir: tempfile::TempDir,
    right: PathBuf,
    wrong: PathBuf,
}

const WRONG_TOKEN: &str = "rbee-wrong-token-00000000000000";

fn secrets() -> Secrets {
    let dir = tempfile::tempdir().unwrap();
    let right = token_file(dir.path(), "right.token", &format!("{TOKEN}\n"));
    let wrong = token_file(dir.path(), "wrong.token", WRONG_TOKEN);
    Secrets { dir, right, wrong }
}

fn token_hive(secrets: &Secrets) -> TestHive {
    TestHive::start_with(HiveOptions {
        args: vec!["--token-file".into(), secrets.right.display().to_string()],
    })
}

/// Writes a hives file with `text` into `dir` and returns its path.
fn hives_file(dir: &Path, text: &str) -> String {
    let path = dir.join("hives.toml");
    fs::write(&path, text).unwrap();
    path.display().to_string()
}

fn assert_no_secret(run: &Run) {
    for secret in [TOKEN, WRONG_TOKEN] {
        assert!(!run.stdout.contains(secret), "stdout:\n{}", run.stdout);
        assert!(!run.stderr.contains(secret), "stderr:\n{}", run.stderr);
    }
}

#[test]
fn named_hive_without_token_file_is_unauthenticated() {
    let secrets = secrets();
    let hive = token_hive(&secrets);
    let config = hives_file(
        secrets.dir.path(),
        &format!("[hives.guarded]\naddress = \"{}\"\n", hive.address()),
    );
    let rbee = Rbee::new();

    let run = rbee.run(&[
        "--config", &config, "--hive", "guarded", "hive", "info", "-o", "json",
    ]);

    assert_eq!(run.code, Some(4), "stderr:\n{}", run.stderr);
    let result = &run.results()[0];
    assert_eq!(result["outcome"], "error");
    assert_eq!(result["code"], "UNAUTHENTICATED");
    assert_eq!(
        result["error"],
        "missing bearer token: this hive requires the metadata `authorization: Bearer <token>`"
    );
    assert_no_secret(&run);
}

#[test]
fn named_hive_with_token_file_is_served() {
    let secrets = secrets();
    let hive = token_hive(&secrets);
    let config = hives_file(
        secrets.dir.path(),
        &format!(
            "[hives.guarded]\naddress = \"{}\"\ntoken_file = \"right.token\"\n",
            hive.address()
        ),
    );
    let rbee = Rbee::new();

    let run = rbee.run(&[
        "--config", &config, "--hive", "guarded", "hive", "info", "-o", "json",
    ]);

    assert_eq!(run.code, Some(0), "stderr:\n{}", run.stderr);
    assert_eq!(run.results()[0]["data"]["name"], "test-hive");

    // Narration streams use the same connection, and so the same token.
    let run = rbee.run(&[
        "--config", &config, "--hive", "guarded", "worker", "binary", "list",
    ]);
    assert_eq!(run.code, Some(0), "stderr:\n{}", run.stderr);
    assert_no_secret(&run);
}

#[test]
fn wrong_token_file_is_unauthenticated() {
    let secrets = secrets();
    let hive = token_hive(&secrets);
    let config = hives_file(
        secrets.dir.path(),
        &format!(
            "[hives.guarded]\naddress = \"{}\"\ntoken_file = \"{}\"\n",
            hive.address(),
            secrets.wrong.display()
        ),
    );
    let rbee = Rbee::new();

    let run = rbee.run(&[
        "--config", &config, "--hive", "guarded", "hive", "info", "-o", "json",
    ]);

    assert_eq!(run.code, Some(4), "stderr:\n{}", run.stderr);
    assert_eq!(run.results()[0]["code"], "UNAUTHENTICATED");
    assert_eq!(run.results()[0]["error"], "invalid bearer token");
    assert_no_secret(&run);
}

#[test]
fn missing_token_file_fails_only_its_hive() {
    let secrets = secrets();
    let guarded = token_hive(&secrets);
    let open = TestHive::start();
    let config = hives_file(
        secrets.dir.path(),
        &format!(
            "[hives.guarded]\naddress = \"{}\"\ntoken_file = \"absent.token\"\n\n\
             [hives.open]\naddress = \"{}\"\n",
            guarded.address(),
            open.address()
        ),
    );
    let rbee = Rbee::new();

    let run = rbee.run(&["--config", &config, "--all", "hive", "info", "-o", "json"]);

    assert_eq!(run.code, Some(3), "stderr:\n{}", run.stderr);
    let results = run.results();
    assert_eq!(results[0]["hive"], "guarded");
    assert_eq!(results[0]["outcome"], "unreachable");
    let error = results[0]["error"].as_str().unwrap();
    assert!(
        error.starts_with("failed to read the token file") && error.contains("absent.token"),
        "{error}"
    );
    assert_eq!(results[1]["outcome"], "ok");
}

#[test]
fn unusable_global_token_file_is_a_local_failure() {
    let secrets = secrets();
    let hive = token_hive(&secrets);
    let missing = secrets.dir.path().join("absent.token");
    let rbee = Rbee::new();

    let run = rbee.run(&[
        "--token-file",
        missing.to_str().unwrap(),
        "--hive",
        &hive.address(),
        "hive",
        "info",
    ]);

    assert_eq!(run.code, Some(1), "stderr:\n{}", run.stderr);
    assert_eq!(
        run.stderr,
        format!(
            "error: failed to read the token file {}: No such file or directory (os error 2)\n",
            missing.display()
        )
    );
    assert_eq!(run.stdout, "");

    let start = rbee.run(&["--token-file", missing.to_str().unwrap(), "hive", "start"]);
    assert_eq!(start.code, Some(1), "stderr:\n{}", start.stderr);
    assert!(
        start
            .stderr
            .starts_with("error: failed to read the token file"),
        "{}",
        start.stderr
    );
    assert!(
        !rbee.state_dir().join("hive.pid").exists(),
        "no hive was started"
    );
}

#[test]
fn global_token_file_reaches_address_targets() {
    let secrets = secrets();
    let hive = token_hive(&secrets);
    let right = secrets.right.display().to_string();
    let rbee = Rbee::new();
    let address = hive.address();

    let without = rbee.run(&["--hive", &address, "hive", "info", "-o", "json"]);
    assert_eq!(without.code, Some(4), "stderr:\n{}", without.stderr);
    assert_eq!(without.results()[0]["code"], "UNAUTHENTICATED");

    let with_flag = rbee.run(&["--hive", &address, "--token-file", &right, "hive", "info"]);
    assert_eq!(with_flag.code, Some(0), "stderr:\n{}", with_flag.stderr);
    assert_no_secret(&with_flag);

    let mut command = rbee.command(&["--hive", &address, "hive", "info"]);
    let output = command.env("RBEE_TOKEN_FILE", &right).output().unwrap();
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn global_token_file_skips_named_hives() {
    let secrets = secrets();
    let hive = token_hive(&secrets);
    let config = hives_file(
        secrets.dir.path(),
        &format!("[hives.guarded]\naddress = \"{}\"\n", hive.address()),
    );
    let right = secrets.right.display().to_string();
    let rbee = Rbee::new();

    let run = rbee.run(&[
        "--config",
        &config,
        "--hive",
        "guarded",
        "--token-file",
        &right,
        "hive",
        "info",
        "-o",
        "json",
    ]);

    assert_eq!(run.code, Some(4), "stderr:\n{}", run.stderr);
    assert_eq!(run.results()[0]["code"], "UNAUTHENTICATED");
}

#[test]
fn inline_token_rejected_without_echo() {
    let secrets = secrets();
    let config = hives_file(
        secrets.dir.path(),
        &format!("[hives.gpu1]\naddress = \"127.0.0.1:7835\"\ntoken = \"{TOKEN}\"\n"),
    );
    let rbee = Rbee::new();

    let run = rbee.run(&["--config", &config, "--all", "hive", "list"]);

    assert_eq!(run.code, Some(2), "stderr:\n{}", run.stderr);
    assert!(run.stderr.contains("line 3"), "{}", run.stderr);
    assert!(run.stderr.contains("token_file"), "{}", run.stderr);
    assert_no_secret(&run);
}

#[test]
fn mutual_tls_hive_through_the_hives_file() {
    let secrets = secrets();
    let ca = TestCa::new(secrets.dir.path(), "fleet");
    let server = ca.issue_server("hive");
    let client = ca.issue_client("keeper");
    let hive = TestHive::start_with(HiveOptions {
        args: vec![
            "--tls-cert".into(),
            server.cert.display().to_string(),
            "--tls-key".into(),
            server.key.display().to_string(),
            "--tls-client-ca".into(),
            ca.cert.display().to_string(),
            "--token-file".into(),
            secrets.right.display().to_string(),
        ],
    });
    let config = hives_file(
        secrets.dir.path(),
        &format!(
            "[hives.secured]\naddress = \"{address}\"\ntoken_file = \"right.token\"\n\
             ca = \"{ca}\"\nclient_cert = \"{cert}\"\nclient_key = \"{key}\"\n\n\
             [hives.nocert]\naddress = \"{address}\"\ntoken_file = \"right.token\"\n\
             ca = \"{ca}\"\n\n\
             [hives.plaintext]\naddress = \"{address}\"\ntoken_file = \"right.token\"\n",
            address = hive.address(),
            ca = ca.cert.display(),
            cert = client.cert.display(),
            key = client.key.display(),
        ),
    );
    let rbee = Rbee::new();

    let run = rbee.run(&["--config", &config, "--all", "hive", "info", "-o", "json"]);

    assert_eq!(run.code, Some(3), "stderr:\n{}", run.stderr);
    let results = run.results();
    let by_name = |name: &str| {
        results
            .iter()
            .find(|result| result["hive"] == name)
            .unwrap_or_else(|| panic!("no result for {name}: {results:?}"))
            .clone()
    };
    assert_eq!(by_name("secured")["outcome"], "ok", "{results:?}");
    assert_eq!(by_name("secured")["data"]["name"], "test-hive");
    assert_ne!(by_name("nocert")["outcome"], "ok", "{results:?}");
    assert_ne!(by_name("plaintext")["outcome"], "ok", "{results:?}");
    assert_no_secret(&run);
}

#[test]
fn hive_list_shows_security() {
    let secrets = secrets();
    let ca = TestCa::new(secrets.dir.path(), "fleet");
    let server = ca.issue_server("hive");
    let client = ca.issue_client("keeper");
    let guarded = token_hive(&secrets);
    let mutual = TestHive::start_with(HiveOptions {
        args: vec![
            "--tls-cert".into(),
            server.cert.display().to_string(),
            "--tls-key".into(),
            server.key.display().to_string(),
            "--tls-client-ca".into(),
            ca.cert.display().to_string(),
        ],
    });
    let open = TestHive::start();
    let config = hives_file(
        secrets.dir.path(),
        &format!(
            "[hives.a-token]\naddress = \"{}\"\ntoken_file = \"right.token\"\n\n\
             [hives.b-mtls]\naddress = \"{}\"\nca = \"{}\"\nclient_cert = \"{}\"\n\
             client_key = \"{}\"\n\n\
             [hives.c-open]\naddress = \"{}\"\n",
            guarded.address(),
            mutual.address(),
            ca.cert.display(),
            client.cert.display(),
            client.key.display(),
            open.address(),
        ),
    );
    let rbee = Rbee::new();

    let table = rbee.run(&["--config", &config, "hive", "list"]);
    assert_eq!(table.code, Some(0), "stderr:\n{}", table.stderr);
    let lines: Vec<&str> = table.stdout.lines().collect();
    assert!(lines[0].contains("SECURITY"), "{}", table.stdout);
    let row = |name: &str| {
        lines
            .iter()
            .find(|line| line.starts_with(name))
            .unwrap_or_else(|| panic!("no row for {name}:\n{}", table.stdout))
            .split_whitespace()
            .collect::<Vec<_>>()
    };
    assert_eq!(row("a-token")[2], "token");
    assert_eq!(row("b-mtls")[2], "mtls");
    assert_eq!(row("c-open")[2], "none");
    assert_eq!(row("b-mtls")[3], "serving");

    let json = rbee.run(&["--config", &config, "hive", "list", "-o", "json"]);
    assert_eq!(json.code, Some(0), "stderr:\n{}", json.stderr);
    let securities: Vec<String> = json
        .results()
        .iter()
        .map(|result| result["data"]["security"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(securities, ["token", "mtls", "none"]);
}

/// Stops the hive `rbee hive start` started, if a test ends early: `rbee hive stop`, then
/// SIGKILL to the recorded pid when that pid still runs rbee-hive.
struct StopOnDrop<'a>(&'a Rbee);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        let _ = self.0.run(&["hive", "stop", "--timeout", "5s"]);
        let Ok(text) = fs::read_to_string(self.0.state_dir().join("hive.pid")) else {
            return;
        };
        let record: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        let Some(pid) = record["pid"].as_i64().and_then(|p| i32::try_from(p).ok()) else {
            return;
        };
        if fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default()
            == workspace_bin("rbee-hive")
        {
            let _ = signal::kill(Pid::from_raw(pid), signal::Signal::SIGKILL);
        }
    }
}

#[test]
fn hive_start_with_token_file() {
    let secrets = secrets();
    let right = secrets.right.display().to_string();
    let rbee = Rbee::new();
    let _cleanup = StopOnDrop(&rbee);

    let started = rbee.run(&[
        "hive",
        "start",
        "--listen",
        "127.0.0.1:0",
        "--token-file",
        &right,
        "-o",
        "json",
    ]);
    assert_eq!(started.code, Some(0), "stderr:\n{}", started.stderr);
    let data = started.results()[0]["data"].clone();
    let pid = data["pid"].as_i64().unwrap();
    let address = data["address"].as_str().unwrap().to_owned();

    // The hive gets the path on its command line, never the token.
    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    let cmdline = String::from_utf8_lossy(&cmdline);
    assert!(cmdline.contains(&right), "{cmdline}");
    assert!(!cmdline.contains(TOKEN), "{cmdline}");

    // The built-in `localhost` sends the token the hive was started with.
    let info = rbee.run(&["hive", "info", "-o", "json"]);
    assert_eq!(info.code, Some(0), "stderr:\n{}", info.stderr);
    assert_eq!(info.results()[0]["address"], address.as_str());

    // Without it, the same hive rejects the call.
    let direct = rbee.run(&["--hive", &address, "hive", "info", "-o", "json"]);
    assert_eq!(direct.code, Some(4), "stderr:\n{}", direct.stderr);
    assert_eq!(direct.results()[0]["code"], "UNAUTHENTICATED");

    let list = rbee.run(&["hive", "list"]);
    assert_eq!(list.code, Some(0), "stderr:\n{}", list.stderr);
    assert!(list.stdout.contains("token"), "{}", list.stdout);

    let state = rbee.state_dir();
    for file in ["hive.log", "hive.pid"] {
        let mode = fs::metadata(state.join(file)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{file} is readable by others");
        let text = fs::read_to_string(state.join(file)).unwrap();
        assert!(!text.contains(TOKEN), "{file}:\n{text}");
    }
    let mode = fs::metadata(&state).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700, "the state directory is open to others");

    let stopped = rbee.run(&["hive", "stop"]);
    assert_eq!(stopped.code, Some(0), "stderr:\n{}", stopped.stderr);
    for run in [&started, &info, &direct, &list, &stopped] {
        assert_no_secret(run);
    }
}

#[test]
fn hive_start_beyond_loopback_without_token_fails() {
    let rbee = Rbee::new();
    let _cleanup = StopOnDrop(&rbee);

    let started = rbee.run(&["hive", "start", "--listen", "0.0.0.0:0"]);

    assert_eq!(started.code, Some(4), "stdout:\n{}", started.stdout);
    let output = format!("{}{}", started.stdout, started.stderr);
    assert!(
        output.contains("will not listen on 0.0.0.0:0 without authentication"),
        "{output}"
    );
    assert!(!rbee.state_dir().join("hive.pid").exists());
}
