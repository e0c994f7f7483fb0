//! The MIMIC-CXR-JPG 2.0.0 miniature (reference E.1): studies with frontal and lateral JPEGs,
//! free-text reports in MIMIC's section layout, and the gzipped metadata, split and CheXpert CSVs,
//! starting with the fixed edge cases ingest must drop or remap.

use std::collections::BTreeMap;
use std::path::Path;

use rayon::prelude::*;

use super::formats::encode_jpeg;
use super::render::{self, Finding, Rng, Zone};
use super::{count, pick_side, pick_zone, write, GzCsv, Written};
use crate::error::Result;

/// The 14 CheXpert label columns of `mimic-cxr-2.0.0-chexpert.csv`, in the file's order.
pub const CHEXPERT_LABELS: [&str; 14] = [
    "Atelectasis",
    "Cardiomegaly",
    "Consolidation",
    "Edema",
    "Enlarged Cardiomediastinum",
    "Fracture",
    "Lung Lesion",
    "Lung Opacity",
    "No Finding",
    "Pleural Effusion",
    "Pleural Other",
    "Pneumonia",
    "Pneumothorax",
    "Support Devices",
];

/// The fixed edge cases at the start of every MIMIC-CXR miniature (reference E.1).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum MimicCase {
    /// Study 0: only a lateral image (dropped: no PA/AP view).
    LateralOnly,
    /// Study 1: a 2-word report (dropped: caption has fewer than 3 tokens).
    TwoWordReport,
    /// Study 2: official `validate` (→ `valid`).
    Validate,
    /// Study 3: official `test` (→ `valid`).
    Test,
    /// Study 4: a report without FINDINGS/IMPRESSION headers (dropped: no usable section).
    NoSections,
    Regular,
}

