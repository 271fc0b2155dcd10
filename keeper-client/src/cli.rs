//! Command-line definitions of `rbee`: global targeting and output flags, and one subcommand
//! per verb. Parsing and validation of single values live here too, so that invalid input is
//! rejected with exit status 2 before any hive is contacted.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{ArgAction, Args, Parser, Subcommand, ValueEnum};
use clap_complete::Shell;

/// Maximum length of a catalog name (worker binary or model), in bytes: the usual file name
/// limit.
const MAX_CATALOG_NAME_BYTES: usize = 255;

/// Number of hex digits of a SHA-256 digest.
const SHA256_HEX_DIGITS: usize = 64;

/// Maximum length of a job id that a hive accepts, in bytes.
const MAX_JOB_ID_BYTES: usize = 128;

/// Maximum grace period between SIGTERM and SIGKILL that a hive accepts.
pub const MAX_GRACE: Duration = Duration::from_secs(3600);

/// Maximum readiness timeout of a spawn that a hive accepts.
pub const MAX_READY_TIMEOUT: Duration = Duration::from_secs(3600);

/// Maximum number of hex digits in a worker id that a hive accepts.
const MAX_WORKER_ID_HEX_DIGITS: usize = 64;

/// Maximum number of tokens an inference request may ask for, as the hive enforces it.
pub const MAX_INFER_TOKENS: u32 = 32_768;

/// Maximum sampling temperature that a hive accepts.
const MAX_TEMPERATURE: f32 = 5.0;

/// Sampling temperature of `rbee infer` when `--temperature` is not given: llama.cpp's own
/// default (`temp = 0.80f` in its `common/common.h`). The request has no way to leave the
/// temperature to the worker.
const DEFAULT_TEMPERATURE: f32 = 0.8;

const LONG_ABOUT: &str = "\
rbee drives the hives of a fleet: every command goes to one, several or all hives at once, \
and every targeted hive gets its own result row.

Hives are chosen with --hive NAME[,NAME...] (names from the hives file, or HOST:PORT \
addresses) or --all; without either, rbee talks to `localhost`. The hives file is TOML:

    [hives.gpu1]
    address = \"10.0.0.5:7835\"

`localhost` is built in: the hive `rbee hive start` runs, else 127.0.0.1:7835.";

const AFTER_LONG_HELP: &str = "\
Exit status:
  0    every targeted hive succeeded
  1    local failure, such as an unreadable state file or a missing rbee-hive binary
  2    usage error or invalid input, found before any request was sent
  3    partial failure: some targeted hives failed, the others succeeded
  4    total failure: every targeted hive failed
  130  interrupted (Ctrl-C): in-flight requests were cancelled, and downloads and builds
       were also cancelled on their hives

With --output json, stdout is one JSON document:
  {\"results\": [{\"hive\", \"address\", \"outcome\", \"job_id\"?, \"code\"?, \"error\"?, \"data\"?}]}
where outcome is \"ok\", \"unreachable\", \"timeout\" or \"error\" (a gRPC error, named by \
code). The keeper-client README documents every field.";

/// The operator's CLI for a fleet of rbee hives.
#[derive(Debug, Parser)]
#[command(
    name = "rbee",
    version,
    long_about = LONG_ABOUT,
    after_long_help = AFTER_LONG_HELP,
    propagate_version = true,
    max_term_width = 100
)]
pub struct Cli {
    /// Flags that apply to every command.
    #[command(flatten)]
    pub global: GlobalArgs,

    /// The command to run.
    #[command(subcommand)]
    pub command: Command,
}

/// Flags accepted anywhere on the command line.
#[derive(Debug, Args)]
#[command(next_help_heading = "Global options")]
pub struct GlobalArgs {
    /// Hives to target: comma-separated names from the hives file or HOST:PORT addresses
    /// [default: localhost]
    #[arg(
        long,
        global = true,
        value_delimiter = ',',
        value_name = "HIVE",
        env = "RBEE_HIVE",
        conflicts_with = "all"
    )]
    pub hive: Vec<String>,

    /// Target every hive of the hives file
    #[arg(long, global = true)]
    pub all: bool,

    /// Hives file to read [default: $XDG_CONFIG_HOME/rbee/hives.toml, else
    /// ~/.config/rbee/hives.toml]
    #[arg(long, global = true, value_name = "FILE", env = "RBEE_CONFIG")]
    pub config: Option<PathBuf>,

    /// File holding the bearer token sent to HOST:PORT targets and to the built-in localhost.
    /// `rbee hive start` passes its path to the hive it starts, which then requires the token.
    /// Hives of the hives file use their own `token_file` instead
    #[arg(long, global = true, value_name = "FILE", env = "RBEE_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,

    /// Format of the results on stdout
    #[arg(long, short, global = true, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,

    /// Maximum number of hives contacted at the same time
    #[arg(
        long,
        global = true,
        value_name = "N",
        default_value_t = 32,
        value_parser = clap::value_parser!(u16).range(1..)
    )]
    pub fanout: u16,

    /// Time allowed to connect to one hive, for example 500ms or 3s
    #[arg(
        long,
        global = true,
        value_name = "DURATION",
        default_value = "3s",
        value_parser = parse_timeout
    )]
    pub connect_timeout: Duration,

    /// Time allowed for the whole call to one hive, connecting included, for example 30s or 2m
    /// [default: 30s. For `worker spawn`: the ready timeout (60s unless given) plus 10s when
    /// longer. For `worker process delete` and `worker active retire`: the grace period plus 10s
    /// when longer. For `worker download`, `worker build` and `model download`: 1h. For `infer`:
    /// 5m. For `job follow`: no limit. For the health checks of `hive list` and `hive status`: the connect
    /// timeout]
    #[arg(long, global = true, value_name = "DURATION", value_parser = parse_timeout)]
    pub timeout: Option<Duration>,

    /// Hide the live narration of jobs on stderr
    #[arg(long, short, global = true)]
    pub quiet: bool,

    /// Log more to stderr: -v info, -vv debug, -vvv trace (RUST_LOG overrides)
    #[arg(long, short, global = true, action = ArgAction::Count)]
    pub verbose: u8,
}

