//! The original's SIIM training augmentation (reference E.3): albumentations'
//! `ShiftScaleRotate(shift_limit=0, scale_limit=0.1, rotate_limit=10, p=0.5,
//! border_mode=BORDER_CONSTANT)`, applied to an image and its mask together, as OpenCV's
//! `getRotationMatrix2D` + `warpAffine` do (bilinear for the image, nearest for the mask, zeros
//! outside). Draws come from `(seed, epoch, image)`, so a run is reproducible and resumable.

use serde::{Deserialize, Serialize};
use stages::images::Gray8;
use train::rng::{derive_seed, SplitMix64};

/// The ranges of one `ShiftScaleRotate` (no shift, as the original).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ShiftScaleRotate {
    /// Scale drawn from `1 ± scale_limit`.
    pub scale_limit: f64,
    /// Angle in degrees drawn from `± rotate_limit`.
    pub rotate_limit: f64,
    /// Probability that an image is transformed at all.
    pub p: f64,
}

impl ShiftScaleRotate {
    /// The original's SIIM setting.
    pub const ORIGINAL: ShiftScaleRotate = ShiftScaleRotate {
        scale_limit: 0.1,
        rotate_limit: 10.0,
        p: 0.5,
    };

    /// The (angle in degrees, scale) of image `index` in `epoch`, or `None` when it is left as is.
    pub fn draw(&self, seed: u64, epoch: u64, index: u64) -> Option<(f64, f64)> {
        let mut rng = SplitMix64::new(derive_seed(
            derive_seed(seed, "seg-augment", epoch),
            "image",
            index,
        ));
        let apply = rng.next_unit24() < self.p;
        let angle = (2.0 * rng.next_unit24() - 1.0) * self.rotate_limit;
        let scale = 1.0 + (2.0 * rng.next_unit24() - 1.0) * self.scale_limit;
        apply.then_some((angle, scale))
    }

    /// Image and mask (`side × side`, row-major) through the same rotation and scale about the
    /// center.
    pub fn apply(&self, img: &Gray8, mask: &[u8], angle: f64, scale: f64) -> (Gray8, Vec<u8>) {
        let (w, h) = (img.width as usize, img.height as usize);
        // cv2.getRotationMatrix2D(center, angle, scale): forward map M = [[a, b, c], [-b, a, d]].
        let (cx, cy) = ((w as f64 - 1.0) / 2.0, (h as f64 - 1.0) / 2.0);
        let rad = angle.to_radians();
        let (a, b) = (scale * rad.cos(), scale * rad.sin());
        let c = (1.0 - a) * cx - b * cy;
        let d = b * cx + (1.0 - a) * cy;
        // warpAffine samples the inverse map at every destination pixel.
        let det = a * a + b * b;
        let (ia, ib) = (a / det, -b / det);
        let (ic, id) = (-(ia * c + ib * d), -(-ib * c + ia * d));
        let mut out = Gray8::new(img.width, img.height);
        let mut out_mask = vec![0u8; mask.len()];
        for y in 0..h {
            for x in 0..w {
                let (xf, yf) = (x as f64, y as f64);
                let sx = ia * xf + ib * yf + ic;
                let sy = -ib * xf + ia * yf + id;
                out.data[y * w + x] = bilinear(img, sx, sy);
                let (nx, ny) = (sx.round(), sy.round());
                if nx >= 0.0 && ny >= 0.0 && (nx as usize) < w && (ny as usize) < h {
                    out_mask[y * w + x] = mask[ny as usize * w + nx as usize];
                }
            }
        }
        (out, out_mask)
    }
}

