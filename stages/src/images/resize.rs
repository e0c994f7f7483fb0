//! Resizing, exact to OpenCV's arithmetic where the original relies on it: `INTER_AREA`, bilinear,
//! MGCA's `resize_img` geometry and torchvision's `CenterCrop`.

use rayon::prelude::*;

use super::samples::round_half_even_small;
use super::Gray;

/// A pixel type OpenCV's resize supports; arithmetic runs in f32 (OpenCV's `WT` for these types).
pub trait Sample: Copy + Default + Send + Sync {
    /// True for integer types (rounding and OpenCV's 2×2 fixed-point fast path apply).
    const INTEGER: bool;
    fn to_f32(self) -> f32;
    fn to_i64(self) -> i64;
    /// `saturate_cast<T>(float)`: round half to even, clamp.
    fn from_f32(v: f32) -> Self;
    fn from_i64(v: i64) -> Self;
}

/// The integer samples: OpenCV's `saturate_cast` rounds half to even and clamps to `0..=MAX`.
macro_rules! integer_sample {
    ($t:ty) => {
        impl Sample for $t {
            const INTEGER: bool = true;
            fn to_f32(self) -> f32 {
                self as f32
            }
            fn to_i64(self) -> i64 {
                self as i64
            }
            fn from_f32(v: f32) -> Self {
                v.round_ties_even().clamp(0.0, <$t>::MAX as f32) as $t
            }
            fn from_i64(v: i64) -> Self {
                v.clamp(0, <$t>::MAX as i64) as $t
            }
        }
    };
}

integer_sample!(u8);
integer_sample!(u16);

impl Sample for f32 {
    const INTEGER: bool = false;
    fn to_f32(self) -> f32 {
        self
    }
    fn to_i64(self) -> i64 {
        self as i64
    }
    fn from_f32(v: f32) -> Self {
        v
    }
    fn from_i64(v: i64) -> Self {
        v as f32
    }
}

/// `cv2.resize(src, (dw, dh), interpolation=cv2.INTER_AREA)`.
///
/// Downscaling uses OpenCV's area averaging: the integer-factor fast path (2×2 blocks of integer
/// types round as `(sum + 2) >> 2`, other factors as `round(sum · (1/area))`) or, for fractional
/// factors, the fractional-coverage weights of `computeResizeAreaTab` accumulated in f32 in
/// OpenCV's order. Upscaling (in either direction) uses OpenCV's area-mode linear weights, in f32
/// rather than its 11-bit fixed point (may differ by 1 grey level).
pub fn resize_area<T: Sample>(src: &Gray<T>, dw: u32, dh: u32) -> Gray<T> {
    assert!(dw > 0 && dh > 0, "resize to an empty size");
    let (sw, sh) = (src.width as usize, src.height as usize);
    let (dwu, dhu) = (dw as usize, dh as usize);
    if sw == dwu && sh == dhu {
        return src.clone();
    }
    let (scale_x, scale_y) = area_scales(sw, sh, dwu, dhu);
    if scale_x >= 1.0 && scale_y >= 1.0 {
        if let Some((isx, isy)) = integer_factors(sw, sh, dwu, dhu) {
            return area_fast(src, dwu, dhu, isx, isy);
        }
        return area_general(src, dwu, dhu, scale_x, scale_y);
    }
    linear_resize(src, dwu, dhu, true)
}

/// OpenCV's `scale_x`, `scale_y` of a resize from `sw × sh` to `dw × dh` (source pixels per
/// destination pixel, computed as `1 / (dw / sw)` in f64).
fn area_scales(sw: usize, sh: usize, dw: usize, dh: usize) -> (f64, f64) {
    (1.0 / (dw as f64 / sw as f64), 1.0 / (dh as f64 / sh as f64))
}

/// The integer factors of an `INTER_AREA` downscale from `sw × sh` to `dw × dh` when it takes
/// OpenCV's integer-factor path (each destination pixel the mean of an `isx × isy` block), else
/// `None`.
pub(super) fn integer_factors(
    sw: usize,
    sh: usize,
    dw: usize,
    dh: usize,
) -> Option<(usize, usize)> {
    let (scale_x, scale_y) = area_scales(sw, sh, dw, dh);
    if scale_x < 1.0 || scale_y < 1.0 {
        return None;
    }
    let isx = scale_x.round() as usize;
    let isy = scale_y.round() as usize;
    ((scale_x - isx as f64).abs() < f64::EPSILON && (scale_y - isy as f64).abs() < f64::EPSILON)
        .then_some((isx, isy))
}

