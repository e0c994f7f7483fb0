//! Content digests of external inputs (raw dataset folders, weight directories).
//!
//! A digest is blake3 over every file's relative path, size and blake3 content hash. Hashing a large
//! dataset is slow, so a cache keeps each file's (size, mtime, ctime, inode) and hash: a run stats
//! every file, and only rehashes the files whose stat changed (none, on a no-op). `verify` rehashes
//! everything and reports files whose content changed behind an unchanged stat.

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::{Error, IoContext, Result};

/// Files above this size are hashed with blake3's multi-threaded mmap mode.
const LARGE_FILE: u64 = 16 << 20;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct FileStat {
    path: String,
    size: u64,
    mtime_ns: i64,
    ctime_ns: i64,
    ino: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct CachedFile {
    #[serde(flatten)]
    stat: FileStat,
    hash: String,
}

/// The small part of a cache entry, read on every run.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct CacheHead {
    root: PathBuf,
    stat_digest: String,
    content_digest: String,
    files: u64,
    bytes: u64,
}

/// The result of fingerprinting one external input.
#[derive(Debug, Clone, PartialEq)]
pub struct Fingerprint {
    /// blake3 over (path, size, content hash) of every file: what goes into stage keys.
    pub digest: String,
    pub files: u64,
    pub bytes: u64,
    /// Files whose content was read this time (0 on a cache hit).
    pub rehashed: u64,
    /// With `verify`: files whose content changed although their stat did not.
    pub mismatched: Vec<String>,
}

/// Where digests are cached between runs: a local folder (per user, not per store).
#[derive(Debug, Clone)]
pub struct FingerprintCache {
    dir: PathBuf,
}

