//! `adaptor`: the command line. Parses arguments and the environment into settings (`cli`), runs
//! one command (`commands`), renders what a person reads (`render`, `display`) and sets the exit
//! code; everything else happens in the `pipeline` and `stages` libraries.
//!
//! Exit codes: 0 success; 1 a run or `exec` with a failed, not-run or cancelled stage, or
//! `verify` with a bad artifact; 2 an error that stopped the command (a bad manifest, flag,
//! environment variable or store; clap's usage errors too); 130 a second Ctrl-C during `run`;
//! `embed` passes on the worker's code (1 when a signal killed it).

mod cli;
mod commands;
mod display;
mod render;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    match cli::Settings::from_cli(cli).and_then(|settings| commands::dispatch(&settings)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
