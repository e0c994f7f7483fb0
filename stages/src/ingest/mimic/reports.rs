//! MIMIC-CXR reports: sections as MIMIC's `section_parser.py` cuts them (`section_text`,
//! `normalize_section_names`), and the caption the original cleans from the impression and findings.

use std::sync::OnceLock;

use regex::Regex;

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

/// A study's report, sectioned and its caption cleaned.
pub(super) struct Report {
    pub text: String,
    pub impression: Option<String>,
    pub findings: Option<String>,
    pub caption: String,
    pub tokens: usize,
}

/// A study's report file, sectioned and its caption cleaned.
pub(super) fn report(bytes: Vec<u8>) -> Report {
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