impl FingerprintCache {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        FingerprintCache { dir: dir.into() }
    }

    fn paths(&self, root: &Path) -> (PathBuf, PathBuf) {
        let id = blake3::hash(root.to_string_lossy().as_bytes()).to_hex();
        let base = self.dir.join("fingerprints");
        (
            base.join(format!("{}.head.json", &id[..32])),
            base.join(format!("{}.files.json", &id[..32])),
        )
    }

    fn snapshot_path(&self, root: &Path, content_digest: &str) -> PathBuf {
        let id = blake3::hash(root.to_string_lossy().as_bytes()).to_hex();
        // The digest may come from an artifact's `_manifest.json` (`explain`): only its hex
        // digits make the name, so a malformed one neither panics nor leaves the folder.
        let digest: String = content_digest
            .chars()
            .filter(char::is_ascii_hexdigit)
            .take(16)
            .collect();
        self.dir
            .join("fingerprints")
            .join(format!("{}.was-{digest}.json", &id[..32]))
    }

    /// Keeps the `keep` newest listings of earlier contents of `root`.
    fn prune_snapshots(&self, root: &Path, keep: usize) {
        let id = blake3::hash(root.to_string_lossy().as_bytes()).to_hex();
        let prefix = format!("{}.was-", &id[..32]);
        let Ok(entries) = fs::read_dir(self.dir.join("fingerprints")) else {
            return;
        };
        let mut snaps: Vec<(std::time::SystemTime, PathBuf)> = entries
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
            .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
            .collect();
        snaps.sort();
        let excess = snaps.len().saturating_sub(keep);
        for (_, p) in snaps.into_iter().take(excess) {
            let _ = fs::remove_file(p);
        }
    }

    /// Files added, removed or changed in `root` since it had content digest `old_digest`, if the
    /// cache still holds that listing (it keeps the one before each change).
    pub fn changes_since(&self, root: &Path, old_digest: &str) -> Option<Vec<String>> {
        let root = root.canonicalize().ok()?;
        let old: Vec<CachedFile> = read_json(&self.snapshot_path(&root, old_digest))?;
        let (_, files_path) = self.paths(&root);
        let new: Vec<CachedFile> = read_json(&files_path)?;
        let old: HashMap<&str, &str> = old
            .iter()
            .map(|f| (f.stat.path.as_str(), f.hash.as_str()))
            .collect();
        let new: HashMap<&str, &str> = new
            .iter()
            .map(|f| (f.stat.path.as_str(), f.hash.as_str()))
            .collect();
        let mut out: Vec<String> = Vec::new();
        for (path, hash) in &new {
            match old.get(path) {
                None => out.push(format!("added {path}")),
                Some(h) if h != hash => out.push(format!("changed {path}")),
                _ => {}
            }
        }
        out.extend(
            old.keys()
                .filter(|p| !new.contains_key(*p))
                .map(|p| format!("removed {p}")),
        );
        out.sort();
        Some(out)
    }

    /// Fingerprints `root` (a folder or a single file).
    pub fn fingerprint(&self, root: &Path, verify: bool) -> Result<Fingerprint> {
        let root = root.canonicalize().at(root)?;
        let stats = walk(&root)?;
        let stat_digest = stat_digest(&stats);
        let (head_path, files_path) = self.paths(&root);

        let head: Option<CacheHead> = read_json(&head_path);
        if !verify {
            if let Some(h) = &head {
                if h.stat_digest == stat_digest && h.root == root {
                    return Ok(Fingerprint {
                        digest: h.content_digest.clone(),
                        files: h.files,
                        bytes: h.bytes,
                        rehashed: 0,
                        mismatched: Vec::new(),
                    });
                }
            }
        }

        // Reuse per-file hashes whose stat is unchanged (unless verifying).
        let previous: HashMap<String, CachedFile> = read_json::<Vec<CachedFile>>(&files_path)
            .unwrap_or_default()
            .into_iter()
            .map(|f| (f.stat.path.clone(), f))
            .collect();
        let hashed: Vec<(CachedFile, bool, bool)> = stats
            .into_par_iter()
            .map(|stat| {
                let prev = previous.get(&stat.path).filter(|p| p.stat == stat);
                match (prev, verify) {
                    (Some(p), false) => Ok((p.clone(), false, false)),
                    (prev, _) => {
                        let full = if stat.path.is_empty() {
                            root.clone()
                        } else {
                            root.join(&stat.path)
                        };
                        let hash = hash_file(&full, stat.size)?;
                        let mismatch = prev.is_some_and(|p| p.hash != hash);
                        Ok((CachedFile { stat, hash }, true, mismatch))
                    }
                }
            })
            .collect::<Result<_>>()?;

        let mut hasher = blake3::Hasher::new();
        hasher.update(b"adaptor-external/1\n");
        let (mut files, mut bytes, mut rehashed) = (0u64, 0u64, 0u64);
        let mut mismatched = Vec::new();
        for (f, fresh, mismatch) in &hashed {
            hasher.update(f.stat.path.as_bytes());
            hasher.update(b"\0");
            hasher.update(f.stat.size.to_string().as_bytes());
            hasher.update(b"\0");
            hasher.update(f.hash.as_bytes());
            hasher.update(b"\n");
            files += 1;
            bytes += f.stat.size;
            rehashed += u64::from(*fresh);
            if *mismatch {
                mismatched.push(f.stat.path.clone());
            }
        }
        let digest = hasher.finalize().to_hex().to_string();

        let entries: Vec<CachedFile> = hashed.into_iter().map(|(f, _, _)| f).collect();
        // Keep the listing of the content being replaced, so `explain` can name changed files.
        if let Some(old) = head
            .as_ref()
            .filter(|h| h.content_digest != digest && h.root == root)
        {
            let _ = fs::rename(&files_path, self.snapshot_path(&root, &old.content_digest));
            self.prune_snapshots(&root, 3);
        }
        let head = CacheHead {
            root: root.clone(),
            stat_digest,
            content_digest: digest.clone(),
            files,
            bytes,
        };
        // The cache is an optimisation: failing to write it must not fail the run.
        let _ = write_json(&files_path, &entries).and_then(|_| write_json(&head_path, &head));

        Ok(Fingerprint {
            digest,
            files,
            bytes,
            rehashed,
            mismatched,
        })
    }
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Option<T> {
    let bytes = fs::read(path).ok()?;
    serde_json::from_slice(&bytes).ok()
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let dir = path.parent().expect("cache paths have a parent");
    fs::create_dir_all(dir).at(dir)?;
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    fs::write(&tmp, serde_json::to_vec(value).expect("serialisable")).at(&tmp)?;
    fs::rename(&tmp, path).at(path)
}

