//! Bounded mutation fuzzing of every parser that reads a file a user did not make: manifests
//! (byte mutations of `manifests/*.toml` and generated TOML), each dataset's label files, SIIM
//! RLE, PyTorch checkpoints (mutations of the committed `.pt`/`.bin` fixtures), PNG, JPEG and
//! DICOM headers, and the worker protocol's JSON.
//!
//! Property: every input ends in `Ok` or in an error naming the file; never a panic, an abort
//! (a failed allocation, a stack overflow, a signal), or a hang. Each target runs its inputs in
//! a child process (this binary again, `--child TARGET`) under a data-size cap, one input at a
//! time with a per-input deadline; the parent counts what came back and saves each failing input.
//!
//! `cargo test -p adaptor-torch --test fuzz` runs every target for a few seconds (CI);
//! `bench/fuzz/run.sh MINUTES` runs the same binary for longer and writes `bench/fuzz/results.md`.
//! Flags (after `--`): `--seconds S` per target, `--only NAME[,NAME]`, `--seed N`,
//! `--results FILE` (a Markdown table), `--failures DIR` (failing inputs; default under target/).
//!
//! Mutation without coverage feedback: seeded random edits of real files (bit flips, interesting
//! integers, byte runs inserted, deleted, duplicated or spliced from another seed, tokens
//! inserted into text). Deterministic for a seed.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use stages::images;
use stages::ingest::{self, DatasetKind, IngestOptions, Verify};

/// Address space a child may add beyond what it held after start-up (RLIMIT_DATA): an input
/// that makes a parser allocate more is a failure (the allocation fails and the child aborts).
const DATA_CAP: u64 = 3 << 30;
/// How long one input may take before it counts as a hang.
const DEADLINE: Duration = Duration::from_secs(20);

fn repo() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

// ---------------------------------------------------------------------------------------------
// Random numbers and mutations.

/// SplitMix64: small, seedable, good enough to pick mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }

    fn chance(&mut self, one_in: u64) -> bool {
        self.next().is_multiple_of(one_in)
    }
}

const INTERESTING: &[u64] = &[
    0,
    1,
    0x7f,
    0x80,
    0xff,
    0x100,
    0x7fff,
    0x8000,
    0xffff,
    0x10000,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_fff0,
    0xffff_ffff,
    0x1_0000_0000,
    0x7fff_ffff_ffff_ffff,
    0xffff_ffff_ffff_ffff,
];

const TOKENS: &[&str] = &[
    "-1",
    "0",
    "1",
    "4294967296",
    "18446744073709551616",
    "99999999999999999999999999",
    "-9223372036854775808",
    "NaN",
    "inf",
    "1e309",
    ",",
    ",,",
    "\"",
    "\n",
    "\r\n",
    " ",
    "\t",
    "\0",
    "é",
    "\u{feff}",
    "[",
    "]",
    "{",
    "}",
    "=",
    "[[",
    "]]",
    "${",
    "}",
    "*",
    ".",
    "include",
    "/",
    "../",
    "#",
];

