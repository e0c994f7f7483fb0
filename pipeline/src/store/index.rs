//! The run index across manifests. Each manifest keeps its own index (`_index/<manifest-id>/`),
//! so a copied or renamed manifest starts with none; what `explain` and `status` compare with
//! then is the last build of the same instance name from any other manifest in the store.

use std::collections::BTreeSet;

use crate::error::Result;

use super::{IndexEntry, Store};

/// Every index record in the store, listed once (one listing, however many instances ask).
pub struct IndexCatalog {
    paths: BTreeSet<String>,
}

/// The last successful build of an instance name recorded by another manifest.
#[derive(Debug, Clone)]
pub struct ForeignBuild {
    /// The other manifest's index namespace (`stem-<16 hex>`).
    pub manifest_id: String,
    /// The other manifest as given on its command line, where the record says (older records
    /// do not; then the stem of `manifest_id`).
    pub manifest: String,
    pub entry: IndexEntry,
}

impl Store {
    /// Lists `_index/` once.
    pub fn index_catalog(&self) -> Result<IndexCatalog> {
        Ok(IndexCatalog {
            paths: self.list("_index")?.into_iter().map(|(p, _)| p).collect(),
        })
    }

    /// The newest successful build of `instance` recorded under another manifest than
    /// `except` (a manifest id). Unreadable records are skipped with a warning, as everywhere.
    pub fn last_build_elsewhere(
        &self,
        catalog: &IndexCatalog,
        instance: &str,
        except: &str,
    ) -> Result<Option<ForeignBuild>> {
        // The manifest id is the only part of the path that differs between manifests.
        let own = Store::index_path(except, instance);
        let file = own.rsplit('/').next().expect("a file name");
        let mut best: Option<ForeignBuild> = None;
        for path in &catalog.paths {
            let Some(id) = path
                .strip_prefix("_index/")
                .and_then(|p| p.strip_suffix(file))
                .and_then(|p| p.strip_suffix('/'))
            else {
                continue;
            };
            if id == except || id.contains('/') {
                continue;
            }
            let Some(entry) = self.get_json_or_stale::<IndexEntry>(path)? else {
                continue;
            };
            if entry.status != "ok" || entry.instance != instance {
                continue;
            }
            if best.as_ref().is_some_and(|b| b.entry.unix >= entry.unix) {
                continue;
            }
            let manifest = entry.manifest.clone().unwrap_or_else(|| {
                // `stem-<16 hex>`: the stem is what a person recognises.
                id.rsplit_once('-').map_or(id, |(stem, _)| stem).to_string()
            });
            best = Some(ForeignBuild {
                manifest_id: id.to_string(),
                manifest,
                entry,
            });
        }
        Ok(best)
    }
}
