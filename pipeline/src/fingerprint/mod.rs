//! Content digests of external inputs (raw dataset folders, weight directories).
//!
//! A digest is blake3 over every file's relative path, size and blake3 content hash. Hashing a large
//! dataset is slow, so a cache keeps each file's (size, mtime, ctime, inode) and hash, and a run
//! rehashes only the files whose stat changed (none, on a no-op). How much a run stats is the
//! input's [`Check`]: every file (the default), every folder, or nothing (`immutable`). `verify`
//! rehashes everything and reports files whose content changed behind an unchanged stat.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::{IoContext, Result};

mod folders;
#[cfg(test)]
mod tests;
mod walk;

pub use walk::{file_kind, hash_file};
use walk::{sort_files, stat_digest, walk, FileStat};

/// What a run looks at to decide that an external input is unchanged (`check`/`immutable` in the
/// manifest). Never part of a key: every check gives the same digest for the same files.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Check {
    /// Stat every file (`check = "files"`): any change of a file's size, mtime, ctime or inode
    /// is seen.
    #[default]
    Files,
    /// Stat every folder (`check = "folders"`), and the files of the folders whose stat changed:
    /// a file added, removed, renamed or replaced is seen; a file rewritten in place is not
    /// (until `--verify`).
    Folders,
    /// Stat nothing once fingerprinted (`immutable = true`): no change is seen until `--verify`.
    Immutable,
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
    /// blake3 of the file listing written with this head: a listing from another run (two runs
    /// writing at once) is not trusted without a stat.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    files_blake3: Option<String>,
    /// blake3 of the folder listing written with this head (`check = "folders"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    folders_blake3: Option<String>,
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
    /// Files stat'ed this time (all of them with `check = "files"`; on a no-op none with
    /// `check = "folders"` or `immutable`).
    pub files_checked: u64,
    /// Folders stat'ed this time (`check = "folders"`).
    pub folders_checked: u64,
    /// Folders listed this time because their stat changed (`check = "folders"`).
    pub folders_listed: u64,
}

/// How many stats a run took.
#[derive(Debug, Clone, Copy, Default)]
struct Counts {
    files_checked: u64,
    folders_checked: u64,
    folders_listed: u64,
}

impl Fingerprint {
    fn hit(h: &CacheHead, c: Counts) -> Self {
        Fingerprint {
            digest: h.content_digest.clone(),
            files: h.files,
            bytes: h.bytes,
            rehashed: 0,
            mismatched: Vec::new(),
            files_checked: c.files_checked,
            folders_checked: c.folders_checked,
            folders_listed: c.folders_listed,
        }
    }
}

/// Where digests are cached between runs: a local folder (per user, not per store).
#[derive(Debug, Clone)]
pub struct FingerprintCache {
    dir: PathBuf,
}

/// The cache files of one root.
struct CachePaths {
    head: PathBuf,
    files: PathBuf,
    folders: PathBuf,
}

/// Every file's stat after a check, with what the check read from the cache on the way.
struct Gathered {
    stats: Vec<FileStat>,
    /// The cached files, when the check already read them.
    previous: Option<Vec<CachedFile>>,
    /// The new folder listing (`check = "folders"`).
    listing: Option<folders::Listing>,
    counts: Counts,
    /// With `verify`: the files that the input's check would have taken from the cache without
    /// a stat, whose changed content is reported even though their stat changed too.
    unseen: Unseen,
}

enum Unseen {
    Nothing,
    /// Every file (`immutable`).
    All,
    /// The files of these folders (`check = "folders"`: the folders whose stat was unchanged).
    Folders(HashSet<String>),
}

impl Unseen {
    fn contains(&self, path: &str) -> bool {
        match self {
            Unseen::Nothing => false,
            Unseen::All => true,
            Unseen::Folders(f) => f.contains(folders::parent_of(path)),
        }
    }
}

