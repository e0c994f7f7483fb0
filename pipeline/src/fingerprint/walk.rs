//! Stat'ing an external input file by file (the default `check = "files"`), and what every check
//! shares: one file's stat, one folder's listing, refusing what is not a regular file, hashing.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::{Error, IoContext, Result};

/// Files above this size are hashed with blake3's multi-threaded mmap mode.
const LARGE_FILE: u64 = 16 << 20;

/// How deep folders may nest under a root (deeper is taken for a symlink loop).
pub(super) const MAX_DEPTH: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct FileStat {
    pub path: String,
    pub size: u64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
    pub ino: u64,
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
pub(super) fn not_regular(path: &Path, meta: &fs::Metadata) -> Error {
    Error::NotRegularFile {
        path: path.to_path_buf(),
        what: file_kind(meta),
    }
}

pub(super) fn stat_of(path: &Path, rel: String) -> Result<FileStat> {
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

/// `rel/name`, or `name` at the root.
pub(super) fn child(rel: &str, name: &str) -> String {
    if rel.is_empty() {
        name.to_string()
    } else {
        format!("{rel}/{name}")
    }
}

/// One folder's entries: (files, subfolders), each as (absolute path, relative path), symlinks
/// followed to decide which is which.
pub(super) type Entries = (Vec<(PathBuf, String)>, Vec<(PathBuf, String)>);

pub(super) fn list_dir(dir: &Path, rel: &str, depth: usize) -> Result<Entries> {
    if depth > MAX_DEPTH {
        return Err(Error::NestedTooDeep {
            path: dir.to_path_buf(),
            depth: MAX_DEPTH,
        });
    }
    let mut files = Vec::new();
    let mut dirs = Vec::new();
    for entry in fs::read_dir(dir).at(dir)? {
        let entry = entry.at(dir)?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        let child_rel = child(rel, &name);
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
    Ok((files, dirs))
}

/// Every regular file under `root` (symlinks followed), sorted by relative path. A file root gives
/// one entry with an empty relative path.
pub(super) fn walk(root: &Path) -> Result<Vec<FileStat>> {
    let meta = fs::metadata(root).at(root)?;
    if meta.is_file() {
        return Ok(vec![stat_of(root, String::new())?]);
    }
    if !meta.is_dir() {
        return Err(not_regular(root, &meta));
    }
    let mut out = walk_dir(root, "", 0)?;
    sort_files(&mut out);
    Ok(out)
}

/// The one order of a digest's files: by relative path, byte-wise.
pub(super) fn sort_files(files: &mut [FileStat]) {
    files.par_sort_unstable_by(|a, b| a.path.cmp(&b.path));
}

fn walk_dir(dir: &Path, rel: &str, depth: usize) -> Result<Vec<FileStat>> {
    let (files, dirs) = list_dir(dir, rel, depth)?;
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

pub(super) fn stat_digest(stats: &[FileStat]) -> String {
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
        // Blocks of LARGE_FILE bytes, each hashed on all cores: the memory held is one block
        // whatever the file's size (a memory map's pages would count as the runner's resident
        // memory, the whole file's at the end). The digest does not depend on the blocks.
        let mut f = f;
        let mut block = vec![0u8; LARGE_FILE as usize];
        loop {
            let n = read_block(&mut f, &mut block).at(path)?;
            if n == 0 {
                break;
            }
            hasher.update_rayon(&block[..n]);
        }
    } else {
        hasher.update_reader(f).at(path)?;
    }
    Ok(hasher.finalize().to_hex().to_string())
}

/// Fills `block` from `f` as far as the file goes; returns the bytes read (0 at the end).
fn read_block(f: &mut fs::File, block: &mut [u8]) -> std::io::Result<usize> {
    use std::io::Read;
    let mut n = 0;
    while n < block.len() {
        match f.read(&mut block[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}
