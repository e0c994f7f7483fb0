//! The folder-level check (`check = "folders"`): each folder's stat against the last listing, and
//! files re-stat'ed only in folders whose stat changed.
//!
//! Adding, removing or renaming an entry changes its folder's mtime and ctime, so a folder whose
//! stat is unchanged still holds the entries it was listed with; its subfolders come from the
//! listing, its files are not stat'ed. A file rewritten in place (same name) changes no folder:
//! that is what `--verify`, or the default `check = "files"`, is for.

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::walk::{child, list_dir, not_regular, stat_of, FileStat, MAX_DEPTH};
use crate::error::{Error, IoContext, Result};

/// A folder changed less than this long before it was listed may change again within the same
/// timestamp tick without its stat showing it (git's "racily clean" entries): it is listed again
/// next time. Two seconds covers coarse file-system clocks and a little clock skew.
const RACY_WINDOW: Duration = Duration::from_secs(2);

/// What a folder's stat says about its entries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct FolderStat {
    mtime_ns: i64,
    ctime_ns: i64,
    ino: u64,
    /// 2 + its subfolders on most file systems.
    nlink: u64,
    /// Grows with its entries on most file systems.
    size: u64,
}

impl FolderStat {
    fn of(m: &fs::Metadata) -> Self {
        FolderStat {
            mtime_ns: m.mtime() * 1_000_000_000 + m.mtime_nsec(),
            ctime_ns: m.ctime() * 1_000_000_000 + m.ctime_nsec(),
            ino: m.ino(),
            nlink: m.nlink(),
            size: m.size(),
        }
    }
}

/// One folder as last listed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct ListedFolder {
    /// Relative to the root; empty for the root.
    path: String,
    #[serde(flatten)]
    stat: FolderStat,
    /// Names of its subfolders.
    subfolders: Vec<String>,
    /// How many files it holds directly.
    files: u64,
}

/// Every folder under a root as last listed, and when.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Listing {
    listed_at_ns: i64,
    folders: Vec<ListedFolder>,
}

/// A folder's files after a scan: the listing's count (not stat'ed) or fresh stats.
pub(super) enum Files {
    Unchanged(u64),
    Listed(Vec<FileStat>),
}

/// The result of comparing a root with its last listing.
pub(super) struct Scan {
    pub listing: Listing,
    /// Per folder (relative path), in no particular order.
    pub files: Vec<(String, Files)>,
    pub folders_checked: u64,
    pub folders_listed: u64,
    pub files_checked: u64,
}

impl Scan {
    /// True when no folder changed: the files are those of the last listing.
    pub fn unchanged(&self) -> bool {
        self.folders_listed == 0
    }

    /// The folders whose stat was unchanged (their files not stat'ed).
    pub fn unchanged_folders(&self) -> impl Iterator<Item = String> + '_ {
        self.files
            .iter()
            .filter(|(_, f)| matches!(f, Files::Unchanged(_)))
            .map(|(path, _)| path.clone())
    }
}

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}

/// Compares the folder `root` with `last` (None: list everything).
pub(super) fn scan(root: &Path, last: Option<&Listing>) -> Result<Scan> {
    let listed_at_ns = now_ns();
    let known: HashMap<&str, &ListedFolder> = last
        .map(|l| l.folders.iter().map(|f| (f.path.as_str(), f)).collect())
        .unwrap_or_default();
    // Folders that changed less than RACY_WINDOW before the last listing are not trusted.
    let trusted_before = last.map_or(i64::MIN, |l| l.listed_at_ns - RACY_WINDOW.as_nanos() as i64);
    let ctx = Ctx {
        known,
        trusted_before,
    };
    let visited = ctx.visit(root, "", 0)?;
    let mut scan = Scan {
        listing: Listing {
            listed_at_ns,
            folders: Vec::with_capacity(visited.len()),
        },
        files: Vec::with_capacity(visited.len()),
        folders_checked: visited.len() as u64,
        folders_listed: 0,
        files_checked: 0,
    };
    for (folder, files) in visited {
        if let Files::Listed(f) = &files {
            scan.folders_listed += 1;
            scan.files_checked += f.len() as u64;
        }
        scan.files.push((folder.path.clone(), files));
        scan.listing.folders.push(folder);
    }
    scan.listing
        .folders
        .par_sort_unstable_by(|a, b| a.path.cmp(&b.path));
    Ok(scan)
}

struct Ctx<'a> {
    known: HashMap<&'a str, &'a ListedFolder>,
    trusted_before: i64,
}

impl Ctx<'_> {
    /// This folder and every folder under it.
    fn visit(&self, dir: &Path, rel: &str, depth: usize) -> Result<Vec<(ListedFolder, Files)>> {
        if depth > MAX_DEPTH {
            return Err(Error::NestedTooDeep {
                path: dir.to_path_buf(),
                depth: MAX_DEPTH,
            });
        }
        let meta = fs::metadata(dir).at(dir)?;
        if !meta.is_dir() {
            return Err(not_regular(dir, &meta));
        }
        let stat = FolderStat::of(&meta);
        let last = self
            .known
            .get(rel)
            .filter(|f| f.stat == stat && f.stat.mtime_ns < self.trusted_before);
        let (folder, files, subfolders) = match last {
            Some(f) => {
                let subs = f
                    .subfolders
                    .iter()
                    .map(|name| (dir.join(name), child(rel, name)))
                    .collect();
                ((*f).clone(), Files::Unchanged(f.files), subs)
            }
            None => {
                let (files, subs) = list_dir(dir, rel, depth)?;
                let stats: Vec<FileStat> = files
                    .into_par_iter()
                    .map(|(p, r)| stat_of(&p, r))
                    .collect::<Result<_>>()?;
                let folder = ListedFolder {
                    path: rel.to_string(),
                    stat,
                    subfolders: subs
                        .iter()
                        .map(|(p, _)| p.file_name().unwrap().to_string_lossy().into_owned())
                        .collect(),
                    files: stats.len() as u64,
                };
                (folder, Files::Listed(stats), subs)
            }
        };
        let nested: Vec<Vec<(ListedFolder, Files)>> = subfolders
            .into_par_iter()
            .map(|(p, r)| self.visit(&p, &r, depth + 1))
            .collect::<Result<_>>()?;
        let mut out = Vec::with_capacity(1 + nested.iter().map(Vec::len).sum::<usize>());
        out.push((folder, files));
        out.extend(nested.into_iter().flatten());
        Ok(out)
    }
}

/// The folder part of a relative file path (empty at the root).
pub(super) fn parent_of(path: &str) -> &str {
    path.rfind('/').map_or("", |i| &path[..i])
}