/// Format of the results written to stdout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// Aligned columns for people: sizes, durations and times made readable
    Table,
    /// One JSON document with exact values, for scripts
    Json,
}

/// Top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Manage worker binaries, worker processes and active workers on hives
    #[command(subcommand)]
    Worker(WorkerCommand),

    /// Describe hives, and start, stop and check the local hive
    #[command(subcommand)]
    Hive(HiveCommand),

    /// Manage the model files of each hive's model catalog
    #[command(subcommand)]
    Model(ModelCommand),

    /// Follow and cancel the jobs that hives run
    #[command(subcommand)]
    Job(JobCommand),

    /// Generate text with a model that a targeted hive serves, printing it as it arrives
    ///
    /// The hive forwards the prompt to one of its ready workers that serves the model and
    /// speaks llama.cpp's completion API (workers spawned from a catalog entry named
    /// `llama-server`). The text goes to stdout piece by piece, then a summary (tokens,
    /// duration, tokens/s, worker, hive) goes to stderr unless --quiet. With --output json, stdout is one document at the
    /// end, and its `data` contains the text and the counts.
    ///
    /// With several targeted hives, rbee first lists every hive's active workers and sends the
    /// prompt to the hive with the most ready llama.cpp workers whose model is MODEL or ends
    /// with /MODEL; ties go to the first in --hive order. When no hive serves the model, it
    /// exits with 4 and names the models each hive serves. Ctrl-C stops the generation and
    /// exits with 130.
    Infer(InferArgs),

    /// Print a shell completion script to stdout
    Completions(CompletionsArgs),
}

/// `rbee worker ...`
#[derive(Debug, Subcommand)]
pub enum WorkerCommand {
    /// Worker binaries: the executables in each hive's worker catalog
    #[command(subcommand)]
    Binary(WorkerBinaryCommand),

    /// Worker processes: running worker binaries
    #[command(subcommand)]
    Process(WorkerProcessCommand),

    /// Start a worker from a catalog binary on each targeted hive and wait until it is ready
    ///
    /// Every targeted hive starts its own worker, so `--hive a,b` starts two workers. The
    /// hive's narration of each step and the worker's log lines appear on stderr while the
    /// hive waits for the worker to become ready.
    Spawn(WorkerSpawnArgs),

    /// Active workers: the workers each hive spawned, with their heartbeat state
    #[command(subcommand)]
    Active(WorkerActiveCommand),

    /// Download a worker binary into each targeted hive's catalog and wait until it is
    /// installed
    ///
    /// Each hive downloads the file itself, so a `file://` URL names a file on the hive's
    /// machine. The hive writes to a temporary file, checks --sha256 when given, and installs
    /// the binary with an atomic rename. Progress appears on stderr. Ctrl-C cancels the
    /// download on every hive where it runs and exits with 130.
    // `--version` here sets the binary's version, so this command has no `--version` of rbee.
    #[command(disable_version_flag = true)]
    Download(WorkerDownloadArgs),

    /// Build a worker binary with `cargo build` on each targeted hive and install it into the
    /// catalog
    ///
    /// The hive builds the cargo binary target named NAME from --source and installs it with
    /// an atomic rename. The compiler's output appears on stderr, one line at a time. Ctrl-C
    /// cancels the build on every hive where it runs and exits with 130.
    Build(WorkerBuildArgs),
}

/// `rbee worker download` options.
#[derive(Debug, Args)]
pub struct WorkerDownloadArgs {
    /// Catalog name to install the binary as
    #[arg(value_parser = parse_worker_name)]
    pub name: String,

    /// URL to download from: `http://`, `https://`, or `file:///PATH` for a file on the hive's
    /// machine
    #[arg(long, value_name = "URL", value_parser = parse_download_url)]
    pub url: String,

    /// Expected SHA-256 of the file, 64 hex digits. The hive rejects a file that does not
    /// match with DATA_LOSS and installs nothing [default: not checked]
    #[arg(long, value_name = "HEX", value_parser = parse_sha256)]
    pub sha256: Option<String>,

    /// Version to record in the entry's manifest, shown by `worker binary list`
    #[arg(long, value_name = "VERSION", value_parser = parse_version)]
    pub version: Option<String>,

    /// Replace an existing entry of that name instead of failing with ALREADY_EXISTS
    #[arg(long)]
    pub replace: bool,
}

/// `rbee worker build` options.
#[derive(Debug, Args)]
pub struct WorkerBuildArgs {
    /// Catalog name to install the binary as; also the name of the cargo binary target to
    /// build
    #[arg(value_parser = parse_worker_name)]
    pub name: String,

