//! `rbee completions SHELL`: shell completion scripts generated from the clap definitions.

use clap::CommandFactory;

use crate::{
    cli::{Cli, CompletionsArgs},
    render::{self, Exit},
};

/// Prints the completion script for the requested shell to stdout.
pub fn run(args: &CompletionsArgs) -> Exit {
    let mut command = Cli::command();
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut command, "rbee", &mut script);
    render::write_stdout(&String::from_utf8_lossy(&script));
    Exit::Success
}
