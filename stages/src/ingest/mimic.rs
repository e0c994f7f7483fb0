//! MIMIC-CXR-JPG 2.0.0 (reference E.1, B.3): PA/AP images joined with the official split, the
//! CheXpert labels and the impression/findings sections of their study's report, captions cleaned
//! into sentences as the original does. Every row the rules remove is counted by reason.

use std::collections::{BTreeMap, HashMap};
use std::sync::OnceLock;

use rayon::prelude::*;
use regex::Regex;

use super::rows::{filter, BadRows, Candidates, Output, Source};
use super::table::{find_csv, Col, RawColumn, RawTable};
use super::verify::ImageCheck;
use crate::error::Result;

pub const METADATA: &str = "mimic-cxr-2.0.0-metadata.csv";
pub const SPLIT: &str = "mimic-cxr-2.0.0-split.csv";
pub const CHEXPERT: &str = "mimic-cxr-2.0.0-chexpert.csv";

// ---------------------------------------------------------------------------------------------
// Report sections: MIMIC-CXR's `section_parser.py` (`section_text`, `normalize_section_names`).

fn section_regex() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| Regex::new(r"\n ([A-Z ()/,-]+):\s").expect("valid regex"))
}

fn normalize_section_name(s: &str) -> String {
    let s = s.to_lowercase();
    let s = s.trim();
    const FREQUENT: &[(&str, &str)] = &[
        ("preamble", "preamble"),
        ("impression", "impression"),
        ("comparison", "comparison"),
        ("indication", "indication"),
        ("findings", "findings"),
        ("examination", "examination"),
        ("technique", "technique"),
        ("history", "history"),
        ("comparisons", "comparison"),
        ("clinical history", "history"),
        ("reason for examination", "indication"),
        ("notification", "notification"),
        ("reason for exam", "indication"),
        ("clinical information", "history"),
        ("exam", "examination"),
        ("clinical indication", "indication"),
        ("conclusion", "impression"),
        ("chest, two views", "findings"),
        ("recommendation(s)", "recommendations"),
        ("type of examination", "examination"),
        ("reference exam", "comparison"),
        ("patient history", "history"),
        ("addendum", "addendum"),
        ("comparison exam", "comparison"),
        ("date", "date"),
        ("comment", "comment"),
        ("findings and impression", "impression"),
        ("wet read", "wet read"),
        ("comparison film", "comparison"),
        ("recommendations", "recommendations"),
        ("findings/impression", "impression"),
        ("pfi", "history"),
        ("recommendation", "recommendations"),
        ("wetread", "wet read"),
        ("ndication", "impression"),
        ("impresson", "impression"),
        ("imprression", "impression"),
        ("imoression", "impression"),
        ("impressoin", "impression"),
        ("imprssion", "impression"),
        ("impresion", "impression"),
        ("imperssion", "impression"),
        ("mpression", "impression"),
        ("impession", "impression"),
        ("findings/ impression", "impression"),
        ("finding", "findings"),
        ("findins", "findings"),
        ("findindgs", "findings"),
        ("findgings", "findings"),
        ("findngs", "findings"),
        ("findnings", "findings"),
        ("finidngs", "findings"),
        ("idication", "indication"),
        ("reference findings", "findings"),
        ("comparision", "comparison"),
        ("comparsion", "comparison"),
        ("comparrison", "comparison"),
        ("comparisions", "comparison"),
    ];
    if let Some((_, v)) = FREQUENT.iter().find(|(k, _)| *k == s) {
        return v.to_string();
    }
    for m in [
        "impression",
        "findings",
        "history",
        "comparison",
        "addendum",
    ] {
        if s.contains(m) {
            return m.to_string();
        }
    }
    const FINDINGS_LIKE: &[&str] = &[
        "chest",
        "portable",
        "pa and lateral",
        "lateral and pa",
        "ap and lateral",
        "lateral and ap",
        "frontal and",
        "two views",
        "frontal view",
        "pa view",
        "ap view",
        "one view",
        "lateral view",
        "bone window",
        "frontal upright",
        "frontal semi-upright",
        "ribs",
        "pa and lat",
    ];
    if FINDINGS_LIKE.iter().any(|p| s.contains(p)) {
        return "findings".to_string();
    }
    s.to_string()
}