    /// Rust source to build: an absolute path of a directory on the hive's machine, or a git
    /// URL (`https://host/repo.git`, `ssh://...`, `git@host:repo.git`) that the hive clones
    #[arg(long, value_name = "PATH_OR_GIT_URL", value_parser = parse_build_source)]
    pub source: String,

    /// Cargo features to enable, comma-separated; may be repeated
    #[arg(long, value_name = "FEATURES", value_delimiter = ',', value_parser = parse_feature)]
    pub features: Vec<String>,

    /// Cargo profile to build with, such as `release` or `dev` [default: release]
    #[arg(long, value_name = "PROFILE", value_parser = parse_profile)]
    pub profile: Option<String>,

    /// Replace an existing entry of that name instead of failing with ALREADY_EXISTS
    #[arg(long)]
    pub replace: bool,
}

/// `rbee model ...`
#[derive(Debug, Subcommand)]
pub enum ModelCommand {
    /// Download a model file into each targeted hive's model catalog and wait until it is
    /// installed
    ///
    /// Each hive downloads the file itself, so a `file://` URL names a file on the hive's
    /// machine. The hive writes to a temporary file, checks --sha256 when given, and installs
    /// the model with an atomic rename. Progress appears on stderr. Ctrl-C cancels the
    /// download on every hive where it runs and exits with 130.
    Download(ModelDownloadArgs),

    /// List the models of each hive's model catalog
    #[command(visible_alias = "ls")]
    List,

    /// Show one model
    Get {
        /// Catalog name of the model
        #[arg(value_parser = parse_model_name)]
        name: String,
    },

    /// Remove a model from the model catalog
    #[command(visible_alias = "rm")]
    Delete {
        /// Catalog name of the model
        #[arg(value_parser = parse_model_name)]
        name: String,

        /// Retire the active workers serving the model first, instead of failing
        #[arg(long)]
        force: bool,
    },
}

/// `rbee model download` options.
#[derive(Debug, Args)]
pub struct ModelDownloadArgs {
    /// Catalog name to install the model as, for example tinyllama-q4.gguf
    #[arg(value_parser = parse_model_name)]
    pub name: String,

    /// URL to download from: `http://`, `https://`, or `file:///PATH` for a file on the hive's
    /// machine
    #[arg(long, value_name = "URL", value_parser = parse_download_url)]
    pub url: String,

    /// Expected SHA-256 of the file, 64 hex digits. The hive rejects a file that does not
    /// match with DATA_LOSS and installs nothing [default: not checked]
    #[arg(long, value_name = "HEX", value_parser = parse_sha256)]
    pub sha256: Option<String>,

    /// Replace an existing model of that name instead of failing with ALREADY_EXISTS
    #[arg(long)]
    pub replace: bool,
}

/// `rbee infer` options.
#[derive(Debug, Args)]
pub struct InferArgs {
    /// Text to continue
    #[arg(value_parser = parse_prompt)]
    pub prompt: String,

    /// Model to generate with: its name in the hive's model directory, or the path the worker
    /// was spawned with
    #[arg(long, value_name = "MODEL", value_parser = parse_model)]
    pub model: String,

    /// Maximum number of tokens to generate, 1 to 32768 [default: the hive's, 128]
    #[arg(
        long,
        value_name = "N",
        value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_INFER_TOKENS))
    )]
    pub max_tokens: Option<u32>,

    /// Sampling temperature, 0 to 5; 0 always picks the most likely token
    #[arg(long, value_name = "T", default_value_t = DEFAULT_TEMPERATURE, value_parser = parse_temperature)]
    pub temperature: f32,

    /// Nucleus sampling: sample only from the most likely tokens whose probabilities add up to
    /// P, 0 to 1 [default: the worker's]
    #[arg(long, value_name = "P", value_parser = parse_top_p)]
    pub top_p: Option<f32>,

    /// Sample only from the K most likely tokens; 0 turns this off [default: the worker's]
    #[arg(long, value_name = "K")]
    pub top_k: Option<u32>,

    /// Generate with this worker, such as worker-0123456789ab, instead of letting the hive
    /// choose one
    #[arg(long, value_name = "WORKER_ID", value_parser = parse_worker_id)]
    pub worker: Option<String>,
}

/// `rbee worker spawn` options.
#[derive(Debug, Args)]
pub struct WorkerSpawnArgs {
    /// Catalog name of the worker binary to start
    #[arg(value_parser = parse_worker_name)]
    pub binary: String,

    /// Model to serve: the name of an entry in the hive's model directory, or an absolute path
    /// on the hive's machine
    #[arg(long, value_name = "MODEL", value_parser = parse_model)]
    pub model: String,

    /// Device to run on: `cpu`, or `cuda:N` for GPU index N (`rbee hive info` lists a hive's
    /// devices)
    #[arg(long, value_name = "DEVICE", value_parser = parse_device)]
    pub device: String,

    /// TCP port the worker serves on [default: a free port the hive picks]
    #[arg(long, value_name = "PORT", value_parser = clap::value_parser!(u16).range(1..))]
    pub port: Option<u16>,

    /// Extra argument appended to the worker's command line; repeat for several, in order
    #[arg(long = "arg", value_name = "ARG", allow_hyphen_values = true)]
    pub args: Vec<String>,

    /// Extra environment variable NAME=VALUE for the worker; repeat for several. Names use
    /// letters, digits and `_`; `RBEE_*` and CUDA_VISIBLE_DEVICES are set by the hive
    #[arg(long = "env", value_name = "NAME=VALUE", value_parser = parse_env_var)]
    pub env: Vec<(String, String)>,

