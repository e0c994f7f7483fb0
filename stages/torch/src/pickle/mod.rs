//! Reads PyTorch checkpoints (`torch.save`: `pytorch_model.bin`, `.pt`) without Python, in both
//! on-disk formats: the zip archive of PyTorch ≥ 1.6 and the legacy stream of pickles before it
//! (which libtorch's own loader cannot read, and which old hub checkpoints such as
//! Bio_ClinicalBERT and the torchxrayvision autoencoder may use). A state dict, a nested dict of
//! them, or a whole pickled `nn.Module` all come out as named tensors.
//!
//! The pickle machine implements the opcodes `torch.save` emits (protocol 2, plus the protocol 4
//! ones a custom `pickle_protocol` would add); classes are never imported, only recorded, so
//! loading a checkpoint runs no code.
//!
//! Layout: the value types and limits here; `machine` runs the opcodes, `objects` turns torch's
//! persistent ids and rebuild calls into storages and tensors, `walk` names the tensors of the
//! unpickled object, `storages` reads their bytes (zip entries or the legacy stream), and
//! [`load`] (with `materialise`) puts them together.

mod machine;
mod objects;
mod storages;
mod walk;

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

use tch::{Kind, Tensor};

use crate::error::{Error, Result};

use storages::{read_entry, LegacyStorages, StorageSource, ZipStorages};
use walk::collect;

type Id = usize;

// Some payloads (floats, bytes, classes) are only kept for `Debug` output of odd checkpoints.
#[allow(dead_code)]
#[derive(Debug, Clone)]
enum Node {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    Tuple(Vec<Id>),
    List(Vec<Id>),
    Dict(Vec<(Id, Id)>),
    Global {
        module: String,
        name: String,
    },
    /// An instance of a class that is not rebuilt here (a module, a `torch.Size`...).
    Object {
        class: Id,
        args: Id,
        state: Option<Id>,
        items: Vec<(Id, Id)>,
    },
    Storage(StorageRef),
    Tensor(TensorRef),
}

#[derive(Debug, Clone)]
struct StorageRef {
    key: String,
    /// `None` for an untyped storage; the tensor then carries the dtype.
    kind: Option<Kind>,
    /// Legacy format: a view into another storage (`view_metadata`): (root key, element offset).
    view: Option<(String, i64)>,
}

#[derive(Debug, Clone)]
struct TensorRef {
    storage: StorageRef,
    kind: Kind,
    offset: i64,
    size: Vec<i64>,
    stride: Vec<i64>,
}

struct Machine<'a> {
    data: &'a [u8],
    pos: usize,
    nodes: &'a mut Vec<Node>,
    stack: Vec<Id>,
    marks: Vec<usize>,
    memo: HashMap<u32, Id>,
    /// Storages met (persistent ids), in order: the legacy format needs their element sizes.
    storages: Vec<StorageRef>,
    /// Items copied or walked so far beyond the one byte each opcode costs: bounded by
    /// [`Machine::budget`], so a crafted pickle that makes every opcode re-walk a huge shared
    /// list (through the memo) is an error instead of quadratic time.
    work: u64,
}

/// How many levels of `torch.Size(tuple)`-style wrapping `seq_of` looks through.
const MAX_WRAP: usize = 8;

/// Nesting depth of containers past which a checkpoint is refused: real state dicts and pickled
/// modules nest a few dozen levels; a pickle nested hundreds of thousands deep is an attack on
/// the recursive walk (a stack overflow), not a model.
pub const MAX_DEPTH: usize = 256;

/// Opcode-level failure, turned into an [`Error::File`] with the path by the caller.
type PResult<T> = std::result::Result<T, String>;

fn node_name(n: &Node) -> &'static str {
    match n {
        Node::None => "None",
        Node::Bool(_) => "bool",
        Node::Int(_) => "int",
        Node::Float(_) => "float",
        Node::Str(_) => "str",
        Node::Bytes(_) => "bytes",
        Node::Tuple(_) => "tuple",
        Node::List(_) => "list",
        Node::Dict(_) => "dict",
        Node::Global { .. } => "class",
        Node::Object { .. } => "object",
        Node::Storage(_) => "storage",
        Node::Tensor(_) => "tensor",
    }
}

