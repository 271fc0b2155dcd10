//! `rbee-hive`: flags, logging and signals around [`rbee_hive::server::serve`].

use std::{
    ffi::OsString, io::IsTerminal, io::Write, net::SocketAddr, path::PathBuf, process::ExitCode,
    time::Duration,
};

use anyhow::Context;
use clap::Parser;
use rbee_hive::{
    jobs::JobLimits,
    security::{
        self, Security,
        tls::{self, TlsFiles},
        token::{BearerToken, TOKEN_ENV},
    },
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
    /// Address to listen on. The default is loopback only; port 0 picks a free port. An
    /// address beyond loopback needs a token or client certificates, unless
    /// --insecure-allow-unauthenticated-remote is given.
    #[arg(long, env = "RBEE_HIVE_LISTEN", default_value = rbee_proto::DEFAULT_HIVE_ADDR)]
    listen: SocketAddr,

    /// File holding the bearer token that callers must send as `authorization: Bearer TOKEN`
    /// (whitespace around it is ignored). RBEE_HIVE_TOKEN may hold the token itself instead. No
    /// option takes the token itself, because other users can read arguments in /proc. Health
    /// checks, server reflection and worker heartbeats need no token.
    #[arg(long, env = "RBEE_HIVE_TOKEN_FILE", value_name = "FILE")]
    token_file: Option<PathBuf>,

    /// PEM certificate chain the hive presents. With --tls-key, the hive serves TLS only.
    #[arg(
        long,
        env = "RBEE_HIVE_TLS_CERT",
        value_name = "FILE",
        requires = "tls_key"
    )]
    tls_cert: Option<PathBuf>,

    /// PEM private key of --tls-cert.
    #[arg(
        long,
        env = "RBEE_HIVE_TLS_KEY",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    tls_key: Option<PathBuf>,

    /// PEM CA certificates that client certificates must be signed by. Every connection must
    /// then present a valid client certificate (mutual TLS). Needs --tls-cert and --tls-key.
    #[arg(
        long,
        env = "RBEE_HIVE_TLS_CLIENT_CA",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    tls_client_ca: Option<PathBuf>,

    /// Listen beyond loopback even with neither a token nor client certificates. Anyone who
    /// reaches the address can then start and stop processes as this user: use it only on a
    /// trusted network.
    #[arg(long)]
    insecure_allow_unauthenticated_remote: bool,

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

    /// Seconds that shutdown waits for requests in flight before exiting anyway. Worker stops
    /// still in their grace period then send SIGKILL at once.
    #[arg(long, default_value_t = 10)]
    drain_timeout_secs: u64,

    /// More log output on stderr: -v for debug, -vv for trace. RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count)]
    verbose: u8,
}

fn main() -> ExitCode {
    let token_env = take_token_env();
    let args = Args::parse();
    init_tracing(args.verbose);

    // The error chain alone, without the backtrace that `RUST_BACKTRACE` adds to a returned
    // `anyhow::Error`: `rbee hive start` shows the last lines of this output.
    match start(args, token_env) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {}", error_chain(&error));
            ExitCode::FAILURE
        }
    }
}

/// Formats `error` and its causes, leaving out each cause that the text before it already
/// contains: the hive's errors name their cause in their own message, which gRPC clients see.
fn error_chain(error: &anyhow::Error) -> String {
    error
        .chain()
        .skip(1)
        .fold(error.to_string(), |text, cause| {
            let cause = cause.to_string();
            if text.contains(&cause) {
                text
            } else {
                format!("{text}: {cause}")
            }
        })
}

fn start(args: Args, token_env: Option<OsString>) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new().context("failed to start the async runtime")?;
    let result = runtime.block_on(run(args, token_env));
    // A blocking task stuck on a slow file system must not keep a stopped hive alive.
    runtime.shutdown_timeout(Duration::from_secs(1));
    result
}

/// Reads `RBEE_HIVE_TOKEN` and removes it from the environment, so that workers and other
/// children of the hive do not inherit the token.
#[allow(unsafe_code)]
fn take_token_env() -> Option<OsString> {
    let value = std::env::var_os(TOKEN_ENV)?;
    // SAFETY: called first thing in `main`, before the runtime or anything else starts a
    // thread, so no other thread can read the environment at the same time.
    unsafe { std::env::remove_var(TOKEN_ENV) };
    Some(value)
}

/// Reads the token and TLS files and checks that the listen address is safe with them.
fn load_security(args: &Args, token_env: Option<OsString>) -> anyhow::Result<Security> {
    let token = BearerToken::load(args.token_file.as_deref(), token_env)?;
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(tls::server_config(&TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
            client_ca: args.tls_client_ca.clone(),
        })?),
        _ => None,
    };
    let security = Security {
        token,
        client_certificates: tls.is_some() && args.tls_client_ca.is_some(),
        tls,
    };
    security::check_exposure(
        args.listen,
        &security,
        args.insecure_allow_unauthenticated_remote,
    )?;
    Ok(security)
}

async fn run(args: Args, token_env: Option<OsString>) -> anyhow::Result<()> {
    let security = load_security(&args, token_env)?;
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
        security,
    };

    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("failed to listen on {}", args.listen))?;
    let address = listener
        .local_addr()
        .context("failed to read the bound address")?;
    // Scripts and the keeper wait for this line to learn the address, so it goes to stdout, and
    // only once the hive's directories are known to work.
    let announce = move || {
        let mut stdout = std::io::stdout();
        writeln!(stdout, "listening on {address}")?;
        stdout.flush()
    };

    let mut terminate = signal(SignalKind::terminate()).context("failed to watch SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("failed to watch SIGINT")?;
    let shutdown = async move {
        tokio::select! {
            _ = terminate.recv() => tracing::info!("received SIGTERM"),
            _ = interrupt.recv() => tracing::info!("received SIGINT"),
        }
    };
    server::serve(config, listener, announce, shutdown).await?;
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
