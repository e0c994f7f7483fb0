//! Where each storage's bytes come from: an entry of the zip archive (PyTorch ≥ 1.6), with its
//! sizes checked against the file, or the raw records after the legacy stream's pickles.

use std::io::Read;

use super::*;

/// Where each storage's bytes are.
pub(super) trait StorageSource {
    fn bytes(&mut self, key: &str) -> Result<std::borrow::Cow<'_, [u8]>>;
}

pub(super) struct ZipStorages {
    pub(super) archive: zip::ZipArchive<std::fs::File>,
    pub(super) prefix: String,
    pub(super) path: std::path::PathBuf,
    /// The archive's size on disk: what every entry's declared size is checked against.
    pub(super) file_len: u64,
    pub(super) cache: HashMap<String, Vec<u8>>,
}

/// Deflate cannot expand data more than about 1032 times; a larger claimed ratio is a lie.
const MAX_DEFLATE_RATIO: u64 = 1032;

/// Reads one zip entry whole, after checking the sizes its header declares against the archive
/// file: a stored (uncompressed, what `torch.save` writes) entry cannot be larger than the file,
/// a compressed one cannot expand more than deflate can. The read stops at the declared size, so
/// a lying header cannot make it allocate more either.
pub(super) fn read_entry(
    archive: &mut zip::ZipArchive<std::fs::File>,
    name: &str,
    file_len: u64,
    path: &Path,
) -> Result<Vec<u8>> {
    let f = archive
        .by_name(name)
        .map_err(|e| Error::file(path, format!("entry `{name}`: {e}")))?;
    let (size, packed) = (f.size(), f.compressed_size());
    let limit = match f.compression() {
        zip::CompressionMethod::Stored => packed.min(file_len),
        _ => packed.min(file_len).saturating_mul(MAX_DEFLATE_RATIO),
    };
    if size > limit {
        return Err(Error::file(
            path,
            format!(
                "entry `{name}` claims {size} bytes, more than the {file_len}-byte archive can \
                 hold ({packed} bytes compressed): a corrupt or crafted zip header"
            ),
        ));
    }
    let mut buf = Vec::with_capacity(size as usize);
    f.take(size + 1)
        .read_to_end(&mut buf)
        .map_err(|e| Error::io(path, e))?;
    if buf.len() as u64 != size {
        return Err(Error::file(
            path,
            format!(
                "entry `{name}` holds {} bytes, its header says {size}",
                buf.len()
            ),
        ));
    }
    Ok(buf)
}

impl StorageSource for ZipStorages {
    fn bytes(&mut self, key: &str) -> Result<std::borrow::Cow<'_, [u8]>> {
        if !self.cache.contains_key(key) {
            let name = format!("{}data/{key}", self.prefix);
            let buf = read_entry(&mut self.archive, &name, self.file_len, &self.path)?;
            // A tensor's storage is read once; keep only the latest to bound memory.
            self.cache.clear();
            self.cache.insert(key.to_string(), buf);
        }
        Ok(std::borrow::Cow::Borrowed(&self.cache[key]))
    }
}

pub(super) struct LegacyStorages<'a> {
    pub(super) data: &'a [u8],
    /// key → byte range of its elements
    pub(super) ranges: HashMap<String, (usize, usize)>,
    /// The checkpoint, for errors.
    pub(super) path: &'a std::path::Path,
}

impl StorageSource for LegacyStorages<'_> {
    fn bytes(&mut self, key: &str) -> Result<std::borrow::Cow<'_, [u8]>> {
        let (a, b) = self.ranges.get(key).copied().ok_or_else(|| {
            Error::file(
                self.path,
                format!("legacy checkpoint has no storage `{key}`"),
            )
        })?;
        Ok(std::borrow::Cow::Borrowed(&self.data[a..b]))
    }
}
