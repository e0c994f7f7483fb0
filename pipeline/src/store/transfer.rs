//! Moving files between this machine and a remote store: chunked downloads into the cache,
//! multipart uploads recorded under `_uploads/` so gc can abort them, and local copies of inputs.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path as ObjPath;
use object_store::{ObjectStoreExt, PutPayload, WriteMultipart};

use crate::error::{Error, IoContext, Result};
use crate::key::StageKey;

use super::*;

/// Uploads above this size go through multipart, streamed from disk in chunks of this size.
pub(super) const MULTIPART_CHUNK: usize = 8 << 20;

/// Downloads read ranges of this size, one at a time (memory stays flat in the file size).
pub(super) const CHUNK: u64 = 8 << 20;

impl Store {
    /// Streams one remote object in ranged chunks of [`CHUNK`] (each retried from its offset and
    /// pinned to the ETag its HEAD returned), hashing it and writing it to `dest` when given.
    /// Checks the size first. Returns the blake3 digest, or `None` if the object does not exist.
    pub(super) fn fetch_file(
        &self,
        rel: &str,
        expected_size: u64,
        dest: Option<&Path>,
    ) -> Result<Option<String>> {
        self.fetch_file_with(rel, expected_size, dest, &|_| {})
    }

    /// [`Store::fetch_file`], telling `progress` the bytes of each chunk.
    pub(super) fn fetch_file_with(
        &self,
        rel: &str,
        expected_size: u64,
        dest: Option<&Path>,
        progress: &dyn Fn(u64),
    ) -> Result<Option<String>> {
        use std::io::Write;
        let path = self.path(rel);
        let inner = self.inner.clone();
        let what = format!("{}/{rel}", self.url);
        let url = self.url.to_string();
        self.rt.block_on(async move {
            let (size, e_tag) = match inner.head(&path).await {
                Ok(m) => (m.size, m.e_tag),
                Err(object_store::Error::NotFound { .. }) => return Ok(None),
                Err(source) => return Err(Error::ObjectStore { url, source }),
            };
            if size != expected_size {
                return Err(Error::Artifact {
                    what,
                    message: format!("{size} bytes, the manifest says {expected_size}"),
                });
            }
            let mut out = match dest {
                Some(d) => Some(std::io::BufWriter::new(std::fs::File::create(d).at(d)?)),
                None => None,
            };
            let mut hasher = blake3::Hasher::new();
            let mut offset = 0u64;
            while offset < size {
                let end = (offset + CHUNK).min(size);
                let mut tries = 0;
                let bytes = loop {
                    // Every range pinned to the version HEAD saw: an object replaced while
                    // it streams fails (412) instead of mixing two versions' bytes.
                    let opts = object_store::GetOptions {
                        if_match: e_tag.clone(),
                        range: Some(object_store::GetRange::Bounded(offset..end)),
                        ..Default::default()
                    };
                    let got = match inner.get_opts(&path, opts).await {
                        Ok(r) => r.bytes().await,
                        Err(e) => Err(e),
                    };
                    match got {
                        Ok(b) if b.len() as u64 == end - offset => break b,
                        Ok(b) => {
                            return Err(Error::Artifact {
                                what,
                                message: format!(
                                    "range {offset}..{end} returned {} bytes (changed while read?)",
                                    b.len()
                                ),
                            })
                        }
                        Err(e @ object_store::Error::Precondition { .. }) => {
                            return Err(Error::Artifact {
                                what,
                                message: format!("changed while it was read: {e}"),
                            })
                        }
                        // object_store already retried the request; a body cut mid-stream is
                        // retried here, from this chunk's offset.
                        Err(_) if tries < 3 => {
                            tries += 1;
                            tokio::time::sleep(std::time::Duration::from_millis(200 << tries))
                                .await;
                        }
                        Err(e) => {
                            return Err(Error::Store {
                                url,
                                message: format!("{what}: {e}"),
                            })
                        }
                    }
                };
                hasher.update(&bytes);
                if let (Some(w), Some(d)) = (out.as_mut(), dest) {
                    w.write_all(&bytes).at(d)?;
                }
                progress(bytes.len() as u64);
                offset = end;
            }
            if let (Some(w), Some(d)) = (out, dest) {
                w.into_inner()
                    .map_err(|e| Error::io(d, e.into_error()))?
                    .sync_all()
                    .at(d)?;
            }
            Ok(Some(hasher.finalize().to_hex().to_string()))
        })
    }

