//! The artifact store: a local directory, memory, or S3, all through object_store.
//!
//! Layout (the same on every backend):
//! - `<kind>/<key>/…` an artifact's files, then `_log.txt`, then `_manifest.json`, written last.
//!   An artifact is complete if and only if its `_manifest.json` exists. On a remote store the
//!   files of one attempt live under `<kind>/<key>/<attempt>/` (named by the manifest's
//!   `attempt`), so an attempt never overwrites the files of another, committed or not.
//! - `_locks/<kind>/<key>.json` the lease of the runner building that key (create-if-absent,
//!   refreshed and released only by compare-and-swap on its version; see `lease.rs`).
//! - `_quarantine/<kind>/<key>-<unix>/` artifacts `verify --quarantine` or `run` moved aside.
//! - `_uploads/<random>.json` multipart uploads in progress (remote), for gc to abort.
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
use object_store::{
    BackoffConfig, ClientOptions, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload,
    RetryConfig, UpdateVersion, WriteMultipart,
};
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
    /// On a remote store: the folder inside `<kind>/<key>/` that holds this attempt's files
    /// (absent for local stores and for artifacts written before attempts existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<String>,
}

impl ArtifactManifest {
    /// Store-relative path of one of its files (or of `_log.txt`).
    pub fn file_rel(&self, path: &str) -> String {
        match &self.attempt {
            Some(a) => format!("{}/{a}/{path}", Store::artifact_dir(&self.kind, &self.key)),
            None => format!("{}/{path}", Store::artifact_dir(&self.kind, &self.key)),
        }
    }

    /// Checks what a reader relies on before it joins anything to a folder: the manifest is the
    /// one of `kind`/`key`, and every file path (and the attempt folder) stays inside the artifact.
    pub fn validate(&self, kind: &str, key: &StageKey) -> std::result::Result<(), String> {
        if self.kind != kind || self.key != *key {
            return Err(format!(
                "describes {}/{}, not {kind}/{key}",
                self.kind, self.key
            ));
        }
        if let Some(a) = &self.attempt {
            check_rel_path(a)
                .and_then(|()| {
                    if a.contains('/') {
                        Err("has more than one component".into())
                    } else {
                        Ok(())
                    }
                })
                .map_err(|e| format!("attempt folder `{a}`: {e}"))?;
        }
        let mut seen = std::collections::HashSet::new();
        for f in &self.files {
            check_rel_path(&f.path).map_err(|e| format!("file path `{}`: {e}", f.path))?;
            if crate::executor::RESERVED.contains(&f.path.as_str()) {
                return Err(format!(
                    "file path `{}` is a name the runner reserves",
                    f.path
                ));
            }
            if !seen.insert(f.path.as_str()) {
                return Err(format!("file path `{}` is listed twice", f.path));
            }
        }
        Ok(())
    }

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
    /// The writer's clock, for people; staleness is judged by the store's clock instead.
    pub heartbeat_unix: f64,
    /// Random per acquisition: who holds the lease (fencing).
    #[serde(default)]
    pub token: String,
    /// hostname, boot id and pid namespace: where `pid` means something (see `lease::host_id`).
    #[serde(default)]
    pub host_id: String,
    /// Set by a release: the key is free (S3 has no conditional delete, so a release is a
    /// conditional overwrite with this mark).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub released: bool,
    /// When the stage last reported progress or a log line (refreshed with the heartbeat), so
    /// `status` can name a stage that went silent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub activity_unix: Option<f64>,
}

/// Checks a relative path read from a record (a `_manifest.json`, local or remote) before it is
/// joined to a local folder: not empty, not absolute, no `.`/`..`/empty component, no backslash
/// or NUL. So a crafted manifest can never make a reader write or read outside the artifact.
pub fn check_rel_path(p: &str) -> std::result::Result<(), String> {
    if p.is_empty() {
        return Err("is empty".into());
    }
    if p.starts_with('/') {
        return Err("is absolute".into());
    }
    if p.contains('\\') || p.contains('\0') {
        return Err("contains a backslash or NUL".into());
    }
    for c in p.split('/') {
        if c.is_empty() || c == "." || c == ".." {
            return Err(format!(
                "has a `{c}` component (must stay inside the artifact)"
            ));
        }
    }
    Ok(())
}

/// One file of an artifact that does not match its `_manifest.json`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadFile {
    /// Relative to the artifact folder (`_manifest.json` when the manifest itself is bad).
    pub path: String,
    /// Store-relative path of the object (inside the attempt folder on a remote store).
    pub location: String,
    pub problem: String,
}