/// Splits a report into `(name, text)` sections as MIMIC's `section_text` does: text before the
/// first ` HEADER:` is the preamble; no header makes one "full report" section; empty impression and
/// findings sections are removed; without either, the tail after the last section's first blank
/// line becomes "last_paragraph".
pub fn sections(text: &str) -> Vec<(String, String)> {
    let re = section_regex();
    let mut out: Vec<(String, String)> = Vec::new();
    match re.captures_at(text, 0) {
        None => out.push(("full report".into(), text.to_string())),
        Some(first) => {
            out.push((
                "preamble".into(),
                text[..first.get(1).expect("group").start()].to_string(),
            ));
            let mut cur = Some(first);
            while let Some(c) = cur {
                let name = c.get(1).expect("group").as_str().to_lowercase();
                let start = c.get(0).expect("match").end();
                // Skip past the first newline of the section body before looking for the next
                // header (the original's guard against bad parses).
                let skip = text[start..].find('\n').unwrap_or(0);
                cur = re.captures_at(text, start + skip);
                let end = cur
                    .as_ref()
                    .map(|n| n.get(0).expect("match").start())
                    .unwrap_or(text.len());
                out.push((name, text[start..end].to_string()));
            }
        }
    }
    for s in &mut out {
        s.0 = normalize_section_name(&s.0);
    }
    out.retain(|(n, t)| !((n == "impression" || n == "findings") && t.trim().is_empty()));
    if !out
        .iter()
        .any(|(n, _)| n == "impression" || n == "findings")
    {
        let last = out.last().map(|s| s.1.clone()).unwrap_or_default();
        if last.contains("\n \n") {
            let tail = last
                .split("\n \n")
                .skip(1)
                .collect::<Vec<_>>()
                .join("\n \n");
            out.push(("last_paragraph".into(), tail));
        }
    }
    out
}

/// The last section with this name, stripped (what the sectioned CSV stores).
fn last_section(secs: &[(String, String)], name: &str) -> Option<String> {
    secs.iter()
        .rev()
        .find(|(n, _)| n == name)
        .map(|(_, t)| t.trim().to_string())
}

/// The original's caption cleaning (reference B.3): `impression + " " + findings` (missing ones
/// as `" "`), newlines to spaces, split on numbered-list markers and full stops, lower-case `\w+`
/// tokens, pieces of ≤ 1 token skipped, non-ASCII characters dropped. Returns the kept sentences
/// and the token count the `≥ 3` rule uses.
pub fn caption(impression: Option<&str>, findings: Option<&str>) -> (Vec<String>, usize) {
    static NUMBERED: OnceLock<Regex> = OnceLock::new();
    static WORD: OnceLock<Regex> = OnceLock::new();
    let numbered = NUMBERED.get_or_init(|| Regex::new(r"[0-9]+\.").expect("valid regex"));
    let word = WORD.get_or_init(|| Regex::new(r"\w+").expect("valid regex"));
    let text =
        format!("{} {}", impression.unwrap_or(" "), findings.unwrap_or(" ")).replace('\n', " ");
    let mut sentences = Vec::new();
    let mut cnt = 0;
    for point in numbered.split(&text) {
        for cap in point.split('.') {
            if cap.is_empty() {
                continue;
            }
            let cap = cap.replace("\u{fffd}\u{fffd}", " ").to_lowercase();
            let tokens: Vec<&str> = word.find_iter(&cap).map(|m| m.as_str()).collect();
            if tokens.len() <= 1 {
                continue;
            }
            let included: Vec<String> = tokens
                .iter()
                .map(|t| t.chars().filter(char::is_ascii).collect::<String>())
                .filter(|t| !t.is_empty())
                .collect();
            if !included.is_empty() {
                sentences.push(included.join(" "));
            }
            cnt += included.len();
        }
    }
    (sentences, cnt)
}

