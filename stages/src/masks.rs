//! Segmentation masks from the datasets' annotations, with the original's semantics.
//!
//! SIIM: run-length strings of alternating *relative* start / length pairs over a column-major
//! raster (MGCA `rle2mask` then `.T`, reference E.3). RSNA: boxes `x1,y1,x2,y2` painted as
//! `mask[int(y1):int(y2), int(x1):int(x2)] = 1` for boxes with `y2 > 0` (reference E.2).

use crate::error::{Error, Result};
use crate::images::Gray8;

/// Parses an RLE string into (start, length) pairs with absolute starts, checking that every run
/// lies inside a `width × height` raster. `context` names the source in errors (file, line, field).
/// `-1` (SIIM's "no region") gives no runs.
pub fn parse_rle(rle: &str, width: u32, height: u32, context: &str) -> Result<Vec<(u64, u64)>> {
    let rle = rle.trim();
    if rle == "-1" || rle.is_empty() {
        return Ok(Vec::new());
    }
    let err = |message: String| Error::Rle {
        context: context.to_string(),
        message,
    };
    let nums = rle
        .split_ascii_whitespace()
        .enumerate()
        .map(|(i, t)| {
            t.parse::<u64>().map_err(|_| {
                err(format!(
                    "item {} `{t}` is not a non-negative integer",
                    i + 1
                ))
            })
        })
        .collect::<Result<Vec<_>>>()?;
    if nums.len() % 2 != 0 {
        return Err(err(format!(
            "{} numbers, expected start/length pairs (an even count)",
            nums.len()
        )));
    }
    let total = width as u64 * height as u64;
    let mut pos = 0u64;
    let mut runs = Vec::with_capacity(nums.len() / 2);
    // Checked arithmetic throughout: every number comes from the file, and a wrapped sum would
    // paint a wrong mask instead of failing.
    for (i, pair) in nums.chunks_exact(2).enumerate() {
        let start = pos.checked_add(pair[0]);
        let end = start.and_then(|s| s.checked_add(pair[1]));
        match (start, end) {
            (Some(start), Some(end)) if end <= total => {
                runs.push((start, pair[1]));
                pos = end;
            }
            (Some(start), Some(end)) => {
                return Err(err(format!(
                    "run {} (pixels {start}..{end}) runs past the end of the {width}×{height} \
                     image ({total} pixels)",
                    i + 1
                )))
            }
            (Some(start), None) => {
                return Err(err(format!(
                    "run {} (start {start}, length {}) runs past the end of the {width}×{height} \
                     image ({total} pixels)",
                    i + 1,
                    pair[1]
                )))
            }
            (None, _) => {
                return Err(err(format!(
                    "run {} starts {} pixels after pixel {pos}, past the end of the \
                     {width}×{height} image ({total} pixels)",
                    i + 1,
                    pair[0]
                )))
            }
        }
    }
    Ok(runs)
}

/// Paints the union of the given RLE strings (one per CSV row of an image) into a 0/1 mask.
/// Pixel `(x, y)` is flat index `x · height + y` (column-major).
pub fn rle_to_mask<S: AsRef<str>>(
    rles: &[S],
    width: u32,
    height: u32,
    context: &str,
) -> Result<Gray8> {
    let mut mask = Gray8::new(width, height);
    let h = height as u64;
    for rle in rles {
        for (start, len) in parse_rle(rle.as_ref(), width, height, context)? {
            for p in start..start + len {
                let (x, y) = (p / h, p % h);
                mask.data[(y * width as u64 + x) as usize] = 1;
            }
        }
    }
    Ok(mask)
}

/// Encodes a 0/non-zero mask as SIIM RLE (column-major, relative starts); `-1` when empty.
pub fn mask_to_rle(mask: &Gray8) -> String {
    let (w, h) = (mask.width as u64, mask.height as u64);
    let mut out = Vec::new();
    let mut last_end = 0u64;
    let mut run_start: Option<u64> = None;
    for p in 0..w * h {
        let (x, y) = (p / h, p % h);
        let on = mask.data[(y * w + x) as usize] != 0;
        match (on, run_start) {
            (true, None) => run_start = Some(p),
            (false, Some(s)) => {
                out.push(format!("{} {}", s - last_end, p - s));
                last_end = p;
                run_start = None;
            }
            _ => {}
        }
    }
    if let Some(s) = run_start {
        out.push(format!("{} {}", s - last_end, w * h - s));
    }
    if out.is_empty() {
        "-1".to_string()
    } else {
        out.join(" ")
    }
}

