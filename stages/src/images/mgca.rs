//! MGCA's 8-bit view of a DICOM frame (`read_from_dicom`) and, fused with it, `resize_img` for
//! the integer factors RSNA-sized images take (1,024² → 256²: 4 × 4 blocks): the stored values are
//! mapped to 8 bits row by row and summed into blocks, never into a full-size 8-bit image.

use super::resize::{block_mean_u8, integer_factors, resize_img, resize_img_geometry};
use super::samples::ByteMap;
use super::{DicomPixels, Gray, Gray8};

/// The most rows one destination row sums (the column sums are `u16`: 257 · 255 < 2^16).
const MAX_BLOCK_ROWS: usize = 257;
/// The largest block (its sum stays well inside `u32`).
const MAX_BLOCK_AREA: usize = 1 << 16;

impl DicomPixels {
    /// `cv2.convertScaleAbs`'s `alpha = 255 / max` (f64, then f32 as OpenCV takes it) for the
    /// frame's largest stored value `max`.
    fn mgca_alpha(max: i32) -> f32 {
        (255.0f64 / max as f64) as f32
    }

    /// The original's 8-bit value of a stored value (MGCA `read_from_dicom`, reference B.2):
    /// pydicom's raw `pixel_array` (no rescale) → `cv2.convertScaleAbs(x, alpha=255/x.max())` →
    /// `255 - x` for MONOCHROME1. OpenCV computes `|x·alpha|` in f32 and rounds half to even.
    fn mgca_byte(&self, alpha: f32) -> impl Fn(i32) -> u8 + '_ {
        move |s: i32| {
            let v = (s as f32 * alpha).abs();
            let v = if v.is_finite() {
                v.round_ties_even().clamp(0.0, 255.0) as u8
            } else {
                0
            };
            if self.monochrome1 {
                255 - v
            } else {
                v
            }
        }
    }

    /// The original's 8-bit conversion of the whole frame (see [`Self::mgca_byte`]).
    pub fn to_gray8_mgca(&self) -> Gray8 {
        let max = self.stored.min_max().map_or(0, |(_, hi)| hi);
        Gray {
            width: self.width,
            height: self.height,
            data: self
                .stored
                .map_through_lut(self.mgca_byte(Self::mgca_alpha(max))),
        }
    }

    /// `resize_img(&self.to_gray8_mgca(), imsize)`, byte for byte: the original's loader for one
    /// DICOM frame. When the resize is an integer-factor `INTER_AREA` (each side a multiple of its
    /// resized length, as 1,024² → 256²), the 8-bit values are summed into blocks as each row is mapped,
    /// without the full-size 8-bit image.
    pub fn resize_img_mgca(&self, imsize: u32) -> Gray8 {
        self.fused_resize_img(imsize)
            .unwrap_or_else(|| resize_img(&self.to_gray8_mgca(), imsize))
    }

    /// The fused path of [`Self::resize_img_mgca`], `None` where it does not apply.
    fn fused_resize_img(&self, imsize: u32) -> Option<Gray8> {
        let (sw, sh) = (self.width as usize, self.height as usize);
        let (rw, rh, left, top) = resize_img_geometry(self.width, self.height, imsize);
        let (rw, rh) = (rw.max(1) as usize, rh.max(1) as usize);
        let (isx, isy) = integer_factors(sw, sh, rw, rh)?;
        let fits = rw * isx == sw && rh * isy == sh && self.stored.len() == sw * sh;
        if !fits || isy > MAX_BLOCK_ROWS || isx * isy > MAX_BLOCK_AREA {
            return None;
        }
        let range = self.stored.min_max()?;
        let alpha = Self::mgca_alpha(range.1);
        let map = match self.stored.scaled_bytes(alpha, self.monochrome1) {
            Some(m) => m,
            None => self.stored.byte_table(range, self.mgca_byte(alpha))?,
        };
        let mut out = Gray8::new(imsize, imsize);
        let s = imsize as usize;
        let (left, top) = (left as usize, top as usize);
        let mut sums = vec![0u16; sw];
        for dy in 0..rh {
            block_row(&self.stored, &map, dy * isy, isy, &mut sums);
            let dst = &mut out.data[(dy + top) * s + left..][..rw];
            match isx {
                4 => block_means::<4>(&sums, dst, isy),
                2 => block_means::<2>(&sums, dst, isy),
                _ => {
                    for (d, block) in dst.iter_mut().zip(sums.chunks_exact(isx)) {
                        let sum: u32 = block.iter().map(|&v| v as u32).sum();
                        *d = block_mean_u8(sum, isx, isy);
                    }
                }
            }
        }
        Some(out)
    }
}

/// The means of `N × rows` blocks from their column sums (`N` known at compile time: the common
/// factors get unrolled loops).
fn block_means<const N: usize>(sums: &[u16], dst: &mut [u8], rows: usize) {
    for (d, block) in dst.iter_mut().zip(sums.chunks_exact(N)) {
        let sum: u32 = block.iter().map(|&v| v as u32).sum();
        *d = block_mean_u8(sum, N, rows);
    }
}

