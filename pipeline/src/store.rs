//! The artifact store: a local directory, memory, or S3, all through object_store.
//!
//! Layout (the same on every backend):
//! - `<kind>/<key>/…` an artifact's files, then `_log.txt`, then `_manifest.json`, written last.
//!   An artifact is complete if and only if its `_manifest.json` exists.
//! - `_locks/<kind>/<key>.json` the lease of the runner building that key (create-if-absent).
//! - `_failed/<kind>/<key>/` the log and error of the last failed attempt.
//! - `_index/<manifest-id>/<instance-hash>.json` which key each instance of a manifest last built.
//! - `_staging/` (local only) directories being written; renamed into place when complete.
//! - `_resume/<kind>/<key>/` (local; the cache folder for remote stores) state a stage resumes
//!   from after a kill; removed when its artifact is committed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey, S3ConditionalPut};
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, WriteMultipart};
use serde::{Deserialize, Serialize};

use crate::error::{Error, IoContext, Result};
use crate::key::StageKey;
use crate::plan::StoreUrl;
use crate::value::Params;

/// Uploads above this size go through multipart, streamed from disk in chunks of this size.
const MULTIPART_CHUNK: usize = 8 << 20;

/// One output file of an artifact.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileRecord {
    pub path: String,
    pub bytes: u64,
    pub blake3: String,
}

/// One input binding as recorded in an artifact.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InputRecord {
    /// `datasets.rsna` or a stage instance name.
    pub reference: String,
    /// The upstream key, or the external input's digest.
    pub key: String,
    /// For an external input: the content digest of its files (to name changed files later).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
}

/// `_manifest.json`: what an artifact is and how it was made. Written last.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ArtifactManifest {
    pub format: u32,
    pub key: StageKey,
    pub kind: String,
    pub version: u32,
    pub instance: String,
    pub manifest: String,
    pub params: Params,
    pub inputs: BTreeMap<String, Vec<InputRecord>>,
    pub files: Vec<FileRecord>,
    pub started_unix: f64,
    pub seconds: f64,
    pub tool: String,
    pub host: String,
    /// Where it ran when not in the runner's own process (e.g. `slurm job 1234`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
}

impl ArtifactManifest {
    pub fn recipe(&self) -> crate::key::KeyRecipe {
        crate::key::KeyRecipe {
            kind: self.kind.clone(),
            version: self.version,
            params: self.params.clone(),
            inputs: self
                .inputs
                .iter()
                .map(|(k, v)| (k.clone(), v.iter().map(|r| r.key.clone()).collect()))
                .collect(),
        }
    }
}

/// What the run index says about an instance of a manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IndexEntry {
    pub instance: String,
    pub kind: String,
    pub key: StageKey,
    /// `ok` or `failed`.
    pub status: String,
    pub unix: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Where the log of that attempt is, relative to the store root.
    pub log: String,
}

/// The contents of a per-key lease.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Lease {
    pub owner: String,
    pub host: String,
    pub pid: u32,
    pub instance: String,
    pub heartbeat_unix: f64,
    /// When the stage last reported progress or a log line (refreshed with the heartbeat), so
    /// `status` can name a stage that went silent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub activity_unix: Option<f64>,
}

/// Environment-derived settings for remote stores, collected by the binary (the library never reads
/// the environment). Values are secrets: they are never printed or hashed.
#[derive(Clone, Default)]
pub struct StoreSettings {
    /// `AWS_*` variables as (name, value).
    pub aws: Vec<(String, String)>,
}

impl std::fmt::Debug for StoreSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.aws.iter().map(|(k, _)| k.as_str()).collect();
        write!(f, "StoreSettings {{ aws: {names:?} (values hidden) }}")
    }
}

pub enum PublishOutcome {
    Published,
    /// Another runner completed the same key first; ours was discarded.
    AlreadyComplete,
}

pub struct Store {
    url: StoreUrl,
    inner: Arc<dyn ObjectStore>,
    prefix: String,
    local_root: Option<PathBuf>,
    cache_dir: PathBuf,
    rt: tokio::runtime::Runtime,
}

impl Store {
    /// Opens a store. `cache_dir` holds local copies of remote artifacts and staging directories.
    pub fn open(url: &StoreUrl, settings: &StoreSettings, cache_dir: &Path) -> Result<Store> {
        Self::open_inner(url, settings, cache_dir, true)
    }