/// What `verify` found in one artifact.
#[derive(Debug, Clone, Default)]
pub struct VerifyReport {
    pub files: usize,
    pub bytes: u64,
    pub bad: Vec<BadFile>,
}

/// The version of a stored object, for compare-and-swap: the ETag/version on S3 and in memory,
/// the blake3 of the content on a local store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjVersion {
    pub e_tag: Option<String>,
    pub version: Option<String>,
}

/// A small record (lease, job record, index entry) as read back, with its version and the time
/// the store last wrote it (store's clock: S3 `LastModified`, file mtime).
#[derive(Debug, Clone)]
pub enum Record<T> {
    Absent,
    /// Empty, truncated or not what was expected: treated as stale by every reader (a warning is
    /// queued on the store, see [`Store::take_warnings`]).
    Corrupt {
        version: ObjVersion,
        modified_unix: f64,
    },
    Found {
        value: T,
        version: ObjVersion,
        modified_unix: f64,
    },
}

/// Environment-derived settings for remote stores, collected by the binary (the library never reads
/// the environment). Values are secrets: they are never printed or hashed.
#[derive(Clone, Default)]
pub struct StoreSettings {
    /// `AWS_*` variables as (name, value).
    pub aws: Vec<(String, String)>,
    /// Retries per S3 request instead of [`S3_MAX_RETRIES`] (`ADAPTOR_S3_RETRIES`).
    pub s3_retries: Option<usize>,
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
    /// The fence said this runner no longer holds the key's lease: nothing was committed.
    LostLease,
}

/// S3 request policy (documented in README "Store guarantees"): each request is at most one
/// chunk ([`CHUNK`]) of a transfer, so a per-request timeout bounds a stuck connection without
/// capping the size of a file.
pub const S3_CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
pub const S3_REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);
pub const S3_MAX_RETRIES: usize = 10;
pub const S3_RETRY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(180);

/// Downloads read ranges of this size, one at a time (memory stays flat in the file size).
const CHUNK: u64 = 8 << 20;

/// `_uploads/<token>.json`: a multipart upload in progress, so that gc can abort it once its
/// runner is gone (object_store 0.13 cannot list a bucket's multipart uploads).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UploadRecord {
    /// Store-relative path of the object being uploaded.
    pub path: String,
    pub upload_id: String,
}

pub struct Store {
    url: StoreUrl,
    inner: Arc<dyn ObjectStore>,
    /// The same store's multipart API (S3, memory): uploads whose id we record.
    multipart: Option<Arc<dyn object_store::multipart::MultipartStore>>,
    /// S3 only: how to list the bucket's uploads in progress, with the client's credentials.
    uploads: Option<(crate::s3uploads::Lister, Arc<object_store::aws::AmazonS3>)>,
    prefix: String,
    local_root: Option<PathBuf>,
    cache_dir: PathBuf,
    rt: tokio::runtime::Runtime,
    /// Store clock minus this machine's clock, measured once (see [`Store::now`]).
    clock_offset: std::sync::Mutex<Option<f64>>,
    warnings: std::sync::Mutex<Vec<String>>,
}

/// A fresh random hex string (attempt folders, lease tokens, temporary names).
pub fn unique_token() -> String {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut h = blake3::Hasher::new();
    h.update(&t.to_le_bytes());
    h.update(&n.to_le_bytes());
    h.update(&std::process::id().to_le_bytes());
    h.update(format!("{:?}", std::thread::current().id()).as_bytes());
    if let Ok(b) = std::fs::read("/proc/sys/kernel/random/uuid") {
        h.update(&b);
    }
    h.finalize().to_hex()[..16].to_string()
}

fn content_version(bytes: &[u8]) -> ObjVersion {
    ObjVersion {
        e_tag: Some(blake3::hash(bytes).to_hex().to_string()),
        version: None,
    }
}

