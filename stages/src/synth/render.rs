//! A deterministic chest-radiograph-like renderer whose findings are visible in the pixels.
//!
//! Frontal view: dark air, soft-tissue body, two darker lung fields with rib texture, a bright
//! mediastinum and heart, noise. Findings change the pixels where the labels say they are:
//! an opacity blob (pneumonia, with its box), a dark rib-less crescent at a lung apex
//! (pneumothorax, with its mask), bilateral peripheral ground-glass patches (COVID-19), a basal
//! fluid level (effusion) and a large heart (cardiomegaly).

use crate::images::Gray8;

/// SplitMix64: small, fast and good enough for synthetic pixels; seeded per image so images can be
/// rendered in parallel and still be identical for the same seed.
#[derive(Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed ^ 0x9e37_79b9_7f4a_7c15)
    }

    /// An independent stream for item `i` of stream `tag`.
    pub fn derive(seed: u64, tag: &str, i: u64) -> Self {
        let mut h = seed.wrapping_mul(0x100_0000_01b3);
        for b in tag.bytes() {
            h = (h ^ b as u64).wrapping_mul(0x100_0000_01b3);
        }
        let mut r = Rng(h ^ i.wrapping_mul(0xd1b5_4a32_d192_ed03));
        r.next_u64();
        r
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn f(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }

    pub fn range(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * self.f()
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }

    pub fn chance(&mut self, p: f32) -> bool {
        self.f() < p
    }

    /// Approximately standard normal (sum of four uniforms, rescaled).
    pub fn normal(&mut self) -> f32 {
        (self.f() + self.f() + self.f() + self.f() - 2.0) * 1.732
    }

    pub fn hex(&mut self, digits: usize) -> String {
        (0..digits)
            .map(|_| char::from_digit(self.below(16) as u32, 16).unwrap())
            .collect()
    }
}

/// Which lung, in the patient's frame: the patient's right lung is on the image's left.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Right,
    Left,
}

impl Side {
    pub fn name(self) -> &'static str {
        match self {
            Side::Right => "right",
            Side::Left => "left",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Zone {
    Upper,
    Middle,
    Lower,
}

impl Zone {
    pub fn name(self) -> &'static str {
        match self {
            Zone::Upper => "upper",
            Zone::Middle => "middle",
            Zone::Lower => "lower",
        }
    }
}

/// A finding to draw.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Finding {
    /// Pneumonia-like consolidation; `strength` 1 is obvious, 0.5 subtle.
    Opacity {
        side: Side,
        zone: Zone,
        strength: f32,
    },
    /// Apical/lateral pneumothorax crescent.
    Pneumothorax { side: Side },
    /// Bilateral peripheral ground-glass patches (COVID-19 pattern).
    GroundGlass,
    /// Basal pleural effusion.
    Effusion { side: Side },
    /// Enlarged cardiac silhouette.
    Cardiomegaly,
}

/// What was drawn, in pixel coordinates of the output.
pub struct Rendered {
    pub image: Gray8,
    /// One `[x, y, width, height]` per opacity.
    pub boxes: Vec<[f32; 4]>,
    /// One 0/1 mask per pneumothorax region.
    pub regions: Vec<Gray8>,
}

#[derive(Clone, Copy)]
struct Ellipse {
    cx: f32,
    cy: f32,
    rx: f32,
    ry: f32,
}

impl Ellipse {
    /// Normalised radius: < 1 inside.
    fn r(&self, u: f32, v: f32) -> f32 {
        (((u - self.cx) / self.rx).powi(2) + ((v - self.cy) / self.ry).powi(2)).sqrt()
    }

    /// 1 inside, 0 outside, smooth over `soft` of the radius.
    fn inside(&self, u: f32, v: f32, soft: f32) -> f32 {
        smoothstep(1.0 + soft, 1.0 - soft, self.r(u, v))
    }
}

fn smoothstep(e0: f32, e1: f32, x: f32) -> f32 {
    let t = ((x - e0) / (e1 - e0)).clamp(0.0, 1.0);
    t * t * (3.0 - 2.0 * t)
}