struct MimicStudy {
    subject: u64,
    study: u64,
    case: MimicCase,
    findings: Vec<Finding>,
    uncertain_pneumonia: bool,
    frontal: Option<(String, &'static str)>,
    lateral: Option<String>,
    split: &'static str,
}

/// Study `i`: its ids, findings, images and split, drawn from the plan's one random stream (in
/// order, so a study is the same whatever the chunk it is drawn in).
fn plan_study(i: usize, rng: &mut Rng, base_subject: u64, valid: f64) -> MimicStudy {
    let case = match i {
        0 => MimicCase::LateralOnly,
        1 => MimicCase::TwoWordReport,
        2 => MimicCase::Validate,
        3 => MimicCase::Test,
        4 => MimicCase::NoSections,
        _ => MimicCase::Regular,
    };
    let subject = base_subject + (i / 2) as u64 * 7 + 3;
    let study = 50_000_000 + rng.below(40_000_000) as u64 / 16 * 16 + i as u64;
    let roll = rng.f();
    let mut findings = Vec::new();
    if case == MimicCase::Regular || case == MimicCase::Validate || case == MimicCase::Test {
        if roll < 0.25 {
            findings.push(Finding::Opacity {
                side: pick_side(rng),
                zone: pick_zone(rng),
                strength: 1.0,
            });
        } else if roll < 0.40 {
            findings.push(Finding::Effusion {
                side: pick_side(rng),
            });
        } else if roll < 0.50 {
            findings.push(Finding::Cardiomegaly);
        } else if roll < 0.58 {
            findings.push(Finding::Pneumothorax {
                side: pick_side(rng),
            });
        } else if roll < 0.63 {
            findings.push(Finding::Cardiomegaly);
            findings.push(Finding::Effusion {
                side: pick_side(rng),
            });
        }
    }
    let uncertain_pneumonia = findings.is_empty() && case == MimicCase::Regular && rng.chance(0.08);
    if uncertain_pneumonia {
        findings.push(Finding::Opacity {
            side: pick_side(rng),
            zone: Zone::Lower,
            strength: 0.45,
        });
    }
    let dicom = |rng: &mut Rng| {
        format!(
            "{}-{}-{}-{}-{}",
            rng.hex(8),
            rng.hex(8),
            rng.hex(8),
            rng.hex(8),
            rng.hex(8)
        )
    };
    let frontal = (case != MimicCase::LateralOnly)
        .then(|| (dicom(rng), if rng.chance(0.7) { "PA" } else { "AP" }));
    let lateral = (case == MimicCase::LateralOnly || rng.chance(0.75)).then(|| dicom(rng));
    let split = match case {
        MimicCase::Validate => "validate",
        MimicCase::Test => "test",
        _ => {
            let r = rng.f();
            if r < (1.0 - valid) as f32 {
                "train"
            } else if r < (1.0 - valid / 2.0) as f32 {
                "validate"
            } else {
                "test"
            }
        }
    };
    MimicStudy {
        subject,
        study,
        case,
        findings,
        uncertain_pneumonia,
        frontal,
        lateral,
        split,
    }
}

/// Studies planned, rendered and written per chunk, so that memory does not grow with `n`.
const CHUNK: usize = 4096;

/// `valid`: the share of regular studies in `validate` ∪ `test` (half each).
pub(super) fn generate(out: &Path, n: usize, seed: u64, size: u32, valid: f64) -> Result<Written> {
    let mut rng = Rng::derive(seed, "mimic-cxr/plan", 0);
    let base_subject = 10_000_000 + rng.below(500_000) as u64 * 10;
    let mut csv = Csvs::create(out)?;
    let mut images = 0;
    let mut labels = BTreeMap::new();
    for first in (0..n).step_by(CHUNK) {
        let studies: Vec<MimicStudy> = (first..n.min(first + CHUNK))
            .map(|i| plan_study(i, &mut rng, base_subject, valid))
            .collect();
        images += render_images(out, &studies, first, seed, size)?;
        csv.append(&studies, first, size, &mut labels)?;
    }
    csv.finish()?;
    Ok(Written { images, labels })
}

/// The JPEGs and reports of `studies` (study `first` first), on all cores; returns the images.
fn render_images(
    out: &Path,
    studies: &[MimicStudy],
    first: usize,
    seed: u64,
    size: u32,
) -> Result<usize> {
    let files = out.join("files");
    let width = ((size as f32) * 0.86).round() as u32;
    let rendered: Vec<Result<usize>> = studies
        .par_iter()
        .enumerate()
        .map(|(j, s)| {
            let i = first + j;
            let dir = files
                .join(format!("p{}", &s.subject.to_string()[..2]))
                .join(format!("p{}", s.subject));
            let report = mimic_report(s, &mut Rng::derive(seed, "mimic-cxr/report", i as u64));
            write(&dir.join(format!("s{}.txt", s.study)), report.as_bytes())?;
            let sdir = dir.join(format!("s{}", s.study));
            let mut written = 0;
            if let Some((id, _)) = &s.frontal {
                let r = render::frontal(
                    width,
                    size,
                    &mut Rng::derive(seed, "mimic-cxr/frontal", i as u64),
                    &s.findings,
                );
                write(&sdir.join(format!("{id}.jpg")), &encode_jpeg(&r.image, 92))?;
                written += 1;
            }
            if let Some(id) = &s.lateral {
                let img = render::lateral(
                    size,
                    size,
                    &mut Rng::derive(seed, "mimic-cxr/lateral", i as u64),
                );
                write(&sdir.join(format!("{id}.jpg")), &encode_jpeg(&img, 92))?;
                written += 1;
            }
            Ok(written)
        })
        .collect();
    rendered.into_iter().sum()
}

/// The metadata, split and CheXpert CSVs, gzipped as they are written.
struct Csvs {
    meta: GzCsv,
    split: GzCsv,
    chexpert: GzCsv,
}

impl Csvs {
    fn create(out: &Path) -> Result<Self> {
        let mut csv = Csvs {
            meta: GzCsv::create(&out.join("mimic-cxr-2.0.0-metadata.csv.gz"))?,
            split: GzCsv::create(&out.join("mimic-cxr-2.0.0-split.csv.gz"))?,
            chexpert: GzCsv::create(&out.join("mimic-cxr-2.0.0-chexpert.csv.gz"))?,
        };
        csv.meta.push(
            "dicom_id,subject_id,study_id,PerformedProcedureStepDescription,ViewPosition,Rows,Columns,StudyDate,\
             StudyTime,ProcedureCodeSequence_CodeMeaning,ViewCodeSequence_CodeMeaning,\
             PatientOrientationCodeSequence_CodeMeaning\n",
        )?;
        csv.split.push("dicom_id,study_id,subject_id,split\n")?;
        csv.chexpert.push(&format!(
            "subject_id,study_id,{}\n",
            CHEXPERT_LABELS.join(",")
        ))?;
        Ok(csv)
    }

