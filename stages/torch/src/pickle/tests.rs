//! Hand-written pickles and archives: each opcode path, the legacy format and the limits.

use super::*;
use std::io::Write;

/// Pickle bytes, written opcode by opcode.
#[derive(Default)]
struct P(Vec<u8>);

impl P {
    fn op(mut self, b: &[u8]) -> Self {
        self.0.extend_from_slice(b);
        self
    }
    fn str(self, s: &str) -> Self {
        let n = (s.len() as u32).to_le_bytes();
        self.op(b"X").op(&n).op(s.as_bytes())
    }
    fn global(self, module: &str, name: &str) -> Self {
        self.op(format!("c{module}\n{name}\n").as_bytes())
    }
    /// `torch._utils._rebuild_tensor_v2(storage('0', FloatStorage, n), offset, size, stride)`
    fn tensor(self, numel: u8, offset: u8, size: &[u8], stride: &[u8]) -> Self {
        let mut p = self
            .global("torch._utils", "_rebuild_tensor_v2")
            .op(b"(")
            .op(b"(")
            .str("storage")
            .global("torch", "FloatStorage")
            .str("0")
            .str("cpu")
            .op(&[b'K', numel])
            .op(b"tQ")
            .op(&[b'K', offset])
            .op(b"(");
        for s in size {
            p = p.op(&[b'K', *s]);
        }
        p = p.op(b"t(");
        for s in stride {
            p = p.op(&[b'K', *s]);
        }
        p.op(b"t\x89")
            .global("collections", "OrderedDict")
            .op(b")R")
            .op(b"tR")
    }
    fn stop(self) -> Vec<u8> {
        let mut v = vec![0x80, 2];
        v.extend(self.0);
        v.push(b'.');
        v
    }
}

/// A legacy (pre-1.6) checkpoint: its pickles, then storage `0` with `numel` declared
/// elements and the given floats.
fn legacy(root: Vec<u8>, numel: u64, floats: &[f32]) -> Vec<u8> {
    let mut magic = vec![0x80, 2, 0x8a, 10];
    magic.extend_from_slice(&0x1950a86a20f9469cfc6c_u128.to_le_bytes()[..10]);
    magic.push(b'.');
    let mut out = magic;
    out.extend(P::default().op(b"M\xe9\x03").stop());
    out.extend(P::default().op(b"}").stop());
    out.extend(root);
    out.extend(P::default().op(b"]").str("0").op(b"a").stop());
    out.extend(numel.to_le_bytes());
    for f in floats {
        out.extend(f.to_le_bytes());
    }
    out
}

fn state_dict(tensor: P) -> Vec<u8> {
    P::default().op(b"}").str("w").op(&tensor.0).op(b"s").stop()
}

fn zip(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts =
        zip::write::FileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for (name, bytes) in entries {
        w.start_file(*name, opts).unwrap();
        w.write_all(bytes).unwrap();
    }
    w.finish().unwrap().into_inner()
}

fn load_bytes(bytes: &[u8]) -> Result<Vec<(String, Tensor)>> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.pt");
    std::fs::write(&path, bytes).unwrap();
    load(&path)
}

fn err(bytes: &[u8]) -> String {
    let e = load_bytes(bytes).map(|_| ()).unwrap_err().to_string();
    assert!(e.contains("model.pt: "), "the error names the file: {e}");
    e
}

/// Found by fuzzing (`bench/fuzz/run.sh`, target `pickle`): a legacy checkpoint whose
/// pickle names a storage the file does not hold gave an error without the file's name.
/// The input is the fuzzer's, a mutation of data/encoders/resnet-ae/state-dict-legacy.pt.
#[test]
fn a_missing_legacy_storage_is_an_error_naming_the_file() {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../data/fuzz/pickle-legacy-missing-storage.bin");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("named-checkpoint.pt");
    std::fs::copy(&fixture, &path).unwrap();
    let Err(e) = load(&path) else {
        panic!("a checkpoint missing a storage loaded")
    };
    let err = e.to_string();
    assert!(
        err.contains("named-checkpoint.pt") && err.contains("has no storage"),
        "{err}"
    );
}

#[test]
fn hand_written_checkpoints_load() {
    let floats = [1.0f32, 2.0, 3.0, 4.0];
    let t = load_bytes(&legacy(
        state_dict(P::default().tensor(4, 0, &[2, 2], &[2, 1])),
        4,
        &floats,
    ))
    .unwrap();
    assert_eq!(t.len(), 1);
    assert_eq!(t[0].0, "w");
    assert_eq!(Vec::<f32>::try_from(t[0].1.flatten(0, -1)).unwrap(), floats);
    let data: Vec<u8> = floats.iter().flat_map(|f| f.to_le_bytes()).collect();
    let pkl = state_dict(P::default().tensor(4, 1, &[3], &[1]));
    let t = load_bytes(&zip(&[("m/data.pkl", &pkl), ("m/data/0", &data)])).unwrap();
    assert_eq!(Vec::<f32>::try_from(&t[0].1).unwrap(), [2.0, 3.0, 4.0]);
}