// ---------------------------------------------------------------------------------------------

struct Row {
    dicom_id: String,
    subject: i64,
    study: i64,
    view: String,
    official: String,
    line: u64,
}

struct Report {
    text: String,
    impression: Option<String>,
    findings: Option<String>,
    caption: String,
    tokens: usize,
}

fn subject_dir(subject: i64) -> String {
    let s = subject.to_string();
    format!("files/p{}/p{s}", &s[..2.min(s.len())])
}

/// A row's `(subject_id, study_id)`, both integers in every MIMIC CSV.
fn study_of(
    t: &RawTable,
    rec: &csv::StringRecord,
    line: u64,
    [subject, study]: &[RawColumn; 2],
) -> Result<(i64, i64)> {
    Ok((
        t.parse(rec, line, subject, "an integer id")?,
        t.parse(rec, line, study, "an integer id")?,
    ))
}

/// The CheXpert label columns: every column but the two ids, under its trimmed header. Each
/// becomes a records column, so it must be a distinct, non-empty name that no fixed column of the
/// records table already has.
fn label_columns(chex: &RawTable, ids: &[RawColumn; 2]) -> Result<Vec<RawColumn>> {
    const FIXED: &[&str] = &[
        "key",
        "path",
        "split",
        "official_split",
        "subject_id",
        "study_id",
        "view",
        "impression",
        "findings",
        "caption",
        "caption_tokens",
        "report",
    ];
    let label_cols: Vec<RawColumn> = (chex.headers.iter().enumerate())
        .filter(|(i, _)| ids.iter().all(|c| c.index != *i))
        .map(|(index, h)| RawColumn {
            index,
            name: h.trim().to_string(),
        })
        .collect();
    for (k, RawColumn { name, .. }) in label_cols.iter().enumerate() {
        let clash = if name.is_empty() {
            Some("an empty column name".to_string())
        } else if FIXED.contains(&name.as_str()) {
            Some(format!("`{name}` is a column ingest writes itself"))
        } else if label_cols[..k].iter().any(|c| c.name == *name) {
            Some(format!("`{name}` is the name of two columns"))
        } else {
            None
        };
        if let Some(m) = clash {
            return Err(chex.field_err(1, name, format!("label column {}: {m}", k + 1)));
        }
    }
    Ok(label_cols)
}