    /// Opens a store for reading only: a local store folder that does not exist reads as empty and
    /// is not created (`status`, `explain`, `show` leave nothing behind).
    pub fn open_existing(
        url: &StoreUrl,
        settings: &StoreSettings,
        cache_dir: &Path,
    ) -> Result<Store> {
        Self::open_inner(url, settings, cache_dir, false)
    }

    fn open_inner(
        url: &StoreUrl,
        settings: &StoreSettings,
        cache_dir: &Path,
        create: bool,
    ) -> Result<Store> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("adaptor-store")
            .enable_all()
            .build()
            .map_err(|e| Error::Other(format!("cannot start the store's I/O runtime: {e}")))?;
        let store_err = |message: String| Error::Store {
            url: url.to_string(),
            message,
        };
        let (inner, prefix, local_root): (Arc<dyn ObjectStore>, String, Option<PathBuf>) = match url
        {
            // A local store that does not exist yet reads as empty; it is created by the first
            // write, so read-only commands (`status`, `explain`) leave no folder behind.
            StoreUrl::Local(root) if !create && !root.exists() => {
                let root = std::path::absolute(root).at(root)?;
                (Arc::new(InMemory::new()), String::new(), Some(root))
            }
            StoreUrl::Local(root) => {
                std::fs::create_dir_all(root).at(root)?;
                let root = root.canonicalize().at(root)?;
                let fs = LocalFileSystem::new_with_prefix(&root)
                    .map_err(|e| store_err(e.to_string()))?
                    .with_automatic_cleanup(true);
                (Arc::new(fs), String::new(), Some(root))
            }
            StoreUrl::Memory => (Arc::new(InMemory::new()), String::new(), None),
            StoreUrl::S3 { bucket, prefix } => {
                let mut b = AmazonS3Builder::new().with_bucket_name(bucket);
                for (k, v) in &settings.aws {
                    match k.as_str() {
                        // The AWS SDKs' names, which object_store does not read itself.
                        "AWS_ENDPOINT_URL" | "AWS_ENDPOINT_URL_S3" | "AWS_ENDPOINT" => {
                            b = b.with_endpoint(v)
                        }
                        "AWS_ALLOW_HTTP" => b = b.with_allow_http(v == "true" || v == "1"),
                        _ => {
                            if let Ok(key) = k.to_ascii_lowercase().parse::<AmazonS3ConfigKey>() {
                                b = b.with_config(key, v);
                            }
                        }
                    }
                }
                // If-None-Match / If-Match: create-if-absent commits and leases.
                b = b.with_conditional_put(S3ConditionalPut::ETagMatch);
                let s3 = b.build().map_err(|e| store_err(e.to_string()))?;
                (Arc::new(s3), prefix.clone(), None)
            }
        };
        Ok(Store {
            url: url.clone(),
            inner,
            prefix,
            local_root,
            cache_dir: cache_dir.to_path_buf(),
            rt,
        })
    }

    pub fn url(&self) -> &StoreUrl {
        &self.url
    }

    /// The local directory of a local store.
    pub fn local_root(&self) -> Option<&Path> {
        self.local_root.as_deref()
    }

    fn path(&self, rel: &str) -> ObjPath {
        if self.prefix.is_empty() {
            ObjPath::from(rel)
        } else {
            ObjPath::from(format!("{}/{rel}", self.prefix))
        }
    }

    /// Store-relative path of an object path.
    fn rel(&self, p: &ObjPath) -> String {
        let s = p.as_ref();
        if self.prefix.is_empty() {
            s.to_string()
        } else {
            s.strip_prefix(&self.prefix)
                .map(|r| r.trim_start_matches('/').to_string())
                .unwrap_or_else(|| s.to_string())
        }
    }

    fn os_err(&self, e: object_store::Error) -> Error {
        Error::ObjectStore {
            url: self.url.to_string(),
            source: e,
        }
    }

    pub fn artifact_dir(kind: &str, key: &StageKey) -> String {
        format!("{kind}/{key}")
    }

    pub fn manifest_path(kind: &str, key: &StageKey) -> String {
        format!("{kind}/{key}/_manifest.json")
    }

    pub fn lock_path(kind: &str, key: &StageKey) -> String {
        format!("_locks/{kind}/{key}.json")
    }

    pub fn failed_dir(kind: &str, key: &StageKey) -> String {
        format!("_failed/{kind}/{key}")
    }

    pub fn index_path(manifest_id: &str, instance: &str) -> String {
        let h = blake3::hash(instance.as_bytes()).to_hex();
        format!("_index/{manifest_id}/{}.json", &h[..32])
    }

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
            .block_on(async move { inner.get(&path).await?.bytes().await })
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

    /// Every object under a store-relative prefix: (relative path, size).
    pub fn list(&self, prefix: &str) -> Result<Vec<(String, u64)>> {
        let path = self.path(prefix);
        let inner = self.inner.clone();
        let metas = self
            .rt
            .block_on(async move { inner.list(Some(&path)).try_collect::<Vec<_>>().await })
            .map_err(|e| self.os_err(e))?;
        Ok(metas
            .into_iter()
            .map(|m| (self.rel(&m.location), m.size))
            .collect())
    }

    /// The immediate sub-folders of a store-relative prefix (`""` for the top level).
    pub fn list_dirs(&self, prefix: &str) -> Result<Vec<String>> {
        let path = if prefix.is_empty() {
            if self.prefix.is_empty() {
                None
            } else {
                Some(ObjPath::from(self.prefix.as_str()))
            }
        } else {
            Some(self.path(prefix))
        };
        let inner = self.inner.clone();
        let res = self
            .rt
            .block_on(async move { inner.list_with_delimiter(path.as_ref()).await })
            .map_err(|e| self.os_err(e))?;
        Ok(res
            .common_prefixes
            .iter()
            .filter_map(|p| self.rel(p).rsplit('/').next().map(str::to_string))
            .collect())
    }

    /// Deletes every object under a prefix (and, locally, the folder).
    pub fn delete_prefix(&self, prefix: &str) -> Result<u64> {
        if let Some(root) = &self.local_root {
            let dir = root.join(prefix);
            if dir.exists() {
                let n = self.list(prefix)?.into_iter().map(|(_, s)| s).sum();
                std::fs::remove_dir_all(&dir).at(&dir)?;
                return Ok(n);
            }
            return Ok(0);
        }
        let objects = self.list(prefix)?;
        let total = objects.iter().map(|(_, s)| s).sum();
        for (rel, _) in objects {
            self.delete(&rel)?;
        }
        Ok(total)
    }

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

    /// Makes a staged artifact visible: its files, then `_log.txt`, then `_manifest.json` last. On a
    /// local store the whole directory appears at once (one rename).
    pub fn publish(&self, staging: &Path, manifest: &ArtifactManifest) -> Result<PublishOutcome> {
        let out = staging.join("out");
        let log = staging.join("log.txt");
        let manifest_bytes = serde_json::to_vec_pretty(manifest).expect("serialisable");
        let dir_rel = Self::artifact_dir(&manifest.kind, &manifest.key);
        if let Some(root) = &self.local_root {
            if log.exists() {
                std::fs::rename(&log, out.join("_log.txt")).at(&log)?;
            }
            write_synced(&out.join("_manifest.json"), &manifest_bytes)?;
            sync_dir(&out)?;
            let target = root.join(&dir_rel);
            let parent = target.parent().expect("artifact dirs have a parent");
            std::fs::create_dir_all(parent).at(parent)?;
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
                    // An incomplete leftover (no manifest): replace it.
                    std::fs::remove_dir_all(&target).at(&target)?;
                    std::fs::rename(&out, &target).at(&target)?;
                    let _ = std::fs::remove_dir_all(staging);
                    Ok(PublishOutcome::Published)
                }
                Err(e) => Err(Error::io(&target, e)),
            };
        }
        for file in &manifest.files {
            self.upload_file(&out.join(&file.path), &format!("{dir_rel}/{}", file.path))?;
        }
        if log.exists() {
            self.upload_file(&log, &format!("{dir_rel}/_log.txt"))?;
        }
        let created = self.put(
            &Self::manifest_path(&manifest.kind, &manifest.key),
            Bytes::from(manifest_bytes),
            true,
        )?;
        let _ = std::fs::remove_dir_all(staging);
        Ok(if created {
            PublishOutcome::Published
        } else {
            PublishOutcome::AlreadyComplete
        })
    }

    /// Uploads one local file, streaming large ones as multipart.
    pub fn upload_file(&self, local: &Path, rel: &str) -> Result<()> {
        let size = std::fs::metadata(local).at(local)?.len();
        if size <= MULTIPART_CHUNK as u64 {
            let bytes = std::fs::read(local).at(local)?;
            self.put(rel, Bytes::from(bytes), false)?;
            return Ok(());
        }
        let path = self.path(rel);
        let inner = self.inner.clone();
        let local = local.to_path_buf();
        let result: std::result::Result<(), Error> = self.rt.block_on(async move {
            use std::io::Read;
            let upload = inner
                .put_multipart(&path)
                .await
                .map_err(|e| Error::Other(e.to_string()))?;
            let mut writer = WriteMultipart::new_with_chunk_size(upload, MULTIPART_CHUNK);
            let mut f = std::fs::File::open(&local).at(&local)?;
            let mut buf = vec![0u8; MULTIPART_CHUNK];
            loop {
                let n = f.read(&mut buf).at(&local)?;
                if n == 0 {
                    break;
                }
                // Bounded memory: at most a few chunks in flight.
                writer
                    .wait_for_capacity(4)
                    .await
                    .map_err(|e| Error::Other(e.to_string()))?;
                writer.write(&buf[..n]);
            }
            writer
                .finish()
                .await
                .map_err(|e| Error::Other(e.to_string()))?;
            Ok(())
        });
        result.map_err(|e| Error::Store {
            url: self.url.to_string(),
            message: format!("upload of {rel}: {e}"),
        })
    }

    /// A local directory holding a complete artifact: the artifact itself on a local store, a
    /// verified copy in the cache folder otherwise.
    pub fn local_artifact(&self, kind: &str, key: &StageKey) -> Result<PathBuf> {
        let rel = Self::artifact_dir(kind, key);
        if let Some(root) = &self.local_root {
            return Ok(root.join(rel));
        }
        let dest = self.cache_dir.join("artifacts").join(&rel);
        if dest.join("_manifest.json").is_file() {
            return Ok(dest);
        }
        let manifest: ArtifactManifest = self
            .get_json(&Self::manifest_path(kind, key))?
            .ok_or_else(|| Error::Artifact {
                what: format!("{}/{rel}", self.url),
                message: "is not complete (no _manifest.json)".into(),
            })?;
        static DOWNLOADS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = DOWNLOADS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = self
            .cache_dir
            .join("artifacts")
            .join(format!("{rel}.part-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        for file in &manifest.files {
            let bytes =
                self.get(&format!("{rel}/{}", file.path))?
                    .ok_or_else(|| Error::Artifact {
                        what: format!("{}/{rel}", self.url),
                        message: format!("file {} listed in _manifest.json is missing", file.path),
                    })?;
            let digest = blake3::hash(&bytes).to_hex().to_string();
            if digest != file.blake3 {
                return Err(Error::Artifact {
                    what: format!("{}/{rel}/{}", self.url, file.path),
                    message: format!(
                        "content digest {digest} differs from the recorded {}",
                        file.blake3
                    ),
                });
            }
            let p = tmp.join(&file.path);
            std::fs::create_dir_all(p.parent().expect("has parent")).at(&p)?;
            std::fs::write(&p, &bytes).at(&p)?;
        }
        std::fs::write(
            tmp.join("_manifest.json"),
            serde_json::to_vec_pretty(&manifest).expect("ser"),
        )
        .at(&tmp)?;
        std::fs::create_dir_all(dest.parent().expect("has parent")).at(&dest)?;
        match std::fs::rename(&tmp, &dest) {
            Ok(()) => Ok(dest),
            Err(_) if dest.join("_manifest.json").is_file() => {
                let _ = std::fs::remove_dir_all(&tmp);
                Ok(dest)
            }
            Err(e) => Err(Error::io(&dest, e)),
        }
    }
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut f = std::fs::File::create(path).at(path)?;
    f.write_all(bytes).at(path)?;
    f.sync_all().at(path)
}

fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir).and_then(|f| f.sync_all()).at(dir)
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
