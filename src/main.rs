//! `adaptor`: the command line. Parses arguments and the environment into settings (`cli`), runs
//! one command (`commands`), renders what a person reads (`render`, `display`) and sets the exit
//! code (`exit`: what each code means, and the one mapping from errors to codes); everything else
//! happens in the `pipeline` and `stages` libraries.

mod cli;
mod commands;
mod display;
mod exit;
mod render;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    match cli::Settings::from_cli(cli).and_then(|settings| commands::dispatch(&settings)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", exit::error_message(&e));
            exit::Exit::of_error(&e).into()
        }
    }
}
