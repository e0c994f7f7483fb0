//! Staging and publishing: a stage writes into a staging folder, the runner describes and hashes
//! it, then commits it with `_manifest.json` last, while the fence says its lease still holds.

use std::path::{Path, PathBuf};

use bytes::Bytes;

use crate::error::{Error, IoContext, Result};
use crate::key::StageKey;

use super::*;

impl Store {
    /// A fresh, empty staging directory for one attempt: inside the store for a local store (so the
    /// commit is a rename on the same filesystem), in the cache folder otherwise.
    pub fn new_staging(&self, nonce: &str) -> Result<PathBuf> {
        let base = match &self.local_root {
            Some(root) => root.join("_staging"),
            None => self.cache_dir.join("staging"),
        };
        let dir = base.join(nonce);
        std::fs::create_dir_all(dir.join("out")).at(&dir)?;
        Ok(dir)
    }

    /// The folder where an instance keeps state across attempts (e.g. training checkpoints to
    /// resume from): `_resume/<kind>/<key>` in a local store (shared by every node that mounts it),
    /// `resume/<kind>/<key>` in the cache folder for a remote store. Not created here.
    pub fn resume_dir(&self, kind: &str, key: &StageKey) -> PathBuf {
        match &self.local_root {
            Some(root) => root.join("_resume").join(Self::artifact_dir(kind, key)),
            None => self
                .cache_dir
                .join("resume")
                .join(Self::artifact_dir(kind, key)),
        }
    }

    /// Where a finished output whose publish failed is kept for the next run (remote stores).
    pub(super) fn unpublished_dir(&self, kind: &str, key: &StageKey) -> PathBuf {
        self.cache_dir
            .join("unpublished")
            .join(Self::artifact_dir(kind, key))
    }

    /// Keeps a finished staging folder whose publish failed (with the manifest to publish), so
    /// the next run re-publishes it instead of recomputing. Remote stores only (a local store's
    /// staging folder is inside the store).
    pub fn keep_unpublished(&self, staging: &Path, manifest: &ArtifactManifest) -> Result<PathBuf> {
        if self.local_root.is_some() {
            return Err(Error::Store {
                url: self.url.to_string(),
                message: "a local store keeps no unpublished outputs".into(),
            });
        }
        write_synced(
            &staging.join("manifest.json"),
            &serde_json::to_vec_pretty(manifest).expect("serialisable"),
        )?;
        let dest = self.unpublished_dir(&manifest.kind, &manifest.key);
        let _ = std::fs::remove_dir_all(&dest);
        let parent = dest.parent().expect("has a parent");
        std::fs::create_dir_all(parent).at(parent)?;
        std::fs::rename(staging, &dest).at(&dest)?;
        Ok(dest)
    }

    /// A kept output of `kind`/`key` (see [`Store::keep_unpublished`]) whose files still match
    /// its manifest (rehashed): its folder and manifest. One that does not match is removed.
    pub fn take_unpublished(
        &self,
        kind: &str,
        key: &StageKey,
    ) -> Result<Option<(PathBuf, ArtifactManifest)>> {
        let dir = self.unpublished_dir(kind, key);
        let Ok(bytes) = std::fs::read(dir.join("manifest.json")) else {
            return Ok(None);
        };
        let sound = serde_json::from_slice::<ArtifactManifest>(&bytes)
            .ok()
            .filter(|m| m.validate(kind, key).is_ok())
            .filter(|m| describe_outputs(&dir.join("out")).is_ok_and(|files| files == m.files));
        match sound {
            Some(m) => Ok(Some((dir, m))),
            None => {
                let _ = std::fs::remove_dir_all(&dir);
                Ok(None)
            }
        }
    }

    /// A fresh attempt folder name for a publish: on a remote store each attempt uploads under
    /// its own folder; a local store commits by rename and needs none.
    pub fn new_attempt(&self) -> Option<String> {
        self.local_root
            .is_none()
            .then(|| format!("_attempt-{}", unique_token()))
    }

