//! `adaptor gc` (and `gc --dry-run`) and `adaptor verify`: what was (or would be) deleted from a
//! store, and which artifacts no longer match their `_manifest.json`.

use std::fmt::Write as _;

use pipeline::ops::{GcReport, Verified};
use pipeline::StoreUrl;

use super::{display_path, human_bytes};

/// One line per deleted (or, with `dry_run`, deletable) folder and per skipped one, then a total.
/// What `embed` says after uploading its table to `url`.
pub fn uploaded(url: &str, bytes: u64, blake3: &str) -> String {
    format!("uploaded {url} ({bytes} B, blake3 {blake3})")
}

pub fn render_gc(report: &GcReport, dry_run: bool, store: &StoreUrl) -> String {
    let verb = if dry_run { "would delete" } else { "deleted" };
    let mut s = String::new();
    for (path, bytes) in &report.deleted {
        let _ = writeln!(s, "{verb} {path} ({})", human_bytes(*bytes));
    }
    for (path, why) in &report.skipped {
        let _ = writeln!(s, "skipped {path}: {why}");
    }
    let total: u64 = report.deleted.iter().map(|(_, b)| b).sum();
    let _ = writeln!(
        s,
        "{verb} {} folder(s), {}; kept {} referenced artifact(s) in {store}",
        report.deleted.len(),
        human_bytes(total),
        report.kept
    );
    s
}

/// Each bad file of each bad artifact (named where a person can find it), where a bad artifact
/// was quarantined, then a total.
pub fn render_verify(checked: &[Verified], store: &StoreUrl) -> String {
    let mut s = String::new();
    let (mut files, mut bytes) = (0usize, 0u64);
    for v in checked {
        files += v.report.files;
        bytes += v.report.bytes;
        for f in &v.report.bad {
            let _ = writeln!(
                s,
                "bad  {}: {}",
                display_path(store, &f.location),
                f.problem
            );
        }
        if let (false, Some(to)) = (v.report.bad.is_empty(), &v.quarantined) {
            let _ = writeln!(
                s,
                "quarantined {}/{} -> {} (the next run rebuilds it)",
                v.kind,
                v.key.short(),
                display_path(store, to)
            );
        }
    }
    let _ = writeln!(
        s,
        "verified {} artifact(s), {files} file(s), {}: {} bad",
        checked.len(),
        human_bytes(bytes),
        bad_artifacts(checked)
    );
    s
}

/// How many of the checked artifacts have a bad file (`verify` exits 1 when any has).
pub fn bad_artifacts(checked: &[Verified]) -> usize {
    checked.iter().filter(|v| !v.report.bad.is_empty()).count()
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::{gc_report, local_store, s3_store, verified};
    use super::*;

    #[test]
    fn gc() {
        insta::assert_snapshot!(render_gc(&gc_report(), false, &s3_store()));
    }

    #[test]
    fn gc_dry_run() {
        insta::assert_snapshot!(render_gc(&gc_report(), true, &local_store()));
    }

    #[test]
    fn gc_nothing_to_delete() {
        let report = GcReport {
            deleted: vec![],
            kept: 7,
            skipped: vec![],
        };
        insta::assert_snapshot!(render_gc(&report, false, &local_store()));
    }

    #[test]
    fn verify_with_a_bad_and_a_quarantined_artifact() {
        let checked = verified();
        assert_eq!(bad_artifacts(&checked), 1);
        insta::assert_snapshot!(render_verify(&checked, &local_store()));
    }
}