impl FingerprintCache {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        FingerprintCache { dir: dir.into() }
    }

    fn paths(&self, root: &Path) -> CachePaths {
        let id = blake3::hash(root.to_string_lossy().as_bytes()).to_hex();
        let base = self.dir.join("fingerprints");
        CachePaths {
            head: base.join(format!("{}.head.json", &id[..32])),
            files: base.join(format!("{}.files.json", &id[..32])),
            folders: base.join(format!("{}.folders.json", &id[..32])),
        }
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
        let new: Vec<CachedFile> = read_json(&self.paths(&root).files)?;
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

    /// Fingerprints `root` (a folder or a single file), stat'ing every file.
    pub fn fingerprint(&self, root: &Path, verify: bool) -> Result<Fingerprint> {
        self.fingerprint_with(root, Check::Files, verify)
    }

    /// Fingerprints `root` (a folder or a single file) with the given check.
    pub fn fingerprint_with(&self, root: &Path, check: Check, verify: bool) -> Result<Fingerprint> {
        let root = root.canonicalize().at(root)?;
        let paths = self.paths(&root);
        let head = read_json::<CacheHead>(&paths.head).filter(|h| h.root == root);
        if let (Check::Immutable, Some(h), false) = (check, &head, verify) {
            return Ok(Fingerprint::hit(h, Counts::default()));
        }
        let is_dir = fs::metadata(&root).at(&root)?.is_dir();
        let gathered = if check != Check::Files && is_dir {
            // An immutable input seen for the first time is listed like `folders`, so that a
            // later switch to `folders` starts warm.
            match self.gather_folders(&root, &paths, head.as_ref(), check, verify)? {
                Ok(counts) => return Ok(Fingerprint::hit(head.as_ref().unwrap(), counts)),
                Err(g) => g,
            }
        } else {
            let stats = walk(&root)?;
            let counts = Counts {
                files_checked: stats.len() as u64,
                ..Counts::default()
            };
            Gathered {
                stats,
                previous: None,
                listing: None,
                counts,
                unseen: if check == Check::Immutable && verify {
                    Unseen::All
                } else {
                    Unseen::Nothing
                },
            }
        };
        self.digest(&root, &paths, head, gathered, verify)
    }

    /// `check = "folders"`: `Ok(counts)` when no folder changed since the cached head, otherwise
    /// every file's stat.
    fn gather_folders(
        &self,
        root: &Path,
        paths: &CachePaths,
        head: Option<&CacheHead>,
        check: Check,
        verify: bool,
    ) -> Result<std::result::Result<Counts, Gathered>> {
        let last: Option<folders::Listing> =
            head.and_then(|h| read_verified(&paths.folders, h.folders_blake3.as_deref()));
        if verify {
            // Every folder listed and every file stat'ed; the folders a check would have
            // trusted are remembered, so that a change inside them is reported.
            let unseen = match &last {
                Some(l) => folders::scan(root, Some(l))
                    .map(|s| s.unchanged_folders().collect())
                    .unwrap_or_default(),
                None => HashSet::new(),
            };
            let mut scan = folders::scan(root, None)?;
            let stats = collect_files(&mut scan, None).expect("every folder was listed");
            return Ok(Err(Gathered {
                stats,
                previous: None,
                listing: Some(scan.listing),
                counts: Counts {
                    files_checked: scan.files_checked,
                    folders_checked: scan.folders_checked,
                    folders_listed: scan.folders_listed,
                },
                unseen: match check {
                    Check::Immutable => Unseen::All,
                    _ => Unseen::Folders(unseen),
                },
            }));
        }
        // A folder in the listing that vanished mid-way (or any other surprise) is a change:
        // list everything again.
        let mut scan = match folders::scan(root, last.as_ref()) {
            Ok(s) => s,
            Err(_) if last.is_some() => folders::scan(root, None)?,
            Err(e) => return Err(e),
        };
        if last.is_some() && scan.unchanged() {
            return Ok(Ok(Counts {
                files_checked: 0,
                folders_checked: scan.folders_checked,
                folders_listed: 0,
            }));
        }
        // Files of unchanged folders come from the cached listing, which must be the one
        // written with this head, and hold exactly the files each folder was listed with.
        let previous: Option<Vec<CachedFile>> = if scan
            .files
            .iter()
            .any(|(_, f)| matches!(f, folders::Files::Unchanged(_)))
        {
            head.and_then(|h| read_verified(&paths.files, h.files_blake3.as_deref()))
        } else {
            None
        };
        let stats = match collect_files(&mut scan, previous.as_deref()) {
            Some(stats) => stats,
            None => {
                scan = folders::scan(root, None)?;
                collect_files(&mut scan, None).expect("every folder was listed")
            }
        };
        let counts = Counts {
            files_checked: scan.files_checked,
            folders_checked: scan.folders_checked,
            folders_listed: scan.folders_listed,
        };
        Ok(Err(Gathered {
            stats,
            previous,
            listing: Some(scan.listing),
            counts,
            unseen: Unseen::Nothing,
        }))
    }

    /// The content digest of `g.stats`: the head's when every stat is what it was, otherwise with
    /// the files whose stat changed rehashed (all of them with `verify`); the cache is updated.
    fn digest(
        &self,
        root: &Path,
        paths: &CachePaths,
        head: Option<CacheHead>,
        g: Gathered,
        verify: bool,
    ) -> Result<Fingerprint> {
        let stat_digest = stat_digest(&g.stats);
        if !verify {
            if let Some(h) = head.as_ref().filter(|h| h.stat_digest == stat_digest) {
                if let Some(listing) = &g.listing {
                    // Folders were listed again but no file changed: keep the new listing.
                    let mut h = h.clone();
                    h.folders_blake3 = write_json(&paths.folders, listing).ok();
                    let _ = write_json(&paths.head, &h);
                }
                return Ok(Fingerprint::hit(h, g.counts));
            }
        }

        // Reuse per-file hashes whose stat is unchanged (unless verifying).
        let previous: Vec<CachedFile> = match g.previous {
            Some(p) => p,
            None => read_json(&paths.files).unwrap_or_default(),
        };
        let previous: HashMap<String, CachedFile> = previous
            .into_iter()
            .map(|f| (f.stat.path.clone(), f))
            .collect();
        let hashed: Vec<(CachedFile, bool, bool)> = g
            .stats
            .into_par_iter()
            .map(|stat| {
                let prev = previous.get(&stat.path);
                let unseen = prev.filter(|p| p.stat == stat || g.unseen.contains(&p.stat.path));
                match (prev.filter(|p| p.stat == stat), verify) {
                    (Some(p), false) => Ok((p.clone(), false, false)),
                    (_, _) => {
                        let full = if stat.path.is_empty() {
                            root.to_path_buf()
                        } else {
                            root.join(&stat.path)
                        };
                        let hash = hash_file(&full, stat.size)?;
                        let mismatch = unseen.is_some_and(|p| p.hash != hash);
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
        if let Some(old) = head.as_ref().filter(|h| h.content_digest != digest) {
            let _ = fs::rename(&paths.files, self.snapshot_path(root, &old.content_digest));
            self.prune_snapshots(root, 3);
        }
        // The cache is an optimisation: failing to write it must not fail the run.
        let files_blake3 = write_json(&paths.files, &entries).ok();
        let folders_blake3 = g
            .listing
            .as_ref()
            .and_then(|l| write_json(&paths.folders, l).ok());
        let head = CacheHead {
            root: root.to_path_buf(),
            stat_digest,
            content_digest: digest.clone(),
            files,
            bytes,
            files_blake3,
            folders_blake3,
        };
        let _ = write_json(&paths.head, &head);

        Ok(Fingerprint {
            digest,
            files,
            bytes,
            rehashed,
            mismatched,
            files_checked: g.counts.files_checked,
            folders_checked: g.counts.folders_checked,
            folders_listed: g.counts.folders_listed,
        })
    }
}

/// Every file's stat, sorted: fresh for the folders listed again, from `previous` for the others;
/// None when `previous` does not hold exactly the files an unchanged folder was listed with.
fn collect_files(
    scan: &mut folders::Scan,
    previous: Option<&[CachedFile]>,
) -> Option<Vec<FileStat>> {
    let mut by_folder: HashMap<&str, Vec<&FileStat>> = HashMap::new();
    if let Some(prev) = previous {
        for f in prev {
            by_folder
                .entry(folders::parent_of(&f.stat.path))
                .or_default()
                .push(&f.stat);
        }
    }
    let mut stats = Vec::new();
    for (folder, files) in std::mem::take(&mut scan.files) {
        match files {
            folders::Files::Listed(fresh) => stats.extend(fresh),
            folders::Files::Unchanged(n) => {
                let cached = by_folder
                    .get(folder.as_str())
                    .map_or(&[][..], Vec::as_slice);
                if cached.len() as u64 != n {
                    return None;
                }
                stats.extend(cached.iter().map(|s| (*s).clone()));
            }
        }
    }
    sort_files(&mut stats);
    Some(stats)
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Option<T> {
    let bytes = fs::read(path).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// A cache file, only if its blake3 is the one its head recorded.
fn read_verified<T: for<'de> Deserialize<'de>>(path: &Path, blake3: Option<&str>) -> Option<T> {
    let bytes = fs::read(path).ok()?;
    if blake3::hash(&bytes).to_hex().as_str() != blake3? {
        return None;
    }
    serde_json::from_slice(&bytes).ok()
}

/// Writes a cache file atomically; returns the blake3 of what it wrote.
fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<String> {
    let dir = path.parent().expect("cache paths have a parent");
    fs::create_dir_all(dir).at(dir)?;
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    let bytes = serde_json::to_vec(value).expect("serialisable");
    fs::write(&tmp, &bytes).at(&tmp)?;
    fs::rename(&tmp, path).at(path)?;
    Ok(blake3::hash(&bytes).to_hex().to_string())
}