#[test]
fn a_list_containing_itself_is_an_error_not_a_hang() {
    // l = []; l.append(l); l.append(l)  — walking it naively never ends
    let pkl = P::default().op(b"]q\x00h\x00ah\x00a").stop();
    let e = err(&zip(&[("m/data.pkl", &pkl)]));
    assert!(e.contains("a list contains itself"), "{e}");
    // the same through a dict
    let pkl = P::default().op(b"}q\x00").str("a").op(b"h\x00s").stop();
    let e = err(&zip(&[("m/data.pkl", &pkl)]));
    assert!(
        e.contains("a dict contains itself (a reference cycle at `a`)"),
        "{e}"
    );
}

#[test]
fn exponentially_shared_lists_are_an_error_not_a_hang() {
    // l0 = []; l(i+1) = [l(i), l(i)]: 2^200 paths through 200 lists
    let mut p = P::default().op(b"]q\x00");
    for i in 0..200u8 {
        p = p.op(&[b']', b'(', b'h', i, b'h', i, b'e', b'q', i + 1]);
    }
    let e = err(&zip(&[("m/data.pkl", &p.stop())]));
    assert!(e.contains("too large to walk"), "{e}");
}

#[test]
fn deep_nesting_is_an_error_not_a_stack_overflow() {
    // [[[...[]...]]] 300,000 levels deep
    let n = 300_000;
    let mut p = P::default();
    p.0.extend(std::iter::repeat_n(b'(', n));
    p.0.push(b']');
    p.0.extend(std::iter::repeat_n(b'l', n));
    let e = err(&zip(&[("m/data.pkl", &p.stop())]));
    assert!(e.contains("nested more than 256 levels deep"), "{e}");
}

#[test]
fn sizes_from_zip_headers_are_checked_against_the_file() {
    let data = [0u8; 16];
    let pkl = state_dict(P::default().tensor(4, 0, &[4], &[1]));
    let mut bytes = zip(&[("m/data.pkl", &pkl), ("m/data/0", &data)]);
    // Claim 4 GiB for the storage in its central directory record (uncompressed size at
    // offset 24 of the record; the reader trusts the central directory).
    let name = b"m/data/0";
    let at = bytes
        .windows(4)
        .enumerate()
        .filter(|(_, w)| *w == b"PK\x01\x02")
        .map(|(i, _)| i)
        .find(|&i| bytes[i + 46..].starts_with(name))
        .unwrap();
    bytes[at + 24..at + 28].copy_from_slice(&0xffff_fff0u32.to_le_bytes());
    let e = err(&bytes);
    assert!(
        e.contains("entry `m/data/0` claims 4294967280 bytes, more than the"),
        "{e}"
    );
}

#[test]
fn sizes_from_storage_records_and_views_are_checked() {
    // a storage record claiming 2^62 elements
    let root = state_dict(P::default().tensor(4, 0, &[4], &[1]));
    let e = err(&legacy(root.clone(), 1 << 62, &[0.0; 4]));
    assert!(e.contains("storage `0` is truncated"), "{e}");
    // a view past its storage
    let root = state_dict(P::default().tensor(4, 0, &[5], &[1]));
    let e = err(&legacy(root, 4, &[0.0; 4]));
    assert!(e.contains("tensor `w`: reaches element 4"), "{e}");
    // a stride-0 view of 255^4 elements of a 4-element storage: refused before allocating
    let root = state_dict(P::default().tensor(4, 0, &[255, 255, 255, 255], &[0, 0, 0, 0]));
    let e = err(&legacy(root, 4, &[0.0; 4]));
    assert!(e.contains("more than its storage holds"), "{e}");
    // sizes and strides whose extent overflows 64 bits (LONG1 integers of 8 bytes)
    let big = |p: P| p.op(&[0x8a, 8]).op(&(i64::MAX / 2).to_le_bytes());
    let mut p = P::default()
        .op(b"}")
        .str("w")
        .global("torch._utils", "_rebuild_tensor_v2")
        .op(b"((")
        .str("storage")
        .global("torch", "FloatStorage")
        .str("0")
        .str("cpu")
        .op(b"K\x04tQK\x00(K\x04K\x04t(");
    p = big(p);
    p = big(p);
    let root = p
        .op(b"t\x89")
        .global("collections", "OrderedDict")
        .op(b")RtRs")
        .stop();
    let e = err(&legacy(root, 4, &[0.0; 4]));
    assert!(e.contains("tensor `w`"), "{e}");
}