/// Loads every tensor of a `torch.save` file, named by its path in the pickled object
/// (`encoder.layer.0.attention.self.query.weight`; a pickled module's parameters and buffers
/// under its submodule names). Tensors come back contiguous, on the CPU, in their stored dtype.
pub fn load(path: &Path) -> Result<Vec<(String, Tensor)>> {
    let mut head = [0u8; 4];
    {
        let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        let n = f.read(&mut head).map_err(|e| Error::io(path, e))?;
        if n < 2 {
            return Err(Error::file(path, "empty file, not a PyTorch checkpoint"));
        }
    }
    // Every error leaves here naming the file, even one found deep in the unpickler such as a
    // storage the stream names but the file lacks (found by fuzzing): the storage sources carry
    // the path.
    if head.starts_with(b"PK") {
        load_zip(path)
    } else if head[0] == 0x80 {
        load_legacy(path)
    } else {
        Err(Error::file(
            path,
            "not a PyTorch checkpoint (neither a zip archive nor a legacy pickle stream)",
        ))
    }
}

fn load_zip(path: &Path) -> Result<Vec<(String, Tensor)>> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let file_len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    let mut archive = zip::ZipArchive::new(file)
        .map_err(|e| Error::file(path, format!("bad zip archive: {e}")))?;
    let pkl = archive
        .file_names()
        .find(|n| n.ends_with("data.pkl"))
        .map(str::to_string)
        .ok_or_else(|| Error::file(path, "zip archive without data.pkl: not a torch.save file"))?;
    let prefix = pkl[..pkl.len() - "data.pkl".len()].to_string();
    if let Ok(f) = archive.by_name(&format!("{prefix}byteorder")) {
        let mut s = String::new();
        let _ = f.take(16).read_to_string(&mut s);
        if s.trim() == "big" {
            return Err(Error::file(
                path,
                "big-endian checkpoints are not supported",
            ));
        }
    }
    let data = read_entry(&mut archive, &pkl, file_len, path)?;
    let mut nodes = Vec::new();
    let root = {
        let mut m = Machine::new(&data, 0, &mut nodes);
        m.run().map_err(|e| Error::file(path, e))?
    };
    let mut src = ZipStorages {
        archive,
        prefix,
        path: path.to_path_buf(),
        file_len,
        cache: HashMap::new(),
    };
    materialise(path, &nodes, root, &mut src)
}

/// The legacy format: pickles of the magic number, the protocol version and the system info,
/// then the object, then the list of storage keys, then each storage as an int64 element count
/// followed by its raw little-endian elements.
fn load_legacy(path: &Path) -> Result<Vec<(String, Tensor)>> {
    let data = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let bad = |m: String| Error::file(path, m);
    let mut nodes = Vec::new();
    let mut pos = 0;
    let read_one = |nodes: &mut Vec<Node>, pos: &mut usize| -> Result<(Id, Vec<StorageRef>)> {
        let mut m = Machine::new(&data, *pos, nodes);
        let id = m.run().map_err(bad)?;
        *pos = m.pos;
        Ok((id, m.storages))
    };
    let (magic, _) = read_one(&mut nodes, &mut pos)?;
    // 0x1950a86a20f9469cfc6c, clamped to i64 by the integer opcode
    if !matches!(nodes[magic], Node::Int(i64::MAX)) {
        return Err(Error::file(
            path,
            "not a PyTorch checkpoint (legacy magic number missing)",
        ));
    }
    let (_protocol, _) = read_one(&mut nodes, &mut pos)?;
    let (_sys_info, _) = read_one(&mut nodes, &mut pos)?;
    let (root, storages) = read_one(&mut nodes, &mut pos)?;
    let (keys, _) = read_one(&mut nodes, &mut pos)?;
    let keys: Vec<String> = match &nodes[keys] {
        Node::List(v) | Node::Tuple(v) => v
            .iter()
            .map(|&i| match &nodes[i] {
                Node::Str(s) => Ok(s.clone()),
                Node::Int(i) => Ok(i.to_string()),
                _ => Err(Error::file(path, "storage key list holds a non-string")),
            })
            .collect::<Result<_>>()?,
        _ => return Err(Error::file(path, "storage key list missing")),
    };
    let elt: HashMap<&str, usize> = storages
        .iter()
        .filter(|s| s.view.is_none())
        .filter_map(|s| s.kind.map(|k| (s.key.as_str(), k.elt_size_in_bytes())))
        .collect();
    let mut ranges = HashMap::new();
    for key in &keys {
        let size = elt
            .get(key.as_str())
            .copied()
            .ok_or_else(|| Error::file(path, format!("storage `{key}` has no element type")))?;
        let n = data
            .get(pos..pos + 8)
            .ok_or_else(|| Error::file(path, format!("truncated before storage `{key}`")))?;
        let numel = u64::from_le_bytes(n.try_into().expect("8 bytes")) as usize;
        pos += 8;
        let end = numel
            .checked_mul(size)
            .and_then(|b| b.checked_add(pos))
            .filter(|&e| e <= data.len())
            .ok_or_else(|| Error::file(path, format!("storage `{key}` is truncated")))?;
        ranges.insert(key.clone(), (pos, end));
        pos = end;
    }
    let mut src = LegacyStorages {
        path,
        data: &data,
        ranges,
    };
    materialise(path, &nodes, root, &mut src)
}