/// Renders a frontal (PA/AP) chest image of `width × height`.
pub fn frontal(width: u32, height: u32, rng: &mut Rng, findings: &[Finding]) -> Rendered {
    let (w, h) = (width as usize, height as usize);
    let jitter = |rng: &mut Rng, s: f32| rng.range(-s, s);
    let body = Ellipse {
        cx: 0.5 + jitter(rng, 0.01),
        cy: 0.56,
        rx: 0.47 + jitter(rng, 0.02),
        ry: 0.55,
    };
    let lung_r = Ellipse {
        cx: 0.31 + jitter(rng, 0.015),
        cy: 0.46 + jitter(rng, 0.015),
        rx: 0.14 * (1.0 + jitter(rng, 0.07)),
        ry: 0.30 * (1.0 + jitter(rng, 0.07)),
    };
    let lung_l = Ellipse {
        cx: 0.69 + jitter(rng, 0.015),
        cy: lung_r.cy + jitter(rng, 0.01),
        rx: 0.13 * (1.0 + jitter(rng, 0.07)),
        ry: lung_r.ry * (0.97 + jitter(rng, 0.02)),
    };
    let cardio = findings.iter().any(|f| matches!(f, Finding::Cardiomegaly));
    let heart_scale = if cardio { 1.45 } else { 1.0 };
    let heart = Ellipse {
        cx: 0.55,
        cy: 0.64,
        rx: 0.11 * heart_scale,
        ry: 0.10 * heart_scale.sqrt(),
    };
    let brightness = jitter(rng, 10.0);
    let rib_phase = rng.f();
    let lung_of = |s: Side| if s == Side::Right { lung_r } else { lung_l };

    // Findings in normalised coordinates.
    let mut blobs: Vec<(f32, f32, f32, f32, f32)> = Vec::new(); // cx, cy, sx, sy, amplitude
    let mut boxes = Vec::new();
    let mut crescents: Vec<(Ellipse, Ellipse)> = Vec::new();
    let mut effusions: Vec<Ellipse> = Vec::new();
    for f in findings {
        match *f {
            Finding::Opacity {
                side,
                zone,
                strength,
            } => {
                let l = lung_of(side);
                let dv = match zone {
                    Zone::Upper => -0.45,
                    Zone::Middle => 0.0,
                    Zone::Lower => 0.45,
                };
                let cx = l.cx + jitter(rng, 0.25) * l.rx;
                let cy = l.cy + dv * l.ry + jitter(rng, 0.1) * l.ry;
                let sx = l.rx * rng.range(0.35, 0.5);
                let sy = l.ry * rng.range(0.18, 0.26);
                blobs.push((cx, cy, sx, sy, 70.0 * strength));
                // The box covers ±1.8σ, as an annotator would draw around the visible opacity.
                let (x1, y1) = (
                    ((cx - 1.8 * sx) * width as f32).max(0.0),
                    ((cy - 1.8 * sy) * height as f32).max(0.0),
                );
                let (x2, y2) = (
                    ((cx + 1.8 * sx) * width as f32).min(width as f32),
                    ((cy + 1.8 * sy) * height as f32).min(height as f32),
                );
                boxes.push([x1.round(), y1.round(), (x2 - x1).round(), (y2 - y1).round()]);
            }
            Finding::Pneumothorax { side } => {
                let l = lung_of(side);
                let medial = if side == Side::Right { 1.0 } else { -1.0 };
                let inner = Ellipse {
                    cx: l.cx + medial * l.rx * rng.range(0.22, 0.32),
                    cy: l.cy + l.ry * rng.range(0.12, 0.2),
                    rx: l.rx * 0.8,
                    ry: l.ry * 0.85,
                };
                crescents.push((l, inner));
            }
            Finding::GroundGlass => {
                for side in [Side::Right, Side::Left] {
                    let l = lung_of(side);
                    let lateral = if side == Side::Right { -1.0 } else { 1.0 };
                    for _ in 0..3 + rng.below(3) {
                        let cx = l.cx + lateral * l.rx * rng.range(0.35, 0.7);
                        let cy = l.cy + l.ry * rng.range(-0.2, 0.65);
                        blobs.push((
                            cx,
                            cy,
                            l.rx * rng.range(0.2, 0.3),
                            l.ry * rng.range(0.1, 0.16),
                            38.0,
                        ));
                    }
                }
            }
            Finding::Effusion { side } => {
                let l = lung_of(side);
                // Fluid fills the lung below a meniscus: an ellipse sitting on the lung base.
                effusions.push(Ellipse {
                    cx: l.cx,
                    cy: l.cy + l.ry * 1.05,
                    rx: l.rx * 1.3,
                    ry: l.ry * 0.42,
                });
            }
            Finding::Cardiomegaly => {}
        }
    }
    let ground_glass = findings.iter().any(|f| matches!(f, Finding::GroundGlass));

    let mut img = Gray8::new(width, height);
    let mut regions: Vec<Gray8> = crescents
        .iter()
        .map(|_| Gray8::new(width, height))
        .collect();
    for y in 0..h {
        let v = (y as f32 + 0.5) / h as f32;
        for x in 0..w {
            let u = (x as f32 + 0.5) / w as f32;
            let mut val = 18.0;
            let b = body.inside(u, v, 0.03);
            val += 92.0 * b + brightness * b;
            // Spine and mediastinum.
            let spine = smoothstep(0.07, 0.04, (u - 0.5).abs()) * smoothstep(0.08, 0.15, v);
            val += 45.0 * spine * b;
            let in_r = lung_r.inside(u, v, 0.06);
            let in_l = lung_l.inside(u, v, 0.06);
            let lung = in_r.max(in_l);
            // Lungs are darker; ribs are gently curved bright bands within them.
            let ribs = ((v * 9.0 + 1.6 * (u - 0.5).powi(2) + rib_phase) * std::f32::consts::TAU)
                .sin()
                .max(0.0);
            let mut lung_val = -58.0 + 14.0 * ribs;
            for (i, (outer, inner)) in crescents.iter().enumerate() {
                if outer.r(u, v) < 1.0 && inner.r(u, v) > 1.0 && v < outer.cy + 0.2 * outer.ry {
                    // Collapsed lung edge: air without lung markings, darker, no ribs.
                    lung_val = -82.0;
                    regions[i].data[y * w + x] = 1;
                } else if inner.r(u, v) < 1.0 && outer.r(u, v) < 1.0 {
                    // The collapsed lung is a little denser.
                    lung_val += 8.0 * (1.0 - inner.r(u, v));
                }
            }
            val += lung * lung_val;
            let heart_v = heart.inside(u, v, 0.05);
            val += 48.0 * heart_v * (0.6 + 0.4 * lung);
            for (cx, cy, sx, sy, amp) in &blobs {
                let d = ((u - cx) / sx).powi(2) + ((v - cy) / sy).powi(2);
                if d < 9.0 {
                    let mut a = amp * (-0.5 * d).exp() * (0.3 + 0.7 * lung);
                    if ground_glass {
                        a *= 0.8 + 0.2 * ((u * 90.0).sin() * (v * 110.0).sin());
                    }
                    val += a;
                }
            }
            for e in &effusions {
                val += 60.0 * e.inside(u, v, 0.05) * lung.max(0.5 * b);
            }
            val += 3.5 * rng.normal();
            img.data[y * w + x] = val.round().clamp(0.0, 255.0) as u8;
        }
    }
    Rendered {
        image: img,
        boxes,
        regions,
    }
}

