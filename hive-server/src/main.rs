//! `rbee-hive`: flags, logging and signals around [`rbee_hive::server::serve`].

use std::{io::IsTerminal, io::Write, net::SocketAddr, path::PathBuf, time::Duration};

use anyhow::Context;
use clap::Parser;
use rbee_hive::{
    jobs::JobLimits,
    server::{self, HiveConfig},
    service::ServiceLimits,
};
use tokio::signal::unix::{SignalKind, signal};
use tracing_subscriber::EnvFilter;

/// The rbee hive: serves the worker catalog and worker processes of this machine over gRPC.
///
/// Prints `listening on ADDRESS` on stdout once it accepts connections; logs go to stderr.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Address to listen on. The default is loopback only; port 0 picks a free port.
    #[arg(long, env = "RBEE_HIVE_LISTEN", default_value = rbee_proto::DEFAULT_HIVE_ADDR)]
    listen: SocketAddr,

    /// Worker catalog directory [default: $XDG_CACHE_HOME/rbee/workers, else
    /// ~/.cache/rbee/workers].
    #[arg(long, env = "RBEE_CATALOG_DIR")]
    catalog_dir: Option<PathBuf>,

    /// Directory for the hive's state [default: $XDG_STATE_HOME/rbee/hive, else
    /// ~/.local/state/rbee/hive].
    #[arg(long, env = "RBEE_STATE_DIR")]
    state_dir: Option<PathBuf>,

    /// Directory of models named by catalog name [default: $XDG_CACHE_HOME/rbee/models, else
    /// ~/.cache/rbee/models].
    #[arg(long, env = "RBEE_MODEL_DIR")]
    model_dir: Option<PathBuf>,

    /// Seconds between expected worker heartbeats. A worker is stale after 3 missed intervals
    /// and lost after 6.
    #[arg(long, default_value_t = 10.0, value_parser = positive_seconds)]
    heartbeat_interval_secs: f64,

    /// Seconds a spawn waits for its worker to become ready, unless the request sets a timeout.
    #[arg(long, default_value_t = 60.0, value_parser = positive_seconds)]
    ready_timeout_secs: f64,

    /// Size in MiB at which a worker's log file is rotated (one older copy is kept).
    #[arg(long, default_value_t = 10)]
    worker_log_max_mib: u64,

    /// Stop every worker this hive spawned when the hive shuts down. By default workers keep
    /// running and the next hive on the same state directory adopts them.
    #[arg(long)]
    stop_workers_on_shutdown: bool,

    /// Display name of this hive [default: the host name].
    #[arg(long, env = "RBEE_HIVE_NAME")]
    name: Option<String>,

    /// Requests served at once; further requests fail fast with RESOURCE_EXHAUSTED.
    #[arg(long, default_value_t = ServiceLimits::default().max_concurrent_requests)]
    max_concurrent_requests: usize,

    /// Narration streams open at once; further streams fail fast with RESOURCE_EXHAUSTED.
    #[arg(long, default_value_t = ServiceLimits::default().max_narration_streams)]
    max_narration_streams: usize,

    /// Seconds that shutdown waits for requests in flight before exiting anyway.
    #[arg(long, default_value_t = 10)]
    drain_timeout_secs: u64,

    /// More log output on stderr: -v for debug, -vv for trace. RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count)]
    verbose: u8,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    init_tracing(args.verbose);

    let runtime = tokio::runtime::Runtime::new().context("failed to start the async runtime")?;
    let result = runtime.block_on(run(args));
    // A blocking task stuck on a slow file system must not keep a stopped hive alive.
    runtime.shutdown_timeout(Duration::from_secs(1));
    result
}

async fn run(args: Args) -> anyhow::Result<()> {
    let config = HiveConfig {
        catalog_dir: match args.catalog_dir {
            Some(dir) => dir,
            None => xdg_dir("XDG_CACHE_HOME", ".cache", "rbee/workers")?,
        },
        state_dir: match args.state_dir {
            Some(dir) => dir,
            None => xdg_dir("XDG_STATE_HOME", ".local/state", "rbee/hive")?,
        },
        model_dir: match args.model_dir {
            Some(dir) => dir,
            None => xdg_dir("XDG_CACHE_HOME", ".cache", "rbee/models")?,
        },
        heartbeat_interval: Duration::from_secs_f64(args.heartbeat_interval_secs),
        default_ready_timeout: Duration::from_secs_f64(args.ready_timeout_secs),
        worker_log_max_bytes: args.worker_log_max_mib.max(1) * 1024 * 1024,
        stop_workers_on_shutdown: args.stop_workers_on_shutdown,
        name: args.name,
        limits: ServiceLimits {
            max_concurrent_requests: args.max_concurrent_requests.max(1),
            max_narration_streams: args.max_narration_streams.max(1),
        },
        job_limits: JobLimits::default(),
        drain_timeout: Duration::from_secs(args.drain_timeout_secs),
    };

    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("failed to listen on {}", args.listen))?;
    let address = listener
        .local_addr()
        .context("failed to read the bound address")?;
    // Scripts and the keeper wait for this line to learn the address, so it goes to stdout.
    let mut stdout = std::io::stdout();
    writeln!(stdout, "listening on {address}")?;
    stdout.flush()?;

    let mut terminate = signal(SignalKind::terminate()).context("failed to watch SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("failed to watch SIGINT")?;
    let shutdown = async move {
        tokio::select! {
            _ = terminate.recv() => tracing::info!("received SIGTERM"),
            _ = interrupt.recv() => tracing::info!("received SIGINT"),
        }
    };
    server::serve(config, listener, shutdown).await?;
    Ok(())
}

/// Returns `$XDG_VAR/suffix`, else `$HOME/fallback/suffix`.
fn xdg_dir(xdg_var: &str, fallback: &str, suffix: &str) -> anyhow::Result<PathBuf> {
    if let Some(base) = std::env::var_os(xdg_var).filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(base).join(suffix));
    }
    let home = std::env::var_os("HOME")
        .filter(|v| !v.is_empty())
        .context("neither $XDG_* nor $HOME is set; pass the directory explicitly")?;
    Ok(PathBuf::from(home).join(fallback).join(suffix))
}

fn positive_seconds(value: &str) -> Result<f64, String> {
    match value.parse::<f64>() {
        Ok(secs) if secs > 0.0 && secs <= 86_400.0 => Ok(secs),
        _ => Err(format!(
            "{value:?} is not a number of seconds between 0 and 86400"
        )),
    }
}

fn init_tracing(verbose: u8) {
    let default = match verbose {
        0 => "rbee_hive=info,warn",
        1 => "rbee_hive=debug,info",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}
