//! Decode limits: what one image decode may cost in pixels and bytes, checked against the header
//! before any pixel buffer is allocated, so a hostile header is an error instead of an abort.

use std::path::Path;
use std::sync::RwLock;

use crate::error::{Error, Result};

/// What one decode may cost, checked against the file's header BEFORE any pixel buffer is
/// allocated, so a header claiming 65,535 × 65,535 pixels is an error naming the file instead of
/// a failed 34 GB allocation that aborts the process (ingest's `verify = "decode"` decodes in
/// the runner's own process). Process-wide: the `adaptor` and `adaptor-torch` binaries set it
/// from `ADAPTOR_MAX_IMAGE_PIXELS` and `ADAPTOR_MAX_IMAGE_BYTES` (README, "Bad input").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Width × height of one image (one DICOM frame). Default 2^28 (16,384 × 16,384).
    pub max_pixels: u64,
    /// Bytes of the decoded image at its stored depth and channel count (the decoder's output
    /// buffer; for DICOM the first frame). Default 1 GiB.
    pub max_bytes: u64,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        DecodeLimits {
            max_pixels: 1 << 28,
            max_bytes: 1 << 30,
        }
    }
}

impl DecodeLimits {
    /// The environment variables that override the defaults (read by the binaries only).
    pub const PIXELS_VAR: &'static str = "ADAPTOR_MAX_IMAGE_PIXELS";
    pub const BYTES_VAR: &'static str = "ADAPTOR_MAX_IMAGE_BYTES";

    /// The defaults with the given overrides (the values of [`Self::PIXELS_VAR`] and
    /// [`Self::BYTES_VAR`]); a value that is not a positive integer is an error naming it.
    pub fn with_overrides(pixels: Option<&str>, bytes: Option<&str>) -> Result<Self> {
        let parse = |var: &'static str, v: &str| -> Result<u64> {
            v.trim()
                .parse::<u64>()
                .ok()
                .filter(|&n| n > 0)
                .ok_or_else(|| Error::DecodeLimit {
                    var,
                    value: v.to_string(),
                })
        };
        let mut l = DecodeLimits::default();
        if let Some(v) = pixels {
            l.max_pixels = parse(Self::PIXELS_VAR, v)?;
        }
        if let Some(v) = bytes {
            l.max_bytes = parse(Self::BYTES_VAR, v)?;
        }
        Ok(l)
    }

    /// The limits every decode in this process uses.
    pub fn current() -> Self {
        *LIMITS.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Sets the limits for every later decode in this process.
    pub fn set(self) {
        *LIMITS.write().unwrap_or_else(|e| e.into_inner()) = self;
    }

    /// Refuses an image of `width × height` whose decoded buffer takes `bytes`.
    pub fn check(&self, path: &Path, width: u64, height: u64, bytes: u64) -> Result<()> {
        let pixels = width.saturating_mul(height);
        if pixels > self.max_pixels {
            return Err(Error::decode(
                path,
                format!(
                    "the header says {width} × {height} = {pixels} pixels, over the decode limit \
                     of {} pixels ({} raises it)",
                    self.max_pixels,
                    Self::PIXELS_VAR
                ),
            ));
        }
        if bytes > self.max_bytes {
            return Err(Error::decode(
                path,
                format!(
                    "decoding the {width} × {height} image would take {bytes} bytes, over the \
                     decode memory budget of {} bytes ({} raises it)",
                    self.max_bytes,
                    Self::BYTES_VAR
                ),
            ));
        }
        Ok(())
    }
}

static LIMITS: RwLock<DecodeLimits> = RwLock::new(DecodeLimits {
    max_pixels: 1 << 28,
    max_bytes: 1 << 30,
});
