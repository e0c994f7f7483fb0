//! Checking artifacts against their manifests: the manifest read back and validated, file sizes
//! (cheap, for `status`), full rehashes (`verify`), and quarantine of what fails.

use futures::{StreamExt, TryStreamExt};
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, ObjectStoreExt};

use crate::error::{Error, IoContext, Result};
use crate::key::StageKey;

use super::*;

impl Store {
    /// Reads and validates the `_manifest.json` of `kind`/`key` (see
    /// [`ArtifactManifest::validate`]); `None` if the artifact is not complete.
    pub fn read_manifest(&self, kind: &str, key: &StageKey) -> Result<Option<ArtifactManifest>> {
        let rel = Self::manifest_path(kind, key);
        let Some(bytes) = self.get(&rel)? else {
            return Ok(None);
        };
        let bad = |message: String| Error::Artifact {
            what: format!("{}/{rel}", self.url),
            message,
        };
        let m: ArtifactManifest =
            serde_json::from_slice(&bytes).map_err(|e| bad(format!("unreadable JSON: {e}")))?;
        m.validate(kind, key).map_err(bad)?;
        Ok(Some(m))
    }

    /// For each complete artifact of `items`: the files whose size differs from the manifest or
    /// that are missing (one stat per file locally, one listing per artifact on S3). An
    /// unreadable manifest is reported as a bad `_manifest.json`. Incomplete artifacts get `[]`.
    pub fn check_sizes(&self, items: &[(String, StageKey)]) -> Result<Vec<Vec<BadFile>>> {
        let manifests: Vec<std::result::Result<Option<ArtifactManifest>, String>> = items
            .iter()
            .map(|(kind, key)| match self.read_manifest(kind, key) {
                Ok(m) => Ok(m),
                Err(Error::Artifact { message, .. }) => Err(message),
                Err(e) => Err(e.to_string()),
            })
            .collect();
        let compare = |m: &ArtifactManifest, sizes: &dyn Fn(&str) -> Option<u64>| -> Vec<BadFile> {
            m.files
                .iter()
                .filter_map(|f| {
                    let problem = match sizes(&m.file_rel(&f.path)) {
                        None => "missing".to_string(),
                        Some(n) if n != f.bytes => {
                            format!("{n} bytes, the manifest says {}", f.bytes)
                        }
                        Some(_) => return None,
                    };
                    Some(BadFile {
                        path: f.path.clone(),
                        location: m.file_rel(&f.path),
                        problem,
                    })
                })
                .collect()
        };
        let manifest_bad = |e: &String, i: usize| {
            vec![BadFile {
                path: "_manifest.json".into(),
                location: Self::manifest_path(&items[i].0, &items[i].1),
                problem: e.clone(),
            }]
        };
        if let Some(root) = &self.local_root {
            return Ok(manifests
                .iter()
                .enumerate()
                .map(|(i, m)| match m {
                    Ok(None) => Vec::new(),
                    Err(e) => manifest_bad(e, i),
                    Ok(Some(m)) => compare(m, &|rel| {
                        std::fs::metadata(root.join(rel))
                            .ok()
                            .filter(|md| md.is_file())
                            .map(|md| md.len())
                    }),
                })
                .collect());
        }
        let prefixes: Vec<Option<ObjPath>> = manifests
            .iter()
            .map(|m| match m {
                Ok(Some(m)) => Some(self.path(&Self::artifact_dir(&m.kind, &m.key))),
                _ => None,
            })
            .collect();
        let inner = self.inner.clone();
        let listings: Vec<Option<Vec<object_store::ObjectMeta>>> = self
            .rt
            .block_on(async move {
                futures::stream::iter(prefixes)
                    .map(|p| {
                        let inner = inner.clone();
                        async move {
                            match p {
                                None => Ok(None),
                                Some(p) => {
                                    retry_cut(|| inner.list(Some(&p)).try_collect::<Vec<_>>())
                                        .await
                                        .map(Some)
                                }
                            }
                        }
                    })
                    .buffered(16)
                    .try_collect::<Vec<_>>()
                    .await
            })
            .map_err(|e| self.os_err(e))?;
        Ok(manifests
            .iter()
            .zip(listings)
            .enumerate()
            .map(|(i, (m, listing))| match m {
                Ok(None) => Vec::new(),
                Err(e) => manifest_bad(e, i),
                Ok(Some(m)) => {
                    let sizes: std::collections::HashMap<String, u64> = listing
                        .unwrap_or_default()
                        .into_iter()
                        .map(|o| (self.rel(&o.location), o.size))
                        .collect();
                    compare(m, &|rel| sizes.get(rel).copied())
                }
            })
            .collect())
    }

