//! `rbee`: the operator's CLI for a fleet of rbee hives. This file parses the command line,
//! sets up logging, dispatches to `commands/`, handles Ctrl-C and turns the outcome into the
//! exit status.

mod cli;
mod commands;
mod config;
mod credentials;
mod fanout;
mod local_hive;
mod render;

use std::{process::ExitCode, time::Duration};

use clap::Parser;
use tracing_subscriber::EnvFilter;

use crate::{
    cli::{
        Cli, Command, GlobalArgs, HiveCommand, JobCommand, ModelCommand, WorkerActiveCommand,
        WorkerCommand, WorkerProcessCommand,
    },
    commands::{Context, DEFAULT_TIMEOUT, UsageError, long_job::LONG_JOB_TIMEOUT},
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

    // Downloads and builds handle Ctrl-C themselves: they send CancelJob to the hives before
    // they exit, which needs their future alive. `infer` ends the line of text it was printing.
    let command_handles_ctrl_c =
        cancels_jobs_on_ctrl_c(&cli.command) || matches!(cli.command, Command::Infer(_));
    let exit = runtime.block_on(async {
        tokio::select! {
            exit = run(cli) => exit,
            // Returning drops the command's future, which cancels every in-flight call.
            _ = tokio::signal::ctrl_c(), if !command_handles_ctrl_c => {
                write_stderr(
                    "interrupted: stopped waiting for the hives; an operation a hive had already \
                     started (spawn, delete, retire) still runs to the end there, and \
                     `rbee job follow JOB_ID` shows how it ends",
                );
                Exit::Interrupted
            }
        }
    });
    runtime.shutdown_timeout(Duration::from_millis(100));
    ExitCode::from(exit.code())
}

/// Returns whether `command` waits for a download or build, which Ctrl-C cancels on the hives.
fn cancels_jobs_on_ctrl_c(command: &Command) -> bool {
    matches!(
        command,
        Command::Worker(WorkerCommand::Download(_) | WorkerCommand::Build(_))
            | Command::Model(ModelCommand::Download(_))
    )
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
        Command::Worker(WorkerCommand::Download(args)) => {
            let context = Context::new(global, Some(long_job_timeout(global)))?;
            commands::worker_download::run(&context, args).await
        }
        Command::Worker(WorkerCommand::Build(args)) => {
            let context = Context::new(global, Some(long_job_timeout(global)))?;
            commands::worker_build::run(&context, args).await
        }
        Command::Model(ModelCommand::Download(args)) => {
            let context = Context::new(global, Some(long_job_timeout(global)))?;
            commands::model::run(&context, ModelCommand::Download(args)).await
        }
        Command::Model(command) => {
            let context = Context::new(global, default_timeout)?;
            commands::model::run(&context, command).await
        }
        Command::Infer(args) => {
            let timeout = global.timeout.unwrap_or(commands::infer::INFER_TIMEOUT);
            let context = Context::new(global, Some(timeout))?;
            commands::infer::run(&context, args, global.quiet).await
        }
        Command::Job(JobCommand::Cancel { job_id }) => {
            let context = Context::new(global, default_timeout)?;
            commands::job::cancel(&context, job_id).await
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

/// Downloads and builds last as long as the transfer or the compiler takes, so their default
/// timeout is [`LONG_JOB_TIMEOUT`].
fn long_job_timeout(global: &GlobalArgs) -> Duration {
    global.timeout.unwrap_or(LONG_JOB_TIMEOUT)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn command(args: &[&str]) -> Command {
        Cli::try_parse_from(std::iter::once("rbee").chain(args.iter().copied()))
            .expect("valid command line")
            .command
    }

    #[test]
    fn downloads_and_builds_handle_ctrl_c() {
        let url = ["--url", "http://127.0.0.1:8000/x"];
        let download = [&["worker", "download", "w"][..], &url].concat();
        let model = [&["model", "download", "m.gguf"][..], &url].concat();
        let build = ["worker", "build", "w", "--source", "/src"];
        assert!(cancels_jobs_on_ctrl_c(&command(&download)));
        assert!(cancels_jobs_on_ctrl_c(&command(&model)));
        assert!(cancels_jobs_on_ctrl_c(&command(&build)));
    }

    #[test]
    fn other_commands_leave_ctrl_c_to_main() {
        for args in [
            &["model", "list"][..],
            &["worker", "binary", "list"],
            &["job", "cancel", "job-1"],
        ] {
            assert!(!cancels_jobs_on_ctrl_c(&command(args)), "{args:?}");
        }
    }
}
