//! `adaptor embed`: texts or images through a frozen backbone into a Parquet table. The options
//! are validated here (`cli::embed`); the libtorch worker (`adaptor-torch embed`) does the work,
//! and its failure (or death by a signal) is the command's failure (exit 1).

use std::process::ExitCode;

use anyhow::{anyhow, Result};

use super::Context;
use crate::cli::EmbedCommand;
use crate::exit::Exit;

pub fn embed(cx: &Context, what: &EmbedCommand) -> Result<ExitCode> {
    let worker = &cx.settings.torch_worker;
    let status = std::process::Command::new(worker)
        .args(what.worker_args())
        .status()
        .map_err(|e| {
            anyhow!(
                "cannot start {}: {e} (build it with `cargo build --workspace`, or set ADAPTOR_TORCH)",
                worker.display()
            )
        })?;
    if status.success() {
        return Ok(Exit::Done.into());
    }
    if status.code().is_none() {
        // Killed by a signal: say which (the worker said nothing).
        eprintln!(
            "error: {} {}",
            worker.display(),
            pipeline::process::describe_exit(&status)
        );
    }
    Ok(Exit::Failed.into())
}