/// RSNA boxes (`[x1, y1, x2, y2]` in pixels) to a 0/1 mask of `width × height`. Coordinates are
/// truncated toward zero (numpy `astype(int64)`) and slices clipped to the raster, as numpy does;
/// boxes with `y2 <= 0` (the original's zero placeholder for negatives) are ignored.
pub fn boxes_to_mask(boxes: &[[f32; 4]], width: u32, height: u32) -> Gray8 {
    let mut mask = Gray8::new(width, height);
    for b in boxes.iter().filter(|b| b[3] > 0.0) {
        let clip = |v: f32, max: u32| (v.trunc().max(0.0) as u64).min(max as u64) as usize;
        let (x1, y1, x2, y2) = (
            clip(b[0], width),
            clip(b[1], height),
            clip(b[2], width),
            clip(b[3], height),
        );
        for y in y1..y2.max(y1) {
            for x in x1..x2.max(x1) {
                mask.data[y * width as usize + x] = 1;
            }
        }
    }
    mask
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rle_is_column_major_with_relative_starts() {
        // 3×2 raster (w=3, h=2): flat p → (x = p / 2, y = p % 2).
        // "1 2" covers p=1,2 → (0,1), (1,0); "1 1" after that starts at 3+1=4 → (2,0).
        let m = rle_to_mask(&["1 2 1 1"], 3, 2, "t").unwrap();
        assert_eq!(m.data, vec![0, 1, 1, 1, 0, 0]);
        assert_eq!(mask_to_rle(&m), "1 2 1 1");
    }

    #[test]
    fn several_rows_are_unioned_and_minus_one_is_empty() {
        let m = rle_to_mask(&[" -1"], 2, 2, "t").unwrap();
        assert!(m.data.iter().all(|&v| v == 0));
        assert_eq!(mask_to_rle(&m), "-1");
        let m = rle_to_mask(&["0 1", "3 1"], 2, 2, "t").unwrap();
        assert_eq!(m.data, vec![1, 0, 0, 1]);
    }

    #[test]
    fn rle_past_the_end_is_an_error() {
        let e = rle_to_mask(
            &["2 2 1 2"],
            2,
            2,
            "train-rle.csv, line 7, field ` EncodedPixels`",
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "RLE train-rle.csv, line 7, field ` EncodedPixels`: run 2 (pixels 5..7) runs past the end of the \
             2×2 image (4 pixels)"
        );
        let e = parse_rle("1 x", 2, 2, "c").unwrap_err();
        assert_eq!(
            e.to_string(),
            "RLE c: item 2 `x` is not a non-negative integer"
        );
        // numbers that overflow u64, or whose sum does, are errors, never a wrapped mask
        let e = parse_rle("1 99999999999999999999999", 2, 2, "c").unwrap_err();
        assert!(e.to_string().contains("item 2"), "{e}");
        let e = parse_rle(&format!("1 1 {} 1", u64::MAX), 2, 2, "c").unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "RLE c: run 2 starts {} pixels after pixel 2, past the end of the 2×2 image \
                 (4 pixels)",
                u64::MAX
            )
        );
        let e = parse_rle(&format!("1 {}", u64::MAX), 2, 2, "c").unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "RLE c: run 1 (start 1, length {}) runs past the end of the 2×2 image (4 pixels)",
                u64::MAX
            )
        );
        let e = parse_rle("1 x", 2, 2, "c").unwrap_err();
        assert_eq!(
            e.to_string(),
            "RLE c: item 2 `x` is not a non-negative integer"
        );
    }

    #[test]
    fn boxes_truncate_and_clip() {
        let m = boxes_to_mask(&[[0.9, 1.5, 2.7, 9.0], [0.0, 0.0, 0.0, 0.0]], 3, 3);
        // x 0..2, y 1..3
        assert_eq!(m.data, vec![0, 0, 0, 1, 1, 0, 1, 1, 0]);
    }
}