fn materialise(
    path: &Path,
    nodes: &[Node],
    root: Id,
    src: &mut dyn StorageSource,
) -> Result<Vec<(String, Tensor)>> {
    let refs = collect(nodes, root).map_err(|e| Error::file(path, e))?;
    if refs.is_empty() {
        return Err(Error::file(path, "the checkpoint holds no tensors"));
    }
    let mut out = Vec::with_capacity(refs.len());
    for (name, t) in refs {
        let (key, base) = match &t.storage.view {
            Some((root, off)) => (root.as_str(), *off),
            None => (t.storage.key.as_str(), 0),
        };
        let bad = |m: String| Error::file(path, format!("tensor `{name}`: {m}"));
        let bytes = src.bytes(key)?;
        let elt = t.kind.elt_size_in_bytes();
        let numel_storage = bytes.len() / elt;
        let view = check_view(&t, base, numel_storage as u64).map_err(bad)?;
        let flat = Tensor::f_from_data_size(
            &bytes[..numel_storage * elt],
            &[numel_storage as i64],
            t.kind,
        )?;
        let tensor = match view {
            None => Tensor::f_zeros(&t.size, (t.kind, tch::Device::Cpu))?,
            Some(offset) => flat
                .f_as_strided(&t.size, &t.stride, offset)?
                .f_contiguous()?,
        };
        out.push((name, tensor));
    }
    Ok(out)
}

/// Tensors a storage may be expanded into beyond its own size (a stride-0 `expand` saved as
/// such): up to this many elements, or the storage's size when larger.
const MAX_EXPANDED_NUMEL: u64 = 1 << 24;

/// Checks a tensor's view (sizes, strides, offset) against its storage's element count before
/// anything is allocated, in checked arithmetic (every number comes from the file). Returns the
/// element offset of the view, or `None` for an empty tensor.
fn check_view(t: &TensorRef, base: i64, numel_storage: u64) -> PResult<Option<i64>> {
    if t.size.len() != t.stride.len() {
        return Err(format!(
            "{} sizes but {} strides",
            t.size.len(),
            t.stride.len()
        ));
    }
    if let Some(s) = t.size.iter().chain(&t.stride).find(|&&v| v < 0) {
        return Err(format!(
            "negative size or stride {s} (size {:?}, stride {:?})",
            t.size, t.stride
        ));
    }
    let offset = base
        .checked_add(t.offset)
        .filter(|&o| o >= 0)
        .ok_or_else(|| format!("storage offset {base} + {} is invalid", t.offset))?;
    let mut numel: u64 = 1;
    for &s in &t.size {
        numel = numel.saturating_mul(s as u64);
    }
    if numel == 0 {
        // zero-sized: nothing is read, and the size itself is allocated as zero elements
        return Ok(None);
    }
    if numel > numel_storage.max(MAX_EXPANDED_NUMEL) {
        return Err(format!(
            "size {:?} is {numel} elements, more than its storage holds ({numel_storage})",
            t.size
        ));
    }
    // The furthest element the view touches must lie inside the storage.
    let mut last = offset as u64;
    for (&s, &st) in t.size.iter().zip(&t.stride) {
        last = (s as u64 - 1)
            .checked_mul(st as u64)
            .and_then(|x| x.checked_add(last))
            .ok_or_else(|| format!("size {:?} with stride {:?} overflows", t.size, t.stride))?;
    }
    if last >= numel_storage {
        return Err(format!(
            "reaches element {last} of its storage `{}`, which holds {numel_storage}",
            t.storage.key
        ));
    }
    Ok(Some(offset))
}

#[cfg(test)]
mod tests;
