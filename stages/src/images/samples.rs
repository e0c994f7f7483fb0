//! The stored values of one DICOM frame, read where they lie: in the file's own bytes (native
//! transfer syntaxes) or in the decoder's output, never widened into a copy of their own.

/// The first frame's stored values: `len` samples of `width` bytes (1, 2 or 4, native byte order)
/// from byte `start` of `buf`, masked to `bits` and sign-extended when `signed`.
#[derive(Clone, Debug)]
pub struct Samples {
    buf: Vec<u8>,
    /// Whether `buf` is the file itself (the samples read in place).
    in_file: bool,
    start: usize,
    len: usize,
    width: usize,
    bits: u32,
    signed: bool,
}

impl Samples {
    /// `buf[start..]` must hold at least `len × width` bytes (checked by the callers).
    pub(super) fn new(
        buf: Vec<u8>,
        in_file: bool,
        start: usize,
        len: usize,
        width: usize,
        bits: u32,
        signed: bool,
    ) -> Self {
        debug_assert!(matches!(width, 1 | 2 | 4));
        debug_assert!(start + len * width <= buf.len());
        Samples {
            buf,
            in_file,
            start,
            len,
            width,
            bits,
            signed,
        }
    }

    /// Stored values from a list (tests and hand-made frames).
    pub fn from_values(values: &[i32], bits: u32, signed: bool) -> Self {
        let buf = values.iter().flat_map(|v| v.to_ne_bytes()).collect();
        Samples::new(buf, false, 0, values.len(), 4, bits, signed)
    }

    /// The byte offset of the samples in the file when they were read in place (uncompressed
    /// files), `None` when they are a decoder's output.
    pub fn file_offset(&self) -> Option<usize> {
        self.in_file.then_some(self.start)
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn bytes(&self) -> &[u8] {
        &self.buf[self.start..self.start + self.len * self.width]
    }

    /// The stored value of a raw sample: masked to `bits`, sign-extended when signed.
    #[inline(always)]
    fn value(&self, raw: u32) -> i32 {
        let bits = self.bits;
        if bits >= 32 {
            return raw as i32;
        }
        let mask = (1u32 << bits) - 1;
        let v = raw & mask;
        if self.signed && v & (1 << (bits - 1)) != 0 {
            (v | !mask) as i32
        } else {
            v as i32
        }
    }

    /// Feeds every stored value, in order, to `f` (one tight loop per sample width).
    #[inline(always)]
    fn each(&self, mut f: impl FnMut(i32)) {
        let d = self.bytes();
        match self.width {
            1 => d.iter().for_each(|&b| f(self.value(b as u32))),
            2 => d
                .chunks_exact(2)
                .for_each(|c| f(self.value(u16::from_ne_bytes([c[0], c[1]]) as u32))),
            _ => d
                .chunks_exact(4)
                .for_each(|c| f(self.value(u32::from_ne_bytes([c[0], c[1], c[2], c[3]])))),
        }
    }

    /// The stored values in order.
    pub fn iter(&self) -> impl Iterator<Item = i32> + '_ {
        let d = self.bytes();
        let w = self.width;
        (0..self.len).map(move |i| {
            let c = &d[i * w..(i + 1) * w];
            let raw = match w {
                1 => c[0] as u32,
                2 => u16::from_ne_bytes([c[0], c[1]]) as u32,
                _ => u32::from_ne_bytes([c[0], c[1], c[2], c[3]]),
            };
            self.value(raw)
        })
    }

    /// The smallest and largest stored value (`None` without samples).
    pub fn min_max(&self) -> Option<(i32, i32)> {
        if self.len == 0 {
            return None;
        }
        if self.width == 1 && self.bits >= 8 && !self.signed {
            // the stored value is the byte: a vectorised pass
            let d = self.bytes();
            return Some((*d.iter().min()? as i32, *d.iter().max()? as i32));
        }
        let (mut lo, mut hi) = (i32::MAX, i32::MIN);
        self.each(|v| {
            lo = lo.min(v);
            hi = hi.max(v);
        });
        Some((lo, hi))
    }

    /// Applies `f` to every stored value straight into the output buffer, through a lookup table
    /// when the value range is small (always for ≤ 16-bit data), so per-pixel cost is one load.
    pub(super) fn map_through_lut<U: Copy>(&self, f: impl Fn(i32) -> U) -> Vec<U> {
        if self.width == 1 {
            // one byte a sample: a table over every raw byte, no pass to find the range
            let lut: Vec<U> = (0..=255u32).map(|b| f(self.value(b))).collect();
            return self.bytes().iter().map(|&b| lut[b as usize]).collect();
        }
        let Some((lo, hi)) = self.min_max() else {
            return Vec::new();
        };
        let mut out = Vec::with_capacity(self.len);
        if (hi as i64 - lo as i64) < (1 << 17) {
            let lut: Vec<U> = (lo..=hi).map(&f).collect();
            self.each(|s| out.push(lut[(s - lo) as usize]));
        } else {
            self.each(|s| out.push(f(s)));
        }
        out
    }
}

impl PartialEq for Samples {
    fn eq(&self, other: &Self) -> bool {
        self.len == other.len && self.iter().eq(other.iter())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_masked_and_sign_extended_at_every_width() {
        // 12 bits stored, signed: 0x0fff is -1, 0x0800 is -2048, high bits beyond 12 are ignored.
        let raw16: Vec<u8> = [0x0fffu16, 0x0800, 0xf7ff, 5]
            .iter()
            .flat_map(|v| v.to_ne_bytes())
            .collect();
        let s = Samples::new(raw16, false, 0, 4, 2, 12, true);
        assert_eq!(s.iter().collect::<Vec<_>>(), [-1, -2048, 2047, 5]);
        assert_eq!(s.min_max(), Some((-2048, 2047)));
        let u = Samples::new(vec![9, 0xff, 0x81], false, 1, 2, 1, 7, false);
        assert_eq!(u.iter().collect::<Vec<_>>(), [0x7f, 1]);
        assert_eq!(u.map_through_lut(|v| v * 2), [254, 2]);
        let w = Samples::from_values(&[i32::MIN, 0, i32::MAX], 32, true);
        assert_eq!(w.map_through_lut(|v| v.signum()), [-1, 0, 1]);
        assert!(Samples::from_values(&[], 8, false).min_max().is_none());
    }
}
