//! Publishing over a complete artifact (`adaptor run --force`, and the rebuild of a forgotten
//! instance): the new artifact takes the old one's place in one step, so a reader sees the old
//! artifact or the new one, never a missing or half-written one.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use bytes::Bytes;

use crate::error::{Error, IoContext, Result};

use super::*;

impl Store {
    /// Like [`Store::publish`], but a complete artifact of the same key is replaced. Local store:
    /// the sealed folder and the old one are swapped by one `renameat2(RENAME_EXCHANGE)`, and the
    /// old one is moved to `_replaced/<kind>/<key>-<unix>-<token>/` (gc removes it after the
    /// lease timeout; readers holding its files keep them). Remote store: the files go under a fresh
    /// attempt folder, then `_manifest.json` is overwritten only if it is still the one read
    /// before (`If-Match`); the old attempt folder stays for readers until the next gc. Either way the
    /// artifact is never absent, and the run index moves to the new one only after this returns.
    pub fn publish_replacing(
        &self,
        staging: &Path,
        manifest: &ArtifactManifest,
        fence: &dyn Fn() -> bool,
        lost: &dyn Fn() -> bool,
    ) -> Result<PublishOutcome> {
        let (kind, key) = (&manifest.kind, &manifest.key);
        if let Some(root) = &self.local_root {
            if !root.join(Self::manifest_path(kind, key)).is_file() {
                return self.publish(staging, manifest, fence, lost);
            }
            let (out, target) = self.seal_local(root, staging, manifest)?;
            if !fence() {
                return Ok(PublishOutcome::LostLease);
            }
            exchange(&out, &target).map_err(|e| Error::Store {
                url: self.url.to_string(),
                message: format!(
                    "cannot replace {} in one step (renameat2 RENAME_EXCHANGE: {e}); the old \
                     artifact is left as it was",
                    target.display()
                ),
            })?;
            sync_dir(target.parent().expect("has a parent"))?;
            // `out` now holds the old artifact.
            let aside = root.join(format!(
                "_replaced/{kind}/{key}-{}-{}",
                unix_of(std::time::SystemTime::now()) as u64,
                unique_token()
            ));
            let parent = aside.parent().expect("has a parent");
            std::fs::create_dir_all(parent).at(parent)?;
            std::fs::rename(&out, &aside).at(&aside)?;
            let _ = std::fs::remove_dir_all(staging);
            return Ok(PublishOutcome::Published);
        }
        let manifest_rel = Self::manifest_path(kind, key);
        let Some((_, old_version, _)) = self.get_versioned(&manifest_rel)? else {
            return self.publish(staging, manifest, fence, lost);
        };
        let mut manifest = manifest.clone();
        let attempt = match self.upload_attempt(staging, &mut manifest, fence, lost)? {
            Ok(a) => a,
            Err(outcome) => return Ok(outcome),
        };
        let bytes = Bytes::from(serde_json::to_vec_pretty(&manifest).expect("serialisable"));
        let swapped = self.put_if_version(&manifest_rel, bytes, &old_version);
        let ours = |m: Option<ArtifactManifest>| {
            m.is_some_and(|m| m.attempt.as_deref() == Some(attempt.as_str()))
        };
        // A condition that failed may be our own retried write: the manifest read back says.
        let committed = match swapped {
            Ok(Some(_)) => true,
            Ok(None) | Err(_) => ours(self.get_json::<ArtifactManifest>(&manifest_rel)?),
        };
        if !committed {
            let _ = self.delete_prefix(&format!("{}/{attempt}", Self::artifact_dir(kind, key)));
            return Err(swapped.err().unwrap_or_else(|| Error::Store {
                url: self.url.to_string(),
                message: format!(
                    "{manifest_rel} changed while {kind}/{} was rebuilt; the old artifact is \
                     left as it was",
                    key.short()
                ),
            }));
        }
        // This machine's cached copy of the old artifact is not the artifact any more.
        let cached = self
            .cache_dir
            .join("artifacts")
            .join(Self::artifact_dir(kind, key));
        if cached.exists() {
            let gone = cached.with_extension(format!("replaced-{}", unique_token()));
            if std::fs::rename(&cached, &gone).is_ok() {
                let _ = std::fs::remove_dir_all(&gone);
            }
        }
        let _ = std::fs::remove_dir_all(staging);
        Ok(PublishOutcome::Published)
    }
}

/// Swaps two paths in one step (Linux `renameat2` with `RENAME_EXCHANGE`).
fn exchange(a: &Path, b: &Path) -> std::io::Result<()> {
    let c = |p: &Path| {
        CString::new(p.as_os_str().as_bytes())
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))
    };
    let (ca, cb) = (c(a)?, c(b)?);
    // SAFETY: two NUL-terminated paths that outlive the call; no memory is handed over.
    let r = unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            libc::AT_FDCWD,
            ca.as_ptr(),
            libc::AT_FDCWD,
            cb.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exchange_swaps_two_folders() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::create_dir_all(&a).unwrap();
        std::fs::create_dir_all(&b).unwrap();
        std::fs::write(a.join("f"), "new").unwrap();
        std::fs::write(b.join("f"), "old").unwrap();
        exchange(&a, &b).unwrap();
        assert_eq!(std::fs::read_to_string(b.join("f")).unwrap(), "new");
        assert_eq!(std::fs::read_to_string(a.join("f")).unwrap(), "old");
        let e = exchange(&a, &dir.path().join("absent")).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::NotFound, "{e}");
    }
}
