//! Copies of complete artifacts out of the store (`adaptor pull`, and the cache copies of a
//! remote store's inputs): each file's digest checked as it is written, the folder renamed into
//! place only when complete, so a copy that failed half-way never looks complete.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use crate::error::{Error, IoContext, Result};
use crate::key::StageKey;

use super::*;

/// How `pull` puts an artifact's files into the destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyMode {
    /// Copies, from any store.
    Copy,
    /// From a local store: hard links where the destination is on the same filesystem, symbolic
    /// links otherwise (each file's digest is still checked).
    Link,
}

/// What [`Store::copy_artifact`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CopyOutcome {
    /// Written (copied or linked): files and bytes.
    Copied { files: usize, bytes: u64 },
    /// A complete copy with the same files was there already.
    AlreadyThere { files: usize, bytes: u64 },
}

impl Store {
    /// The `_manifest.json` of a complete artifact; an error naming it when it is not complete.
    pub(super) fn complete_manifest(&self, kind: &str, key: &StageKey) -> Result<ArtifactManifest> {
        self.read_manifest(kind, key)?
            .ok_or_else(|| Error::Artifact {
                what: format!("{}/{}", self.url, Self::artifact_dir(kind, key)),
                message: "is not complete (no _manifest.json)".into(),
            })
    }