/// What a non-regular file is, for errors: "a FIFO (named pipe)", "a socket", ...
pub fn file_kind(meta: &fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let ft = meta.file_type();
    if ft.is_file() {
        "a regular file"
    } else if ft.is_dir() {
        "a folder"
    } else if ft.is_fifo() {
        "a FIFO (named pipe)"
    } else if ft.is_socket() {
        "a socket"
    } else if ft.is_char_device() {
        "a character device"
    } else if ft.is_block_device() {
        "a block device"
    } else {
        "not a regular file"
    }
}

/// The error for a file that cannot be hashed because it is not a regular file.
fn not_regular(path: &Path, meta: &fs::Metadata) -> Error {
    Error::NotRegularFile {
        path: path.to_path_buf(),
        what: file_kind(meta),
    }
}

fn stat_of(path: &Path, rel: String) -> Result<FileStat> {
    let m = fs::metadata(path).at(path)?;
    if !m.is_file() {
        return Err(not_regular(path, &m));
    }
    Ok(FileStat {
        path: rel,
        size: m.len(),
        mtime_ns: m.mtime() * 1_000_000_000 + m.mtime_nsec(),
        ctime_ns: m.ctime() * 1_000_000_000 + m.ctime_nsec(),
        ino: m.ino(),
    })
}

