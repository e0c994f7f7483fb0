//! What the store keeps besides artifact files, as serde types: artifact manifests, leases, run
//! index entries, upload and staging records, and the checks a record read back must pass.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::key::StageKey;
use crate::value::Params;

use super::Store;

/// File names in an artifact that belong to the runner.
pub const RESERVED: &[&str] = &["_manifest.json", "_log.txt"];

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
    /// Peak resident memory (MiB) of the processes the stage started (the libtorch worker, the
    /// `command` shell and what it waited for): the kernel's `ru_maxrss` of the main process at
    /// its exit. Absent for stages that run in the runner's own process and older artifacts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak_rss_mib: Option<u64>,
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
            if RESERVED.contains(&f.path.as_str()) {
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
    /// The manifest as given on the command line of that run (absent in older records), so a
    /// copy of the manifest can say which one it compares with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest: Option<String>,
}

/// `_forgotten/<manifest-id>/<instance-hash>.json`: `adaptor forget` dropped this instance (at
/// this key) from the manifest's index; its artifact stays until a run rebuilds it or gc.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ForgetRecord {
    pub instance: String,
    pub kind: String,
    pub key: StageKey,
    pub unix: f64,
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

/// How a publish ended.
pub enum PublishOutcome {
    Published,
    /// Another runner completed the same key first; ours was discarded.
    AlreadyComplete,
    /// The fence said this runner no longer holds the key's lease: nothing was committed.
    LostLease,
}

/// `_uploads/<token>.json`: a multipart upload in progress, so that gc can abort it once its
/// runner is gone (object_store 0.13 cannot list a bucket's multipart uploads).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UploadRecord {
    /// Store-relative path of the object being uploaded.
    pub path: String,
    pub upload_id: String,
}

/// `_staging/<nonce>/owner.json`: who writes a staging folder (so gc can tell if it is gone).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct StagingOwner {
    pub host_id: String,
    pub pid: u32,
    pub kind: String,
    pub key: StageKey,
}