/// A lateral view: one broad lung field, the spine at the back. MIMIC's lateral images are
/// dropped by ingest, so this only has to look plausible.
pub fn lateral(width: u32, height: u32, rng: &mut Rng) -> Gray8 {
    let body = Ellipse {
        cx: 0.5,
        cy: 0.55,
        rx: 0.42,
        ry: 0.52,
    };
    let lung = Ellipse {
        cx: 0.52 + rng.range(-0.02, 0.02),
        cy: 0.47,
        rx: 0.27,
        ry: 0.3,
    };
    let mut img = Gray8::new(width, height);
    let (w, h) = (width as usize, height as usize);
    for y in 0..h {
        let v = (y as f32 + 0.5) / h as f32;
        for x in 0..w {
            let u = (x as f32 + 0.5) / w as f32;
            let mut val = 18.0 + 95.0 * body.inside(u, v, 0.03) - 50.0 * lung.inside(u, v, 0.08);
            val += 50.0 * smoothstep(0.06, 0.02, (u - 0.82).abs()) * body.inside(u, v, 0.03);
            val += 3.5 * rng.normal();
            img.data[y * w + x] = val.round().clamp(0.0, 255.0) as u8;
        }
    }
    img
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mean_in(img: &Gray8, b: [f32; 4]) -> f32 {
        let mut s = 0.0;
        let mut n = 0.0;
        for y in b[1] as u32..(b[1] + b[3]) as u32 {
            for x in b[0] as u32..(b[0] + b[2]) as u32 {
                s += img.get(x, y) as f32;
                n += 1.0;
            }
        }
        s / n
    }

    #[test]
    fn same_seed_same_pixels_and_findings_are_visible() {
        let f = [Finding::Opacity {
            side: Side::Right,
            zone: Zone::Lower,
            strength: 1.0,
        }];
        let a = frontal(128, 128, &mut Rng::new(3), &f);
        let b = frontal(128, 128, &mut Rng::new(3), &f);
        assert_eq!(a.image, b.image);
        assert_eq!(a.boxes.len(), 1);
        let normal = frontal(128, 128, &mut Rng::new(3), &[]);
        // The opacity brightens its box by a clearly visible amount.
        assert!(mean_in(&a.image, a.boxes[0]) > mean_in(&normal.image, a.boxes[0]) + 15.0);
    }

    #[test]
    fn pneumothorax_region_is_dark_and_nonempty() {
        let r = frontal(
            128,
            128,
            &mut Rng::new(9),
            &[Finding::Pneumothorax { side: Side::Left }],
        );
        let m = &r.regions[0];
        let n = m.data.iter().filter(|&&v| v == 1).count();
        assert!(n > 40, "region has {n} pixels");
        let inside: f32 = m
            .data
            .iter()
            .zip(&r.image.data)
            .filter(|(m, _)| **m == 1)
            .map(|(_, &p)| p as f32)
            .sum::<f32>()
            / n as f32;
        assert!(inside < 45.0, "mean inside crescent {inside}");
    }
}