fn unix_of(t: std::time::SystemTime) -> f64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
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
        let mut multipart: Option<Arc<dyn object_store::multipart::MultipartStore>> = None;
        let mut uploads = None;
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
            StoreUrl::Memory => {
                let m = Arc::new(InMemory::new());
                multipart = Some(m.clone());
                (m, String::new(), None)
            }
            StoreUrl::S3 { bucket, prefix } => {
                // Explicit retry and timeout policy (see the constants above); set before the
                // AWS_* settings, which may adjust the client options (AWS_ALLOW_HTTP).
                let mut b = AmazonS3Builder::new()
                    .with_bucket_name(bucket)
                    .with_retry(RetryConfig {
                        backoff: BackoffConfig {
                            init_backoff: std::time::Duration::from_millis(100),
                            max_backoff: std::time::Duration::from_secs(15),
                            base: 2.0,
                        },
                        max_retries: settings.s3_retries.unwrap_or(S3_MAX_RETRIES),
                        retry_timeout: S3_RETRY_TIMEOUT,
                    })
                    .with_client_options(
                        ClientOptions::new()
                            .with_connect_timeout(S3_CONNECT_TIMEOUT)
                            .with_timeout(S3_REQUEST_TIMEOUT),
                    );
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

                let config = |k: AmazonS3ConfigKey| b.get_config_value(&k);
                let lister = crate::s3uploads::Lister::new(
                    config(AmazonS3ConfigKey::Endpoint).as_deref(),
                    bucket,
                    &config(AmazonS3ConfigKey::Region).unwrap_or_else(|| "us-east-1".into()),
                    config(AmazonS3ConfigKey::VirtualHostedStyleRequest)
                        .is_some_and(|v| v == "true"),
                );
                let s3 = Arc::new(b.build().map_err(|e| store_err(e.to_string()))?);
                uploads = Some((lister, s3.clone()));
                multipart = Some(s3.clone());
                (s3, prefix.clone(), None)
            }
        };
        Ok(Store {
            url: url.clone(),
            inner,
            multipart,
            uploads,
            prefix,
            local_root,
            cache_dir: cache_dir.to_path_buf(),
            rt,
            clock_offset: std::sync::Mutex::new(None),
            warnings: std::sync::Mutex::new(Vec::new()),
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

    /// Queues a warning for the binary to print (the library never prints).
    pub fn warn(&self, message: String) {
        self.warnings.lock().expect("warnings").push(message);
    }

    /// The warnings queued since the last call.
    pub fn take_warnings(&self) -> Vec<String> {
        std::mem::take(&mut *self.warnings.lock().expect("warnings"))
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
            let p = root.join(rel);
            let parent = p.parent().expect("records have a parent");
            std::fs::create_dir_all(parent).at(parent)?;
            // Written in full under a private name, then linked: never seen half-written.
            let tmp = parent.join(format!(".new-{}", unique_token()));
            write_synced(&tmp, &bytes)?;
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
            let p = root.join(rel);
            let parent = p.parent().expect("records have a parent");
            std::fs::create_dir_all(parent).at(parent)?;
            let tmp = parent.join(format!(".new-{}", unique_token()));
            write_synced(&tmp, &bytes)?;
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
    fn put_conditional(
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
            return Err(Error::Other(format!(
                "{}: conditional delete is only available on a local store",
                self.url
            )));
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

    /// The metadata of every object under a store-relative prefix (a listing whose answer is
    /// cut is listed again).
    fn list_meta(&self, prefix: &str) -> Result<Vec<object_store::ObjectMeta>> {
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
            .block_on(async move { retry_cut(|| inner.list_with_delimiter(path.as_ref())).await })
            .map_err(|e| self.os_err(e))?;
        Ok(res
            .common_prefixes
            .iter()
            .filter_map(|p| self.rel(p).rsplit('/').next().map(str::to_string))
            .collect())
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
    fn unpublished_dir(&self, kind: &str, key: &StageKey) -> PathBuf {
        self.cache_dir
            .join("unpublished")
            .join(Self::artifact_dir(kind, key))
    }

    /// Keeps a finished staging folder whose publish failed (with the manifest to publish), so
    /// the next run re-publishes it instead of recomputing. Remote stores only (a local store's
    /// staging folder is inside the store).
    pub fn keep_unpublished(&self, staging: &Path, manifest: &ArtifactManifest) -> Result<PathBuf> {
        if self.local_root.is_some() {
            return Err(Error::Other(
                "a local store keeps no unpublished outputs".into(),
            ));
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

    /// Streams one remote object in ranged chunks of [`CHUNK`] (each retried from its offset),
    /// hashing it and writing it to `dest` when given. Checks the size first. Returns the blake3
    /// digest, or `None` if the object does not exist.
    fn fetch_file(
        &self,
        rel: &str,
        expected_size: u64,
        dest: Option<&Path>,
    ) -> Result<Option<String>> {
        use std::io::Write;
        let path = self.path(rel);
        let inner = self.inner.clone();
        let what = format!("{}/{rel}", self.url);
        let result: std::result::Result<Option<String>, Error> = self.rt.block_on(async move {
            let size = match inner.head(&path).await {
                Ok(m) => m.size,
                Err(object_store::Error::NotFound { .. }) => return Ok(None),
                Err(e) => return Err(Error::Other(e.to_string())),
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
                    match inner.get_range(&path, offset..end).await {
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
                        // object_store already retried the request; a body cut mid-stream is
                        // retried here, from this chunk's offset.
                        Err(_) if tries < 3 => {
                            tries += 1;
                            tokio::time::sleep(std::time::Duration::from_millis(200 << tries))
                                .await;
                        }
                        Err(e) => return Err(Error::Other(format!("{what}: {e}"))),
                    }
                };
                hasher.update(&bytes);
                if let (Some(w), Some(d)) = (out.as_mut(), dest) {
                    w.write_all(&bytes).at(d)?;
                }
                offset = end;
            }
            if let (Some(w), Some(d)) = (out, dest) {
                w.into_inner()
                    .map_err(|e| Error::io(d, e.into_error()))?
                    .sync_all()
                    .at(d)?;
            }
            Ok(Some(hasher.finalize().to_hex().to_string()))
        });
        result.map_err(|e| match e {
            Error::Other(m) => Error::Store {
                url: self.url.to_string(),
                message: m,
            },
            other => other,
        })
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
        let out = staging.join("out");
        let log = staging.join("log.txt");
        let dir_rel = Self::artifact_dir(&manifest.kind, &manifest.key);
        if let Some(root) = &self.local_root {
            if log.exists() {
                std::fs::rename(&log, out.join("_log.txt")).at(&log)?;
            }
            sync_tree(&out)?;
            let manifest_bytes = serde_json::to_vec_pretty(manifest).expect("serialisable");
            write_synced(&out.join("_manifest.json"), &manifest_bytes)?;
            sync_dir(&out)?;
            let target = root.join(&dir_rel);
            let parent = target.parent().expect("artifact dirs have a parent");
            let new_parent = !parent.exists();
            std::fs::create_dir_all(parent).at(parent)?;
            if new_parent {
                sync_dir(root)?;
            }
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
                    // An incomplete leftover (no manifest: an interrupted gc or quarantine).
                    std::fs::remove_dir_all(&target).at(&target)?;
                    std::fs::rename(&out, &target).at(&target)?;
                    sync_dir(parent)?;
                    let _ = std::fs::remove_dir_all(staging);
                    Ok(PublishOutcome::Published)
                }
                Err(e) => Err(Error::io(&target, e)),
            };
        }
        let mut manifest = manifest.clone();
        let attempt = manifest
            .attempt
            .clone()
            .unwrap_or_else(|| format!("_attempt-{}", unique_token()));
        manifest.attempt = Some(attempt.clone());
        let attempt_rel = format!("{dir_rel}/{attempt}");
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
            Ok(None) => {}
            Ok(Some(outcome)) => {
                // Not committed: our attempt folder is never followed; remove it.
                let _ = self.delete_prefix(&attempt_rel);
                let _ = std::fs::remove_dir_all(staging);
                return Ok(outcome);
            }
            Err(e) => {
                // No manifest was written: the attempt goes; the staging folder stays (the
                // caller keeps it for a re-publish).
                let _ = self.delete_prefix(&attempt_rel);
                return Err(e);
            }
        }
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
            let upload = inner
                .put_multipart(&path)
                .await
                .map_err(|e| Error::Other(e.to_string()))?;
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
                    writer
                        .wait_for_capacity(4)
                        .await
                        .map_err(|e| Error::Other(e.to_string()))?;
                    writer.write(&buf[..n]);
                }
                Ok(())
            }
            .await;
            match written {
                Ok(()) => writer
                    .finish()
                    .await
                    .map(|_| ())
                    .map_err(|e| Error::Other(e.to_string())),
                Err(e) => {
                    // Abort, so no half-uploaded parts linger in the bucket.
                    let _ = writer.abort().await;
                    Err(e)
                }
            }
        });
        result.map_err(|e| Error::Store {
            url: self.url.to_string(),
            message: format!("upload of {rel}: {e}"),
        })
    }

    /// A multipart upload whose id is recorded under `_uploads/` while it runs: parts of
    /// [`MULTIPART_CHUNK`] read from disk at their offset, four in flight at most; aborted on
    /// error; the record is removed when the upload is completed or aborted.
    fn upload_recorded(
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

    /// A local directory holding a complete artifact: the artifact itself on a local store, a
    /// verified copy in the cache folder otherwise (streamed in chunks, each file's digest
    /// checked, moved into place in one rename when complete).
    pub fn local_artifact(&self, kind: &str, key: &StageKey) -> Result<PathBuf> {
        let rel = Self::artifact_dir(kind, key);
        if let Some(root) = &self.local_root {
            return Ok(root.join(rel));
        }
        let dest = self.cache_dir.join("artifacts").join(&rel);
        if dest.join("_manifest.json").is_file() {
            return Ok(dest);
        }
        let manifest = self
            .read_manifest(kind, key)?
            .ok_or_else(|| Error::Artifact {
                what: format!("{}/{rel}", self.url),
                message: "is not complete (no _manifest.json)".into(),
            })?;
        let tmp = self
            .cache_dir
            .join("artifacts")
            .join(format!("{rel}.part-{}", unique_token()));
        let _ = std::fs::remove_dir_all(&tmp);
        let fetched = (|| -> Result<()> {
            for file in &manifest.files {
                // Paths were checked by `read_manifest`: this stays inside `tmp`.
                let p = tmp.join(&file.path);
                std::fs::create_dir_all(p.parent().expect("has parent")).at(&p)?;
                let file_rel = manifest.file_rel(&file.path);
                let digest = self
                    .fetch_file(&file_rel, file.bytes, Some(&p))?
                    .ok_or_else(|| Error::Artifact {
                        what: format!("{}/{rel}", self.url),
                        message: format!("file {} listed in _manifest.json is missing", file.path),
                    })?;
                if digest != file.blake3 {
                    return Err(Error::Artifact {
                        what: format!("{}/{file_rel}", self.url),
                        message: format!(
                            "content digest {digest} differs from the recorded {}",
                            file.blake3
                        ),
                    });
                }
            }
            std::fs::write(
                tmp.join("_manifest.json"),
                serde_json::to_vec_pretty(&manifest).expect("ser"),
            )
            .at(&tmp)
        })();
        if let Err(e) = fetched {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
        std::fs::create_dir_all(dest.parent().expect("has parent")).at(&dest)?;
        match std::fs::rename(&tmp, &dest) {
            Ok(()) => Ok(dest),
            Err(_) if dest.join("_manifest.json").is_file() => {
                let _ = std::fs::remove_dir_all(&tmp);
                Ok(dest)
            }
            Err(e) => {
                let _ = std::fs::remove_dir_all(&tmp);
                Err(Error::io(&dest, e))
            }
        }
    }
}

/// GETs a (small) object whole, retrying from scratch when its body is cut mid-way: object_store
/// retries a request that fails, not a body that breaks after the response has started.
async fn get_whole(
    inner: &Arc<dyn ObjectStore>,
    path: &ObjPath,
) -> object_store::Result<(Bytes, object_store::ObjectMeta)> {
    let mut tries = 0u32;
    loop {
        let r = async {
            let r = inner.get(path).await?;
            let meta = r.meta.clone();
            Ok((r.bytes().await?, meta))
        }
        .await;
        let retry = tries < 3
            && matches!(&r, Err(e) if !matches!(e,
                object_store::Error::NotFound { .. }
                | object_store::Error::Precondition { .. }
                | object_store::Error::NotModified { .. }));
        if !retry {
            return r;
        }
        tries += 1;
        tokio::time::sleep(std::time::Duration::from_millis(100 << tries)).await;
    }
}

/// Runs a listing again when its response is cut mid-body (see [`get_whole`]); at most 3 more
/// times, with a short backoff.
async fn retry_cut<T, F, Fut>(mut f: F) -> object_store::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = object_store::Result<T>>,
{
    let mut tries = 0u32;
    loop {
        let r = f().await;
        let retry = tries < 3
            && matches!(&r, Err(e) if !matches!(e,
                object_store::Error::NotFound { .. }
                | object_store::Error::Precondition { .. }));
        if !retry {
            return r;
        }
        tries += 1;
        tokio::time::sleep(std::time::Duration::from_millis(100 << tries)).await;
    }
}

/// Runs `f` holding an exclusive `flock` on `.<name>.cas` beside a record: every compare-and-swap
/// and conditional delete of that record on a local store takes it (creation by hard link does not
/// need to: it only succeeds when the record is absent). Works on NFS through the client's lock
/// emulation.
fn with_record_lock<T>(record: &Path, f: impl FnOnce() -> Result<T>) -> Result<T> {
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

fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut f = std::fs::File::create(path).at(path)?;
    f.write_all(bytes).at(path)?;
    f.sync_all().at(path)
}

fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir).and_then(|f| f.sync_all()).at(dir)
}

/// fsyncs every file and folder under `dir` (children before their folder).
fn sync_tree(dir: &Path) -> Result<()> {
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
