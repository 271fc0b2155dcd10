//! `rbee-bench`: measures rbee against baselines run in the same process tree, on the same
//! machine, in the same run, and prints one table row per comparison with the ratio
//! rbee / baseline and its target.
//!
//! Build with `cargo build --release --workspace --bins`: the benchmark starts the release
//! `rbee-hive`, `rbee` and `test-worker` found beside it.

mod baseline;
mod fanout;
mod fixture;
mod idle;
mod narration;
mod process_list;
mod report;
mod unary;

use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

/// Benchmarks rbee against baselines measured in the same run, and prints a table of ratios.
///
/// Exits with 1 when a row misses its target.
#[derive(Debug, Parser)]
#[command(about)]
struct Args {
    /// Benchmarks to run [default: all].
    #[arg(long, value_enum, value_delimiter = ',')]
    only: Vec<Bench>,

    /// Numbers of extra idle processes for the process list benchmark.
    #[arg(long, value_delimiter = ',', default_values_t = [100, 2000])]
    crowd: Vec<usize>,

    /// Hives of the fan-out benchmark.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u16).range(1..))]
    hives: u16,

    /// Log lines of the chatty worker, one narration event each.
    #[arg(long, default_value_t = 20_000)]
    lines: u64,

    /// Seconds of each throughput round (three rounds per server).
    #[arg(long, default_value_t = 2.0)]
    round_secs: f64,

    #[command(subcommand)]
    command: Option<Internal>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Bench {
    ProcessList,
    Unary,
    Fanout,
    Narration,
    Idle,
}

#[derive(Debug, Subcommand)]
enum Internal {
    /// Runs the bare baseline server (started by the benchmarks themselves).
    #[command(hide = true)]
    BaselineServer,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(Internal::BaselineServer) = args.command {
        return baseline::serve();
    }

    let runtime = tokio::runtime::Runtime::new()?;
    let rows = runtime.block_on(async {
        // Returning drops the benchmark's future, and with it the guards that stop every
        // process it started.
        tokio::select! {
            rows = run(&args) => rows,
            signal = interrupted() => Err(anyhow::anyhow!("stopped by {signal}")),
        }
    })?;
    print!("{}", report::table(&rows));
    if rows.iter().any(|row| row.passed() == Some(false)) {
        std::process::exit(1);
    }
    Ok(())
}

async fn run(args: &Args) -> anyhow::Result<Vec<report::Row>> {
    let selected = |bench: Bench| args.only.is_empty() || args.only.contains(&bench);
    let mut rows = Vec::new();
    if selected(Bench::ProcessList) {
        for &crowd in &args.crowd {
            let samples = if crowd > 500 { 10 } else { 30 };
            rows.push(process_list::run(crowd, samples).await?);
        }
    }
    if selected(Bench::Unary) {
        let round = Duration::from_secs_f64(args.round_secs);
        rows.push(unary::run(unary::Call::GetInstalledBinary, round).await?);
        rows.push(unary::run(unary::Call::GetUnknownBinary, round).await?);
        rows.push(unary::run(unary::Call::ListEmptyCatalog, round).await?);
    }
    if selected(Bench::Fanout) {
        rows.extend(fanout::run(usize::from(args.hives), 10).await?);
    }
    if selected(Bench::Narration) {
        rows.push(narration::events_per_second(args.lines).await?);
        rows.extend(narration::stalled_subscriber(args.lines).await?);
    }
    if selected(Bench::Idle) {
        rows.push(idle::idle_rss().await?);
    }
    Ok(rows)
}

/// Waits for SIGINT or SIGTERM and returns its name.
async fn interrupted() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut interrupt), Ok(mut terminate)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        // Without handlers the signals keep their default action.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = interrupt.recv() => "SIGINT",
        _ = terminate.recv() => "SIGTERM",
    }
}

/// Returns the median of `values`, sorting them.
fn median<T: Copy + PartialOrd>(values: &mut [T]) -> T {
    values.sort_by(|a, b| a.partial_cmp(b).expect("comparable values"));
    values[values.len() / 2]
}