/// Bilinear sample with zeros outside the image, rounded to 8 bits.
fn bilinear(img: &Gray8, x: f64, y: f64) -> u8 {
    let (w, h) = (img.width as i64, img.height as i64);
    let (x0, y0) = (x.floor(), y.floor());
    let (fx, fy) = (x - x0, y - y0);
    let px = |xi: i64, yi: i64| -> f64 {
        if xi < 0 || yi < 0 || xi >= w || yi >= h {
            0.0
        } else {
            img.data[(yi * w + xi) as usize] as f64
        }
    };
    let (x0, y0) = (x0 as i64, y0 as i64);
    let v = px(x0, y0) * (1.0 - fx) * (1.0 - fy)
        + px(x0 + 1, y0) * fx * (1.0 - fy)
        + px(x0, y0 + 1) * (1.0 - fx) * fy
        + px(x0 + 1, y0 + 1) * fx * fy;
    v.round().clamp(0.0, 255.0) as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A bright square on a dark image, its mask exactly the square.
    fn square(side: u32, x0: usize, y0: usize, n: usize) -> (Gray8, Vec<u8>) {
        let mut img = Gray8::new(side, side);
        let mut mask = vec![0u8; (side * side) as usize];
        for y in y0..y0 + n {
            for x in x0..x0 + n {
                img.data[y * side as usize + x] = 200;
                mask[y * side as usize + x] = 1;
            }
        }
        (img, mask)
    }

    fn centroid(v: &[u8], side: usize, bright: u8) -> (f64, f64, usize) {
        let (mut sx, mut sy, mut n) = (0.0, 0.0, 0usize);
        for (i, &p) in v.iter().enumerate() {
            if p >= bright {
                sx += (i % side) as f64;
                sy += (i / side) as f64;
                n += 1;
            }
        }
        (sx / n as f64, sy / n as f64, n)
    }

    #[test]
    fn the_mask_moves_with_the_image() {
        let side = 64;
        let (img, mask) = square(side, 40, 10, 12);
        let t = ShiftScaleRotate::ORIGINAL;
        let (ri, rm) = t.apply(&img, &mask, 10.0, 1.1);
        // The square moved (a 10° turn about the center moves an off-center square)...
        let (mx, my, mn) = centroid(&rm, side as usize, 1);
        let (ox, oy, _) = centroid(&mask, side as usize, 1);
        assert!(
            (mx - ox).abs() + (my - oy).abs() > 2.0,
            "{mx},{my} vs {ox},{oy}"
        );
        // ...and the mask sits where the image's bright square now is.
        let (ix, iy, _) = centroid(&ri.data, side as usize, 100);
        assert!(
            (mx - ix).abs() < 0.75 && (my - iy).abs() < 0.75,
            "{mx},{my} vs {ix},{iy}"
        );
        // Scaled by 1.1: the area grows by about 1.21.
        let area = mn as f64 / 144.0;
        assert!((area - 1.21).abs() < 0.12, "{area}");
        // Every mask pixel lies on the transformed image's square (bright or its blurred edge).
        for (i, &m) in rm.iter().enumerate() {
            if m == 1 {
                assert!(ri.data[i] >= 50, "pixel {i}: mask 1, image {}", ri.data[i]);
            }
        }
        // The identity leaves both as they are.
        let (ii, im) = t.apply(&img, &mask, 0.0, 1.0);
        assert_eq!((ii.data, im), (img.data.clone(), mask.clone()));
    }

    #[test]
    fn draws_are_seeded_within_the_ranges_and_about_half_applied() {
        let t = ShiftScaleRotate::ORIGINAL;
        let draws: Vec<_> = (0..400).map(|i| t.draw(42, 1, i)).collect();
        let applied: Vec<(f64, f64)> = draws.iter().flatten().copied().collect();
        assert!((150..250).contains(&applied.len()), "{}", applied.len());
        assert!(applied
            .iter()
            .all(|&(a, s)| a.abs() <= 10.0 && (s - 1.0).abs() <= 0.1));
        assert_eq!(
            draws,
            (0..400).map(|i| t.draw(42, 1, i)).collect::<Vec<_>>()
        );
        assert_ne!(
            draws,
            (0..400).map(|i| t.draw(42, 2, i)).collect::<Vec<_>>()
        );
    }
}