    /// Downloads the object `rel` (any object, not only an artifact's) to `dest` the way
    /// [`Store::fetch_file`] does: ranged chunks pinned to its ETag, written under a temporary
    /// name and renamed into place when complete. Its size and blake3 digest; an error naming it
    /// when it does not exist.
    pub fn download(&self, rel: &str, dest: &Path) -> Result<(u64, String)> {
        let what = format!("{}/{rel}", self.url);
        let path = self.path(rel);
        let size = match self.rt.block_on(self.inner.head(&path)) {
            Ok(m) => m.size,
            Err(object_store::Error::NotFound { .. }) => {
                return Err(Error::Artifact {
                    what,
                    message: "does not exist".into(),
                })
            }
            Err(e) => return Err(self.os_err(e)),
        };
        let tmp = dest.with_file_name(format!(
            ".{}.part-{}",
            dest.file_name()
                .map_or("download".into(), |n| n.to_string_lossy()),
            unique_token()
        ));
        let got = self.fetch_file(rel, size, Some(&tmp));
        let digest = match got {
            Ok(Some(d)) => d,
            Ok(None) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(Error::Artifact {
                    what,
                    message: "does not exist".into(),
                });
            }
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(e);
            }
        };
        std::fs::rename(&tmp, dest).at(dest)?;
        Ok((size, digest))
    }

    /// Uploads one local file, streaming large ones as multipart (aborted on error).
    pub fn upload_file(&self, local: &Path, rel: &str) -> Result<()> {
        let size = std::fs::metadata(local).at(local)?.len();
        if size <= MULTIPART_CHUNK as u64 {
            let bytes = std::fs::read(local).at(local)?;
            self.put(rel, Bytes::from(bytes), false)?;
            return Ok(());
        }
        if let Some(mp) = self.multipart.clone() {
            return self.upload_recorded(mp, local, rel, size);
        }
        let path = self.path(rel);
        let inner = self.inner.clone();
        let local = local.to_path_buf();
        let result: std::result::Result<(), Error> = self.rt.block_on(async move {
            use std::io::Read;
            let upload = inner.put_multipart(&path).await.map_err(Error::Request)?;
            let mut writer = WriteMultipart::new_with_chunk_size(upload, MULTIPART_CHUNK);
            let written: std::result::Result<(), Error> = async {
                let mut f = std::fs::File::open(&local).at(&local)?;
                let mut buf = vec![0u8; MULTIPART_CHUNK];
                loop {
                    let n = f.read(&mut buf).at(&local)?;
                    if n == 0 {
                        break;
                    }
                    // Bounded memory: at most a few chunks in flight.
                    writer.wait_for_capacity(4).await.map_err(Error::Request)?;
                    writer.write(&buf[..n]);
                }
                Ok(())
            }
            .await;
            match written {
                Ok(()) => writer.finish().await.map(|_| ()).map_err(Error::Request),
                Err(e) => {
                    // Abort, so no half-uploaded parts linger in the bucket.
                    let _ = writer.abort().await;
                    Err(e)
                }
            }
        });
        result.map_err(|e| Error::Upload {
            url: self.url.to_string(),
            rel: rel.to_string(),
            source: Box::new(e),
        })
    }

    /// A multipart upload whose id is recorded under `_uploads/` while it runs: parts of
    /// [`MULTIPART_CHUNK`] read from disk at their offset, four in flight at most; aborted on
    /// error; the record is removed when the upload is completed or aborted.
    pub(super) fn upload_recorded(
        &self,
        mp: Arc<dyn object_store::multipart::MultipartStore>,
        local: &Path,
        rel: &str,
        size: u64,
    ) -> Result<()> {
        use std::os::unix::fs::FileExt;
        let path = self.path(rel);
        let file = std::fs::File::open(local).at(local)?;
        let (record, record_rel, recorded) = self.begin_upload(rel)?;
        let id = record.upload_id.clone();
        let parts = size.div_ceil(MULTIPART_CHUNK as u64) as usize;
        let result: std::result::Result<(), object_store::Error> = match recorded {
            Err(e) => Err(object_store::Error::Generic {
                store: "adaptor",
                source: Box::new(std::io::Error::other(e.to_string())),
            }),
            Ok(_) => self.rt.block_on(async {
                let ids: Vec<object_store::multipart::PartId> = futures::stream::iter(0..parts)
                    .map(|i| {
                        let (mp, path, id, file) = (mp.clone(), path.clone(), id.clone(), &file);
                        async move {
                            let offset = i as u64 * MULTIPART_CHUNK as u64;
                            let len = (size - offset).min(MULTIPART_CHUNK as u64) as usize;
                            let mut buf = vec![0u8; len];
                            file.read_exact_at(&mut buf, offset).map_err(|e| {
                                object_store::Error::Generic {
                                    store: "adaptor",
                                    source: Box::new(e),
                                }
                            })?;
                            mp.put_part(&path, &id, i, PutPayload::from(buf)).await
                        }
                    })
                    .buffered(4)
                    .try_collect()
                    .await?;
                mp.complete_multipart(&path, &id, ids).await.map(|_| ())
            }),
        };
        if result.is_err() {
            // Abort, so no half-uploaded parts linger in the bucket.
            let _ = self.rt.block_on(mp.abort_multipart(&path, &id));
        }
        let _ = self.delete(&record_rel);
        result.map_err(|e| Error::Store {
            url: self.url.to_string(),
            message: format!("upload of {rel} ({}): {e}", local.display()),
        })
    }

    /// Starts a multipart upload of `rel` and records it under `_uploads/` (so gc can abort it if
    /// this process dies): the record, its store path, and whether recording it worked.
    pub fn begin_upload(&self, rel: &str) -> Result<(UploadRecord, String, Result<bool>)> {
        let mp = self.multipart.clone().ok_or_else(|| Error::Store {
            url: self.url.to_string(),
            message: "this store has no multipart uploads".into(),
        })?;
        let id = self
            .rt
            .block_on(mp.create_multipart(&self.path(rel)))
            .map_err(|e| self.os_err(e))?;
        let record_rel = format!("_uploads/{}.json", unique_token());
        let record = UploadRecord {
            path: rel.to_string(),
            upload_id: id,
        };
        let recorded = self.put_json(&record_rel, &record, false);
        Ok((record, record_rel, recorded))
    }

    /// The multipart uploads in progress under this store's prefix, paths relative to the
    /// store (S3 `ListMultipartUploads`, see [`crate::s3uploads`]); `None` for a store without
    /// them (local folder, memory).
    pub fn pending_uploads(&self) -> Result<Option<Vec<crate::s3uploads::PendingUpload>>> {
        let Some((lister, s3)) = &self.uploads else {
            return Ok(None);
        };
        let prefix = if self.prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", self.prefix.trim_end_matches('/'))
        };
        let err = |message: String| Error::Store {
            url: self.url.to_string(),
            message,
        };
        let found = self.rt.block_on(async {
            let credential = s3
                .credentials()
                .get_credential()
                .await
                .map_err(|e| format!("credentials: {e}"))?;
            let client = reqwest::Client::builder()
                .connect_timeout(S3_CONNECT_TIMEOUT)
                .timeout(S3_REQUEST_TIMEOUT)
                .build()
                .map_err(|e| e.to_string())?;
            lister.list(&client, &credential, &prefix).await
        });
        let mut found = found.map_err(err)?;
        for u in &mut found {
            u.key = self.rel(&ObjPath::from(u.key.as_str()));
        }
        Ok(Some(found))
    }

    /// Aborts a recorded multipart upload (see [`UploadRecord`]); one that no longer exists is
    /// fine.
    pub fn abort_upload(&self, record: &UploadRecord) -> Result<()> {
        let Some(mp) = self.multipart.clone() else {
            return Ok(());
        };
        let path = self.path(&record.path);
        match self
            .rt
            .block_on(mp.abort_multipart(&path, &record.upload_id))
        {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.os_err(e)),
        }
    }

    /// Where a remote store's complete artifact is, for a stage that reads it from the store itself
    /// (an input slot declared `streamed`): `None` on a local store, or when the settings ask for
    /// cache copies ([`StoreSettings::cache_tables`]). Its path, the cache folder it would be
    /// copied to, is not created.
    pub fn remote_input(
        &self,
        kind: &str,
        key: &StageKey,
    ) -> Result<Option<(PathBuf, crate::stage::RemoteInput)>> {
        if self.local_root.is_some() || self.cache_tables {
            return Ok(None);
        }
        let rel = Self::artifact_dir(kind, key);
        let manifest = self.complete_manifest(kind, key)?;
        let files = manifest
            .files
            .iter()
            .map(|f| crate::stage::RemoteFile {
                path: f.path.clone(),
                object: manifest.file_rel(&f.path),
                bytes: f.bytes,
                blake3: f.blake3.clone(),
            })
            .collect();
        let remote = crate::stage::RemoteInput {
            store: self.url.to_string(),
            files,
        };
        Ok(Some((self.cache_dir.join("artifacts").join(rel), remote)))
    }

    /// The object store under this store and the object of `rel`, for readers that stream
    /// (`artifacts::table::remote`), with the runtime this store's requests run on.
    pub fn object(&self, rel: &str) -> (Arc<dyn object_store::ObjectStore>, ObjPath) {
        (self.inner.clone(), self.path(rel))
    }

    /// The runtime of this store's requests.
    pub fn runtime(&self) -> &tokio::runtime::Runtime {
        &self.rt
    }

    /// A local directory holding a complete artifact: the artifact itself on a local store, a
    /// verified copy in the cache folder otherwise (streamed in chunks, each file's digest
    /// checked, moved into place in one rename when complete).
    pub fn local_artifact(&self, kind: &str, key: &StageKey) -> Result<PathBuf> {
        let rel = Self::artifact_dir(kind, key);
        if let Some(root) = &self.local_root {
            return Ok(root.join(rel));
        }
        let cache = self.cache_dir.join("artifacts");
        let dest = cache.join(&rel);
        if !dest.join("_manifest.json").is_file() {
            self.copy_artifact(kind, key, &cache, CopyMode::Copy, &|_| {})?;
        }
        Ok(dest)
    }
}