/// The value of an integer-factor `INTER_AREA` pixel from the integer sum of its `isx × isy`
/// block, as OpenCV rounds it (`area_fast`): 2×2 blocks `(sum + 2) >> 2`, others
/// `round_half_even(sum · (1/area as f32))`, clamped to `0..=255`.
#[inline(always)]
pub(super) fn block_mean_u8(sum: u32, isx: usize, isy: usize) -> u8 {
    if isx == 2 && isy == 2 {
        return ((sum + 2) >> 2).min(255) as u8;
    }
    round_half_even_small(sum as f32 * (1.0f32 / (isx * isy) as f32)).min(255) as u8
}

fn area_fast<T: Sample>(src: &Gray<T>, dw: usize, dh: usize, isx: usize, isy: usize) -> Gray<T> {
    let sw = src.width as usize;
    let area = isx * isy;
    let scale = 1.0f32 / area as f32;
    let mut out = vec![T::default(); dw * dh];
    out.par_chunks_mut(dw).enumerate().for_each(|(dy, row)| {
        let sy0 = dy * isy;
        for (dx, d) in row.iter_mut().enumerate() {
            let sx0 = dx * isx;
            if T::INTEGER {
                let mut sum = 0i64;
                for y in sy0..sy0 + isy {
                    let line = &src.data[y * sw + sx0..y * sw + sx0 + isx];
                    sum += line.iter().map(|v| v.to_i64()).sum::<i64>();
                }
                *d = if isx == 2 && isy == 2 {
                    T::from_i64((sum + 2) >> 2)
                } else {
                    T::from_f32(sum as f32 * scale)
                };
            } else {
                let mut sum = 0f32;
                for y in sy0..sy0 + isy {
                    for x in sx0..sx0 + isx {
                        sum += src.data[y * sw + x].to_f32();
                    }
                }
                *d = T::from_f32(sum * scale);
            }
        }
    });
    Gray {
        width: dw as u32,
        height: dh as u32,
        data: out,
    }
}

/// One entry of OpenCV's `DecimateAlpha` table: destination index, source index, weight.
#[derive(Clone, Copy)]
struct Decimate {
    di: usize,
    si: usize,
    alpha: f32,
}

fn area_tab(ssize: usize, dsize: usize, scale: f64) -> Vec<Decimate> {
    let mut tab = Vec::with_capacity(ssize * 2);
    for dx in 0..dsize {
        let fsx1 = dx as f64 * scale;
        let fsx2 = fsx1 + scale;
        let cell_width = scale.min(ssize as f64 - fsx1);
        let mut sx1 = fsx1.ceil() as i64;
        let mut sx2 = fsx2.floor() as i64;
        sx2 = sx2.min(ssize as i64 - 1);
        sx1 = sx1.min(sx2);
        if sx1 as f64 - fsx1 > 1e-3 {
            tab.push(Decimate {
                di: dx,
                si: (sx1 - 1) as usize,
                alpha: ((sx1 as f64 - fsx1) / cell_width) as f32,
            });
        }
        for sx in sx1..sx2 {
            tab.push(Decimate {
                di: dx,
                si: sx as usize,
                alpha: (1.0 / cell_width) as f32,
            });
        }
        if fsx2 - sx2 as f64 > 1e-3 {
            let a = (fsx2 - sx2 as f64).min(1.0).min(cell_width) / cell_width;
            tab.push(Decimate {
                di: dx,
                si: sx2 as usize,
                alpha: a as f32,
            });
        }
    }
    tab
}

fn area_general<T: Sample>(
    src: &Gray<T>,
    dw: usize,
    dh: usize,
    scale_x: f64,
    scale_y: f64,
) -> Gray<T> {
    let (sw, sh) = (src.width as usize, src.height as usize);
    let xtab = area_tab(sw, dw, scale_x);
    let ytab = area_tab(sh, dh, scale_y);
    // The x table lists, per destination column, contiguous increasing source columns: store each
    // column's first source index and its weights, so the horizontal pass is a dot product.
    let mut spans: Vec<(usize, usize, usize)> = vec![(0, 0, 0); dw]; // (first source, weight offset, count)
    let weights: Vec<f32> = xtab.iter().map(|t| t.alpha).collect();
    for (k, t) in xtab.iter().enumerate() {
        let s = &mut spans[t.di];
        if s.2 == 0 {
            *s = (t.si, k, 0);
        }
        debug_assert_eq!(t.si, s.0 + s.2);
        s.2 += 1;
    }
    // Group the y table by destination row so rows can run in parallel; within a row the
    // accumulation order is OpenCV's (source rows in order, `sum = beta·buf` then `+=`; each
    // `buf[dx]` is `0 + Σ src·alpha` in source order).
    let mut rows: Vec<Vec<Decimate>> = vec![Vec::new(); dh];
    for e in &ytab {
        rows[e.di].push(*e);
    }
    let mut out = vec![T::default(); dw * dh];
    out.par_chunks_mut(dw)
        .zip(rows.par_iter())
        .for_each(|(drow, entries)| {
            let mut sum = vec![0f32; dw];
            for (i, e) in entries.iter().enumerate() {
                let srow = &src.data[e.si * sw..(e.si + 1) * sw];
                for (s, &(first, off, n)) in sum.iter_mut().zip(&spans) {
                    let b = srow[first..first + n]
                        .iter()
                        .zip(&weights[off..off + n])
                        .fold(0f32, |acc, (p, w)| acc + p.to_f32() * w);
                    if i == 0 {
                        *s = e.alpha * b;
                    } else {
                        *s += e.alpha * b;
                    }
                }
            }
            for (d, s) in drow.iter_mut().zip(&sum) {
                *d = T::from_f32(*s);
            }
        });
    Gray {
        width: dw as u32,
        height: dh as u32,
        data: out,
    }
}

