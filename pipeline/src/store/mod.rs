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
//! - `_forgotten/<manifest-id>/<instance-hash>.json` instances `adaptor forget` dropped from that
//!   manifest's index: `status` shows them missing and the next run rebuilds them.
//! - `_replaced/<kind>/<key>-<unix>-<token>/` (local only) the artifact a forced rebuild replaced, kept
//!   for readers still in it until gc removes it after the lease timeout.
//! - `_staging/` (local only) directories being written; renamed into place when complete.
//! - `_resume/<kind>/<key>/` (local; the cache folder for remote stores) state a stage resumes
//!   from after a kill; removed when its artifact is committed.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use object_store::path::Path as ObjPath;
use object_store::ObjectStore;

use crate::error::Error;
use crate::key::StageKey;

mod copy;
mod index;
mod listing;
mod objects;
mod publish;
mod records;
mod replace;
mod retry;
mod transfer;
mod url;
mod verify;

pub use copy::{CopyMode, CopyOutcome};
pub use index::{ForeignBuild, IndexCatalog};
pub use publish::describe_outputs;
pub use records::{
    check_rel_path, ArtifactManifest, BadFile, FileRecord, ForgetRecord, IndexEntry, InputRecord,
    Lease, ObjVersion, PublishOutcome, Record, StagingOwner, UploadRecord, VerifyReport, RESERVED,
};
pub use url::{
    StoreSettings, StoreUrl, S3_CONNECT_TIMEOUT, S3_MAX_RETRIES, S3_REQUEST_TIMEOUT,
    S3_RETRY_TIMEOUT,
};

use publish::*;
use retry::*;

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
    /// [`StoreSettings::cache_tables`].
    cache_tables: bool,
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
    pub fn url(&self) -> &StoreUrl {
        &self.url
    }

    /// The local directory of a local store.
    pub fn local_root(&self) -> Option<&Path> {
        self.local_root.as_deref()
    }

    pub(super) fn path(&self, rel: &str) -> ObjPath {
        if self.prefix.is_empty() {
            ObjPath::from(rel)
        } else {
            ObjPath::from(format!("{}/{rel}", self.prefix))
        }
    }

    /// Store-relative path of an object path.
    pub(super) fn rel(&self, p: &ObjPath) -> String {
        let s = p.as_ref();
        if self.prefix.is_empty() {
            s.to_string()
        } else {
            s.strip_prefix(&self.prefix)
                .map(|r| r.trim_start_matches('/').to_string())
                .unwrap_or_else(|| s.to_string())
        }
    }

    pub(super) fn os_err(&self, e: object_store::Error) -> Error {
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

    pub fn forgotten_path(manifest_id: &str, instance: &str) -> String {
        let h = blake3::hash(instance.as_bytes()).to_hex();
        format!("_forgotten/{manifest_id}/{}.json", &h[..32])
    }

    /// Queues a warning for the binary to print (the library never prints).
    pub fn warn(&self, message: String) {
        self.warnings.lock().expect("warnings").push(message);
    }

    /// The warnings queued since the last call.
    pub fn take_warnings(&self) -> Vec<String> {
        std::mem::take(&mut *self.warnings.lock().expect("warnings"))
    }
}
