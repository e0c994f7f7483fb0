//! Reading and writing single objects: plain gets and puts, create-if-absent, and the
//! compare-and-swap on a record's version that leases and job records rely on.

use std::path::Path;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, UpdateVersion};
use serde::{Deserialize, Serialize};

use crate::error::{Error, IoContext, Result};
use crate::key::StageKey;

use super::*;

impl Store {
    /// Whether each (kind, key) has a complete artifact; checked concurrently.
    pub fn complete_many(&self, items: &[(String, StageKey)]) -> Result<Vec<bool>> {
        if let Some(root) = &self.local_root {
            // A stat per artifact; no need for the async machinery.
            return Ok(items
                .iter()
                .map(|(kind, key)| root.join(Self::manifest_path(kind, key)).is_file())
                .collect());
        }
        let paths: Vec<ObjPath> = items
            .iter()
            .map(|(k, key)| self.path(&Self::manifest_path(k, key)))
            .collect();
        let inner = self.inner.clone();
        self.rt
            .block_on(async move {
                futures::stream::iter(paths)
                    .map(|p| {
                        let inner = inner.clone();
                        async move {
                            match inner.head(&p).await {
                                Ok(_) => Ok(true),
                                Err(object_store::Error::NotFound { .. }) => Ok(false),
                                Err(e) => Err(e),
                            }
                        }
                    })
                    .buffered(32)
                    .try_collect::<Vec<bool>>()
                    .await
            })
            .map_err(|e| self.os_err(e))
    }

    pub fn is_complete(&self, kind: &str, key: &StageKey) -> Result<bool> {
        Ok(self.complete_many(&[(kind.to_string(), key.clone())])?[0])
    }

    /// Reads an object; `None` if it does not exist.
    pub fn get(&self, rel: &str) -> Result<Option<Bytes>> {
        if let Some(root) = &self.local_root {
            let p = root.join(rel);
            return match std::fs::read(&p) {
                Ok(b) => Ok(Some(Bytes::from(b))),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(Error::io(p, e)),
            };
        }
        let path = self.path(rel);
        let inner = self.inner.clone();
        match self
            .rt
            .block_on(async move { get_whole(&inner, &path).await.map(|(b, _)| b) })
        {
            Ok(b) => Ok(Some(b)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.os_err(e)),
        }
    }

    pub fn get_json<T: for<'de> Deserialize<'de>>(&self, rel: &str) -> Result<Option<T>> {
        match self.get(rel)? {
            None => Ok(None),
            Some(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| Error::Artifact {
                    what: format!("{}/{rel}", self.url),
                    message: format!("unreadable JSON: {e}"),
                }),
        }
    }

