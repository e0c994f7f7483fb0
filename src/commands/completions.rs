//! `adaptor completions SHELL`: the completion script of a shell (bash, zsh, fish, elvish,
//! powershell), generated from the command line's own definition by clap_complete.

use std::process::ExitCode;

use anyhow::Result;
use clap::CommandFactory;
use clap_complete::Shell;

use crate::cli::Cli;

pub fn completions(shell: Shell) -> Result<ExitCode> {
    clap_complete::generate(
        shell,
        &mut Cli::command(),
        "adaptor",
        &mut std::io::stdout(),
    );
    Ok(ExitCode::SUCCESS)
}
