//! A small worker process for end-to-end tests: listens on a TCP port on loopback, then waits for
//! SIGTERM and reacts as its flags say.
//!
//! Usage: `test-worker [--port N] [--exit-code N] [--ignore-sigterm]`
//!
//! Prints `listening on PORT` once the socket listens. On SIGTERM it exits with `--exit-code`
//! (default 0), or keeps running with `--ignore-sigterm`, so only SIGKILL ends it.

use std::{io::Write, net::TcpListener};

use nix::sys::signal::{SigSet, SigmaskHow, Signal, pthread_sigmask};

fn main() {
    let mut port = 0u16;
    let mut exit_code = 0i32;
    let mut ignore_sigterm = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--port" => port = parse_next(&mut args, "--port"),
            "--exit-code" => exit_code = parse_next(&mut args, "--exit-code"),
            "--ignore-sigterm" => ignore_sigterm = true,
            other => fail(&format!("unknown argument {other:?}")),
        }
    }

    // Blocked before anything else, so a SIGTERM that arrives early waits for `wait` below
    // instead of killing the process with the default action.
    let mut sigterm = SigSet::empty();
    sigterm.add(Signal::SIGTERM);
    pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&sigterm), None)
        .unwrap_or_else(|e| fail(&format!("failed to block SIGTERM: {e}")));

    let listener = TcpListener::bind(("127.0.0.1", port))
        .unwrap_or_else(|e| fail(&format!("failed to listen on port {port}: {e}")));
    let port = listener.local_addr().map(|a| a.port()).unwrap_or(port);
    println!("listening on {port}");
    let _ = std::io::stdout().flush();

    loop {
        match sigterm.wait() {
            Ok(Signal::SIGTERM) if ignore_sigterm => continue,
            Ok(_) => std::process::exit(exit_code),
            Err(e) => fail(&format!("failed to wait for SIGTERM: {e}")),
        }
    }
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