/// Per-axis source index and weight of OpenCV's linear resize (`area_mode` picks the INTER_AREA
/// upscaling variant).
fn linear_tab(ssize: usize, dsize: usize, area_mode: bool) -> Vec<(usize, f32)> {
    let inv_scale = dsize as f64 / ssize as f64;
    let scale = 1.0 / inv_scale;
    (0..dsize)
        .map(|dx| {
            let (mut sx, mut fx);
            if !area_mode {
                fx = ((dx as f64 + 0.5) * scale - 0.5) as f32;
                sx = fx.floor() as i64;
                fx -= sx as f32;
            } else {
                sx = (dx as f64 * scale).floor() as i64;
                fx = ((dx + 1) as f64 - (sx + 1) as f64 * inv_scale) as f32;
                fx = if fx <= 0.0 { 0.0 } else { fx - fx.floor() };
            }
            if sx < 0 {
                fx = 0.0;
                sx = 0;
            }
            if sx >= ssize as i64 - 1 {
                fx = 0.0;
                sx = ssize as i64 - 1;
            }
            (sx as usize, fx)
        })
        .collect()
}

fn linear_resize<T: Sample>(src: &Gray<T>, dw: usize, dh: usize, area_mode: bool) -> Gray<T> {
    let sw = src.width as usize;
    let xt = linear_tab(sw, dw, area_mode);
    let yt = linear_tab(src.height as usize, dh, area_mode);
    let mut out = vec![T::default(); dw * dh];
    out.par_chunks_mut(dw).enumerate().for_each(|(dy, row)| {
        let (sy, fy) = yt[dy];
        let sy1 = (sy + 1).min(src.height as usize - 1);
        for (dx, d) in row.iter_mut().enumerate() {
            let (sx, fx) = xt[dx];
            let sx1 = (sx + 1).min(sw - 1);
            let p = |x: usize, y: usize| src.data[y * sw + x].to_f32();
            let top = p(sx, sy) * (1.0 - fx) + p(sx1, sy) * fx;
            let bot = p(sx, sy1) * (1.0 - fx) + p(sx1, sy1) * fx;
            *d = T::from_f32(top * (1.0 - fy) + bot * fy);
        }
    });
    Gray {
        width: dw as u32,
        height: dh as u32,
        data: out,
    }
}

/// `cv2.resize(src, (dw, dh))` with the default bilinear interpolation (half-pixel centres), in
/// f32 rather than OpenCV's fixed point: within 1 grey level of OpenCV.
pub fn resize_linear<T: Sample>(src: &Gray<T>, dw: u32, dh: u32) -> Gray<T> {
    if src.width == dw && src.height == dh {
        return src.clone();
    }
    linear_resize(src, dw as usize, dh as usize, false)
}

/// The target size and padding of MGCA's `resize_img(img, scale)`, with its exact arithmetic:
/// returns `(resized_w, resized_h, left, top)`. The longer side becomes `scale`; for square inputs
/// numpy's `shape.index(max)` picks the height branch. The shorter side is
/// `int(short · (scale / long))` (truncation, computed in f64 as Python does), and padding puts
/// `floor(pad/2)` before and `ceil(pad/2)` after.
pub fn resize_img_geometry(width: u32, height: u32, scale: u32) -> (u32, u32, u32, u32) {
    if height >= width {
        let wpercent = scale as f64 / height as f64;
        let hsize = (width as f64 * wpercent) as u32;
        let pad = scale - hsize;
        (hsize, scale, pad / 2, 0)
    } else {
        let hpercent = scale as f64 / width as f64;
        let wsize = (height as f64 * hpercent) as u32;
        let pad = scale - wsize;
        (scale, wsize, 0, pad / 2)
    }
}

