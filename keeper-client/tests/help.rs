//! Snapshots of `rbee --help` for every command, so a change to a flag, its documentation or
//! the exit status text shows up in review.

use std::process::{Command, Stdio};

/// Every command path of `rbee`, from the top.
const COMMANDS: &[&[&str]] = &[
    &[],
    &["worker"],
    &["worker", "binary"],
    &["worker", "binary", "list"],
    &["worker", "binary", "get"],
    &["worker", "binary", "delete"],
    &["worker", "process"],
    &["worker", "process", "list"],
    &["worker", "process", "get"],
    &["worker", "process", "delete"],
    &["worker", "spawn"],
    &["worker", "active"],
    &["worker", "active", "list"],
    &["worker", "active", "get"],
    &["worker", "active", "retire"],
    &["worker", "download"],
    &["worker", "build"],
    &["model"],
    &["model", "download"],
    &["model", "list"],
    &["model", "get"],
    &["model", "delete"],
    &["infer"],
    &["hive"],
    &["hive", "info"],
    &["hive", "list"],
    &["hive", "start"],
    &["hive", "stop"],
    &["hive", "status"],
    &["job"],
    &["job", "follow"],
    &["job", "cancel"],
    &["completions"],
];

fn help(path: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_rbee"))
        .args(path)
        .arg("--help")
        // Without a terminal on any standard stream, clap wraps at COLUMNS: fixed here so the
        // snapshots do not depend on the terminal the tests run in.
        .stdin(Stdio::null())
        .env("COLUMNS", "100")
        // Flags with an environment variable show its value in the help text.
        .env_remove("RBEE_HIVE")
        .env_remove("RBEE_CONFIG")
        .env_remove("RBEE_HIVE_BIN")
        .output()
        .expect("run rbee --help");
    assert!(output.status.success(), "rbee {path:?} --help failed");
    String::from_utf8(output.stdout).expect("help is UTF-8")
}

#[test]
fn help_of_every_command() {
    for path in COMMANDS {
        let name = if path.is_empty() {
            "rbee".to_owned()
        } else {
            format!("rbee-{}", path.join("-"))
        };
        insta::assert_snapshot!(name, help(path));
    }
}