    /// Makes a staged artifact visible: its files, then `_log.txt`, then `_manifest.json` last.
    /// `fence` is asked right before the commit (a round trip that confirms the lease) and
    /// `lost` before each upload (no round trip); if either says the lease is lost, nothing more
    /// is uploaded and nothing is committed. Local store: every file and folder is fsynced, then the whole folder appears
    /// at once (one rename), then its parent folders are fsynced. Remote store: the files go
    /// under a fresh attempt folder that only this manifest names, then the manifest is created
    /// if absent; a failed or lost attempt's files are deleted (best effort) and never followed.
    pub fn publish(
        &self,
        staging: &Path,
        manifest: &ArtifactManifest,
        fence: &dyn Fn() -> bool,
        lost: &dyn Fn() -> bool,
    ) -> Result<PublishOutcome> {
        if let Some(root) = &self.local_root {
            let (out, target) = self.seal_local(root, staging, manifest)?;
            let parent = target.parent().expect("artifact dirs have a parent");
            if !fence() {
                return Ok(PublishOutcome::LostLease);
            }
            return match std::fs::rename(&out, &target) {
                Ok(()) => {
                    sync_dir(parent)?;
                    let _ = std::fs::remove_dir_all(staging);
                    Ok(PublishOutcome::Published)
                }
                Err(_) if target.join("_manifest.json").is_file() => {
                    let _ = std::fs::remove_dir_all(staging);
                    Ok(PublishOutcome::AlreadyComplete)
                }
                Err(_) if target.exists() => {
                    self.replace_leftover(staging, &out, &target)?;
                    Ok(PublishOutcome::Published)
                }
                Err(e) => Err(Error::io(&target, e)),
            };
        }
        let mut manifest = manifest.clone();
        let attempt = self.upload_attempt(staging, &mut manifest, fence, lost)?;
        let attempt = match attempt {
            Ok(a) => a,
            Err(outcome) => return Ok(outcome),
        };
        let attempt_rel = format!(
            "{}/{attempt}",
            Self::artifact_dir(&manifest.kind, &manifest.key)
        );
        let manifest_rel = Self::manifest_path(&manifest.kind, &manifest.key);
        let manifest_bytes = serde_json::to_vec_pretty(&manifest).expect("serialisable");
        let put = self.put(&manifest_rel, Bytes::from(manifest_bytes), true);
        if matches!(put, Ok(true)) {
            let _ = std::fs::remove_dir_all(staging);
            return Ok(PublishOutcome::Published);
        }
        // "Already exists" or an error: a create whose answer was lost may have been applied
        // (and object_store's retry of it then finds the object there), so the manifest in the
        // store says who committed. Only an attempt that is certainly not committed is removed.
        let ours = self
            .get_json::<ArtifactManifest>(&manifest_rel)
            .map(|m| m.map(|m| m.attempt.as_deref() == Some(attempt.as_str())));
        match (put, ours) {
            (_, Ok(Some(true))) => {
                let _ = std::fs::remove_dir_all(staging);
                Ok(PublishOutcome::Published)
            }
            (_, Ok(Some(false))) => {
                let _ = self.delete_prefix(&attempt_rel);
                let _ = std::fs::remove_dir_all(staging);
                Ok(PublishOutcome::AlreadyComplete)
            }
            (Err(e), Ok(None)) => {
                let _ = self.delete_prefix(&attempt_rel);
                Err(e)
            }
            // Present a moment ago, gone now (a gc or quarantine in between): not committed.
            (Ok(_), Ok(None)) => {
                let _ = self.delete_prefix(&attempt_rel);
                Err(Error::Store {
                    url: self.url.to_string(),
                    message: format!(
                        "{manifest_rel}: another commit was seen, then it vanished; the output is kept for the next run"
                    ),
                })
            }
            // Cannot tell: the attempt folder stays (gc removes it once no manifest names it).
            (Err(e), Err(_)) => Err(e),
            (Ok(_), Err(e)) => Err(e),
        }
    }

    /// A local store's finished folder made ready to move into place: the log inside, every file
    /// and folder fsynced, `_manifest.json` written and fsynced, the target's parent created.
    /// Returns the folder and its target.
    pub(super) fn seal_local(
        &self,
        root: &Path,
        staging: &Path,
        manifest: &ArtifactManifest,
    ) -> Result<(PathBuf, PathBuf)> {
        let out = staging.join("out");
        let log = staging.join("log.txt");
        if log.exists() {
            std::fs::rename(&log, out.join("_log.txt")).at(&log)?;
        }
        sync_tree(&out)?;
        let manifest_bytes = serde_json::to_vec_pretty(manifest).expect("serialisable");
        write_synced(&out.join("_manifest.json"), &manifest_bytes)?;
        sync_dir(&out)?;
        let target = root.join(Self::artifact_dir(&manifest.kind, &manifest.key));
        let parent = target.parent().expect("artifact dirs have a parent");
        let new_parent = !parent.exists();
        std::fs::create_dir_all(parent).at(parent)?;
        if new_parent {
            sync_dir(root)?;
        }
        Ok((out, target))
    }

    /// Moves `out` to `target`, where an incomplete leftover (no manifest: an interrupted gc or
    /// quarantine) is in the way.
    pub(super) fn replace_leftover(&self, staging: &Path, out: &Path, target: &Path) -> Result<()> {
        std::fs::remove_dir_all(target).at(target)?;
        std::fs::rename(out, target).at(target)?;
        sync_dir(target.parent().expect("has a parent"))?;
        let _ = std::fs::remove_dir_all(staging);
        Ok(())
    }

