//! `adaptor embed`: texts or images through a frozen backbone into a Parquet table, by the
//! libtorch worker (`adaptor-torch embed`), whose exit code this passes on.

use std::ffi::OsString;
use std::process::ExitCode;

use anyhow::{anyhow, Result};

use super::Context;

pub fn embed(cx: &Context, args: &[OsString]) -> Result<ExitCode> {
    let worker = &cx.settings.torch_worker;
    let status = std::process::Command::new(worker)
        .arg("embed")
        .args(args)
        .status()
        .map_err(|e| {
            anyhow!(
                "cannot start {}: {e} (build it with `cargo build --workspace`, or set ADAPTOR_TORCH)",
                worker.display()
            )
        })?;
    if status.code().is_none() {
        // Killed by a signal: say which; the exit code is then 1.
        eprintln!(
            "error: {} {}",
            worker.display(),
            pipeline::process::describe_exit(&status)
        );
    }
    Ok(ExitCode::from(
        status.code().unwrap_or(1).clamp(0, 255) as u8
    ))
}