/// MGCA `resize_img`: aspect-preserving `INTER_AREA` resize of the longer side to `scale`, then
/// zero padding to `scale × scale` (reference B.2).
pub fn resize_img<T: Sample>(src: &Gray<T>, scale: u32) -> Gray<T> {
    let (rw, rh, left, top) = resize_img_geometry(src.width, src.height, scale);
    let resized = resize_area(src, rw.max(1), rh.max(1));
    let mut out = Gray::<T>::new(scale, scale);
    let s = scale as usize;
    for y in 0..rh as usize {
        let dst = (y + top as usize) * s + left as usize;
        out.data[dst..dst + rw as usize]
            .copy_from_slice(&resized.data[y * rw as usize..(y + 1) * rw as usize]);
    }
    out
}

/// torchvision `CenterCrop((ch, cw))` on an image at least that large: offsets
/// `round((h - ch) / 2)`, `round((w - cw) / 2)` with Python's round-half-to-even. Smaller inputs
/// are zero-padded first, as torchvision does.
pub fn center_crop<T: Sample>(src: &Gray<T>, cw: u32, ch: u32) -> Gray<T> {
    let mut img = src.clone();
    if img.width < cw || img.height < ch {
        // torchvision pads (cw - w) // 2 left, the rest right (same for height).
        let pw = cw.saturating_sub(img.width);
        let ph = ch.saturating_sub(img.height);
        let (nw, nh) = (img.width + pw, img.height + ph);
        let mut padded = Gray::<T>::new(nw, nh);
        for y in 0..img.height as usize {
            let dst = (y + (ph / 2) as usize) * nw as usize + (pw / 2) as usize;
            padded.data[dst..dst + img.width as usize]
                .copy_from_slice(&img.data[y * img.width as usize..(y + 1) * img.width as usize]);
        }
        img = padded;
    }
    let top = ((img.height - ch) as f64 / 2.0).round_ties_even() as usize;
    let left = ((img.width - cw) as f64 / 2.0).round_ties_even() as usize;
    let mut out = Gray::<T>::new(cw, ch);
    for y in 0..ch as usize {
        let s = (y + top) * img.width as usize + left;
        out.data[y * cw as usize..(y + 1) * cw as usize]
            .copy_from_slice(&img.data[s..s + cw as usize]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resize_img_geometry_matches_the_python_arithmetic() {
        // Portrait 3000×2500 (h×w) to 256: hsize = int(2500 · (256/3000)) = 213, pad 43 = 21 + 22.
        assert_eq!(resize_img_geometry(2500, 3000, 256), (213, 256, 21, 0));
        // Landscape: width fixed, pad the height.
        assert_eq!(resize_img_geometry(300, 200, 224), (224, 149, 0, 37));
        // Square takes the height branch and needs no padding.
        assert_eq!(resize_img_geometry(1024, 1024, 224), (224, 224, 0, 0));
        // RG1: 1841 wide, 1955 high.
        assert_eq!(resize_img_geometry(1841, 1955, 256), (241, 256, 7, 0));
    }

    #[test]
    fn area_fast_two_by_two_rounds_half_up() {
        let g = Gray {
            width: 2,
            height: 2,
            data: vec![0u8, 1, 0, 1],
        };
        assert_eq!(resize_area(&g, 1, 1).data, vec![1]); // (2 + 2) >> 2
        let g = Gray {
            width: 4,
            height: 1,
            data: vec![1u8, 2, 3, 4],
        };
        // 4:1 horizontal, 1:1 vertical: integer fast path with round(sum · 0.25) = round(2.5) = 2.
        assert_eq!(resize_area(&g, 1, 1).data, vec![2]);
    }

    #[test]
    fn area_general_preserves_constant_images() {
        let g = Gray {
            width: 7,
            height: 5,
            data: vec![100u8; 35],
        };
        let r = resize_area(&g, 3, 2);
        assert!(r.data.iter().all(|&v| v == 100), "{:?}", r.data);
    }

    #[test]
    fn center_crop_rounds_half_to_even() {
        let g = Gray {
            width: 5,
            height: 1,
            data: vec![0u8, 1, 2, 3, 4],
        };
        // (5 - 2) / 2 = 1.5 → 2.
        assert_eq!(center_crop(&g, 2, 1).data, vec![2, 3]);
        let g = Gray {
            width: 6,
            height: 1,
            data: vec![0u8, 1, 2, 3, 4, 5],
        };
        // (6 - 3) / 2 = 1.5 → 2; (6 - 1)/2 = 2.5 → 2.
        assert_eq!(center_crop(&g, 3, 1).data, vec![2, 3, 4]);
        assert_eq!(center_crop(&g, 1, 1).data, vec![2]);
    }
}