pub(crate) fn read(src: &Source) -> Result<(Vec<Col>, Output)> {
    let root = src.root;
    let meta = RawTable::read(&find_csv(root, METADATA)?, b',', true)?;
    let split = RawTable::read(&find_csv(root, SPLIT)?, b',', true)?;
    let chex = RawTable::read(&find_csv(root, CHEXPERT)?, b',', true)?;
    let (m_dicom, m_ids, m_view) = (
        meta.col("dicom_id")?,
        [meta.col("subject_id")?, meta.col("study_id")?],
        meta.col("ViewPosition")?,
    );
    let (s_dicom, s_ids, s_split) = (
        split.col("dicom_id")?,
        [split.col("subject_id")?, split.col("study_id")?],
        split.col("split")?,
    );
    let c_ids = [chex.col("subject_id")?, chex.col("study_id")?];
    let label_cols = label_columns(&chex, &c_ids)?;
    let mut bad = BadRows::new(src.opts.skip_bad);

    // Official split per dicom_id (inner join on dicom_id, subject_id, study_id).
    let mut official: HashMap<String, (i64, i64, String)> = HashMap::new();
    for (line, rec) in &split.rows {
        let id = s_dicom.text(rec).to_string();
        let ids = study_of(&split, rec, *line, &s_ids);
        let Some((subject, study)) = bad.check(&split, *line, Some(&id), ids)? else {
            continue;
        };
        let s = s_split.text(rec).to_string();
        if !["train", "validate", "test"].contains(&s.as_str()) {
            let e = split.field_err(
                *line,
                "split",
                format!("`{s}` is not train, validate or test"),
            );
            bad.row(&split, *line, Some(&id), e)?;
            continue;
        }
        official.insert(id, (subject, study, s));
    }
    // CheXpert labels per (subject_id, study_id): 1.0, 0.0, -1.0 or blank.
    let mut labels: HashMap<(i64, i64), Vec<Option<f32>>> = HashMap::new();
    for (line, rec) in &chex.rows {
        let row = (|| {
            let key = study_of(&chex, rec, *line, &c_ids)?;
            let mut vals = Vec::with_capacity(label_cols.len());
            for c in &label_cols {
                vals.push(match c.text(rec) {
                    "" => None,
                    _ => Some(chex.parse::<f32>(rec, *line, c, "a number")?),
                });
            }
            Ok((key, vals))
        })();
        if let Some((k, v)) = bad.check(&chex, *line, None, row)? {
            labels.insert(k, v);
        }
    }

    let mut dropped: BTreeMap<String, usize> = BTreeMap::new();
    let mut drop = |reason: &str| *dropped.entry(reason.to_string()).or_default() += 1;
    let mut rows: Vec<Row> = Vec::new();
    for (line, rec) in &meta.rows {
        let id = m_dicom.text(rec).to_string();
        let ids = study_of(&meta, rec, *line, &m_ids);
        let Some((subject, study)) = bad.check(&meta, *line, Some(&id), ids)? else {
            continue;
        };
        let view = m_view.text(rec).to_string();
        if view != "PA" && view != "AP" {
            drop("view_not_pa_ap");
            continue;
        }
        match official.get(&id) {
            Some((s, t, sp)) if *s == subject && *t == study => rows.push(Row {
                dicom_id: id,
                subject,
                study,
                view,
                official: sp.clone(),
                line: *line,
            }),
            _ => drop("not_in_split_csv"),
        }
    }

    // One report per study, read and sectioned in parallel.
    let mut studies: Vec<(i64, i64)> = rows.iter().map(|r| (r.subject, r.study)).collect();
    studies.sort_unstable();
    studies.dedup();
    let reports: HashMap<(i64, i64), Option<Report>> = studies
        .par_iter()
        .map(|&(subject, study)| {
            let path = root.join(format!("{}/s{study}.txt", subject_dir(subject)));
            ((subject, study), std::fs::read(&path).ok().map(report))
        })
        .collect();
    let mut kept = Vec::with_capacity(rows.len());
    for r in rows {
        match &reports[&(r.subject, r.study)] {
            None => drop("report_missing"),
            Some(rep) if rep.impression.is_none() && rep.findings.is_none() => {
                drop("no_impression_or_findings")
            }
            Some(rep) if rep.tokens < 3 => drop("caption_under_3_tokens"),
            Some(_) => kept.push(r),
        }
    }
    let rows = kept;
    (src.log)(&format!(
        "{}: {} rows; {} PA/AP images with a usable report",
        meta.path.display(),
        meta.rows.len(),
        rows.len()
    ));

    let candidates = Candidates {
        checks: (rows.iter())
            .map(|r| {
                let image = format!("{}/s{}/{}.jpg", subject_dir(r.subject), r.study, r.dicom_id);
                ImageCheck::new(image, &meta.path, r.line)
            })
            .collect(),
        keys: rows.iter().map(|r| r.dicom_id.clone()).collect(),
        // The original trains on the official `train` split and validates on the rest.
        split: (rows.iter())
            .map(|r| {
                if r.official == "train" {
                    "train"
                } else {
                    "valid"
                }
            })
            .collect(),
    };
    let keep = candidates.verify(src, &mut bad)?;
    let rows = filter(rows, &keep);
    let rep = |r: &Row| {
        reports[&(r.subject, r.study)]
            .as_ref()
            .expect("kept rows have reports")
    };
    let mut cols = vec![
        Col::Str(
            "official_split",
            rows.iter().map(|r| r.official.clone()).collect(),
        ),
        Col::I64("subject_id", rows.iter().map(|r| r.subject).collect()),
        Col::I64("study_id", rows.iter().map(|r| r.study).collect()),
        Col::Str("view", rows.iter().map(|r| r.view.clone()).collect()),
        Col::OptStr(
            "impression",
            rows.iter().map(|r| rep(r).impression.clone()).collect(),
        ),
        Col::OptStr(
            "findings",
            rows.iter().map(|r| rep(r).findings.clone()).collect(),
        ),
        Col::Str(
            "caption",
            rows.iter().map(|r| rep(r).caption.clone()).collect(),
        ),
        Col::I32(
            "caption_tokens",
            rows.iter().map(|r| rep(r).tokens as i32).collect(),
        ),
        Col::Str("report", rows.iter().map(|r| rep(r).text.clone()).collect()),
    ];
    for (j, c) in label_cols.iter().enumerate() {
        cols.push(Col::OptF32(
            c.name.clone(),
            rows.iter()
                .map(|r| labels.get(&(r.subject, r.study)).and_then(|v| v[j]))
                .collect(),
        ));
    }
    let (cols, splits) = candidates.into_columns(&keep, cols);
    Ok((
        cols,
        Output {
            dropped,
            ..Output::new(splits, bad)
        },
    ))
}

