//! The `retrieve` stage as the worker runs it (declaration: `stages::kinds::retrieve`): MIMIC-CXR
//! images and reports through the frozen adaptor ([`crate::zeroshot::Space`]), ranked by cosine
//! similarity both ways; recall@1/5/10 and median rank ([`rank_both_ways`], [`scores`]) beside a
//! random ranking's ([`chance`]).

use std::collections::BTreeMap;
use std::time::Instant;

use pipeline::{StageContext, StageError};
use tch::{Kind, Tensor};

use crate::encoder::torch_device;
use crate::evaluate::{frozen_adaptor, pooled_table, read_int_column};
use crate::zeroshot::Space;
use artifacts::report::{RetrievalResult, RetrievalScores, RESULT_FILE};
use artifacts::table::{read_string_columns, EmbeddingTable};
use stages::ingest::RECORDS;
use stages::kinds::retrieve::{RetrieveParams, RetrieveSplit};

/// 1-based rank of the first hit of each query: images against reports, reports against images.
#[derive(Debug, Clone, PartialEq)]
pub struct Ranks {
    pub image_to_text: Vec<usize>,
    pub text_to_image: Vec<usize>,
}

/// Candidates ordered by descending similarity, ties by index (numpy's stable `argsort(-s)`).
fn order(sim: impl Fn(usize) -> f32, n: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..n).collect();
    idx.sort_by(|&a, &b| sim(b).total_cmp(&sim(a)));
    idx
}

/// Ranks both ways for L2-normalised `images [N, d]` and `reports [R, d]`: a report is a hit for
/// an image of the same study, and the other way round.
pub fn rank_both_ways(
    images: &Tensor,
    image_study: &[i64],
    reports: &Tensor,
    report_study: &[i64],
) -> Ranks {
    let (n, r) = (image_study.len(), report_study.len());
    let sim = images
        .matmul(&reports.transpose(0, 1))
        .to_kind(Kind::Float)
        .flatten(0, -1);
    let sim: Vec<f32> = Vec::try_from(&sim).expect("a float tensor converts");
    let first_hit = |ordered: Vec<usize>, hit: &dyn Fn(usize) -> bool| {
        ordered
            .iter()
            .position(|&c| hit(c))
            .map_or(usize::MAX, |p| p + 1)
    };
    let image_to_text = (0..n)
        .map(|i| {
            let ordered = order(|j| sim[i * r + j], r);
            first_hit(ordered, &|j| report_study[j] == image_study[i])
        })
        .collect();
    let text_to_image = (0..r)
        .map(|j| {
            let ordered = order(|i| sim[i * r + j], n);
            first_hit(ordered, &|i| image_study[i] == report_study[j])
        })
        .collect();
    Ranks {
        image_to_text,
        text_to_image,
    }
}

/// numpy's median: the middle value, or the mean of the two middle ones.
fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

/// Recall@1/5/10 and median rank of one direction's ranks.
pub fn scores(ranks: &[usize]) -> RetrievalScores {
    let recall = |k: usize| ranks.iter().filter(|&&r| r <= k).count() as f64 / ranks.len() as f64;
    let as_f64: Vec<f64> = ranks.iter().map(|&r| r as f64).collect();
    RetrievalScores {
        r1: recall(1),
        r5: recall(5),
        r10: recall(10),
        median_rank: median(&as_f64),
    }
}

/// A random ranking of `candidates` for queries with `hits[q]` correct candidates each: the
/// expected recall@k, `1 − C(n − m, k) / C(n, k)`, averaged over queries, and the median over
/// queries of the expected first-hit rank `(n + 1) / (m + 1)`.
pub fn chance(hits: &[usize], candidates: usize) -> RetrievalScores {
    let n = candidates as f64;
    let recall = |k: usize| {
        hits.iter()
            .map(|&m| {
                let miss: f64 = (0..k.min(candidates))
                    .map(|t| ((n - m as f64 - t as f64) / (n - t as f64)).max(0.0))
                    .product();
                1.0 - miss
            })
            .sum::<f64>()
            / hits.len() as f64
    };
    let expected: Vec<f64> = hits.iter().map(|&m| (n + 1.0) / (m as f64 + 1.0)).collect();
    RetrievalScores {
        r1: recall(1),
        r5: recall(5),
        r10: recall(10),
        median_rank: median(&expected),
    }
}

/// The rows of the records the run searches, and the first row of each of their studies (the
/// study's report).
fn selected_rows(
    p: &RetrieveParams,
    official: &[String],
    split: &[String],
    study: &[i64],
) -> (Vec<usize>, Vec<usize>) {
    let keep = |i: usize| match p.split {
        RetrieveSplit::Test => official[i] == "test",
        RetrieveSplit::Validate => official[i] == "validate",
        RetrieveSplit::Valid => split[i] == "valid",
    };
    let rows: Vec<usize> = (0..study.len()).filter(|&i| keep(i)).collect();
    let mut seen = std::collections::BTreeSet::new();
    let reports = rows
        .iter()
        .copied()
        .filter(|&i| seen.insert(study[i]))
        .collect();
    (rows, reports)
}