    /// Time the hive waits for the worker to become ready, in seconds or with a unit (90s, 5m),
    /// at most 1h. A worker that is not ready by then is stopped [default: the hive's, 60s
    /// unless the hive runs with another --ready-timeout-secs]
    #[arg(long, value_name = "SECS", value_parser = parse_ready_timeout)]
    pub ready_timeout: Option<Duration>,
}

/// `rbee worker active ...`
#[derive(Debug, Subcommand)]
pub enum WorkerActiveCommand {
    /// List the active workers of each hive
    #[command(visible_alias = "ls")]
    List,

    /// Show one active worker
    Get {
        /// Id of the worker, such as worker-0123456789ab
        #[arg(value_parser = parse_worker_id)]
        worker_id: String,
    },

    /// Stop an active worker with its process group (SIGTERM, then SIGKILL once the grace
    /// period has passed) and remove it from the hive's active workers
    Retire {
        /// Id of the worker, such as worker-0123456789ab
        #[arg(value_parser = parse_worker_id)]
        worker_id: String,

        /// Time between SIGTERM and SIGKILL, in seconds or with a unit (500ms, 2m); 0 sends
        /// SIGKILL at once; at most 1h [default: the hive's, 5s]
        #[arg(long, value_name = "SECS", value_parser = parse_grace)]
        grace: Option<Duration>,
    },
}

/// `rbee worker binary ...`
#[derive(Debug, Subcommand)]
pub enum WorkerBinaryCommand {
    /// List the worker binaries of each hive's catalog
    #[command(visible_alias = "ls")]
    List,

    /// Show one worker binary
    Get {
        /// Catalog name of the worker binary
        #[arg(value_parser = parse_worker_name)]
        name: String,
    },

    /// Remove a worker binary from the catalog
    #[command(visible_alias = "rm")]
    Delete {
        /// Catalog name of the worker binary
        #[arg(value_parser = parse_worker_name)]
        name: String,

        /// Stop the worker processes running this binary first, instead of failing
        #[arg(long)]
        force: bool,
    },
}

/// `rbee worker process ...`
#[derive(Debug, Subcommand)]
pub enum WorkerProcessCommand {
    /// List the worker processes running on each hive
    #[command(visible_alias = "ls")]
    List {
        /// Only processes of this worker binary (catalog name)
        #[arg(long, value_name = "NAME", value_parser = parse_worker_name)]
        worker: Option<String>,
    },

    /// Show one worker process
    Get {
        /// Process id of the worker process
        #[arg(value_parser = clap::value_parser!(i32).range(1..))]
        pid: i32,
    },

    /// Stop a worker process: SIGTERM, then SIGKILL once the grace period has passed
    #[command(visible_alias = "rm")]
    Delete {
        /// Process id of the worker process
        #[arg(value_parser = clap::value_parser!(i32).range(1..))]
        pid: i32,

        /// Time between SIGTERM and SIGKILL, in seconds or with a unit (500ms, 2m); 0 sends
        /// SIGKILL at once; at most 1h [default: the hive's, 5s]
        #[arg(long, value_name = "SECS", value_parser = parse_grace)]
        grace: Option<Duration>,
    },
}

/// `rbee hive ...`
#[derive(Debug, Subcommand)]
pub enum HiveCommand {
    /// Describe each hive: identity, host, devices and catalog location
    Info,

    /// List the hives of the hives file and probe whether each responds
    #[command(visible_alias = "ls")]
    List,

    /// Start a hive on this machine in the background and wait, at most --timeout, until it is
    /// healthy
    Start(HiveStartArgs),

    /// Stop the hive that `rbee hive start` started: SIGTERM, then wait at most --timeout for
    /// it to exit
    Stop,

    /// Show whether the hive that `rbee hive start` started is running and healthy
    Status,
}

/// `rbee hive start` options.
#[derive(Debug, Args)]
pub struct HiveStartArgs {
    /// Address the hive listens on; port 0 lets the system pick a free port
    #[arg(long, value_name = "ADDR", default_value = rbee_proto::DEFAULT_HIVE_ADDR)]
    pub listen: SocketAddr,

    /// Worker catalog directory of the hive [default: $XDG_CACHE_HOME/rbee/workers, else
    /// ~/.cache/rbee/workers]
    #[arg(long, value_name = "DIR")]
    pub catalog_dir: Option<PathBuf>,

    /// Display name of the hive [default: the host name]
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,

    /// The rbee-hive executable to run [default: the one next to rbee, else the first on PATH]
    #[arg(long, value_name = "FILE", env = "RBEE_HIVE_BIN")]
    pub hive_binary: Option<PathBuf>,
}

/// `rbee job ...`
#[derive(Debug, Subcommand)]
pub enum JobCommand {
    /// Print the narration of a job, live until it ends, and exit with its outcome
    Follow {
        /// Id of the job, as shown in JSON results and error messages
        #[arg(value_parser = parse_job_id)]
        job_id: String,

        /// How long to wait for a job that has not started yet, for example 10s [default: 0,
        /// fail at once when the hive does not know the job]
        #[arg(long, value_name = "DURATION", value_parser = parse_wait_for_start)]
        wait_for_start: Option<Duration>,
    },