/// A study's report file, sectioned and its caption cleaned.
fn report(bytes: Vec<u8>) -> Report {
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let secs = sections(&text);
    let impression = last_section(&secs, "impression");
    let findings = last_section(&secs, "findings");
    let (sents, tokens) = caption(impression.as_deref(), findings.as_deref());
    Report {
        text,
        impression,
        findings,
        caption: sents.join(" "),
        tokens,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REPORT: &str = "                                 FINAL REPORT\n EXAMINATION:  CHEST (PA AND LAT)\n \n \
                          INDICATION:  ___ with cough.\n \n FINDINGS:  \n \n There is a focal opacity. No \
                          pneumothorax.\n \n IMPRESSION:  \n \n 1. Right lower lobe pneumonia. 2. No effusion.\n";

    #[test]
    fn sections_follow_the_mimic_parser() {
        let s = sections(REPORT);
        let names: Vec<&str> = s.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "preamble",
                "examination",
                "indication",
                "findings",
                "impression"
            ]
        );
        assert_eq!(
            last_section(&s, "impression").unwrap(),
            "1. Right lower lobe pneumonia. 2. No effusion."
        );
        assert_eq!(
            last_section(&s, "findings").unwrap(),
            "There is a focal opacity. No pneumothorax."
        );
    }

    #[test]
    fn report_without_headers_is_one_full_report_with_a_last_paragraph() {
        let s = sections("Some title\n \n Lungs are clear.");
        let names: Vec<&str> = s.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["full report", "last_paragraph"]);
    }

    #[test]
    fn caption_cleaning_matches_the_original() {
        let (s, n) = caption(
            Some("1. Right lower lobe pneumonia. 2. No effusion."),
            Some("Heart size normal. Ok."),
        );
        assert_eq!(
            s,
            [
                "right lower lobe pneumonia",
                "no effusion",
                "heart size normal"
            ]
        );
        assert_eq!(n, 9);
        let (s, n) = caption(Some("No change."), None);
        assert_eq!((s, n), (vec!["no change".to_string()], 2));
        // Non-ASCII characters are dropped from tokens; U+FFFD pairs become spaces.
        let (s, _) = caption(Some("Caf\u{e9} opacity\u{fffd}\u{fffd}seen here."), None);
        assert_eq!(s, ["caf opacity seen here"]);
    }
}