    /// Reads an object with its version and the store's modification time.
    pub fn get_versioned(&self, rel: &str) -> Result<Option<(Bytes, ObjVersion, f64)>> {
        if let Some(root) = &self.local_root {
            let p = root.join(rel);
            let bytes = match std::fs::read(&p) {
                Ok(b) => b,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(Error::io(p, e)),
            };
            let modified = match std::fs::metadata(&p).and_then(|m| m.modified()) {
                Ok(t) => unix_of(t),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(Error::io(p, e)),
            };
            let v = content_version(&bytes);
            return Ok(Some((Bytes::from(bytes), v, modified)));
        }
        let path = self.path(rel);
        let inner = self.inner.clone();
        match self
            .rt
            .block_on(async move { get_whole(&inner, &path).await })
        {
            Ok((bytes, meta)) => Ok(Some((
                bytes,
                ObjVersion {
                    e_tag: meta.e_tag,
                    version: meta.version,
                },
                meta.last_modified.timestamp_millis() as f64 / 1000.0,
            ))),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.os_err(e)),
        }
    }

    /// Reads a small JSON record; an empty, truncated or unparsable one is [`Record::Corrupt`]
    /// (with a warning queued), never an error.
    pub fn get_record<T: for<'de> Deserialize<'de>>(&self, rel: &str) -> Result<Record<T>> {
        Ok(match self.get_versioned(rel)? {
            None => Record::Absent,
            Some((bytes, version, modified_unix)) => match serde_json::from_slice(&bytes) {
                Ok(value) => Record::Found {
                    value,
                    version,
                    modified_unix,
                },
                Err(e) => {
                    self.warn(format!(
                        "{}/{rel} is unreadable ({} bytes: {e}); treating it as stale",
                        self.url,
                        bytes.len()
                    ));
                    Record::Corrupt {
                        version,
                        modified_unix,
                    }
                }
            },
        })
    }

    /// Like [`Store::get_json`], but a corrupt record reads as absent (with a warning).
    pub fn get_json_or_stale<T: for<'de> Deserialize<'de>>(&self, rel: &str) -> Result<Option<T>> {
        Ok(match self.get_record(rel)? {
            Record::Found { value, .. } => Some(value),
            _ => None,
        })
    }

    /// Creates an object if it does not exist; its version, or `None` if it existed.
    pub fn create_versioned(&self, rel: &str, bytes: Bytes) -> Result<Option<ObjVersion>> {
        if let Some(root) = &self.local_root {
            // Written in full under a private name, then linked: never seen half-written.
            let (p, tmp) = write_beside(root, rel, &bytes)?;
            let r = std::fs::hard_link(&tmp, &p);
            let _ = std::fs::remove_file(&tmp);
            return match r {
                Ok(()) => Ok(Some(content_version(&bytes))),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(None),
                Err(e) => Err(Error::io(p, e)),
            };
        }
        self.put_conditional(rel, bytes, PutMode::Create)
    }

    /// Replaces an object only if it is still at `expected` (compare-and-swap); the new version,
    /// or `None` if it changed or vanished. S3: `If-Match` on the ETag. Local: under an exclusive
    /// `flock` on a sidecar file (released by the kernel if the holder dies), the file is compared
    /// and replaced by one rename, so it never looks absent to a runner about to create it.
    pub fn put_if_version(
        &self,
        rel: &str,
        bytes: Bytes,
        expected: &ObjVersion,
    ) -> Result<Option<ObjVersion>> {
        if let Some(root) = &self.local_root {
            let (p, tmp) = write_beside(root, rel, &bytes)?;
            let result = with_record_lock(&p, || {
                match std::fs::read(&p) {
                    Ok(b) if content_version(&b) == *expected => {}
                    Ok(_) => return Ok(None),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                    Err(e) => return Err(Error::io(&p, e)),
                }
                // Replaced in one rename: readers see the old record or the new, never none.
                std::fs::rename(&tmp, &p).at(&p)?;
                Ok(Some(content_version(&bytes)))
            });
            let _ = std::fs::remove_file(&tmp);
            return result;
        }
        let mode = PutMode::Update(UpdateVersion {
            e_tag: expected.e_tag.clone(),
            version: expected.version.clone(),
        });
        self.put_conditional(rel, bytes, mode)
    }

    /// A conditional put on a remote store: the new version, or `None` when the condition did
    /// not hold (the object exists for a create; it changed or vanished for an update).
    pub(super) fn put_conditional(
        &self,
        rel: &str,
        bytes: Bytes,
        mode: PutMode,
    ) -> Result<Option<ObjVersion>> {
        // A create that finds no bucket is an error, not "someone else was first".
        let update = matches!(mode, PutMode::Update(_));
        let path = self.path(rel);
        let inner = self.inner.clone();
        let opts = PutOptions {
            mode,
            ..Default::default()
        };
        match self
            .rt
            .block_on(async move { inner.put_opts(&path, PutPayload::from(bytes), opts).await })
        {
            Ok(r) => Ok(Some(ObjVersion {
                e_tag: r.e_tag,
                version: r.version,
            })),
            Err(object_store::Error::Precondition { .. })
            | Err(object_store::Error::AlreadyExists { .. }) => Ok(None),
            Err(object_store::Error::NotFound { .. }) if update => Ok(None),
            Err(e) => Err(self.os_err(e)),
        }
    }

    /// Deletes a local record only if it is still at `expected`. `Ok(false)` if it changed.
    /// Local stores only (S3 has no conditional delete; callers overwrite with a mark instead).
    pub fn delete_if_version_local(&self, rel: &str, expected: &ObjVersion) -> Result<bool> {
        let Some(root) = &self.local_root else {
            return Err(Error::NoConditionalDelete {
                url: self.url.to_string(),
            });
        };
        let p = root.join(rel);
        with_record_lock(&p, || match std::fs::read(&p) {
            Ok(b) if content_version(&b) == *expected => {
                std::fs::remove_file(&p).at(&p)?;
                Ok(true)
            }
            Ok(_) => Ok(false),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(Error::io(&p, e)),
        })
    }

    /// The store's clock now (seconds since the epoch): this machine's clock corrected by an
    /// offset measured once by writing a probe object and reading back its modification time.
    /// Staleness of leases is judged with it, so clock skew between machines does not matter.
    pub fn now(&self) -> Result<f64> {
        let local_now = || unix_of(std::time::SystemTime::now());
        if let Some(off) = *self.clock_offset.lock().expect("clock") {
            return Ok(local_now() + off);
        }
        let rel = format!("_locks/.clock-{}", unique_token());
        if let Some(root) = self.local_root.as_ref().filter(|r| r.exists()) {
            // Directly, not through object_store: its delete would also remove empty parents.
            let p = root.join(&rel);
            let measured = std::fs::create_dir_all(p.parent().expect("has a parent"))
                .and_then(|()| std::fs::write(&p, b"clock probe"))
                .and_then(|()| std::fs::metadata(&p)?.modified());
            let _ = std::fs::remove_file(&p);
            let off = measured.map_or(0.0, |t| unix_of(t) - local_now());
            *self.clock_offset.lock().expect("clock") = Some(off);
            return Ok(local_now() + off);
        }
        let before = local_now();
        let probe = self
            .put(&rel, Bytes::from_static(b"clock probe"), false)
            .and_then(|_| {
                let after = local_now();
                let modified = self.get_versioned(&rel)?.map(|(_, _, m)| m);
                self.delete(&rel)?;
                Ok((after, modified))
            });
        let off = match probe {
            // S3 LastModified has one-second resolution: the midpoint is within a second.
            Ok((after, modified)) => modified.map_or(0.0, |m| m - (before + after) / 2.0),
            Err(e) => {
                // A read-only credential (e.g. `status`): fall back to this machine's clock.
                self.warn(format!(
                    "cannot measure the clock of {} ({e}); judging leases by this machine's clock",
                    self.url
                ));
                0.0
            }
        };
        *self.clock_offset.lock().expect("clock") = Some(off);
        Ok(local_now() + off)
    }

    /// Writes an object. With `create_only`, returns `Ok(false)` if it already exists.
    pub fn put(&self, rel: &str, bytes: Bytes, create_only: bool) -> Result<bool> {
        let path = self.path(rel);
        let inner = self.inner.clone();
        let opts = PutOptions {
            mode: if create_only {
                PutMode::Create
            } else {
                PutMode::Overwrite
            },
            ..Default::default()
        };
        match self
            .rt
            .block_on(async move { inner.put_opts(&path, PutPayload::from(bytes), opts).await })
        {
            Ok(_) => Ok(true),
            Err(object_store::Error::AlreadyExists { .. })
            | Err(object_store::Error::Precondition { .. })
                if create_only =>
            {
                Ok(false)
            }
            Err(e) => Err(self.os_err(e)),
        }
    }

    pub fn put_json<T: Serialize>(&self, rel: &str, value: &T, create_only: bool) -> Result<bool> {
        let bytes = serde_json::to_vec_pretty(value).expect("serialisable");
        self.put(rel, Bytes::from(bytes), create_only)
    }

    pub fn delete(&self, rel: &str) -> Result<()> {
        let path = self.path(rel);
        let inner = self.inner.clone();
        match self.rt.block_on(async move { inner.delete(&path).await }) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.os_err(e)),
        }
    }
}