/// Every regular file under `root` (symlinks followed), sorted by relative path. A file root gives
/// one entry with an empty relative path.
fn walk(root: &Path) -> Result<Vec<FileStat>> {
    let meta = fs::metadata(root).at(root)?;
    if meta.is_file() {
        return Ok(vec![stat_of(root, String::new())?]);
    }
    if !meta.is_dir() {
        return Err(not_regular(root, &meta));
    }
    let mut out = walk_dir(root, "", 0)?;
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

fn walk_dir(dir: &Path, rel: &str, depth: usize) -> Result<Vec<FileStat>> {
    if depth > 64 {
        return Err(Error::NestedTooDeep {
            path: dir.to_path_buf(),
            depth: 64,
        });
    }
    let mut files = Vec::new();
    let mut dirs = Vec::new();
    for entry in fs::read_dir(dir).at(dir)? {
        let entry = entry.at(dir)?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        let child_rel = if rel.is_empty() {
            name
        } else {
            format!("{rel}/{name}")
        };
        let ft = entry.file_type().at(&path)?;
        let is_dir = if ft.is_symlink() {
            fs::metadata(&path).at(&path)?.is_dir()
        } else {
            ft.is_dir()
        };
        if is_dir {
            dirs.push((path, child_rel));
        } else {
            files.push((path, child_rel));
        }
    }
    let mut out: Vec<FileStat> = files
        .into_par_iter()
        .map(|(p, r)| stat_of(&p, r))
        .collect::<Result<_>>()?;
    let nested: Vec<Vec<FileStat>> = dirs
        .into_par_iter()
        .map(|(p, r)| walk_dir(&p, &r, depth + 1))
        .collect::<Result<_>>()?;
    out.extend(nested.into_iter().flatten());
    Ok(out)
}

fn stat_digest(stats: &[FileStat]) -> String {
    let mut h = blake3::Hasher::new();
    for s in stats {
        h.update(
            format!(
                "{}\0{}\0{}\0{}\0{}\n",
                s.path, s.size, s.mtime_ns, s.ctime_ns, s.ino
            )
            .as_bytes(),
        );
    }
    h.finalize().to_hex().to_string()
}

/// blake3 of a file's bytes; large files use all cores. Anything but a regular file is refused by
/// name: the file is opened without blocking (a FIFO with no writer would block `open` itself)
/// and checked before a byte is read.
pub fn hash_file(path: &Path, size: u64) -> Result<String> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .at(path)?;
    let meta = f.metadata().at(path)?;
    if !meta.is_file() {
        return Err(not_regular(path, &meta));
    }
    let mut hasher = blake3::Hasher::new();
    if size >= LARGE_FILE {
        hasher.update_mmap_rayon(path).at(path)?;
    } else {
        hasher.update_reader(f).at(path)?;
    }
    Ok(hasher.finalize().to_hex().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A data folder, and a fingerprint cache in a folder of its own.
    fn scratch() -> (tempfile::TempDir, tempfile::TempDir, FingerprintCache) {
        let data = tempfile::tempdir().unwrap();
        let cache = tempfile::tempdir().unwrap();
        let c = FingerprintCache::new(cache.path());
        (data, cache, c)
    }

    #[test]
    fn malformed_digests_from_the_store_are_not_found_rather_than_panicking() {
        let (data, _cache, c) = scratch();
        fs::write(data.path().join("y.txt"), b"world").unwrap();
        c.fingerprint(data.path(), false).unwrap();
        for bad in ["", "abc", "ééééééééé", "../../../../etc/passwd"] {
            assert_eq!(c.changes_since(data.path(), bad), None, "{bad}");
        }
    }

    #[test]
    fn cache_hit_changed_content_and_touch() {
        let (data, _cache, c) = scratch();
        fs::create_dir_all(data.path().join("a/b")).unwrap();
        fs::write(data.path().join("a/b/x.txt"), b"hello").unwrap();
        fs::write(data.path().join("y.txt"), b"world").unwrap();

        let first = c.fingerprint(data.path(), false).unwrap();
        assert_eq!((first.files, first.bytes, first.rehashed), (2, 10, 2));
        let second = c.fingerprint(data.path(), false).unwrap();
        assert_eq!(second.digest, first.digest);
        assert_eq!(second.rehashed, 0);

        // Rewriting the same bytes changes the stat, not the digest; only that file is rehashed.
        fs::write(data.path().join("y.txt"), b"world").unwrap();
        let touched = c.fingerprint(data.path(), false).unwrap();
        assert_eq!(touched.digest, first.digest);
        assert!(touched.rehashed <= 1);

        fs::write(data.path().join("y.txt"), b"World").unwrap();
        let changed = c.fingerprint(data.path(), false).unwrap();
        assert_ne!(changed.digest, first.digest);

        let verified = c.fingerprint(data.path(), true).unwrap();
        assert_eq!(verified.digest, changed.digest);
        assert_eq!(verified.rehashed, 2);
        assert!(verified.mismatched.is_empty());
    }

    #[test]
    fn a_fifo_socket_or_device_is_refused_by_name_without_blocking() {
        let data = tempfile::tempdir().unwrap();
        let cache = tempfile::tempdir().unwrap();
        fs::write(data.path().join("ok.txt"), b"1").unwrap();
        let fifo = data.path().join("labels.csv");
        let c_path = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a NUL-terminated path we own.
        assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o644) }, 0);
        let sock = data.path().join("sock");
        let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let (root, cache_dir) = (data.path().to_path_buf(), cache.path().to_path_buf());
        std::thread::spawn(move || {
            let c = FingerprintCache::new(cache_dir);
            let _ = tx.send((
                c.fingerprint(&root, false).map_err(|e| e.to_string()),
                c.fingerprint(&root.join("labels.csv"), false)
                    .map_err(|e| e.to_string()),
                hash_file(Path::new("/dev/zero"), 0).map_err(|e| e.to_string()),
            ));
        });
        let (folder, single, device) = rx
            .recv_timeout(std::time::Duration::from_secs(30))
            .expect("fingerprinting blocked");
        let folder = folder.unwrap_err();
        assert!(
            folder.contains("labels.csv") && folder.contains("FIFO")
                || folder.contains("sock") && folder.contains("socket"),
            "{folder}"
        );
        let single = single.unwrap_err();
        assert!(single.contains("labels.csv: is a FIFO"), "{single}");
        let device = device.unwrap_err();
        assert!(
            device.contains("/dev/zero: is a character device"),
            "{device}"
        );
    }

    #[test]
    fn renaming_a_file_changes_the_digest() {
        let (data, _cache, c) = scratch();
        fs::write(data.path().join("a"), b"1").unwrap();
        let d1 = c.fingerprint(data.path(), false).unwrap().digest;
        fs::rename(data.path().join("a"), data.path().join("b")).unwrap();
        assert_ne!(c.fingerprint(data.path(), false).unwrap().digest, d1);
    }
}