/// Rows `rows` of a pooled table as `[len, dim]`.
fn rows_of(t: &EmbeddingTable, rows: &[usize]) -> Tensor {
    let d = t.meta.dim;
    let mut v = Vec::with_capacity(rows.len() * d);
    for &r in rows {
        v.extend_from_slice(&t.values[r * d..(r + 1) * d]);
    }
    Tensor::from_slice(&v).view([rows.len() as i64, d as i64])
}

pub fn run(p: &RetrieveParams, ctx: &StageContext) -> Result<(), StageError> {
    let t0 = Instant::now();
    let records = ctx.input("records")?.path.join(RECORDS);
    let mut cols = read_string_columns(&records, &["key", "split", "official_split"])
        .map_err(|e| format!("retrieve takes MIMIC-CXR records (`official_split`): {e}"))?;
    let (official, split, keys) = (
        cols.pop().unwrap(),
        cols.pop().unwrap(),
        cols.pop().unwrap(),
    );
    let study = read_int_column(&records, "study_id")?;
    let image = pooled_table(ctx, &ctx.input("image")?.path, &keys)?;
    let text = pooled_table(ctx, &ctx.input("text")?.path, &keys)?;
    let (rows, report_rows) = selected_rows(p, &official, &split, &study);
    if rows.is_empty() {
        return Err(format!(
            "{}: no rows in split `{}` to retrieve over",
            records.display(),
            p.split
        )
        .into());
    }

    let device = torch_device(p.device)?;
    let dim = image.meta.dim as i64;
    let adaptor = frozen_adaptor(ctx, p.adaptor_init, dim, p.seed as u64, device)?;
    let space = Space::new(adaptor, device);
    space.check_widths(dim, text.meta.dim as i64)?;
    let images = space.images(&rows_of(&image, &rows))?;
    let reports = space.texts(&rows_of(&text, &report_rows))?;
    let image_study: Vec<i64> = rows.iter().map(|&i| study[i]).collect();
    let report_study: Vec<i64> = report_rows.iter().map(|&i| study[i]).collect();
    let ranks = rank_both_ways(&images, &image_study, &reports, &report_study);
    let mut per_study: BTreeMap<i64, usize> = BTreeMap::new();
    for s in &image_study {
        *per_study.entry(*s).or_default() += 1;
    }
    let result = RetrievalResult {
        instance: ctx.instance().to_string(),
        dataset: "mimic-cxr".into(),
        split: p.split.name().into(),
        vision: image.meta.backbone.clone(),
        text: text.meta.backbone.clone(),
        adaptor: space.mode().into(),
        seed: p.seed,
        images: rows.len(),
        reports: report_rows.len(),
        image_to_text: scores(&ranks.image_to_text),
        text_to_image: scores(&ranks.text_to_image),
        chance_image_to_text: chance(&vec![1; rows.len()], report_rows.len()),
        chance_text_to_image: chance(
            &report_study
                .iter()
                .map(|s| per_study[s])
                .collect::<Vec<_>>(),
            rows.len(),
        ),
        seconds: t0.elapsed().as_secs_f64(),
    };
    result.write(&ctx.out_dir().join(RESULT_FILE))?;
    let pct = |s: &RetrievalScores| {
        format!(
            "R@1/5/10 {:.1}/{:.1}/{:.1} %, median rank {}",
            s.r1 * 100.0,
            s.r5 * 100.0,
            s.r10 * 100.0,
            s.median_rank
        )
    };
    ctx.log(format!(
        "retrieve ({} split, {} adaptor): {} images, {} reports; image→text {} (chance {}); \
         text→image {} (chance {})",
        p.split,
        space.mode(),
        rows.len(),
        report_rows.len(),
        pct(&result.image_to_text),
        pct(&result.chance_image_to_text),
        pct(&result.text_to_image),
        pct(&result.chance_text_to_image)
    ));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chance_of_one_hit_among_n_is_k_over_n() {
        let c = chance(&[1, 1], 20);
        assert!((c.r1 - 0.05).abs() < 1e-12 && (c.r10 - 0.5).abs() < 1e-12);
        assert_eq!(c.median_rank, 10.5);
        // Two hits among 4: P(miss both in the top 1) = 2/4.
        let c = chance(&[2], 4);
        assert!((c.r1 - 0.5).abs() < 1e-12 && c.r5 == 1.0);
        assert!((c.median_rank - 5.0 / 3.0).abs() < 1e-12);
    }

    #[test]
    fn ranks_count_the_first_hit_and_break_ties_by_index() {
        // Two images of study 7, one of study 9; reports of 7 and 9.
        let images = Tensor::from_slice(&[1.0f32, 0.0, 0.0, 1.0, 1.0, 0.0]).view([3, 2]);
        let reports = Tensor::from_slice(&[0.0f32, 1.0, 1.0, 0.0]).view([2, 2]);
        let r = rank_both_ways(&images, &[7, 7, 9], &reports, &[7, 9]);
        assert_eq!(r.image_to_text, vec![2, 1, 1]);
        // Report 7 scores image 1 highest (a hit); report 9 ties images 0 and 2, index first.
        assert_eq!(r.text_to_image, vec![1, 2]);
        let s = scores(&r.image_to_text);
        assert!((s.r1 - 2.0 / 3.0).abs() < 1e-12 && s.median_rank == 1.0);
    }
}
