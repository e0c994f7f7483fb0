//! `adaptor embed`: texts or images through a frozen backbone into a Parquet table. The options
//! are validated here (`cli::embed`); the libtorch worker (`adaptor-torch embed`) does the work,
//! and its failure (or death by a signal) is the command's failure (exit 1). Inputs and the output
//! may be `s3://bucket/key` objects: inputs are downloaded into the cache folder first (streamed
//! in chunks pinned to the object's ETag), the output is written there and uploaded when complete
//! (multipart, streamed from disk); its size and blake3 digest are printed.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{anyhow, Context as _, Result};
use pipeline::{Store, StoreUrl};

use super::Context;
use crate::cli::EmbedCommand;
use crate::exit::Exit;

/// An `s3://bucket/dir/name` object: the store of its folder and its name there.
fn remote(p: &Path) -> Result<Option<(StoreUrl, String)>> {
    let Some(s) = p.to_str().filter(|s| s.starts_with("s3://")) else {
        return Ok(None);
    };
    let (dir, name) = s
        .rsplit_once('/')
        .filter(|(d, n)| d.len() > "s3://".len() && !n.is_empty())
        .ok_or_else(|| anyhow!("`{s}` names a bucket or a folder, not an object"))?;
    let url = StoreUrl::parse(dir, Path::new("/")).map_err(|e| anyhow!("`{s}`: {e}"))?;
    Ok(Some((url, name.to_string())))
}

/// Downloads the `s3://` inputs into `tmp` (each in a folder of its own, under its own name: an
/// image's key is its file name) and points the command at the copies.
fn fetch_inputs(cx: &Context, inputs: &mut [PathBuf], tmp: &Path) -> Result<()> {
    for (i, input) in inputs.iter_mut().enumerate() {
        let Some((url, name)) = remote(input)? else {
            continue;
        };
        let dir = tmp.join(format!("in/{i}"));
        std::fs::create_dir_all(&dir).with_context(|| dir.display().to_string())?;
        let store = Store::open_existing(&url, &cx.settings.store_settings, &cx.settings.cache)?;
        let dest = dir.join(&name);
        store.download(&name, &dest)?;
        *input = dest;
    }
    Ok(())
}

pub fn embed(cx: &Context, what: &EmbedCommand) -> Result<ExitCode> {
    let mut what = what.clone();
    let (inputs, output) = match &mut what {
        EmbedCommand::Text(t) => (std::slice::from_mut(&mut t.input), &mut t.output),
        EmbedCommand::Image(i) => (&mut i.input[..], &mut i.output),
    };
    let remote_output = remote(output)?;
    let needs_tmp = remote_output.is_some() || inputs.iter().any(|p| p.starts_with("s3:"));
    let tmp = match needs_tmp {
        true => {
            let dir = cx
                .settings
                .cache
                .join(format!("embed-{}", pipeline::store::unique_token()));
            std::fs::create_dir_all(&dir).with_context(|| dir.display().to_string())?;
            Some(TempDir(dir))
        }
        false => None,
    };
    if let Some(tmp) = &tmp {
        fetch_inputs(cx, inputs, tmp.path())?;
        if let Some((_, name)) = &remote_output {
            *output = tmp.path().join("out").join(name);
            std::fs::create_dir_all(tmp.path().join("out"))?;
        }
    }
    let local_output = output.clone();
    let code = run_worker(cx, &what)?;
    if let (Some((url, name)), Exit::Done) = (remote_output, code) {
        let store = Store::open(&url, &cx.settings.store_settings, &cx.settings.cache)?;
        store.upload_file(&local_output, &name)?;
        let described = pipeline::store::describe_outputs(
            local_output.parent().expect("in the temporary folder"),
        )?;
        let f = described
            .iter()
            .find(|f| f.path == name)
            .ok_or_else(|| anyhow!("{}: not written", local_output.display()))?;
        println!(
            "{}",
            crate::render::uploaded(&format!("{url}/{name}"), f.bytes, &f.blake3)
        );
    }
    Ok(code.into())
}

/// The cache folder's scratch space of one `embed`, removed when it ends (however it ends).
struct TempDir(PathBuf);

impl TempDir {
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn run_worker(cx: &Context, what: &EmbedCommand) -> Result<Exit> {
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
        return Ok(Exit::Done);
    }
    if status.code().is_none() {
        // Killed by a signal: say which (the worker said nothing).
        eprintln!(
            "error: {} {}",
            worker.display(),
            pipeline::process::describe_exit(&status)
        );
    }
    Ok(Exit::Failed)
}