    /// The rows of `studies` (study `first` first); counts their positive labels.
    fn append(
        &mut self,
        studies: &[MimicStudy],
        first: usize,
        size: u32,
        labels: &mut BTreeMap<String, usize>,
    ) -> Result<()> {
        let width = ((size as f32) * 0.86).round() as u32;
        for (j, s) in studies.iter().enumerate() {
            let i = first + j;
            let date = 21000101 + (i % 28) as u64;
            // (dicom_id, ViewPosition, procedure, view code meaning, Columns): Rows is always `size`
            let frontal = s.frontal.as_ref().map(|(id, view)| match *view {
                "PA" => (id, "PA", "CHEST (PA AND LAT)", "postero-anterior", width),
                _ => (id, "AP", "CHEST (PORTABLE AP)", "antero-posterior", width),
            });
            let lateral = (s.lateral.as_ref())
                .map(|id| (id, "LATERAL", "CHEST (PA AND LAT)", "lateral", size));
            for (id, view, desc, vm, columns) in frontal.into_iter().chain(lateral) {
                self.meta.push(&format!(
                    "{id},{},{},{desc},{view},{size},{columns},{date},{}.0,{desc},{vm},Erect\n",
                    s.subject,
                    s.study,
                    100000 + i
                ))?;
                self.split
                    .push(&format!("{id},{},{},{}\n", s.study, s.subject, s.split))?;
            }
            let values = chexpert_values(s);
            let cells: Vec<String> = values
                .iter()
                .map(|v| v.map(|x| format!("{x:.1}")).unwrap_or_default())
                .collect();
            self.chexpert
                .push(&format!("{},{},{}\n", s.subject, s.study, cells.join(",")))?;
            for (name, v) in CHEXPERT_LABELS.iter().zip(values) {
                if v == Some(1.0) {
                    count(labels, name);
                }
            }
        }
        Ok(())
    }

