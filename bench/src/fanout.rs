//! Keeper fan-out: `rbee worker binary list` to 64 real hives against the same command to one.
//!
//! Besides the wall time, each run counts the CPU time that the keeper and all hives spent on
//! it. They share this machine's cores, so a command that needs that much CPU time cannot end
//! sooner than the CPU time divided by the number of cores. The last row compares that floor
//! with the one-hive time.

use std::{
    fs,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, ensure};

use crate::{
    fixture::{Hive, cpu_time, reaped_children_cpu_time, sibling_binary},
    median,
    report::{Measure, Row, Target},
};

/// Wall time and CPU time of one keeper command.
#[derive(Debug, Clone, Copy)]
struct Run {
    wall: Duration,
    /// CPU time of the keeper.
    keeper_cpu: Duration,
    /// CPU time of every hive during the command.
    hives_cpu: Duration,
}

impl Run {
    /// Returns the CPU time of the keeper and of every hive.
    fn cpu(&self) -> Duration {
        self.keeper_cpu + self.hives_cpu
    }
}

pub async fn run(hive_count: usize, samples: usize) -> anyhow::Result<Vec<Row>> {
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
    let cores = std::thread::available_parallelism()
        .context("failed to read the number of CPUs")?
        .get();

    let mut many_runs = Vec::new();
    let mut one_runs = Vec::new();
    for sample in 0..=samples {
        let many = keeper_list(home.path(), &config, &all, &hives, hive_count)?;
        let single = keeper_list(home.path(), &config, "a1", &hives, 1)?;
        if sample > 0 {
            many_runs.push(many);
            one_runs.push(single);
        }
    }

    let wall = |run: &Run| run.wall;
    let keeper_cpu = |run: &Run| run.keeper_cpu;
    let one_wall = median_of(&one_runs, wall);
    let many_cpu = median_of(&many_runs, Run::cpu);
    Ok(vec![
        Row {
            name: format!("rbee worker binary list, {hive_count} hives vs 1"),
            rbee: Measure::millis(median_of(&many_runs, wall)),
            baseline: Measure::millis(one_wall),
            target: Target::AtMost(1.3),
        },
        Row {
            name: format!("CPU time of that command, keeper and hives, {hive_count} hives vs 1"),
            rbee: Measure::millis(many_cpu),
            baseline: Measure::millis(median_of(&one_runs, Run::cpu)),
            target: Target::None,
        },
        Row {
            name: format!("CPU time of the keeper alone, {hive_count} hives vs 1"),
            rbee: Measure::millis(median_of(&many_runs, keeper_cpu)),
            baseline: Measure::millis(median_of(&one_runs, keeper_cpu)),
            target: Target::None,
        },
        Row {
            name: format!("{hive_count}-hive CPU time / {cores} cores vs 1-hive wall time"),
            rbee: Measure::millis(many_cpu / cores as u32),
            baseline: Measure::millis(one_wall),
            target: Target::None,
        },
    ])
}

/// Returns the median of one measure of `runs`.
fn median_of(runs: &[Run], measure: impl Fn(&Run) -> Duration) -> Duration {
    median(&mut runs.iter().map(measure).collect::<Vec<_>>())
}

/// Returns the CPU time that the hives have spent so far.
fn hives_cpu_time(hives: &[Hive]) -> anyhow::Result<Duration> {
    hives.iter().map(|hive| cpu_time(hive.pid())).sum()
}

/// Runs `rbee --config CONFIG --hive HIVES worker binary list --output json` with a private
/// home and returns its wall time and the CPU time that it and `all_hives` spent, after checking
/// that every hive responded OK.
fn keeper_list(
    home: &std::path::Path,
    config: &std::path::Path,
    hives: &str,
    all_hives: &[Hive],
    expected: usize,
) -> anyhow::Result<Run> {
    let hives_before = hives_cpu_time(all_hives)?;
    let keeper_before = reaped_children_cpu_time()?;
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
    let wall = started.elapsed();
    let keeper_cpu = reaped_children_cpu_time()?.saturating_sub(keeper_before);
    // A hive thread that exits takes its CPU time out of the sum, so the sum may shrink.
    let hives_cpu = hives_cpu_time(all_hives)?.saturating_sub(hives_before);

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
    Ok(Run {
        wall,
        keeper_cpu,
        hives_cpu,
    })
}
