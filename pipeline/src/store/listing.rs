//! Listings and prefix deletes: what is under a folder of the store, the way `gc`, `verify` and
//! `status` walk it.

use futures::TryStreamExt;
use object_store::path::Path as ObjPath;
use object_store::ObjectStore;

use crate::error::{IoContext, Result};

use super::*;

impl Store {
    /// The metadata of every object under a store-relative prefix (a listing whose answer is
    /// cut is listed again).
    pub(super) fn list_meta(&self, prefix: &str) -> Result<Vec<object_store::ObjectMeta>> {
        let path = self.path(prefix);
        let inner = self.inner.clone();
        let metas = self
            .rt
            .block_on(
                async move { retry_cut(|| inner.list(Some(&path)).try_collect::<Vec<_>>()).await },
            )
            .map_err(|e| self.os_err(e))?;
        Ok(metas)
    }

    /// Every object under a store-relative prefix: (relative path, size).
    pub fn list(&self, prefix: &str) -> Result<Vec<(String, u64)>> {
        let metas = self.list_meta(prefix)?;
        Ok(metas
            .into_iter()
            .map(|m| (self.rel(&m.location), m.size))
            .collect())
    }

    /// Every object under a store-relative prefix with its modification time (store clock).
    pub fn list_modified(&self, prefix: &str) -> Result<Vec<(String, f64)>> {
        let metas = self.list_meta(prefix)?;
        Ok(metas
            .into_iter()
            .map(|m| {
                (
                    self.rel(&m.location),
                    m.last_modified.timestamp_millis() as f64 / 1000.0,
                )
            })
            .collect())
    }

    /// The immediate sub-folders of a store-relative prefix (`""` for the top level).
    pub fn list_dirs(&self, prefix: &str) -> Result<Vec<String>> {
        Ok(self.list_top(prefix)?.0)
    }

    /// The immediate sub-folders and objects of a store-relative prefix (`""` for the top).
    pub fn list_top(&self, prefix: &str) -> Result<(Vec<String>, Vec<String>)> {
        let path = if prefix.is_empty() {
            (!self.prefix.is_empty()).then(|| ObjPath::from(self.prefix.as_str()))
        } else {
            Some(self.path(prefix))
        };
        let inner = self.inner.clone();
        let res = self
            .rt
            .block_on(async move { retry_cut(|| inner.list_with_delimiter(path.as_ref())).await })
            .map_err(|e| self.os_err(e))?;
        let last = |p: &ObjPath| {
            self.rel(p)
                .rsplit('/')
                .next()
                .unwrap_or_default()
                .to_string()
        };
        Ok((
            res.common_prefixes.iter().map(last).collect(),
            res.objects.iter().map(|o| last(&o.location)).collect(),
        ))
    }

    /// Deletes a single object or every object under a prefix (and, locally, the folder). A
    /// `_manifest.json` directly inside goes first, so a folder never looks complete while
    /// half deleted.
    pub fn delete_prefix(&self, prefix: &str) -> Result<u64> {
        let manifest = format!("{prefix}/_manifest.json");
        if let Some(root) = &self.local_root {
            let dir = root.join(prefix);
            if dir.is_file() {
                let n = std::fs::metadata(&dir).at(&dir)?.len();
                std::fs::remove_file(&dir).at(&dir)?;
                return Ok(n);
            }
            if dir.exists() {
                let n = self.list(prefix)?.into_iter().map(|(_, s)| s).sum();
                let m = root.join(&manifest);
                if m.is_file() {
                    std::fs::remove_file(&m).at(&m)?;
                    sync_dir(&dir)?;
                }
                std::fs::remove_dir_all(&dir).at(&dir)?;
                return Ok(n);
            }
            return Ok(0);
        }
        let objects = self.list(prefix)?;
        let total = objects.iter().map(|(_, s)| s).sum();
        if objects.iter().any(|(rel, _)| *rel == manifest) {
            self.delete(&manifest)?;
        }
        for (rel, _) in objects {
            if rel != manifest {
                self.delete(&rel)?;
            }
        }
        if total == 0 {
            // A single object (e.g. a job record), not a folder.
            if let Some(b) = self.get(prefix)? {
                self.delete(prefix)?;
                return Ok(b.len() as u64);
            }
        }
        Ok(total)
    }
}