    fn finish(self) -> Result<()> {
        self.meta.finish()?;
        self.split.finish()?;
        self.chexpert.finish()
    }
}

fn chexpert_values(s: &MimicStudy) -> [Option<f32>; 14] {
    let mut v: [Option<f32>; 14] = [None; 14];
    let idx = |name: &str| {
        CHEXPERT_LABELS
            .iter()
            .position(|l| *l == name)
            .expect("known label")
    };
    if matches!(
        s.case,
        MimicCase::TwoWordReport | MimicCase::NoSections | MimicCase::LateralOnly
    ) {
        v[idx("No Finding")] = Some(1.0);
        return v;
    }
    if s.findings.is_empty() {
        v[idx("No Finding")] = Some(1.0);
        v[idx("Pneumothorax")] = Some(0.0);
        return v;
    }
    for f in &s.findings {
        match f {
            Finding::Opacity { .. } if s.uncertain_pneumonia => {
                v[idx("Pneumonia")] = Some(-1.0);
                v[idx("Lung Opacity")] = Some(1.0);
            }
            Finding::Opacity { .. } => {
                v[idx("Pneumonia")] = Some(1.0);
                v[idx("Lung Opacity")] = Some(1.0);
                v[idx("Consolidation")] = Some(1.0);
            }
            Finding::Effusion { .. } => v[idx("Pleural Effusion")] = Some(1.0),
            Finding::Cardiomegaly => {
                v[idx("Cardiomegaly")] = Some(1.0);
                v[idx("Enlarged Cardiomediastinum")] = Some(1.0);
            }
            Finding::Pneumothorax { .. } => v[idx("Pneumothorax")] = Some(1.0),
            Finding::GroundGlass => v[idx("Lung Opacity")] = Some(1.0),
        }
    }
    if !s
        .findings
        .iter()
        .any(|f| matches!(f, Finding::Pneumothorax { .. }))
    {
        v[idx("Pneumothorax")] = Some(0.0);
    }
    v
}

/// A report in MIMIC's layout: ` HEADER:` lines preceded by a newline and one space (the section
/// regex of reference E.1), blank lines as `\n \n`.
fn mimic_report(s: &MimicStudy, rng: &mut Rng) -> String {
    let view = s.frontal.as_ref().map(|f| f.1).unwrap_or("LATERAL");
    let exam = if view == "AP" {
        "CHEST (PORTABLE AP)"
    } else {
        "CHEST (PA AND LAT)"
    };
    let indications = [
        "cough and fever",
        "shortness of breath",
        "chest pain",
        "evaluate for pneumonia",
        "dyspnea",
    ];
    let mut r = format!(
        "                                 FINAL REPORT\n EXAMINATION:  {exam}\n \n INDICATION:  ___ with {}.\n \n \
         COMPARISON:  {}\n \n",
        indications[rng.below(indications.len())],
        if rng.chance(0.5) { "None." } else { "Prior chest radiograph from ___." }
    );
    match s.case {
        MimicCase::TwoWordReport => {
            r.push_str(" IMPRESSION:  No change.\n");
            return r;
        }
        MimicCase::NoSections => {
            r.push_str(" NOTIFICATION:  Discussed with the referring team.\n \n Lungs appear clear without \
                        consolidation.\n");
            return r;
        }
        _ => {}
    }
    let mut found = Vec::new();
    let mut impressions = Vec::new();
    for f in &s.findings {
        match *f {
            Finding::Opacity { side, zone, .. } if s.uncertain_pneumonia => {
                found.push(format!(
                    "There is a subtle hazy opacity at the {} lung base.",
                    side.name()
                ));
                let _ = zone;
                impressions.push(format!(
                    "Subtle {} basilar opacity, atelectasis is favored but early pneumonia cannot be excluded.",
                    side.name()
                ));
            }
            Finding::Opacity { side, zone, .. } => {
                found.push(format!(
                    "There is a focal consolidation in the {} {} lung zone.",
                    side.name(),
                    zone.name()
                ));
                impressions.push(format!(
                    "{} {} lobe opacity concerning for pneumonia.",
                    capitalise(side.name()),
                    zone.name()
                ));
            }
            Finding::Effusion { side } => {
                found.push(format!(
                    "There is a moderate {} pleural effusion with blunting of the costophrenic angle.",
                    side.name()
                ));
                impressions.push(format!("{} pleural effusion.", capitalise(side.name())));
            }
            Finding::Cardiomegaly => {
                found.push("The heart is enlarged.".into());
                impressions.push("Cardiomegaly.".into());
            }
            Finding::Pneumothorax { side } => {
                found.push(format!(
                    "There is a {} apical pneumothorax with a visible pleural line.",
                    side.name()
                ));
                impressions.push(format!("{} pneumothorax.", capitalise(side.name())));
            }
            Finding::GroundGlass => {}
        }
    }
    if !s
        .findings
        .iter()
        .any(|f| matches!(f, Finding::Pneumothorax { .. }))
    {
        found.push("No pneumothorax is seen.".into());
    }
    if s.findings.is_empty() {
        found.insert(0, "The lungs are clear without focal consolidation.".into());
        found.push("The cardiomediastinal silhouette is normal.".into());
        impressions.push(
            [
                "No acute cardiopulmonary process.",
                "No evidence of pneumonia.",
            ][rng.below(2)]
            .into(),
        );
    }
    r.push_str(&format!(
        " FINDINGS:  \n \n {}\n \n IMPRESSION:  \n \n {}\n",
        found.join(" "),
        impressions.join(" ")
    ));
    r
}

fn capitalise(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_uppercase().collect::<String>() + c.as_str())
        .unwrap_or_default()
}
