//! `adaptor pull`: copies a manifest's current artifacts (or `--only` some) out of its store,
//! local or remote, into a folder laid out like a store; `--link` links from a local store.

use std::process::ExitCode;

use anyhow::{bail, Context as _, Result};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use pipeline::executor::State;
use pipeline::store::CopyMode;

use super::path::Standing;
use super::Context;
use crate::cli::PullSettings;
use crate::render::{self, display_path, Pulled};

pub fn pull(cx: &Context, s: &PullSettings) -> Result<ExitCode> {
    let standing = Standing::of(cx, &s.manifest, &s.store, false)?;
    if s.link && standing.store.local_root().is_none() {
        bail!(
            "--link needs a local store; {} is not one (leave out --link to copy)",
            standing.url
        );
    }
    let which = match s.only.is_empty() {
        true => (0..standing.plan.instances.len()).collect(),
        false => standing.matching(&s.only)?,
    };
    std::fs::create_dir_all(&s.to).with_context(|| format!("cannot create {}", s.to.display()))?;
    let to =
        s.to.canonicalize()
            .with_context(|| format!("cannot read {}", s.to.display()))?;
    let bar = progress_bar(cx.quiet());
    let mode = if s.link {
        CopyMode::Link
    } else {
        CopyMode::Copy
    };
    let mut rows = Vec::with_capacity(which.len());
    for i in which {
        let mut located = standing.located(i, None)?;
        let outcome = match standing.states[i] {
            State::UpToDate => {
                bar.set_message(located.instance.to_string());
                let o = standing
                    .store
                    .copy_artifact(located.kind, located.key, &to, mode, &|n| bar.inc(n))
                    .with_context(|| format!("pull {}", located.instance))?;
                let dest = format!("{}/{}", located.kind, located.key);
                located.path = Some(display_path(&pipeline::StoreUrl::Local(to.clone()), &dest));
                Some(o)
            }
            _ => None,
        };
        rows.push(Pulled { located, outcome });
    }
    bar.finish_and_clear();
    if s.json {
        print!("{}", render::render_pull_json(&rows, &to));
    } else {
        print!("{}", render::render_pull(&rows, &to, s.link));
    }
    Ok(match render::PullTotals::of(&rows).skipped {
        0 => ExitCode::SUCCESS,
        _ => ExitCode::from(1),
    })
}

/// Bytes written so far, on stderr when it is a terminal (hidden with `--quiet`).
fn progress_bar(quiet: bool) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(
        None,
        if quiet {
            ProgressDrawTarget::hidden()
        } else {
            ProgressDrawTarget::stderr()
        },
    );
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} pulling {msg}: {binary_bytes} ({binary_bytes_per_sec})",
        )
        .expect("valid template"),
    );
    bar.enable_steady_tick(std::time::Duration::from_millis(120));
    bar
}