    /// Whether `kind`/`key` is complete and every file has its recorded size.
    pub fn is_sound(&self, kind: &str, key: &StageKey) -> Result<bool> {
        let item = [(kind.to_string(), key.clone())];
        Ok(self.complete_many(&item)?[0] && self.check_sizes(&item)?[0].is_empty())
    }

    /// Rehashes every file of a complete artifact against its `_manifest.json`. `None` if the
    /// artifact is not complete. Remote files are streamed (ranged reads), never held in memory.
    pub fn verify(&self, kind: &str, key: &StageKey) -> Result<Option<VerifyReport>> {
        let manifest = match self.read_manifest(kind, key) {
            Ok(Some(m)) => m,
            Ok(None) => return Ok(None),
            Err(Error::Artifact { message, .. }) => {
                return Ok(Some(VerifyReport {
                    files: 1,
                    bytes: 0,
                    bad: vec![BadFile {
                        path: "_manifest.json".into(),
                        location: Self::manifest_path(kind, key),
                        problem: message,
                    }],
                }))
            }
            Err(e) => return Err(e),
        };
        let mut report = VerifyReport::default();
        for f in &manifest.files {
            report.files += 1;
            report.bytes += f.bytes;
            let rel = manifest.file_rel(&f.path);
            let got: std::result::Result<String, String> = match &self.local_root {
                Some(root) => {
                    let p = root.join(&rel);
                    match std::fs::metadata(&p) {
                        Err(_) => Err("missing".into()),
                        Ok(md) if md.len() != f.bytes => {
                            Err(format!("{} bytes, the manifest says {}", md.len(), f.bytes))
                        }
                        Ok(md) => {
                            crate::fingerprint::hash_file(&p, md.len()).map_err(|e| e.to_string())
                        }
                    }
                }
                None => match self.fetch_file(&rel, f.bytes, None) {
                    Ok(Some(d)) => Ok(d),
                    Ok(None) => Err("missing".into()),
                    Err(Error::Artifact { message, .. }) => Err(message),
                    Err(e) => return Err(e),
                },
            };
            let problem = match got {
                Ok(d) if d == f.blake3 => continue,
                Ok(d) => format!("content digest {d} differs from the recorded {}", f.blake3),
                Err(p) => p,
            };
            report.bad.push(BadFile {
                path: f.path.clone(),
                location: rel,
                problem,
            });
        }
        Ok(Some(report))
    }

    /// Moves an artifact aside to `_quarantine/<kind>/<key>-<unix>/` so the next run rebuilds
    /// it; returns that folder. Its `_manifest.json` goes first (locally the whole folder moves
    /// in one rename), so it never looks complete while half moved.
    pub fn quarantine(&self, kind: &str, key: &StageKey) -> Result<String> {
        let from = Self::artifact_dir(kind, key);
        let to = format!(
            "_quarantine/{kind}/{key}-{}",
            unix_of(std::time::SystemTime::now()) as u64
        );
        if let Some(root) = &self.local_root {
            let (src, dst) = (root.join(&from), root.join(&to));
            let parent = dst.parent().expect("has a parent");
            std::fs::create_dir_all(parent).at(parent)?;
            std::fs::rename(&src, &dst).at(&src)?;
            sync_dir(src.parent().expect("has a parent"))?;
            return Ok(to);
        }
        let manifest = Self::manifest_path(kind, key);
        if let Some(bytes) = self.get(&manifest)? {
            self.put(&format!("{to}/_manifest.json"), bytes, false)?;
            self.delete(&manifest)?;
        }
        for (rel, _) in self.list(&from)? {
            let Some(tail) = rel.strip_prefix(&from) else {
                continue;
            };
            let (src, dst) = (self.path(&rel), self.path(&format!("{to}{tail}")));
            let inner = self.inner.clone();
            self.rt
                .block_on(async move { inner.copy(&src, &dst).await })
                .map_err(|e| self.os_err(e))?;
            self.delete(&rel)?;
        }
        Ok(to)
    }
}