/// Runs `f` holding an exclusive `flock` on `.<name>.cas` beside a record: every compare-and-swap
/// and conditional delete of that record on a local store takes it (creation by hard link does not
/// need to: it only succeeds when the record is absent). Works on NFS through the client's lock
/// emulation.
pub(super) fn with_record_lock<T>(record: &Path, f: impl FnOnce() -> Result<T>) -> Result<T> {
    use std::os::fd::AsRawFd;
    let name = record
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let lock_path = record.with_file_name(format!(".{name}.cas"));
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .at(&lock_path)?;
    // SAFETY: flock on a descriptor we own; the lock is released when `lock` is closed.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(Error::io(&lock_path, std::io::Error::last_os_error()));
    }
    let result = f();
    drop(lock);
    result
}

/// Writes `bytes` to a fresh private name in the folder of record `rel` (created if needed), synced:
/// (the record's path, the written file's path), for the caller to link or rename into place.
fn write_beside(root: &Path, rel: &str, bytes: &[u8]) -> Result<(PathBuf, PathBuf)> {
    let p = root.join(rel);
    let parent = p.parent().expect("records have a parent");
    std::fs::create_dir_all(parent).at(parent)?;
    let tmp = parent.join(format!(".new-{}", unique_token()));
    write_synced(&tmp, bytes)?;
    Ok((p, tmp))
}