/// Column sums of the 8-bit values of source rows `y0..y0 + rows` into `sums` (one source row
/// wide).
fn block_row(stored: &super::Samples, map: &ByteMap, y0: usize, rows: usize, sums: &mut [u16]) {
    let w = sums.len();
    sums.fill(0);
    for y in y0..y0 + rows {
        stored.add_row(map, y * w, sums);
    }
}

#[cfg(test)]
mod tests {
    use super::super::Samples;
    use super::*;

    /// A frame of `w × h` stored values from a small generator (xorshift), `bits` wide.
    fn frame(w: u32, h: u32, bits: u32, signed: bool, width: usize, seed: u64) -> DicomPixels {
        let mut x = seed | 1;
        let n = (w * h) as usize;
        let mut buf = Vec::with_capacity(n * width);
        for _ in 0..n {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // raw samples with bits above `bits` set at random: masking must drop them
            let raw = x as u32;
            match width {
                1 => buf.push(raw as u8),
                2 => buf.extend_from_slice(&(raw as u16).to_ne_bytes()),
                _ => buf.extend_from_slice(&raw.to_ne_bytes()),
            }
        }
        DicomPixels {
            width: w,
            height: h,
            stored: Samples::new(buf, false, 0, n, width, bits, signed),
            bits_stored: bits as u16,
            signed,
            slope: 1.0,
            intercept: 0.0,
            monochrome1: seed.is_multiple_of(2),
            transfer_syntax: String::new(),
        }
    }

    #[test]
    fn fused_resize_equals_convert_then_resize() {
        let mut fused = 0;
        // (width, height, imsize): 4×4, 2×2 (rounds half up), 3×3, 1×1 blocks, non-square and
        // non-integer factors (the unfused path), upscaling.
        let shapes = [
            (64, 64, 16),
            (64, 64, 32),
            (48, 48, 16),
            (16, 16, 16),
            (24, 8, 12),
            (50, 50, 16),
            (40, 64, 16),
            (30, 20, 16),
            (16, 16, 40),
        ];
        for (i, &(w, h, imsize)) in shapes.iter().enumerate() {
            for (bits, signed, width) in [
                (8, false, 1),
                (7, false, 1),
                (8, true, 1),
                (12, false, 2),
                (16, false, 2),
                (12, true, 2),
                (10, false, 4),
            ] {
                for seed in [i as u64 * 2 + 1, i as u64 * 2 + 2] {
                    let px = frame(w, h, bits, signed, width, seed);
                    let want = resize_img(&px.to_gray8_mgca(), imsize);
                    assert_eq!(
                        px.resize_img_mgca(imsize),
                        want,
                        "{w}×{h} → {imsize}, {bits} bits, signed {signed}, width {width}"
                    );
                    fused += px.fused_resize_img(imsize).is_some() as usize;
                }
            }
        }
        // the six integer-factor shapes (4×4, 2×2, 3×3, 1×1, 2×2 landscape, 4×4 portrait), each
        // of their 14 frames
        assert_eq!(fused, 6 * 14);
    }

    #[test]
    fn computed_convert_scale_abs_equals_the_table_for_every_byte_and_maximum() {
        let bytes: Vec<u8> = (0..=255).collect();
        let mut px = frame(16, 16, 8, false, 1, 1);
        let mut got = [0u8; 256];
        for bits in [8, 7, 1] {
            px.stored = Samples::new(bytes.clone(), false, 0, 256, 1, bits, false);
            for invert in [false, true] {
                px.monochrome1 = invert;
                for max in 1..=255 {
                    let alpha = DicomPixels::mgca_alpha(max);
                    let map = px.stored.scaled_bytes(alpha, invert).unwrap();
                    px.stored.map_row(&map, 0, &mut got);
                    let f = px.mgca_byte(alpha);
                    let mask = ((1u32 << bits) - 1) as u8;
                    for (b, &g) in got.iter().enumerate() {
                        assert_eq!(g, f((b as u8 & mask) as i32), "byte {b}, max {max}");
                    }
                }
            }
        }
        // Signed or wider samples are not computed this way.
        assert!(frame(4, 4, 8, true, 1, 1)
            .stored
            .scaled_bytes(1.0, false)
            .is_none());
        assert!(frame(4, 4, 12, false, 2, 1)
            .stored
            .scaled_bytes(1.0, false)
            .is_none());
    }

    #[test]
    fn block_means_round_as_opencv_area_fast() {
        // Every block sum of 8-bit values for the factors that take the integer path, against
        // OpenCV's formulas as `area_fast` computes them.
        for (isx, isy) in [(2, 2), (4, 4), (3, 3), (1, 1), (4, 1), (8, 8), (5, 7)] {
            let area = isx * isy;
            for sum in 0..=(255 * area) as u32 {
                let want = if (isx, isy) == (2, 2) {
                    ((sum + 2) >> 2) as u8
                } else {
                    (sum as f32 * (1.0f32 / area as f32))
                        .round_ties_even()
                        .clamp(0.0, 255.0) as u8
                };
                assert_eq!(block_mean_u8(sum, isx, isy), want, "{isx}×{isy} sum {sum}");
            }
        }
    }
}