    /// Cancel a running download or build on each targeted hive
    ///
    /// The hive stops the transfer, or kills the build's process group, and removes its
    /// temporary files. A job that has finished or cannot be cancelled fails with
    /// FAILED_PRECONDITION, an unknown one with NOT_FOUND.
    Cancel {
        /// Id of the job, as shown in JSON results and error messages
        #[arg(value_parser = parse_job_id)]
        job_id: String,
    },
}

/// `rbee completions` arguments.
#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// Shell to generate the completion script for
    #[arg(value_enum)]
    pub shell: Shell,
}

/// Parses a duration: a number of seconds (`30`, `1.5`) or a number with one of the units
/// `ms`, `s`, `m` or `h` (`500ms`, `2m`).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);

    let scale = match unit.trim() {
        "ms" => 0.001,
        "" | "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        other => {
            return Err(format!(
                "invalid duration {text:?}: unknown unit {other:?}, use ms, s, m or h"
            ));
        }
    };
    let value: f64 = number.parse().map_err(|_| {
        format!("invalid duration {text:?}: expected a number such as 30, 1.5s or 500ms")
    })?;

    Duration::try_from_secs_f64(value * scale)
        .map_err(|_| format!("invalid duration {text:?}: out of range"))
}

/// Parses a timeout, which must be longer than zero.
fn parse_timeout(text: &str) -> Result<Duration, String> {
    let timeout = parse_duration(text)?;
    if timeout.is_zero() {
        return Err("a timeout must be longer than zero".to_owned());
    }
    Ok(timeout)
}

/// Parses a grace period: zero to one hour.
fn parse_grace(text: &str) -> Result<Duration, String> {
    let grace = parse_duration(text)?;
    if grace > MAX_GRACE {
        return Err(format!(
            "grace period {text:?} is longer than the maximum of 1h"
        ));
    }
    Ok(grace)
}

/// Parses the wait for a job to start: at most 60 seconds, the hive's limit.
fn parse_wait_for_start(text: &str) -> Result<Duration, String> {
    let wait = parse_duration(text)?;
    if wait > Duration::from_secs(60) {
        return Err(format!("wait {text:?} is longer than the maximum of 60s"));
    }
    Ok(wait)
}

/// Checks a worker binary's catalog name: one visible file name, as the hive requires.
pub fn parse_worker_name(name: &str) -> Result<String, String> {
    check_catalog_name(name).map_err(|reason| format!("invalid worker name {name:?}: {reason}"))
}

/// Checks a model's catalog name, with the same rules as a worker binary's name.
pub fn parse_model_name(name: &str) -> Result<String, String> {
    check_catalog_name(name).map_err(|reason| format!("invalid model name {name:?}: {reason}"))
}

/// Checks that `name` is one visible file name: not empty, at most 255 bytes, without `/`,
/// control characters (NUL included) or a leading `.`. Returns the reason when it is not.
fn check_catalog_name(name: &str) -> Result<String, &'static str> {
    if name.is_empty() {
        Err("it is empty")
    } else if name == "." || name == ".." {
        Err("`.` and `..` are not names")
    } else if name.len() > MAX_CATALOG_NAME_BYTES {
        Err("it is longer than 255 bytes")
    } else if name.contains('/') {
        Err("it contains `/`")
    } else if name.chars().any(char::is_control) {
        Err("it contains a control character")
    } else if name.starts_with('.') {
        Err("it starts with `.`")
    } else {
        Ok(name.to_owned())
    }
}

/// Parses a readiness timeout: longer than zero, at most one hour.
fn parse_ready_timeout(text: &str) -> Result<Duration, String> {
    let timeout = parse_timeout(text)?;
    if timeout > MAX_READY_TIMEOUT {
        return Err(format!(
            "ready timeout {text:?} is longer than the maximum of 1h"
        ));
    }
    Ok(timeout)
}

/// Checks a model: not empty and free of control characters. Whether it exists is for the
/// hive to decide, on its own machine.
fn parse_model(model: &str) -> Result<String, String> {
    if model.is_empty() {
        return Err("the model is empty: give a model name or an absolute path".to_owned());
    }
    if model.chars().any(char::is_control) {
        return Err(format!(
            "invalid model {model:?}: it contains a control character"
        ));
    }
    Ok(model.to_owned())
}

/// Checks a prompt: not empty.
fn parse_prompt(prompt: &str) -> Result<String, String> {
    if prompt.is_empty() {
        return Err("the prompt is empty: give the text to continue".to_owned());
    }
    Ok(prompt.to_owned())
}

/// Checks a sampling temperature: a number from 0 to 5.
fn parse_temperature(text: &str) -> Result<f32, String> {
    match text.trim().parse::<f32>() {
        Ok(value) if (0.0..=MAX_TEMPERATURE).contains(&value) => Ok(value),
        _ => Err(format!(
            "invalid temperature {text:?}: use a number from 0 to 5, such as 0.8"
        )),
    }
}

/// Checks a nucleus sampling threshold: a number from 0 to 1.
fn parse_top_p(text: &str) -> Result<f32, String> {
    match text.trim().parse::<f32>() {
        Ok(value) if (0.0..=1.0).contains(&value) => Ok(value),
        _ => Err(format!(
            "invalid top-p {text:?}: use a number from 0 to 1, such as 0.95"
        )),
    }
}

