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

    /// The bits of a raw sample that hold the stored value.
    fn mask(&self) -> u32 {
        if self.bits >= 32 {
            u32::MAX
        } else {
            (1u32 << self.bits) - 1
        }
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
        if !self.signed && self.width <= 2 {
            // unsigned 8- or 16-bit: the masked raw value is the stored value, a vectorised pass
            let mask = self.mask();
            let (lo, hi) = if self.width == 1 {
                let m = mask as u8;
                let (lo, hi) = self.bytes().iter().fold((u8::MAX, 0), |(lo, hi), &b| {
                    let v = b & m;
                    (lo.min(v), hi.max(v))
                });
                (lo as u16, hi as u16)
            } else {
                let m = mask as u16;
                let (lo, hi) = self
                    .bytes()
                    .chunks_exact(2)
                    .fold((u16::MAX, 0), |(lo, hi), c| {
                        let v = u16::from_ne_bytes([c[0], c[1]]) & m;
                        (lo.min(v), hi.max(v))
                    });
                (lo, hi)
            };
            return Some((lo as i32, hi as i32));
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

/// A function from stored values to bytes, for [`Samples::add_row`]: a table
/// ([`Samples::byte_table`]) or OpenCV's `convertScaleAbs` ([`Samples::scaled_bytes`]).
pub(super) enum ByteMap {
    /// 1-byte samples: indexed by the raw byte (masking and sign folded in).
    Raw(Box<[u8; 256]>),
    /// Wider samples: indexed by stored value − `lo`.
    Range { table: Vec<u8>, lo: i32 },
    /// Unsigned 1-byte samples: `round_half_even(v · alpha)` up to 255, inverted (`255 − x`)
    /// when `invert`; computed, not looked up, so that the loop vectorises.
    Scaled { alpha: f32, invert: bool },
}

/// `round_half_even(v)` as an integer for `0 ≤ v < 2^23`, without a libm call or a saturating
/// float-to-int conversion (neither vectorises on x86-64's baseline SSE2): `v + 2^23` rounds `v`
/// to an integer half to even (IEEE round-to-nearest-even where the unit in the last place is 1)
/// and holds that integer in its low mantissa bits.
#[inline(always)]
pub(super) fn round_half_even_small(v: f32) -> u32 {
    (v + 8_388_608.0).to_bits() - 0x4b00_0000
}

impl Samples {
    /// `f` of every stored value of the frame as a table, given their range ([`Self::min_max`]);
    /// `None` when the values span 2^17 or more.
    pub(super) fn byte_table(
        &self,
        (lo, hi): (i32, i32),
        f: impl Fn(i32) -> u8,
    ) -> Option<ByteMap> {
        if self.width == 1 {
            let mut t = Box::new([0u8; 256]);
            for (b, v) in t.iter_mut().enumerate() {
                *v = f(self.value(b as u32));
            }
            return Some(ByteMap::Raw(t));
        }
        if (hi as i64 - lo as i64) >= (1 << 17) {
            return None;
        }
        Some(ByteMap::Range {
            table: (lo..=hi).map(f).collect(),
            lo,
        })
    }

    /// `convertScaleAbs(v, alpha)` (then `255 − x` when `invert`) as a [`ByteMap`] for unsigned
    /// 1-byte samples and a finite `alpha ≥ 0`; `None` otherwise.
    pub(super) fn scaled_bytes(&self, alpha: f32, invert: bool) -> Option<ByteMap> {
        (self.width == 1 && !self.signed && alpha.is_finite() && alpha >= 0.0)
            .then_some(ByteMap::Scaled { alpha, invert })
    }

    /// Samples `first..first + out.len()` mapped through `t` (built from these samples) into
    /// `out`.
    #[cfg(test)]
    pub(super) fn map_row(&self, t: &ByteMap, first: usize, out: &mut [u8]) {
        self.map_row_with(t, first, out, |o, v| *o = v);
    }

    /// Samples `first..first + sums.len()` mapped through `t` (built from these samples) and
    /// added to `sums` (the caller keeps the sums below 2^16).
    pub(super) fn add_row(&self, t: &ByteMap, first: usize, sums: &mut [u16]) {
        self.map_row_with(t, first, sums, |o, v| *o += v as u16);
    }

    /// Samples `first..first + out.len()` mapped through `t` and stored with `put`, one loop per
    /// kind of map (the computed one vectorises).
    #[inline(always)]
    fn map_row_with<O>(&self, t: &ByteMap, first: usize, out: &mut [O], put: impl Fn(&mut O, u8)) {
        let w = self.width;
        let d = &self.bytes()[first * w..(first + out.len()) * w];
        match t {
            ByteMap::Raw(t) => {
                for (o, &b) in out.iter_mut().zip(d) {
                    put(o, t[b as usize]);
                }
            }
            &ByteMap::Scaled { alpha, invert } => {
                let (m, x) = (self.mask() as u8, if invert { 255 } else { 0 });
                for (o, &b) in out.iter_mut().zip(d) {
                    // clamping before rounding to an integer clamps the same (255 is one);
                    // `<` rather than `min` compiles to one `minps` (no NaN can arise here)
                    let v = (b & m) as f32 * alpha;
                    let v = round_half_even_small(if v < 255.0 { v } else { 255.0 });
                    put(o, (v as u8) ^ x);
                }
            }
            ByteMap::Range { table, lo } if w == 2 && !self.signed => {
                let m = self.mask() as u16;
                for (o, c) in out.iter_mut().zip(d.chunks_exact(2)) {
                    let v = u16::from_ne_bytes([c[0], c[1]]) & m;
                    put(o, table[(v as i32 - lo) as usize]);
                }
            }
            ByteMap::Range { table, lo } => {
                for (o, c) in out.iter_mut().zip(d.chunks_exact(w)) {
                    let raw = match w {
                        2 => u16::from_ne_bytes([c[0], c[1]]) as u32,
                        _ => u32::from_ne_bytes([c[0], c[1], c[2], c[3]]),
                    };
                    put(o, table[(self.value(raw) as i64 - *lo as i64) as usize]);
                }
            }
        }
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