    /// Remote store: uploads a staged output's files and log under a fresh attempt folder (set
    /// in `manifest`), asking `lost` before each file and `fence` at the end. `Ok(Ok(attempt))`
    /// when all is uploaded and the lease holds; `Ok(Err(outcome))` when the lease was lost (the
    /// attempt folder and staging removed); an error removes the attempt and keeps the staging
    /// folder (the caller keeps it for a re-publish).
    pub(super) fn upload_attempt(
        &self,
        staging: &Path,
        manifest: &mut ArtifactManifest,
        fence: &dyn Fn() -> bool,
        lost: &dyn Fn() -> bool,
    ) -> Result<std::result::Result<String, PublishOutcome>> {
        let out = staging.join("out");
        let log = staging.join("log.txt");
        let attempt = manifest
            .attempt
            .clone()
            .unwrap_or_else(|| format!("_attempt-{}", unique_token()));
        manifest.attempt = Some(attempt.clone());
        let attempt_rel = format!(
            "{}/{attempt}",
            Self::artifact_dir(&manifest.kind, &manifest.key)
        );
        let uploaded = (|| -> Result<Option<PublishOutcome>> {
            for file in &manifest.files {
                if lost() {
                    return Ok(Some(PublishOutcome::LostLease));
                }
                self.upload_file(&out.join(&file.path), &manifest.file_rel(&file.path))?;
            }
            if log.exists() {
                self.upload_file(&log, &manifest.file_rel("_log.txt"))?;
            }
            if !fence() {
                return Ok(Some(PublishOutcome::LostLease));
            }
            Ok(None)
        })();
        match uploaded {
            Ok(None) => Ok(Ok(attempt)),
            Ok(Some(outcome)) => {
                // Not committed: our attempt folder is never followed; remove it.
                let _ = self.delete_prefix(&attempt_rel);
                let _ = std::fs::remove_dir_all(staging);
                Ok(Err(outcome))
            }
            Err(e) => {
                let _ = self.delete_prefix(&attempt_rel);
                Err(e)
            }
        }
    }
}

pub(super) fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut f = std::fs::File::create(path).at(path)?;
    f.write_all(bytes).at(path)?;
    f.sync_all().at(path)
}

pub(super) fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir).and_then(|f| f.sync_all()).at(dir)
}

/// fsyncs every file and folder under `dir` (children before their folder).
pub(super) fn sync_tree(dir: &Path) -> Result<()> {
    for entry in std::fs::read_dir(dir).at(dir)? {
        let entry = entry.at(dir)?;
        let path = entry.path();
        if entry.file_type().at(&path)?.is_dir() {
            sync_tree(&path)?;
        } else {
            std::fs::File::open(&path)
                .and_then(|f| f.sync_all())
                .at(&path)?;
        }
    }
    sync_dir(dir)
}

/// Lists the files of a staged output folder (recursively, sorted) with sizes and blake3 digests.
pub fn describe_outputs(out: &Path) -> Result<Vec<FileRecord>> {
    use rayon::prelude::*;
    fn walk(dir: &Path, rel: &str, acc: &mut Vec<(PathBuf, String)>) -> Result<()> {
        for entry in std::fs::read_dir(dir).at(dir)? {
            let entry = entry.at(dir)?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let child = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            let path = entry.path();
            let ft = entry.file_type().at(&path)?;
            if ft.is_dir() {
                walk(&path, &child, acc)?;
            } else if ft.is_file() {
                acc.push((path, child));
            } else {
                // Hashing a FIFO or a device would block or never end: refused by name. A
                // symbolic link is kept when it leads to a regular file (its content is hashed).
                let target = std::fs::metadata(&path).at(&path)?;
                if ft.is_symlink() && target.is_file() {
                    acc.push((path, child));
                } else {
                    let what = crate::fingerprint::file_kind(&target);
                    let what = if ft.is_symlink() {
                        format!("a symbolic link to {what}")
                    } else {
                        what.to_string()
                    };
                    return Err(Error::Artifact {
                        what: child,
                        message: format!(
                            "is {what}; a stage's output may hold regular files and folders only"
                        ),
                    });
                }
            }
        }
        Ok(())
    }
    let mut files = Vec::new();
    walk(out, "", &mut files)?;
    files.sort_by(|a, b| a.1.cmp(&b.1));
    files
        .into_par_iter()
        .map(|(path, rel)| {
            let size = std::fs::metadata(&path).at(&path)?.len();
            Ok(FileRecord {
                blake3: crate::fingerprint::hash_file(&path, size)?,
                bytes: size,
                path: rel,
            })
        })
        .collect()
}
