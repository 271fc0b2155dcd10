//! Keeper fan-out: `rbee worker binary list` to 64 real hives against the same command to one.

use std::{
    fs,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, ensure};

use crate::{
    fixture::{Hive, sibling_binary},
    median,
    report::{Measure, Row, Target},
};

pub async fn run(hive_count: usize, samples: usize) -> anyhow::Result<Row> {
    let mut hives = Vec::new();
    for _ in 0..hive_count {
        hives.push(Hive::start(&[])?);
    }
    let home = tempfile::tempdir()?;
    let config = home.path().join("hives.toml");
    let mut text = String::new();
    for (index, hive) in hives.iter().enumerate() {
        text.push_str(&format!(
            "[hives.a{}]\naddress = \"{}\"\n\n",
            index + 1,
            hive.address
        ));
    }
    fs::write(&config, text)?;
    let all: Vec<String> = (1..=hive_count).map(|i| format!("a{i}")).collect();
    let all = all.join(",");

    let mut many_times = Vec::new();
    let mut one_times = Vec::new();
    for sample in 0..=samples {
        let many = keeper_list(home.path(), &config, &all, hive_count)?;
        let single = keeper_list(home.path(), &config, "a1", 1)?;
        if sample > 0 {
            many_times.push(many);
            one_times.push(single);
        }
    }

    Ok(Row {
        name: format!("rbee worker binary list, {hive_count} hives vs 1"),
        rbee: Measure::millis(median(&mut many_times)),
        baseline: Measure::millis(median(&mut one_times)),
        target: Target::AtMost(1.3),
    })
}

/// Runs `rbee --config CONFIG --hive HIVES worker binary list --output json` with a private
/// home and returns how long it took, after checking that every hive responded OK.
fn keeper_list(
    home: &std::path::Path,
    config: &std::path::Path,
    hives: &str,
    expected: usize,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let output = Command::new(sibling_binary("rbee")?)
        .arg("--config")
        .arg(config)
        .args([
            "--hive", hives, "worker", "binary", "list", "--output", "json",
        ])
        .env("HOME", home)
        .env("XDG_CONFIG_HOME", home.join("config"))
        .env("XDG_STATE_HOME", home.join("state"))
        .env("XDG_CACHE_HOME", home.join("cache"))
        .env_remove("RBEE_HIVE")
        .env_remove("RBEE_CONFIG")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .context("failed to run rbee")?;
    let elapsed = started.elapsed();

    ensure!(
        output.status.success(),
        "rbee exited with {}",
        output.status
    );
    let document: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    let results = document["results"]
        .as_array()
        .context("no results in rbee's output")?;
    let ok = results.iter().filter(|r| r["outcome"] == "ok").count();
    ensure!(ok == expected, "{ok} of {expected} hives responded OK");
    Ok(elapsed)
}
