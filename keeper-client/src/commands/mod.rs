//! One module per verb group. Each builds its requests, fans them out through [`Context`] and
//! renders the per-hive results.

pub mod completions;
pub mod hive;
pub mod infer;
pub mod job;
pub mod long_job;
pub mod model;
pub mod worker_active;
pub mod worker_binary;
pub mod worker_build;
pub mod worker_download;
pub mod worker_process;
pub mod worker_spawn;

use std::{future::Future, time::Duration};

use crate::{
    cli::{GlobalArgs, OutputFormat},
    config::{Config, HiveSecurity, HiveTarget, LocalhostHive},
    credentials,
    fanout::{self, Call, CallMode, FanoutOptions, HiveResult},
    local_hive,
    render::narration::Narrator,
};

/// Call timeout when `--timeout` is not given.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Input the user must correct; reported with exit status 2 before any request is sent.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// Targets, limits, output format and narration that every fan-out command needs.
pub struct Context {
    /// Format of stdout.
    pub output: OutputFormat,
    /// Hives to call, in the order given.
    pub targets: Vec<HiveTarget>,
    /// Concurrency and time limits.
    pub fanout: FanoutOptions,
    /// Live narration on stderr, unless `--quiet`.
    pub narrator: Option<Narrator>,
}

/// Loads the hives file, with `--token-file` for `HOST:PORT` targets and the built-in
/// `localhost`, after [`check_token_file`].
pub fn load_config(global: &GlobalArgs) -> anyhow::Result<Config> {
    check_token_file(global)?;
    Ok(Config::load(global.config.as_deref())?.with_fallback_token_file(global.token_file.clone()))
}

/// Fails when `--token-file` is given but contains no usable token. That is a local failure,
/// reported before any hive is called or started, because every hive the token is meant for
/// would fail the same way.
pub fn check_token_file(global: &GlobalArgs) -> anyhow::Result<()> {
    if let Some(path) = &global.token_file {
        credentials::authorization(&HiveSecurity::token_only(Some(path.clone())))
            .map_err(anyhow::Error::msg)?;
    }
    Ok(())
}

impl Context {
    /// Resolves the targeted hives from the hives file and the global flags.
    pub fn new(global: &GlobalArgs, timeout: Option<Duration>) -> Result<Self, anyhow::Error> {
        let config = load_config(global)?;
        let targets = if global.all {
            config.all_hives(localhost_hive)
        } else {
            config.resolve(&global.hive, localhost_hive)?
        };
        Ok(Self::with_targets(global, targets, timeout))
    }

    /// Builds a context for the given hives.
    pub fn with_targets(
        global: &GlobalArgs,
        targets: Vec<HiveTarget>,
        timeout: Option<Duration>,
    ) -> Self {
        let narrator =
            (!global.quiet).then(|| Narrator::new(targets.len() > 1, global.verbose >= 2));
        Self {
            output: global.output,
            fanout: FanoutOptions {
                concurrency: usize::from(global.fanout),
                connect_timeout: global.connect_timeout,
                timeout,
            },
            targets,
            narrator,
        }
    }

    /// Runs a hive operation on every target as a job, with live narration.
    pub async fn run_jobs<T, F, Fut>(&self, call: F) -> Vec<HiveResult<T>>
    where
        F: Fn(Call) -> Fut,
        Fut: Future<Output = Result<T, tonic::Status>>,
    {
        let mode = CallMode::Job(self.narrator.as_ref());
        let results = fanout::fan_out(&self.targets, &self.fanout, mode, call).await;
        if let Some(narrator) = &self.narrator {
            narrator.finish();
        }
        results
    }

    /// Runs a read-only hive operation on every target as a job, without streaming its
    /// narration. The hive returns the result at once, and the narration only repeats it.
    /// `rbee job follow` still shows it.
    pub async fn run_reads<T, F, Fut>(&self, call: F) -> Vec<HiveResult<T>>
    where
        F: Fn(Call) -> Fut,
        Fut: Future<Output = Result<T, tonic::Status>>,
    {
        fanout::fan_out(&self.targets, &self.fanout, CallMode::Job(None), call).await
    }

    /// Runs a call that is not a job, such as a health check, on every target.
    pub async fn run_plain<T, F, Fut>(&self, call: F) -> Vec<HiveResult<T>>
    where
        F: Fn(Call) -> Fut,
        Fut: Future<Output = Result<T, tonic::Status>>,
    {
        fanout::fan_out(&self.targets, &self.fanout, CallMode::Plain, call).await
    }
}

/// The built-in `localhost`: the hive `rbee hive start` runs, with the token file it was
/// started with, else the default address.
pub fn localhost_hive() -> LocalhostHive {
    local_hive::running_hive().unwrap_or_else(|| LocalhostHive {
        address: rbee_proto::DEFAULT_HIVE_ADDR.to_owned(),
        token_file: None,
    })
}

/// Plural helper for summaries: `1 worker binary`, `3 worker binaries`.
pub fn count(n: usize, singular: &str, plural: &str) -> String {
    if n == 1 {
        format!("1 {singular}")
    } else {
        format!("{n} {plural}")
    }
}