/// Checks a device id: `cpu`, or `cuda:N` with N a decimal GPU index.
fn parse_device(device: &str) -> Result<String, String> {
    let valid = device == "cpu"
        || device
            .strip_prefix("cuda:")
            .is_some_and(|index| !index.is_empty() && index.bytes().all(|b| b.is_ascii_digit()));
    if valid {
        Ok(device.to_owned())
    } else {
        Err(format!(
            "invalid device {device:?}: use `cpu`, or `cuda:N` for GPU index N"
        ))
    }
}

/// Parses `NAME=VALUE`. The name must be a portable variable name (letters, digits and `_`,
/// not starting with a digit) that the hive does not set itself. The value may be empty.
fn parse_env_var(text: &str) -> Result<(String, String), String> {
    let Some((name, value)) = text.split_once('=') else {
        return Err(format!(
            "invalid environment variable {text:?}: use NAME=VALUE"
        ));
    };
    let portable = !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if !portable {
        return Err(format!(
            "invalid environment variable name {name:?}: use letters, digits and `_`, not \
             starting with a digit"
        ));
    }
    if name.starts_with("RBEE_") || name == "CUDA_VISIBLE_DEVICES" {
        return Err(format!(
            "environment variable {name} is set by the hive and cannot be overridden"
        ));
    }
    Ok((name.to_owned(), value.to_owned()))
}

/// Checks a worker id: `worker-` followed by 1 to 64 hex digits, as hives generate them.
fn parse_worker_id(id: &str) -> Result<String, String> {
    let valid = id.strip_prefix("worker-").is_some_and(|hex| {
        !hex.is_empty()
            && hex.len() <= MAX_WORKER_ID_HEX_DIGITS
            && hex.bytes().all(|b| b.is_ascii_hexdigit())
    });
    if valid {
        Ok(id.to_owned())
    } else {
        Err(format!(
            "invalid worker id {id:?}: worker ids look like worker-0123456789ab"
        ))
    }
}

/// Checks a job id: 1 to 128 ASCII letters, digits, `-`, `_`, `.` or `:`.
fn parse_job_id(id: &str) -> Result<String, String> {
    let valid = !id.is_empty()
        && id.len() <= MAX_JOB_ID_BYTES
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'));
    if valid {
        Ok(id.to_owned())
    } else {
        Err(format!(
            "invalid job id {id:?}: use 1 to 128 ASCII letters, digits, `-`, `_`, `.` or `:`"
        ))
    }
}

/// Checks a download URL: `http://HOST/...`, `https://HOST/...` or `file:///PATH`, without
/// whitespace or control characters. Whether the file can be fetched is for the hive to find
/// out.
fn parse_download_url(url: &str) -> Result<String, String> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(format!(
            "invalid URL {url:?}: use http://HOST/PATH, https://HOST/PATH or file:///PATH"
        ));
    };
    if url.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(format!(
            "invalid URL {url:?}: it contains whitespace or a control character; percent-encode \
             it (a space is %20)"
        ));
    }
    match scheme.to_ascii_lowercase().as_str() {
        "http" | "https" => {
            let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
            let host = authority
                .rsplit_once('@')
                .map_or(authority, |(_, host)| host);
            if host.is_empty() || host.starts_with(':') {
                return Err(format!("invalid URL {url:?}: it has no host"));
            }
        }
        "file" => {
            if !rest.starts_with('/') || rest.len() < 2 {
                return Err(format!(
                    "invalid URL {url:?}: a file URL names an absolute path on the hive's \
                     machine, as in file:///srv/models/tiny.gguf"
                ));
            }
        }
        other => {
            return Err(format!(
                "invalid URL {url:?}: unsupported scheme {other:?}, use http, https or file"
            ));
        }
    }
    Ok(url.to_owned())
}

/// Checks a SHA-256 digest: 64 hex digits, either case. Returns it in lowercase.
fn parse_sha256(hex: &str) -> Result<String, String> {
    if hex.len() == SHA256_HEX_DIGITS && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(hex.to_ascii_lowercase())
    } else {
        Err(format!(
            "invalid SHA-256 {hex:?}: expected 64 hex digits, as printed by `sha256sum`"
        ))
    }
}

/// Checks a version to record: not empty and free of control characters.
fn parse_version(version: &str) -> Result<String, String> {
    if version.is_empty() {
        return Err("the version is empty: leave out --version to record none".to_owned());
    }
    if version.chars().any(char::is_control) {
        return Err(format!(
            "invalid version {version:?}: it contains a control character"
        ));
    }
    Ok(version.to_owned())
}

/// Checks the source of a build: an absolute path, a URL with a git transport (`https`, `http`,
/// `ssh`, `git`), or an scp-like `USER@HOST:PATH`. A relative path is rejected because it
/// would be resolved on the hive's machine, not in this working directory.
fn parse_build_source(source: &str) -> Result<String, String> {
    if source.is_empty() {
        return Err(
            "the source is empty: give an absolute path on the hive's machine or a git URL"
                .to_owned(),
        );
    }
    if source.chars().any(char::is_control) {
        return Err(format!(
            "invalid source {source:?}: it contains a control character"
        ));
    }
    if source.starts_with('/') {
        return Ok(source.to_owned());
    }
    if let Some((scheme, rest)) = source.split_once("://") {
        return match scheme.to_ascii_lowercase().as_str() {
            "https" | "http" | "ssh" | "git" if !rest.is_empty() => Ok(source.to_owned()),
            "https" | "http" | "ssh" | "git" => {
                Err(format!("invalid source {source:?}: the URL has no host"))
            }
            other => Err(format!(
                "invalid source {source:?}: unsupported scheme {other:?}, use https, http, ssh \
                 or git, or an absolute path"
            )),
        };
    }
    let scp_like = source.split_once(':').is_some_and(|(user_host, path)| {
        user_host
            .split_once('@')
            .is_some_and(|(user, host)| !user.is_empty() && !host.is_empty())
            && !path.is_empty()
    });
    if scp_like {
        return Ok(source.to_owned());
    }
    Err(format!(
        "invalid source {source:?}: give an absolute path on the hive's machine, or a git URL \
         such as https://host/repo.git or git@host:repo.git"
    ))
}