/// One to eight random edits of `seed`; `other` is another seed to splice from.
fn mutate(rng: &mut Rng, seed: &[u8], other: &[u8], text: bool) -> Vec<u8> {
    let mut v = seed.to_vec();
    let edits = 1 + rng.below(8);
    for _ in 0..edits {
        let len = v.len();
        let at = rng.below(len + 1);
        match rng.below(if text { 11 } else { 9 }) {
            0 if len > 0 => {
                let i = rng.below(len);
                v[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                v[i] = rng.next() as u8;
            }
            2 if len > 0 => {
                // an interesting integer, 1, 2, 4 or 8 bytes, either endianness
                let width = 1 << rng.below(4);
                let x = INTERESTING[rng.below(INTERESTING.len())];
                let bytes = if rng.chance(2) {
                    x.to_le_bytes()
                } else {
                    x.to_be_bytes()
                };
                let bytes = if rng.chance(2) {
                    &bytes[..width]
                } else {
                    &bytes[8 - width..]
                };
                let i = rng.below(len);
                for (k, b) in bytes.iter().enumerate() {
                    if let Some(slot) = v.get_mut(i + k) {
                        *slot = *b;
                    }
                }
            }
            3 => {
                let n = 1 + rng.below(16);
                let ins: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                v.splice(at..at, ins);
            }
            4 if len > 0 => {
                let n = 1 + rng.below((len - at.min(len - 1)).min(256));
                let start = at.min(len - 1);
                v.drain(start..(start + n).min(len));
            }
            5 if len > 0 => {
                // duplicate a range (repeated structures, longer lists)
                let start = rng.below(len);
                let n = 1 + rng.below((len - start).min(512));
                let chunk = v[start..start + n].to_vec();
                let times = 1 + rng.below(4);
                for _ in 0..times {
                    v.splice(at..at, chunk.iter().copied());
                }
            }
            6 if !other.is_empty() => {
                // splice a range of another seed in place of ours
                let start = rng.below(other.len());
                let n = 1 + rng.below((other.len() - start).min(1024));
                let end = (at + n).min(len);
                v.splice(at..end, other[start..start + n].iter().copied());
            }
            7 if len > 0 => {
                // truncate
                v.truncate(at);
            }
            8 if len > 1 => {
                // copy a range over another place (shifts structure)
                let start = rng.below(len);
                let n = 1 + rng.below((len - start).min(64));
                let chunk = v[start..start + n].to_vec();
                let i = rng.below(len);
                for (k, b) in chunk.into_iter().enumerate() {
                    if let Some(slot) = v.get_mut(i + k) {
                        *slot = b;
                    }
                }
            }
            9 | 10 => {
                let t = TOKENS[rng.below(TOKENS.len())].as_bytes();
                if rng.chance(2) || len == 0 {
                    v.splice(at..at, t.iter().copied());
                } else {
                    // replace a token-sized run
                    let end = (at + 1 + rng.below(8)).min(len);
                    v.splice(at..end, t.iter().copied());
                }
            }
            _ => {}
        }
    }
    v
}

// ---------------------------------------------------------------------------------------------
// Targets.

/// What a target does with one input, in the child: `Ok(())`, or the error's message (which
/// must name `names`, the file the input was written to).
type RunFn = fn(&Workspace, &[u8]) -> Result<(), String>;

struct Target {
    name: &'static str,
    /// Whether the inputs are text (token mutations apply).
    text: bool,
    seeds: fn(&Workspace) -> Vec<Vec<u8>>,
    /// Generates an input from scratch instead of mutating a seed (one in four inputs).
    generate: Option<fn(&mut Rng) -> Vec<u8>>,
    run: RunFn,
    /// What every error message must contain (the file's name); `None` for sources that are
    /// not files (the worker's JSON lines).
    names: Option<fn(&Workspace) -> String>,
}

/// The child's scratch folder: synthetic datasets and the files inputs are written to.
struct Workspace {
    dir: PathBuf,
}

impl Workspace {
    fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// A synthetic dataset (the real raw layout, tiny images), made once per workspace.
    fn dataset(&self, kind: DatasetKind) -> PathBuf {
        let root = self.dir.join(format!("raw-{kind}"));
        if !root.join(".synth-done").exists() {
            let _ = std::fs::remove_dir_all(&root);
            stages::synth::generate_with_size(kind, &root, 6, 7, 32).expect("synth dataset");
            // The label files as generated: the seeds, restored before every input.
            let labels = self.labels(kind);
            std::fs::create_dir_all(&labels).unwrap();
            for p in files_with_ext(&root, &["csv", "txt", "gz"]) {
                if p.parent() == Some(root.as_path()) {
                    std::fs::copy(&p, labels.join(p.file_name().unwrap())).unwrap();
                }
            }
            std::fs::write(root.join(".synth-done"), b"").unwrap();
        }
        root
    }

    /// Where the dataset's label files are kept as generated.
    fn labels(&self, kind: DatasetKind) -> PathBuf {
        self.dir.join(format!("labels-{kind}"))
    }
}

fn read_all(paths: impl IntoIterator<Item = PathBuf>) -> Vec<Vec<u8>> {
    paths
        .into_iter()
        .map(|p| std::fs::read(&p).unwrap_or_else(|e| panic!("seed {}: {e}", p.display())))
        .collect()
}

fn files_with_ext(dir: &Path, exts: &[&str]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p
                .extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| exts.contains(&e.to_ascii_lowercase().as_str()))
            {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

fn name_of(p: &Path) -> String {
    p.display().to_string()
}

// Manifests ------------------------------------------------------------------------------------

fn manifest_seeds(_: &Workspace) -> Vec<Vec<u8>> {
    read_all(files_with_ext(&repo().join("manifests"), &["toml"]))
}

fn manifest_file(w: &Workspace) -> String {
    name_of(&w.file("manifest.toml"))
}

fn run_manifest(w: &Workspace, input: &[u8]) -> Result<(), String> {
    let path = w.file("manifest.toml");
    std::fs::write(&path, input).unwrap();
    let mut reg = pipeline::StageRegistry::new();
    reg.register(Arc::new(pipeline::builtin::CommandStage));
    stages::register(&mut reg);
    stages::register_torch(&mut reg, w.file("no-worker"));
    pipeline::plan::load(&path, &reg)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// A random TOML document over the manifest's vocabulary: the top-level tables the planner
/// knows, stage tables with kinds, params, inputs, `foreach` and `shards`, matrix axes, and
/// values of every TOML type (including ones the planner does not expect there).
fn generate_manifest(rng: &mut Rng) -> Vec<u8> {
    const KINDS: &[&str] = &[
        "synth",
        "ingest",
        "command",
        "encode-text",
        "encode-image",
        "train-adaptor",
        "classify",
        "segment",
        "report",
        "nope",
    ];
    const KEYS: &[&str] = &[
        "kind",
        "foreach",
        "inputs",
        "params",
        "shards",
        "dataset",
        "n",
        "seed",
        "cmd",
        "records",
        "text",
        "image",
        "backbone",
        "batch_size",
        "fraction",
        "run",
        "path",
        "store",
        "x",
    ];
    fn value(rng: &mut Rng, depth: usize) -> String {
        match rng.below(if depth > 2 { 7 } else { 9 }) {
            0 => format!("{}", rng.next() as i64 >> rng.below(64)),
            1 => ["0.5", "-0.0", "1e300", "nan", "inf", "-inf", "3.14"][rng.below(7)].into(),
            2 => ["true", "false"][rng.below(2)].into(),
            3 => format!(
                "\"{}\"",
                [
                    "${vision}",
                    "${x}",
                    "datasets.rsna",
                    "backbones.bert",
                    "enc[*]",
                    "enc[vision=a,*]",
                    "ingest",
                    "1/2",
                    "",
                    "../..",
                    "s3://b/p",
                    "é",
                ][rng.below(12)]
            ),
            4 => "1979-05-27T07:32:00Z".into(),
            5 => format!("'{}'", "x".repeat(rng.below(4))),
            6 => "\"\"\"multi\nline\"\"\"".into(),
            7 => {
                let n = rng.below(5);
                let items: Vec<String> = (0..n).map(|_| value(rng, depth + 1)).collect();
                format!("[{}]", items.join(", "))
            }
            _ => {
                let n = rng.below(4);
                let items: Vec<String> = (0..n)
                    .map(|_| {
                        format!(
                            "{} = {}",
                            KEYS[rng.below(KEYS.len())],
                            value(rng, depth + 1)
                        )
                    })
                    .collect();
                format!("{{ {} }}", items.join(", "))
            }
        }
    }
    let mut s = String::new();
    if rng.chance(2) {
        s.push_str("store = \"store\"\n");
    }
    if rng.chance(3) {
        s.push_str(&format!("include = [{}]\n", value(rng, 3)));
    }
    let sections = 1 + rng.below(8);
    for _ in 0..sections {
        match rng.below(6) {
            0 => {
                s.push_str("[matrix]\n");
                for a in 0..rng.below(4) {
                    let n = rng.below(6);
                    let vals: Vec<String> = (0..n).map(|_| value(rng, 2)).collect();
                    s.push_str(&format!("ax{a} = [{}]\n", vals.join(", ")));
                }
            }
            1 => {
                s.push_str(&format!("[datasets.d{}]\n", rng.below(3)));
                s.push_str(&format!("kind = {}\npath = \".\"\n", value(rng, 3)));
            }
            2 => {
                s.push_str(&format!("[backbones.b{}]\n", rng.below(3)));
                s.push_str(&format!(
                    "kind = {}\npath = {}\n",
                    value(rng, 3),
                    value(rng, 3)
                ));
            }
            3 => {
                s.push_str(&format!("[defaults.{}]\n", KINDS[rng.below(KINDS.len())]));
                s.push_str(&format!(
                    "{} = {}\n",
                    KEYS[rng.below(KEYS.len())],
                    value(rng, 1)
                ));
            }
            _ => {
                s.push_str(&format!("[stages.s{}]\n", rng.below(4)));
                s.push_str(&format!("kind = \"{}\"\n", KINDS[rng.below(KINDS.len())]));
                for _ in 0..rng.below(5) {
                    s.push_str(&format!(
                        "{} = {}\n",
                        KEYS[rng.below(KEYS.len())],
                        value(rng, 0)
                    ));
                }
            }
        }
    }
    s.into_bytes()
}

// Label files -----------------------------------------------------------------------------------

/// The label files of each dataset a target mutates: (file name to write, seed).
fn label_slots(w: &Workspace, kind: DatasetKind) -> Vec<(String, Vec<u8>)> {
    w.dataset(kind);
    let mut out = Vec::new();
    for p in files_with_ext(&w.labels(kind), &["csv", "txt", "gz"]) {
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        let bytes = std::fs::read(&p).unwrap();
        if let Some(plain) = name.strip_suffix(".gz") {
            let mut text = Vec::new();
            flate2::read::GzDecoder::new(&bytes[..])
                .read_to_end(&mut text)
                .unwrap();
            out.push((plain.to_string(), text));
        }
        out.push((name, bytes));
    }
    out
}

/// An input for a dataset with several label files: the first byte picks the file.
fn label_seeds(w: &Workspace, kind: DatasetKind) -> Vec<Vec<u8>> {
    label_slots(w, kind)
        .into_iter()
        .enumerate()
        .map(|(i, (_, bytes))| {
            let mut v = vec![i as u8];
            v.extend(bytes);
            v
        })
        .collect()
}

fn run_labels(w: &Workspace, kind: DatasetKind, input: &[u8]) -> Result<(), String> {
    let root = w.dataset(kind);
    let slots = label_slots(w, kind);
    let Some((&pick, content)) = input.split_first() else {
        return Ok(());
    };
    let (name, _) = &slots[pick as usize % slots.len()];
    // Restore every label file, then replace the picked one (a plain `.csv` shadows the `.gz`).
    for (n, seed) in &slots {
        if !n.ends_with(".gz") && root.join(format!("{n}.gz")).exists() {
            let _ = std::fs::remove_file(root.join(n));
        } else {
            std::fs::write(root.join(n), seed).unwrap();
        }
    }
    std::fs::write(root.join(name), content).unwrap();
    let out = w.file(&format!("ingest-{kind}"));
    let _ = std::fs::remove_dir_all(&out);
    let opts = IngestOptions {
        verify: Verify::Exists,
        skip_bad: content.len().is_multiple_of(2),
        threads: 1,
        ..Default::default()
    };
    let r = ingest::ingest(kind, &root, &out, &opts, &|_| {})
        .map(|_| ())
        .map_err(|e| e.to_string());
    // The picked file back to its seed for the next input.
    let _ = std::fs::remove_file(root.join(name));
    r
}

macro_rules! labels_target {
    ($fn_seeds:ident, $fn_run:ident, $fn_names:ident, $kind:expr) => {
        fn $fn_seeds(w: &Workspace) -> Vec<Vec<u8>> {
            label_seeds(w, $kind)
        }
        fn $fn_run(w: &Workspace, input: &[u8]) -> Result<(), String> {
            run_labels(w, $kind, input)
        }
        /// Errors must name a file of the dataset (the label file, or an image a row points at).
        fn $fn_names(w: &Workspace) -> String {
            name_of(&w.dataset($kind))
        }
    };
}

labels_target!(mimic_seeds, run_mimic, mimic_names, DatasetKind::MimicCxr);
labels_target!(rsna_seeds, run_rsna, rsna_names, DatasetKind::Rsna);
labels_target!(covidx_seeds, run_covidx, covidx_names, DatasetKind::Covidx);
labels_target!(siim_seeds, run_siim, siim_names, DatasetKind::Siim);

// RLE -------------------------------------------------------------------------------------------

/// `W H` on the first line, the RLE string after it.
fn rle_seeds(w: &Workspace) -> Vec<Vec<u8>> {
    let csv = std::fs::read_to_string(w.dataset(DatasetKind::Siim).join("train-rle.csv")).unwrap();
    let mut out: Vec<Vec<u8>> = csv
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(','))
        .map(|(_, rle)| format!("32 32\n{rle}").into_bytes())
        .collect();
    out.push(b"1024 1024\n 1 2 3 4".to_vec());
    out.push(b"2 2\n0 4".to_vec());
    out
}

const RLE_CONTEXT: &str = "train-rle.csv, line 2, field `EncodedPixels`";

fn run_rle(_: &Workspace, input: &[u8]) -> Result<(), String> {
    let text = String::from_utf8_lossy(input);
    let (dims, rle) = text.split_once('\n').unwrap_or(("32 32", &text));
    let mut it = dims.split_whitespace().map(|d| d.parse::<u32>().ok());
    let (Some(Some(w)), Some(Some(h))) = (it.next(), it.next()) else {
        return Ok(());
    };
    // Masks are painted at an image's size; images beyond the decode limits never get here.
    if u64::from(w) * u64::from(h) > 1 << 22 {
        return stages::masks::parse_rle(rle, w, h, RLE_CONTEXT)
            .map(|_| ())
            .map_err(|e| e.to_string());
    }
    stages::masks::rle_to_mask(&[rle], w, h, RLE_CONTEXT)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

fn rle_names(_: &Workspace) -> String {
    "train-rle.csv, line 2".into()
}

// Checkpoints -----------------------------------------------------------------------------------

fn pickle_seeds(_: &Workspace) -> Vec<Vec<u8>> {
    let data = repo().join("data/encoders");
    read_all(files_with_ext(&data, &["pt", "bin"]))
}

fn run_pickle(w: &Workspace, input: &[u8]) -> Result<(), String> {
    let path = w.file("checkpoint.pt");
    std::fs::write(&path, input).unwrap();
    adaptor_torch::pickle::load(&path)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

fn pickle_names(w: &Workspace) -> String {
    name_of(&w.file("checkpoint.pt"))
}

// Images ----------------------------------------------------------------------------------------

fn png_seeds(w: &Workspace) -> Vec<Vec<u8>> {
    let mut seeds = read_all(
        files_with_ext(&repo().join("data/resize"), &["png"])
            .into_iter()
            .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("in_")),
    );
    seeds.extend(read_all(
        files_with_ext(&w.dataset(DatasetKind::Covidx), &["png"])
            .into_iter()
            .take(4),
    ));
    seeds.extend(read_all(
        [repo().join("data/encoders/preprocess-input.png")],
    ));
    seeds
}

fn jpeg_seeds(w: &Workspace) -> Vec<Vec<u8>> {
    let mut seeds = read_all(
        files_with_ext(&w.dataset(DatasetKind::MimicCxr), &["jpg"])
            .into_iter()
            .take(4),
    );
    seeds.extend(read_all(
        files_with_ext(&w.dataset(DatasetKind::Covidx), &["jpg", "jpeg"])
            .into_iter()
            .take(4),
    ));
    seeds
}

fn dicom_seeds(w: &Workspace) -> Vec<Vec<u8>> {
    let mut paths: Vec<PathBuf> = files_with_ext(&w.dataset(DatasetKind::Rsna), &["dcm"])
        .into_iter()
        .take(3)
        .collect();
    paths.extend(
        files_with_ext(&w.dataset(DatasetKind::Siim), &["dcm"])
            .into_iter()
            .take(3),
    );
    // The real DICOMs `scripts/test-assets.sh` unpacks (pydicom's test files), when present:
    // other transfer syntaxes (JPEG 2000, RLE, big endian), CT and MR.
    let assets = repo().join(".cache/test-assets");
    for name in [
        "CT_small.dcm",
        "MR_small_RLE.dcm",
        "RG1_UNCR.dcm",
        "MR_small_bigendian.dcm",
        "JPEG2000.dcm",
        "SC_rgb_rle.dcm",
    ] {
        let p = assets.join(name);
        if p.is_file()
            && std::fs::metadata(&p)
                .map(|m| m.len() < 4 << 20)
                .unwrap_or(false)
        {
            paths.push(p);
        }
    }
    read_all(paths)
}

fn run_image(w: &Workspace, name: &str, input: &[u8]) -> Result<(), String> {
    let path = w.file(name);
    std::fs::write(&path, input).unwrap();
    let img = images::decode(&path).map_err(|e| e.to_string())?;
    // what the encoders do next: 8-bit, MGCA resize
    let g = img.to_gray8();
    if g.width > 0 && g.height > 0 {
        images::resize_img(&g, 16);
    }
    if name.ends_with(".dcm") {
        images::load_mgca(&path, 16).map_err(|e| e.to_string())?;
    }
    Ok(())
}

fn run_png(w: &Workspace, input: &[u8]) -> Result<(), String> {
    // Half the inputs get their chunk CRCs recomputed, so mutations reach the header and pixel
    // parsing instead of stopping at the checksum.
    if input.len().is_multiple_of(2) {
        let mut fixed = input.to_vec();
        fix_png_crcs(&mut fixed);
        return run_image(w, "image.png", &fixed);
    }
    run_image(w, "image.png", input)
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut c = !0u32;
    for &b in bytes {
        c ^= b as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 {
                0xedb8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
        }
    }
    !c
}

/// Rewrites the CRC of every whole chunk after the signature.
fn fix_png_crcs(v: &mut [u8]) {
    let mut at = 8;
    while at + 12 <= v.len() {
        let len = u32::from_be_bytes(v[at..at + 4].try_into().unwrap()) as usize;
        let Some(end) = (at + 8).checked_add(len).filter(|&e| e + 4 <= v.len()) else {
            return;
        };
        let crc = crc32(&v[at + 4..end]);
        v[end..end + 4].copy_from_slice(&crc.to_be_bytes());
        at = end + 4;
    }
}

fn run_jpeg(w: &Workspace, input: &[u8]) -> Result<(), String> {
    run_image(w, "image.jpg", input)
}

fn run_dicom(w: &Workspace, input: &[u8]) -> Result<(), String> {
    run_image(w, "image.dcm", input)
}

fn png_names(w: &Workspace) -> String {
    name_of(&w.file("image.png"))
}

fn jpeg_names(w: &Workspace) -> String {
    name_of(&w.file("image.jpg"))
}

fn dicom_names(w: &Workspace) -> String {
    name_of(&w.file("image.dcm"))
}

// Worker protocol -------------------------------------------------------------------------------

fn worker_seeds(_: &Workspace) -> Vec<Vec<u8>> {
    let key = "ab".repeat(32);
    vec![
        br#"{"log":"encoding 12 images"}"#.to_vec(),
        br#"{"progress":{"done":3,"total":10,"unit":"images"}}"#.to_vec(),
        br#"{"error":"boom"}"#.to_vec(),
        format!(
            r#"{{"protocol":4,"kind":"encode-image","instance":"enc[vision=a]","key":"{key}","params":{{"batch_size":8,"precision":"fp32","shard":"0/1","x":[1.5,-0.0,"s",{{"a":true}}]}},"inputs":{{"records":[{{"path":"/tmp/r","origin":{{"Stage":{{"kind":"ingest","instance":"ingest","key":"{key}"}}}}}}],"backbone":[{{"path":"/b","origin":{{"External":{{"group":"backbones","name":"b","kind":"dinov2","params":{{}}}}}}}}]}},"out_dir":"/tmp/o","threads":2,"resume_dir":"/tmp/r"}}"#
        )
        .into_bytes(),
    ]
}

struct NullSink;

impl pipeline::ProgressSink for NullSink {
    fn progress(&self, _: &str, _: u64, _: u64, _: &str) {}
    fn log(&self, _: &str, _: &str) {}
}

/// The two JSON readers of the protocol: the runner parsing a worker's stdout line, and the
/// worker reading its job (then building its stage context from it).
fn run_worker_json(_: &Workspace, input: &[u8]) -> Result<(), String> {
    use pipeline::protocol::{Job, WorkerMessage};
    let line = String::from_utf8_lossy(input);
    let msg = serde_json::from_str::<WorkerMessage>(&line).map_err(|e| e.to_string());
    let job = Job::read(input).map(|job| {
        job.into_context(
            Arc::new(NullSink),
            Arc::new(std::sync::atomic::AtomicBool::new(false)),
        );
    });
    match (msg, job) {
        (Ok(_), _) | (_, Ok(_)) => Ok(()),
        (Err(a), Err(b)) => Err(format!("{a}; {b}")),
    }
}

fn targets() -> Vec<Target> {
    vec![
        Target {
            name: "manifest",
            text: true,
            seeds: manifest_seeds,
            generate: Some(generate_manifest),
            run: run_manifest,
            names: Some(manifest_file),
        },
        Target {
            name: "labels-mimic-cxr",
            text: true,
            seeds: mimic_seeds,
            generate: None,
            run: run_mimic,
            names: Some(mimic_names),
        },
        Target {
            name: "labels-rsna",
            text: true,
            seeds: rsna_seeds,
            generate: None,
            run: run_rsna,
            names: Some(rsna_names),
        },
        Target {
            name: "labels-covidx",
            text: true,
            seeds: covidx_seeds,
            generate: None,
            run: run_covidx,
            names: Some(covidx_names),
        },
        Target {
            name: "labels-siim",
            text: true,
            seeds: siim_seeds,
            generate: None,
            run: run_siim,
            names: Some(siim_names),
        },
        Target {
            name: "rle",
            text: true,
            seeds: rle_seeds,
            generate: None,
            run: run_rle,
            names: Some(rle_names),
        },
        Target {
            name: "pickle",
            text: false,
            seeds: pickle_seeds,
            generate: None,
            run: run_pickle,
            names: Some(pickle_names),
        },
        Target {
            name: "png",
            text: false,
            seeds: png_seeds,
            generate: None,
            run: run_png,
            names: Some(png_names),
        },
        Target {
            name: "jpeg",
            text: false,
            seeds: jpeg_seeds,
            generate: None,
            run: run_jpeg,
            names: Some(jpeg_names),
        },
        Target {
            name: "dicom",
            text: false,
            seeds: dicom_seeds,
            generate: None,
            run: run_dicom,
            names: Some(dicom_names),
        },
        Target {
            name: "worker-json",
            text: true,
            seeds: worker_seeds,
            generate: None,
            run: run_worker_json,
            names: None,
        },
    ]
}

// ---------------------------------------------------------------------------------------------
// The child: runs inputs from stdin, one verdict line per input on stdout.

fn cap_data_size() {
    // What the process already holds (libtorch's mappings included) plus the cap.
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let held_kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmData:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    let limit = held_kb * 1024 + DATA_CAP;
    let rl = libc::rlimit {
        rlim_cur: limit,
        rlim_max: limit,
    };
    // SAFETY: setrlimit with a valid struct; it only lowers this process's own limit.
    unsafe {
        libc::setrlimit(libc::RLIMIT_DATA, &rl);
    }
}

fn child(name: &str, dir: &Path) {
    let target = targets()
        .into_iter()
        .chain([self_test_target()])
        .find(|t| t.name == name)
        .unwrap_or_else(|| panic!("no target {name}"));
    let w = Workspace {
        dir: dir.to_path_buf(),
    };
    // Seeds (synthetic datasets) are made before the cap; every later allocation is the input's.
    let must_name = target.names.map(|f| f(&w));
    let _ = (target.seeds)(&w);
    std::panic::set_hook(Box::new(|_| {}));
    cap_data_size();
    let mut stdin = std::io::stdin().lock();
    let mut stdout = std::io::stdout().lock();
    loop {
        let mut len = [0u8; 4];
        if stdin.read_exact(&mut len).is_err() {
            return;
        }
        let mut input = vec![0u8; u32::from_le_bytes(len) as usize];
        stdin.read_exact(&mut input).expect("input");
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (target.run)(&w, &input)));
        let verdict = match r {
            Ok(Ok(())) => "ok".to_string(),
            Ok(Err(m)) => match &must_name {
                Some(n) if !m.contains(n.as_str()) => {
                    format!("unnamed {}", m.replace('\n', " "))
                }
                _ => "err".to_string(),
            },
            Err(p) => {
                let m = p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                format!("panic {}", m.replace('\n', " "))
            }
        };
        writeln!(stdout, "{verdict}").unwrap();
        stdout.flush().unwrap();
    }
}

// ---------------------------------------------------------------------------------------------
// The parent.

struct Worker {
    child: Child,
    stdin: ChildStdin,
    lines: Receiver<String>,
}

fn spawn(target: &str, dir: &Path) -> Worker {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--child", target, "--dir"])
        .arg(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the fuzz child");
    let stdin = child.stdin.take().unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    Worker {
        child,
        stdin,
        lines,
    }
}

#[derive(Default)]
struct Tally {
    inputs: u64,
    ok: u64,
    errors: u64,
    /// failure class (`panic`, `abort`, `hang`, `unnamed`) → count
    failures: BTreeMap<&'static str, u64>,
    examples: Vec<String>,
    seconds: f64,
}

impl Tally {
    fn failed(&self) -> u64 {
        self.failures.values().sum()
    }
}

enum Verdict {
    Ok,
    /// An error that names the file (or any error, for sources that are not files).
    Err,
    /// `panic`, `unnamed`, `hang` or `abort`, with what is known.
    Failure(&'static str, String),
}

/// Runs one input in the child and classifies what came back (or did not).
fn verdict(worker: &mut Worker, input: &[u8], deadline: Duration) -> Verdict {
    let sent = worker
        .stdin
        .write_all(&(input.len() as u32).to_le_bytes())
        .and_then(|_| worker.stdin.write_all(input))
        .and_then(|_| worker.stdin.flush());
    match sent.map(|_| worker.lines.recv_timeout(deadline)) {
        Ok(Ok(line)) => {
            let (class, msg) = line.split_once(' ').unwrap_or((line.as_str(), ""));
            match class {
                "ok" => Verdict::Ok,
                "err" => Verdict::Err,
                "unnamed" => Verdict::Failure("unnamed", msg.to_string()),
                _ => Verdict::Failure("panic", msg.to_string()),
            }
        }
        Ok(Err(RecvTimeoutError::Timeout)) => {
            Verdict::Failure("hang", format!("no verdict within {deadline:?}"))
        }
        Ok(Err(RecvTimeoutError::Disconnected)) | Err(_) => {
            let status = worker.child.wait().ok();
            Verdict::Failure("abort", format!("the child died: {status:?}"))
        }
    }
}

/// A target that misbehaves on purpose, one way per input: the harness must classify each.
fn self_test_target() -> Target {
    fn run(_: &Workspace, input: &[u8]) -> Result<(), String> {
        match input {
            b"ok" => Ok(()),
            b"named" => Err("self-test.bin: bad".into()),
            b"unnamed" => Err("bad, but which file?".into()),
            b"panic" => panic!("on purpose"),
            b"abort" => std::process::abort(),
            b"alloc" => {
                // 64 GiB, far over the data cap: the allocation fails and Rust aborts.
                let v: Vec<u8> = Vec::with_capacity(64 << 30);
                std::hint::black_box(&v);
                Ok(())
            }
            b"stack" => {
                #[allow(unconditional_recursion)]
                fn down(n: u64) -> u64 {
                    let pad = std::hint::black_box([n; 64]);
                    down(pad[0] + 1) + pad[1]
                }
                Err(format!("self-test.bin: {}", down(0)))
            }
            _ => loop {
                std::thread::sleep(Duration::from_secs(1));
            },
        }
    }
    Target {
        name: "self-test",
        text: false,
        seeds: |_| vec![b"ok".to_vec()],
        generate: None,
        run,
        names: Some(|_| "self-test.bin".into()),
    }
}

/// Checks that the harness tells each way of failing apart (so a fuzz run that reports no
/// failures means something): panics, aborts, failed allocations, stack overflows, hangs and
/// errors not naming the file are failures; Ok and named errors are not.
fn self_test() {
    let dir = tempfile::tempdir().unwrap();
    let cases: &[(&[u8], Option<&str>)] = &[
        (b"ok", None),
        (b"named", None),
        (b"unnamed", Some("unnamed")),
        (b"panic", Some("panic")),
        (b"abort", Some("abort")),
        (b"alloc", Some("abort")),
        (b"stack", Some("abort")),
        (b"hang", Some("hang")),
    ];
    for (input, want) in cases {
        let mut worker = spawn("self-test", dir.path());
        let got = match verdict(&mut worker, input, Duration::from_secs(3)) {
            Verdict::Ok | Verdict::Err => None,
            Verdict::Failure(class, _) => Some(class),
        };
        let _ = worker.child.kill();
        let _ = worker.child.wait();
        assert_eq!(
            got,
            *want,
            "the harness misclassified `{}`",
            String::from_utf8_lossy(input)
        );
    }
    println!("fuzz self-test: panics, aborts, failed allocations, stack overflows, hangs and unnamed errors are caught");
}

fn fuzz(target: &Target, seconds: f64, seed: u64, failures_dir: &Path) -> Tally {
    let dir = tempfile::tempdir().unwrap();
    let w = Workspace {
        dir: dir.path().to_path_buf(),
    };
    let seeds = (target.seeds)(&w);
    assert!(!seeds.is_empty(), "{}: no seeds", target.name);
    let mut rng = Rng(seed
        ^ target
            .name
            .bytes()
            .fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(b as u64)));
    let mut tally = Tally::default();
    let start = Instant::now();
    let mut worker = spawn(target.name, dir.path());
    let mut first = true;
    while first || start.elapsed().as_secs_f64() < seconds {
        // The seeds themselves first, then mutations (and generated inputs where there are).
        let input = if first {
            first = false;
            seeds[0].clone()
        } else if tally.inputs < seeds.len() as u64 {
            seeds[tally.inputs as usize].clone()
        } else if let Some(generate) = target.generate.filter(|_| rng.chance(4)) {
            let g = generate(&mut rng);
            if rng.chance(2) {
                g
            } else {
                let other = rng.below(seeds.len());
                mutate(&mut rng, &g, &seeds[other], true)
            }
        } else {
            let a = &seeds[rng.below(seeds.len())];
            let b = &seeds[rng.below(seeds.len())];
            let mut m = mutate(&mut rng, a, b, target.text);
            // Stack mutations sometimes: far-from-seed inputs.
            if rng.chance(4) {
                m = mutate(&mut rng, &m, b, target.text);
            }
            m
        };
        tally.inputs += 1;
        let outcome = match verdict(&mut worker, &input, DEADLINE) {
            Verdict::Ok => {
                tally.ok += 1;
                None
            }
            Verdict::Err => {
                tally.errors += 1;
                None
            }
            Verdict::Failure(class, msg) => Some((class, msg)),
        };
        if let Some((class, msg)) = outcome {
            *tally.failures.entry(class).or_default() += 1;
            let n = tally.failed();
            let saved = failures_dir.join(format!("{}-{class}-{n}.bin", target.name));
            std::fs::create_dir_all(failures_dir).unwrap();
            std::fs::write(&saved, &input).unwrap();
            if tally.examples.len() < 5 {
                tally.examples.push(format!(
                    "{class}: {msg} (input saved as {})",
                    saved.display()
                ));
            }
            if class != "panic" && class != "unnamed" {
                let _ = worker.child.kill();
                let _ = worker.child.wait();
                worker = spawn(target.name, dir.path());
            }
        }
    }
    drop(worker.stdin);
    let _ = worker.child.kill();
    let _ = worker.child.wait();
    tally.seconds = start.elapsed().as_secs_f64();
    tally
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let flag = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    if let Some(target) = flag("--child") {
        child(&target, Path::new(&flag("--dir").expect("--dir")));
        return;
    }
    let seconds: f64 = flag("--seconds").map_or(2.0, |s| s.parse().expect("--seconds"));
    let seed: u64 = flag("--seed").map_or(0x5eed, |s| s.parse().expect("--seed"));
    let only: Option<Vec<String>> =
        flag("--only").map(|s| s.split(',').map(str::to_string).collect());
    let failures_dir =
        flag("--failures").map_or_else(|| repo().join("target/fuzz-failures"), PathBuf::from);
    if only.is_none() {
        self_test();
    }
    let mut rows = Vec::new();
    for t in targets() {
        if only
            .as_ref()
            .is_some_and(|o| !o.iter().any(|n| n == t.name))
        {
            continue;
        }
        let tally = fuzz(&t, seconds, seed, &failures_dir);
        println!(
            "fuzz {:<18} {:>8} inputs in {:>6.1} s: {} ok, {} errors, {} failures",
            t.name,
            tally.inputs,
            tally.seconds,
            tally.ok,
            tally.errors,
            tally.failed()
        );
        for e in &tally.examples {
            println!("    {e}");
        }
        rows.push((t.name, tally));
    }
    if let Some(path) = flag("--results") {
        let mut md = String::from(
            "| target | seconds | inputs | Ok | errors naming the file | panics | aborts | hangs | errors not naming the file |\n\
             |---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        );
        let mut total = Tally::default();
        for (name, t) in &rows {
            let f = |c| t.failures.get(c).copied().unwrap_or(0);
            md.push_str(&format!(
                "| {name} | {:.0} | {} | {} | {} | {} | {} | {} | {} |\n",
                t.seconds,
                t.inputs,
                t.ok,
                t.errors,
                f("panic"),
                f("abort"),
                f("hang"),
                f("unnamed")
            ));
            total.inputs += t.inputs;
            total.ok += t.ok;
            total.errors += t.errors;
            total.seconds += t.seconds;
            for (k, v) in &t.failures {
                *total.failures.entry(k).or_default() += v;
            }
        }
        let f = |c| total.failures.get(c).copied().unwrap_or(0);
        md.push_str(&format!(
            "| **total** | {:.0} | {} | {} | {} | {} | {} | {} | {} |\n",
            total.seconds,
            total.inputs,
            total.ok,
            total.errors,
            f("panic"),
            f("abort"),
            f("hang"),
            f("unnamed")
        ));
        std::fs::write(&path, md).unwrap();
    }
    let failed: u64 = rows.iter().map(|(_, t)| t.failed()).sum();
    if failed > 0 {
        eprintln!(
            "fuzz: {failed} failing inputs (saved under {})",
            failures_dir.display()
        );
        std::process::exit(1);
    }
}
