//! A small worker process for end-to-end tests: listens on a TCP port on loopback, then waits for
//! SIGTERM and reacts as its flags say.
//!
//! ```text
//! test-worker [--port N] [--model M] [--device D] [--exit-code N] [--ignore-sigterm]
//!             [--fork-child] [--fork-session-child] [--crash-at-start] [--no-listen]
//!             [--heartbeats N] [--heartbeat-ms MS]
//! ```
//!
//! Prints `listening on PORT` once the socket listens. On SIGTERM it exits with `--exit-code`
//! (default 0), or keeps running with `--ignore-sigterm`, so only SIGKILL ends it.
//! `--fork-child` starts a child in the same process group that ignores SIGTERM;
//! `--fork-session-child` starts one in a process group of its own. `--crash-at-start` prints an
//! error and exits with code 3 at once; `--no-listen` never opens the port. `--heartbeats N` sends
//! N heartbeats to the hive at `RBEE_HIVE_ADDR` (one every `--heartbeat-ms`, default 100), then
//! stops sending while it keeps running.

use std::{
    io::Write,
    net::TcpListener,
    os::unix::process::CommandExt,
    process::{Command, Stdio},
    time::Duration,
};

use nix::sys::signal::{SigSet, SigmaskHow, Signal, pthread_sigmask};

/// Argument that turns the process into the forked child.
const CHILD_MODE: &str = "--child-ignoring-sigterm";

#[derive(Default)]
struct Options {
    port: u16,
    exit_code: i32,
    ignore_sigterm: bool,
    fork_child: bool,
    fork_session_child: bool,
    crash_at_start: bool,
    no_listen: bool,
    heartbeats: u32,
    heartbeat_ms: u64,
}

fn main() {
    let options = parse_options();
    let sigterm = block_sigterm();

    if options.crash_at_start {
        eprintln!("fatal: cannot load model: invalid magic number");
        std::process::exit(3);
    }
    // Children first, so that once the port accepts connections (ready, to the hive) the whole
    // tree exists.
    if options.fork_child {
        start_child(false);
    }
    if options.fork_session_child {
        start_child(true);
    }
    // Kept open for the life of the process.
    let _listener = (!options.no_listen).then(|| listen(options.port));
    if options.heartbeats > 0 {
        let (count, every) = (options.heartbeats, options.heartbeat_ms.max(1));
        std::thread::spawn(move || send_heartbeats(count, Duration::from_millis(every)));
    }

    loop {
        match sigterm.wait() {
            Ok(Signal::SIGTERM) if options.ignore_sigterm => continue,
            Ok(_) => std::process::exit(options.exit_code),
            Err(e) => fail(&format!("failed to wait for SIGTERM: {e}")),
        }
    }
}

fn parse_options() -> Options {
    let mut options = Options {
        heartbeat_ms: 100,
        ..Options::default()
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            CHILD_MODE => run_child(),
            "--port" => options.port = parse_next(&mut args, "--port"),
            "--model" | "--device" => {
                args.next()
                    .unwrap_or_else(|| fail(&format!("{arg} needs a value")));
            }
            "--exit-code" => options.exit_code = parse_next(&mut args, "--exit-code"),
            "--ignore-sigterm" => options.ignore_sigterm = true,
            "--fork-child" => options.fork_child = true,
            "--fork-session-child" => options.fork_session_child = true,
            "--crash-at-start" => options.crash_at_start = true,
            "--no-listen" => options.no_listen = true,
            "--heartbeats" => options.heartbeats = parse_next(&mut args, "--heartbeats"),
            "--heartbeat-ms" => options.heartbeat_ms = parse_next(&mut args, "--heartbeat-ms"),
            other => fail(&format!("unknown argument {other:?}")),
        }
    }
    options
}

/// Blocks SIGTERM before anything else, so a SIGTERM that arrives early waits for `wait`
/// instead of killing the process with the default action.
fn block_sigterm() -> SigSet {
    let mut sigterm = SigSet::empty();
    sigterm.add(Signal::SIGTERM);
    pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&sigterm), None)
        .unwrap_or_else(|e| fail(&format!("failed to block SIGTERM: {e}")));
    sigterm
}

fn listen(port: u16) -> TcpListener {
    let listener = TcpListener::bind(("127.0.0.1", port))
        .unwrap_or_else(|e| fail(&format!("failed to listen on port {port}: {e}")));
    let port = listener.local_addr().map(|a| a.port()).unwrap_or(port);
    println!("listening on {port}");
    let _ = std::io::stdout().flush();
    listener
}

/// Starts a copy of this program that ignores SIGTERM, in this process group or a new one.
///
/// The child is never waited for: it runs as long as this process, and whoever stops the worker
/// stops it too, which is what the tests check.
#[allow(clippy::zombie_processes)]
fn start_child(own_group: bool) {
    let exe = std::env::current_exe().unwrap_or_else(|e| fail(&format!("no own path: {e}")));
    let mut command = Command::new(exe);
    command.arg(CHILD_MODE).stdin(Stdio::null());
    if own_group {
        command.process_group(0);
    }
    let child = command
        .spawn()
        .unwrap_or_else(|e| fail(&format!("failed to start child: {e}")));
    println!("child {}", child.id());
}

fn run_child() -> ! {
    block_sigterm();
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

fn send_heartbeats(count: u32, every: Duration) {
    let addr = std::env::var("RBEE_HIVE_ADDR").unwrap_or_else(|_| fail("RBEE_HIVE_ADDR unset"));
    let worker_id =
        std::env::var("RBEE_WORKER_ID").unwrap_or_else(|_| fail("RBEE_WORKER_ID unset"));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| fail(&format!("no runtime: {e}")));
    runtime.block_on(async move {
        use rbee_proto::v1::{HeartbeatRequest, hive_service_client::HiveServiceClient};
        let mut client = HiveServiceClient::connect(format!("http://{addr}"))
            .await
            .unwrap_or_else(|e| fail(&format!("cannot reach the hive at {addr}: {e}")));
        for _ in 0..count {
            let request = HeartbeatRequest {
                worker_id: worker_id.clone(),
                ready: true,
            };
            if let Err(status) = client.heartbeat(request).await {
                eprintln!("heartbeat failed: {status}");
            }
            tokio::time::sleep(every).await;
        }
    });
}

fn parse_next<T: std::str::FromStr>(args: &mut impl Iterator<Item = String>, flag: &str) -> T {
    args.next()
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(|| fail(&format!("{flag} needs a number")))
}

fn fail(message: &str) -> ! {
    eprintln!("test-worker: {message}");
    std::process::exit(64)
}
