//! `rbee`: the operator's CLI for a fleet of rbee hives. This file parses the command line,
//! sets up logging, dispatches to `commands/`, handles Ctrl-C and turns the outcome into the
//! exit status.

mod cli;
mod commands;
mod config;
mod fanout;
mod local_hive;
mod render;

use std::{process::ExitCode, time::Duration};

use clap::Parser;
use tracing_subscriber::EnvFilter;

use crate::{
    cli::{
        Cli, Command, GlobalArgs, HiveCommand, JobCommand, WorkerActiveCommand, WorkerCommand,
        WorkerProcessCommand,
    },
    commands::{Context, DEFAULT_TIMEOUT, UsageError},
    config::ConfigError,
    render::{Exit, write_stderr},
};

/// Grace period the hive applies when `--grace` is not given.
const HIVE_DEFAULT_GRACE: Duration = Duration::from_secs(5);

/// Readiness timeout a hive applies when `--ready-timeout` is not given, unless the hive was
/// started with another `--ready-timeout-secs`.
const HIVE_DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Time added to a wait on the hive (a grace period, a readiness timeout) for the default
/// timeout of the commands that wait. The margin lets the response arrive after the wait has
/// ended, for example after a SIGKILL at the end of the grace period.
const WAIT_MARGIN: Duration = Duration::from_secs(10);

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.global.verbose);

    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            write_stderr(&format!(
                "error: failed to start the async runtime: {error}"
            ));
            return ExitCode::from(Exit::LocalFailure.code());
        }
    };

    let exit = runtime.block_on(async {
        tokio::select! {
            exit = run(cli) => exit,
            // Returning drops the command's future, which cancels every in-flight call.
            _ = tokio::signal::ctrl_c() => {
                write_stderr("interrupted: in-flight requests were cancelled");
                Exit::Interrupted
            }
        }
    });
    runtime.shutdown_timeout(Duration::from_millis(100));
    ExitCode::from(exit.code())
}

/// Logs go to stderr at `warn` by default; each `-v` raises the level, `RUST_LOG` overrides.
fn init_tracing(verbose: u8) {
    let directives = match verbose {
        0 => "warn",
        1 => "warn,rbee=info",
        2 => "info,rbee=debug",
        _ => "debug,rbee=trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(directives));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

async fn run(cli: Cli) -> Exit {
    match dispatch(cli).await {
        Ok(exit) => exit,
        Err(error) => {
            write_stderr(&format!("error: {error:#}"));
            exit_for_error(&error)
        }
    }
}

/// Invalid input is a usage error (2); anything else that stops a command before or outside
/// its hive calls is a local failure (1).
fn exit_for_error(error: &anyhow::Error) -> Exit {
    if error.is::<UsageError>() {
        return Exit::Usage;
    }
    match error.downcast_ref::<ConfigError>() {
        Some(ConfigError::NoHome { .. }) => Exit::LocalFailure,
        Some(_) => Exit::Usage,
        None => Exit::LocalFailure,
    }
}

async fn dispatch(cli: Cli) -> anyhow::Result<Exit> {
    let global = &cli.global;
    let default_timeout = Some(global.timeout.unwrap_or(DEFAULT_TIMEOUT));

    let exit = match cli.command {
        Command::Completions(args) => commands::completions::run(&args),
        Command::Hive(HiveCommand::Start(args)) => commands::hive::start(global, args).await?,
        Command::Hive(HiveCommand::Stop) => commands::hive::stop(global).await?,
        Command::Hive(HiveCommand::Status) => commands::hive::status(global).await?,
        Command::Hive(HiveCommand::List) => commands::hive::list(global).await?,
        Command::Hive(HiveCommand::Info) => {
            let context = Context::new(global, default_timeout)?;
            commands::hive::info(&context).await
        }
        Command::Worker(WorkerCommand::Binary(command)) => {
            let context = Context::new(global, default_timeout)?;
            commands::worker_binary::run(&context, command).await
        }
        Command::Worker(WorkerCommand::Process(command)) => {
            let context = Context::new(global, process_timeout(global, &command)?)?;
            commands::worker_process::run(&context, command).await
        }
        Command::Worker(WorkerCommand::Spawn(args)) => {
            let ready_timeout = args.ready_timeout.unwrap_or(HIVE_DEFAULT_READY_TIMEOUT);
            let timeout = timeout_beyond_wait(global, ready_timeout, "the ready timeout")?;
            let spawn = commands::worker_spawn::Spawn::from_args(args)?;
            let context = Context::new(global, timeout)?;
            commands::worker_spawn::run(&context, &spawn).await
        }
        Command::Worker(WorkerCommand::Active(command)) => {
            let context = Context::new(global, active_timeout(global, &command)?)?;
            commands::worker_active::run(&context, command).await
        }
        Command::Job(JobCommand::Follow {
            job_id,
            wait_for_start,
        }) => {
            // A job can run for long; following it has no limit unless one is asked for.
            let context = Context::new(global, global.timeout)?;
            commands::job::follow(&context, job_id, wait_for_start).await
        }
    };
    Ok(exit)
}

/// `worker process delete` waits for the grace period on the hive, so its call must be allowed
/// to last longer than that.
fn process_timeout(
    global: &GlobalArgs,
    command: &WorkerProcessCommand,
) -> Result<Option<Duration>, UsageError> {
    let WorkerProcessCommand::Delete { grace, .. } = command else {
        return Ok(Some(global.timeout.unwrap_or(DEFAULT_TIMEOUT)));
    };
    let grace = grace.unwrap_or(HIVE_DEFAULT_GRACE);
    timeout_beyond_wait(global, grace, "the grace period")
}

/// `worker active retire` waits for the grace period on the hive, like `worker process delete`.
fn active_timeout(
    global: &GlobalArgs,
    command: &WorkerActiveCommand,
) -> Result<Option<Duration>, UsageError> {
    let WorkerActiveCommand::Retire { grace, .. } = command else {
        return Ok(Some(global.timeout.unwrap_or(DEFAULT_TIMEOUT)));
    };
    let grace = grace.unwrap_or(HIVE_DEFAULT_GRACE);
    timeout_beyond_wait(global, grace, "the grace period")
}

/// Returns the call timeout of a command that waits `wait` on the hive: `--timeout`, which must
/// be longer than `wait`, else the default timeout or `wait` plus [`WAIT_MARGIN`], whichever is
/// longer. `wait_name` names the wait in the error message.
fn timeout_beyond_wait(
    global: &GlobalArgs,
    wait: Duration,
    wait_name: &str,
) -> Result<Option<Duration>, UsageError> {
    match global.timeout {
        Some(timeout) if timeout <= wait => Err(UsageError(format!(
            "--timeout {} must be longer than {wait_name} {}, or the call ends before the hive can \
             answer",
            render::format::duration(timeout),
            render::format::duration(wait)
        ))),
        Some(timeout) => Ok(Some(timeout)),
        None => Ok(Some(DEFAULT_TIMEOUT.max(wait + WAIT_MARGIN))),
    }
}
