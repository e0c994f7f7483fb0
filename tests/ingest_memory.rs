//! MIMIC-CXR ingest holds its join indexes per image, not the records table or the reports: its
//! peak resident memory grows by a few hundred bytes per metadata row from 5,000 to 20,000 studies
//! (about 380 measured; holding every report and row, as it did, grew by about 8,500).
//! Its own binary: each ingest is an `adaptor ingest` child, measured by `getrusage`.

mod common;

use std::path::Path;
use std::process::Command;

/// `struct rusage` of Linux x86_64 / aarch64: `ru_maxrss` (KiB) after the two `timeval`s.
#[repr(C)]
struct Rusage {
    times: [i64; 4],
    maxrss: i64,
    rest: [i64; 13],
}

extern "C" {
    fn getrusage(who: i32, usage: *mut Rusage) -> i32;
}

/// The largest peak resident memory of the children waited for so far, in bytes.
fn children_peak() -> u64 {
    const RUSAGE_CHILDREN: i32 = -1;
    let mut u = Rusage {
        times: [0; 4],
        maxrss: 0,
        rest: [0; 13],
    };
    // SAFETY: `u` has the layout of `struct rusage`, which getrusage fills.
    assert_eq!(unsafe { getrusage(RUSAGE_CHILDREN, &mut u) }, 0);
    u.maxrss as u64 * 1024
}

/// A MIMIC-CXR layout of `studies` studies, each a PA image (an empty file: `verify = "exists"`),
/// a lateral one (dropped by the view rule before its image is looked at) and a report of about
/// 1.7 KB, as long as real ones.
fn dataset(root: &Path, studies: usize) {
    let mut meta = String::from("dicom_id,subject_id,study_id,ViewPosition\n");
    let mut split = String::from("dicom_id,study_id,subject_id,split\n");
    let mut chex = String::from("subject_id,study_id,Atelectasis,Pneumonia\n");
    let findings = "There is no focal consolidation, pleural effusion or pneumothorax. ".repeat(24);
    for s in 0..studies {
        let (subject, study) = (10_000_000 + s / 3, 50_000_000 + s);
        let dir = root.join(format!("files/p10/p{subject}"));
        std::fs::create_dir_all(dir.join(format!("s{study}"))).unwrap();
        let report = format!(
            "                FINAL REPORT\n EXAMINATION: CHEST (PA AND LAT)\n \n FINDINGS: \
             {findings}\n \n IMPRESSION: No acute cardiopulmonary process.\n"
        );
        std::fs::write(dir.join(format!("s{study}.txt")), report).unwrap();
        for view in ["PA", "LATERAL"] {
            let id = format!("{s:08x}-0000{view}");
            meta += &format!("{id},{subject},{study},{view}\n");
            split += &format!("{id},{study},{subject},train\n");
            if view == "PA" {
                std::fs::write(dir.join(format!("s{study}/{id}.jpg")), b"").unwrap();
            }
        }
        chex += &format!("{subject},{study},1.0,\n");
    }
    std::fs::write(root.join("mimic-cxr-2.0.0-metadata.csv"), meta).unwrap();
    std::fs::write(root.join("mimic-cxr-2.0.0-split.csv"), split).unwrap();
    std::fs::write(root.join("mimic-cxr-2.0.0-chexpert.csv"), chex).unwrap();
}

/// The peak resident memory of `adaptor ingest` of `studies` studies (the largest of every ingest
/// run so far: the sizes run in increasing order).
fn peak(tmp: &Path, studies: usize) -> u64 {
    let root = tmp.join(format!("raw{studies}"));
    dataset(&root, studies);
    let out = tmp.join(format!("out{studies}"));
    let run = Command::new(common::bin())
        .args(["ingest", "mimic-cxr", "-q", "--verify", "exists", "--raw"])
        .arg(&root)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", common::text(&run));
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["rows"], studies);
    assert_eq!(summary["dropped"]["view_not_pa_ap"], studies);
    children_peak()
}

#[test]
fn mimic_ingest_memory_grows_by_its_join_indexes_only() {
    let tmp = tempfile::tempdir().unwrap();
    // Both over one chunk of kept rows (`mimic::CHUNK_ROWS`), whose reports and columns are held.
    let (small, large) = (5_000, 20_000);
    let a = peak(tmp.path(), small);
    let b = peak(tmp.path(), large);
    let rows = 2 * (large - small) as u64;
    let per_row = b.saturating_sub(a) / rows;
    eprintln!("peak: {a} bytes at {small} studies, {b} at {large}: {per_row} more per row");
    assert!(
        per_row < 1_500,
        "{per_row} bytes more per metadata row (holding the table and reports: about 8,500)"
    );
}
