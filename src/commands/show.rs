//! `adaptor show`: one artifact, found by the path of its folder, by key or by a unique key
//! prefix; its stage log too with `--verbose`.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context as _, Result};
use pipeline::store::ArtifactManifest;
use pipeline::{StageKey, Store, StoreUrl};

use super::Context;
use crate::cli::StoreChoice;
use crate::render;

pub fn show(cx: &Context, target: &str, json: bool, store: &StoreChoice) -> Result<ExitCode> {
    let url = store.url(None);
    let (manifest, log, location) = find_artifact(cx, target, &url)?;
    let log = log.filter(|_| cx.settings.verbose);
    if json {
        print!(
            "{}",
            render::render_show_json(&manifest, &location, log.as_deref())
        );
    } else {
        print!("{}", render::render_show(&manifest, log.as_deref()));
    }
    Ok(ExitCode::SUCCESS)
}

/// The artifact's `_manifest.json`, its `_log.txt` (when there is one) and where its folder is
/// (a path, or a URL on a remote store): by folder path, by full key, or by a unique key prefix
/// (6+ hex digits) in the store at `url`.
fn find_artifact(
    cx: &Context,
    target: &str,
    url: &StoreUrl,
) -> Result<(ArtifactManifest, Option<String>, String)> {
    let as_path = Path::new(target);
    if as_path.exists() {
        let dir = if as_path.is_file() {
            as_path.parent().unwrap_or(Path::new("."))
        } else {
            as_path
        };
        let text = std::fs::read_to_string(dir.join("_manifest.json")).with_context(|| {
            format!(
                "{} is not a complete artifact (no readable _manifest.json)",
                dir.display()
            )
        })?;
        let m: ArtifactManifest = serde_json::from_str(&text)
            .with_context(|| format!("{}/_manifest.json", dir.display()))?;
        let log = std::fs::read_to_string(dir.join("_log.txt")).ok();
        let location = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
        return Ok((m, log, location.display().to_string()));
    }
    if target.len() < 6 || !target.chars().all(|c| c.is_ascii_hexdigit()) {
        bail!("`{target}` is neither an artifact folder nor a key (6 or more hex digits)");
    }
    let store = cx.read_store(url)?;
    let mut found = Vec::new();
    for kind in store.list_dirs("")? {
        if kind.starts_with('_') {
            continue;
        }
        for key in store.list_dirs(&kind)? {
            if key.starts_with(target) {
                found.push((kind.clone(), key));
            }
        }
    }
    match found.as_slice() {
        [] => bail!("no artifact with key {target}… in {url}"),
        [(kind, key)] => {
            let key =
                StageKey::parse(key).ok_or_else(|| anyhow!("{kind}/{key} is not a key folder"))?;
            let m: ArtifactManifest = store
                .get_json(&Store::manifest_path(kind, &key))?
                .ok_or_else(|| {
                    anyhow!("{kind}/{} is not complete (no _manifest.json)", key.short())
                })?;
            let log = store
                .get(&m.file_rel("_log.txt"))?
                .map(|b| String::from_utf8_lossy(&b).into_owned());
            let location = render::display_path(url, &Store::artifact_dir(kind, &key));
            Ok((m, log, location))
        }
        many => bail!(
            "key prefix {target} is ambiguous: {}",
            many.iter()
                .map(|(k, key)| format!("{k}/{key}"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}