    /// Copies the complete artifact `kind`/`key` to `dest_root/<kind>/<key>/`, the store's own
    /// layout (so `dest_root` serves as a local store), with its `_manifest.json` (without the
    /// remote attempt folder) and `_log.txt`. Every file is hashed as it is written and compared
    /// with the manifest; a mismatch is an error naming the file. The copy is written under a
    /// temporary name and renamed into place when complete (a different earlier copy is swapped
    /// out in the same way). `progress` is told the bytes of each chunk written.
    pub fn copy_artifact(
        &self,
        kind: &str,
        key: &StageKey,
        dest_root: &Path,
        mode: CopyMode,
        progress: &dyn Fn(u64),
    ) -> Result<CopyOutcome> {
        let rel = Self::artifact_dir(kind, key);
        let manifest = self.complete_manifest(kind, key)?;
        let (files, bytes) = (
            manifest.files.len(),
            manifest.files.iter().map(|f| f.bytes).sum(),
        );
        let dest = dest_root.join(&rel);
        // A complete copy of these very files is at `dest` (written earlier, or by a concurrent
        // copier of the same input: stages that share an input fetch it at once).
        let complete_here = || {
            std::fs::read(dest.join("_manifest.json"))
                .ok()
                .and_then(|b| serde_json::from_slice::<ArtifactManifest>(&b).ok())
                .is_some_and(|m| m.files == manifest.files)
        };
        if complete_here() {
            return Ok(CopyOutcome::AlreadyThere { files, bytes });
        }
        if mode == CopyMode::Link && self.local_root.is_none() {
            return Err(Error::Store {
                url: self.url.to_string(),
                message: "links need a local store; copy instead".into(),
            });
        }
        let tmp = dest.with_file_name(format!("{key}.part-{}", unique_token()));
        let written = self.write_copy(&manifest, &tmp, mode, progress);
        if let Err(e) = written {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
        let parent = dest.parent().expect("has a parent");
        std::fs::create_dir_all(parent).at(parent)?;
        if complete_here() {
            // Another copier finished first while this one copied; a reader may already be in
            // its folder, which must not be moved away under it.
            let _ = std::fs::remove_dir_all(&tmp);
            return Ok(CopyOutcome::AlreadyThere { files, bytes });
        }
        if dest.exists() {
            // Incomplete, or another artifact of the key (a forced rebuild): moved out whole.
            let old = dest.with_file_name(format!("{key}.old-{}", unique_token()));
            std::fs::rename(&dest, &old).at(&dest)?;
            let _ = std::fs::remove_dir_all(&old);
        }
        match std::fs::rename(&tmp, &dest) {
            Ok(()) => Ok(CopyOutcome::Copied { files, bytes }),
            // Another copier was first with the same artifact.
            Err(_) if dest.join("_manifest.json").is_file() => {
                let _ = std::fs::remove_dir_all(&tmp);
                Ok(CopyOutcome::AlreadyThere { files, bytes })
            }
            Err(e) => {
                let _ = std::fs::remove_dir_all(&tmp);
                Err(Error::io(&dest, e))
            }
        }
    }

    /// Writes every file of `manifest` (digests checked), the log, then `_manifest.json` into `tmp`.
    fn write_copy(
        &self,
        manifest: &ArtifactManifest,
        tmp: &Path,
        mode: CopyMode,
        progress: &dyn Fn(u64),
    ) -> Result<()> {
        let _ = std::fs::remove_dir_all(tmp);
        std::fs::create_dir_all(tmp).at(tmp)?;
        for file in &manifest.files {
            // Paths were checked by `read_manifest`: this stays inside `tmp`.
            let p = tmp.join(&file.path);
            std::fs::create_dir_all(p.parent().expect("has parent")).at(&p)?;
            let file_rel = manifest.file_rel(&file.path);
            let what = format!("{}/{file_rel}", self.url);
            let digest = match &self.local_root {
                Some(root) => copy_local(&root.join(&file_rel), &p, file.bytes, mode, progress)
                    .map_err(|message| Error::Artifact {
                        what: what.clone(),
                        message,
                    })?,
                None => self
                    .fetch_file_with(&file_rel, file.bytes, Some(&p), progress)?
                    .ok_or_else(|| Error::Artifact {
                        what: what.clone(),
                        message: "is listed in _manifest.json but missing".into(),
                    })?,
            };
            if digest != file.blake3 {
                return Err(Error::Artifact {
                    what,
                    message: format!(
                        "content digest {digest} differs from the recorded {}",
                        file.blake3
                    ),
                });
            }
        }
        if let Some(log) = self.get(&manifest.file_rel("_log.txt"))? {
            std::fs::write(tmp.join("_log.txt"), log).at(tmp)?;
        }
        let mut copy = manifest.clone();
        copy.attempt = None;
        let bytes = serde_json::to_vec_pretty(&copy).expect("serialisable");
        std::fs::write(tmp.join("_manifest.json"), bytes).at(tmp)
    }
}

/// Copies (or links) one local file, hashing it on the way; its blake3, or what went wrong.
fn copy_local(
    src: &Path,
    dst: &Path,
    size: u64,
    mode: CopyMode,
    progress: &dyn Fn(u64),
) -> std::result::Result<String, String> {
    let found = std::fs::metadata(src)
        .map_err(|_| "is listed in _manifest.json but missing".to_string())?
        .len();
    if found != size {
        return Err(format!("{found} bytes, the manifest says {size}"));
    }
    let mut reader = std::fs::File::open(src).map_err(|e| e.to_string())?;
    let mut writer = match mode {
        CopyMode::Link => {
            if std::fs::hard_link(src, dst).is_err() {
                let abs: PathBuf = src.canonicalize().map_err(|e| e.to_string())?;
                std::os::unix::fs::symlink(abs, dst)
                    .map_err(|e| format!("{}: {e}", dst.display()))?;
            }
            None
        }
        CopyMode::Copy => Some(std::io::BufWriter::new(
            std::fs::File::create(dst).map_err(|e| format!("{}: {e}", dst.display()))?,
        )),
    };
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = reader.read(&mut buf).map_err(|e| e.to_string())?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        if let Some(w) = writer.as_mut() {
            w.write_all(&buf[..n])
                .map_err(|e| format!("{}: {e}", dst.display()))?;
        }
        progress(n as u64);
    }
    if let Some(w) = writer {
        w.into_inner()
            .map_err(|e| format!("{}: {}", dst.display(), e.error()))?
            .sync_all()
            .map_err(|e| format!("{}: {e}", dst.display()))?;
    }
    Ok(hasher.finalize().to_hex().to_string())
}