/// Checks one cargo feature of a comma-separated list: not empty, without whitespace or
/// control characters.
fn parse_feature(feature: &str) -> Result<String, String> {
    if feature.is_empty() {
        return Err(
            "empty feature name: separate features with single commas, as in cuda,flash-attn"
                .to_owned(),
        );
    }
    if feature.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "invalid feature {feature:?}: it contains whitespace or a control character; \
             separate features with commas"
        ));
    }
    Ok(feature.to_owned())
}

/// Checks a cargo profile name: ASCII letters, digits, `-` and `_`.
fn parse_profile(profile: &str) -> Result<String, String> {
    let valid = !profile.is_empty()
        && profile
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if valid {
        Ok(profile.to_owned())
    } else {
        Err(format!(
            "invalid profile {profile:?}: use ASCII letters, digits, `-` and `_`, such as \
             release"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duration_accepts_units_and_bare_seconds() {
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
    }

    #[test]
    fn duration_rejects_garbage() {
        assert!(parse_duration("").is_err());
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("5 days").is_err());
        assert!(parse_duration("s").is_err());
    }

    #[test]
    fn timeout_rejects_zero() {
        assert!(parse_timeout("0").is_err());
        assert!(parse_timeout("0ms").is_err());
    }

    #[test]
    fn grace_allows_zero_up_to_one_hour() {
        assert_eq!(parse_grace("0"), Ok(Duration::ZERO));
        assert_eq!(parse_grace("1h"), Ok(MAX_GRACE));
        assert!(parse_grace("3601").is_err());
    }

    #[test]
    fn worker_name_rejects_paths_and_hidden_files() {
        assert!(parse_worker_name("llm-cpu").is_ok());
        for bad in [
            "",
            ".",
            "..",
            "a/b",
            ".hidden",
            "tab\there",
            &"x".repeat(256),
        ] {
            assert!(parse_worker_name(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn job_id_allows_generated_ids_only_safe_bytes() {
        assert!(parse_job_id("job-0b6f7c2e-2a53-4d4c-9d7e-1f0e2b9c8a11").is_ok());
        assert!(parse_job_id("").is_err());
        assert!(parse_job_id("job 1").is_err());
        assert!(parse_job_id(&"j".repeat(129)).is_err());
    }

    #[test]
    fn ready_timeout_is_positive_up_to_one_hour() {
        assert_eq!(parse_ready_timeout("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_ready_timeout("1h"), Ok(MAX_READY_TIMEOUT));
        assert!(parse_ready_timeout("0").is_err());
        assert!(parse_ready_timeout("61m").is_err());
    }

    #[test]
    fn model_rejects_empty_and_control_characters() {
        assert!(parse_model("tiny").is_ok());
        assert!(parse_model("/models/tiny.gguf").is_ok());
        assert!(parse_model("").is_err());
        assert!(parse_model("a\nb").is_err());
    }

    #[test]
    fn device_is_cpu_or_cuda_index() {
        for good in ["cpu", "cuda:0", "cuda:12"] {
            assert!(parse_device(good).is_ok(), "{good:?} was rejected");
        }
        for bad in [
            "", "CPU", "gpu", "cuda", "cuda:", "cuda:x", "cuda:-1", "cuda:1 ", "metal",
        ] {
            assert!(parse_device(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn env_var_needs_a_portable_unreserved_name() {
        assert_eq!(
            parse_env_var("HF_HOME=/data/hf"),
            Ok(("HF_HOME".to_owned(), "/data/hf".to_owned()))
        );
        assert_eq!(
            parse_env_var("A=b=c"),
            Ok(("A".to_owned(), "b=c".to_owned()))
        );
        assert_eq!(
            parse_env_var("EMPTY="),
            Ok(("EMPTY".to_owned(), String::new()))
        );
        for bad in [
            "NOEQUALS",
            "=value",
            "1X=1",
            "A-B=1",
            "RBEE_WORKER_ID=x",
            "CUDA_VISIBLE_DEVICES=0",
        ] {
            assert!(parse_env_var(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn worker_id_is_worker_dash_hex() {
        assert!(parse_worker_id("worker-0123456789ab").is_ok());
        assert!(parse_worker_id(&format!("worker-{}", "a".repeat(64))).is_ok());
        for bad in [
            "",
            "worker-",
            "worker-xyz",
            "0123456789ab",
            "Worker-0123",
            &format!("worker-{}", "a".repeat(65)),
        ] {
            assert!(parse_worker_id(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn model_name_follows_worker_name_rules() {
        assert!(parse_model_name("tinyllama-q4.gguf").is_ok());
        for bad in ["", "..", "a/b", ".hidden", "nul\0byte", &"m".repeat(256)] {
            let error = parse_model_name(bad).unwrap_err();
            assert!(error.starts_with("invalid model name"), "{error}");
        }
        assert!(parse_model_name(&"m".repeat(255)).is_ok());
    }

    #[test]
    fn download_url_needs_http_https_or_file() {
        for good in [
            "http://127.0.0.1:8080/llm-cpu",
            "https://example.com/models/tiny.gguf?token=x",
            "HTTPS://example.com/a",
            "https://user@example.com/a",
            "file:///srv/models/tiny.gguf",
        ] {
            assert_eq!(parse_download_url(good).as_deref(), Ok(good));
        }
        for bad in [
            "",
            "example.com/a",
            "/srv/models/tiny.gguf",
            "ftp://example.com/a",
            "s3://bucket/a",
            "http://",
            "http:///path",
            "https://:8080/a",
            "file://",
            "file://host/path",
            "file://relative",
            "https://example.com/a b",
            "https://example.com/a\nb",
        ] {
            assert!(parse_download_url(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn sha256_is_64_hex_digits_lowercased() {
        let upper = "AB".repeat(32);
        assert_eq!(parse_sha256(&upper), Ok("ab".repeat(32)));
        assert!(parse_sha256(&"0".repeat(63)).is_err());
        assert!(parse_sha256(&"0".repeat(65)).is_err());
        assert!(parse_sha256(&format!("{}g", "0".repeat(63))).is_err());
        assert!(parse_sha256("").is_err());
    }

    #[test]
    fn build_source_is_absolute_path_or_git_url() {
        for good in [
            "/src/llm-worker",
            "https://github.com/example/llm-worker.git",
            "ssh://git@example.com/llm-worker.git",
            "git://example.com/llm-worker.git",
            "git@example.com:example/llm-worker.git",
        ] {
            assert_eq!(parse_build_source(good).as_deref(), Ok(good));
        }
        for bad in [
            "",
            ".",
            "src/llm-worker",
            "ftp://example.com/x.git",
            "https://",
            "host:path",
            "@host:path",
            "git@host:",
            "/src/a\nb",
        ] {
            assert!(parse_build_source(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn features_and_profile_reject_empty_and_spaces() {
        assert!(parse_feature("cuda").is_ok());
        assert!(parse_feature("candle/cuda").is_ok());
        assert!(parse_feature("").is_err());
        assert!(parse_feature("a b").is_err());
        assert!(parse_profile("release").is_ok());
        assert!(parse_profile("release-lto").is_ok());
        assert!(parse_profile("").is_err());
        assert!(parse_profile("rel ease").is_err());
        assert!(parse_profile("../x").is_err());
    }

    #[test]
    fn features_flag_splits_commas_and_rejects_empty_items() {
        let parse = |features: &str| {
            Cli::try_parse_from([
                "rbee",
                "worker",
                "build",
                "llm-cpu",
                "--source",
                "/src",
                "--features",
                features,
            ])
        };
        let Command::Worker(WorkerCommand::Build(args)) = parse("cuda,flash-attn").unwrap().command
        else {
            panic!("not a worker build");
        };
        assert_eq!(args.features, ["cuda", "flash-attn"]);
        for bad in ["", "a,,b", "a,", ",a"] {
            assert!(parse(bad).is_err(), "--features {bad:?} was accepted");
        }
    }

    #[test]
    fn version_rejects_empty_and_control_characters() {
        assert!(parse_version("1.2.0").is_ok());
        assert!(parse_version("").is_err());
        assert!(parse_version("1\n2").is_err());
    }

    #[test]
    fn temperature_and_top_p_ranges() {
        assert_eq!(parse_temperature("0"), Ok(0.0));
        assert_eq!(parse_temperature("5"), Ok(5.0));
        assert_eq!(parse_temperature("0.8"), Ok(0.8));
        for bad in ["", "-0.1", "5.01", "NaN", "inf", "hot"] {
            assert!(
                parse_temperature(bad).is_err(),
                "temperature {bad:?} was accepted"
            );
        }
        assert_eq!(parse_top_p("1"), Ok(1.0));
        assert_eq!(parse_top_p("0"), Ok(0.0));
        for bad in ["", "-0.5", "1.5", "NaN"] {
            assert!(parse_top_p(bad).is_err(), "top-p {bad:?} was accepted");
        }
    }

    #[test]
    fn infer_rejects_invalid_input() {
        let parse = |extra: &[&str]| {
            let mut argv = vec!["rbee", "infer"];
            argv.extend_from_slice(extra);
            Cli::try_parse_from(argv)
        };
        let Command::Infer(args) = parse(&["--model", "tiny.gguf", "Hello"]).unwrap().command
        else {
            panic!("not an infer");
        };
        assert_eq!(args.prompt, "Hello");
        assert_eq!(args.temperature, DEFAULT_TEMPERATURE);
        assert_eq!(args.max_tokens, None);
        assert!(parse(&["--model", "m", "x", "--max-tokens", "32768"]).is_ok());
        for bad in [
            &["--model", "m", ""][..],
            &["--model", "", "x"],
            &["x"],
            &["--model", "m", "x", "--max-tokens", "32769"],
            &["--model", "m", "x", "--max-tokens", "0"],
            &["--model", "m", "x", "--temperature", "6"],
            &["--model", "m", "x", "--top-p", "1.1"],
            &["--model", "m", "x", "--top-k", "-1"],
            &["--model", "m", "x", "--worker", "7"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
