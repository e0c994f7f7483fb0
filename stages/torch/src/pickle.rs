//! Reads PyTorch checkpoints (`torch.save`: `pytorch_model.bin`, `.pt`) without Python, in both
//! on-disk formats: the zip archive of PyTorch ≥ 1.6 and the legacy stream of pickles before it
//! (which libtorch's own loader cannot read, and which old hub checkpoints such as
//! Bio_ClinicalBERT and the torchxrayvision autoencoder may use). A state dict, a nested dict of
//! them, or a whole pickled `nn.Module` all come out as named tensors.
//!
//! The pickle machine implements the opcodes `torch.save` emits (protocol 2, plus the protocol 4
//! ones a custom `pickle_protocol` would add); classes are never imported, only recorded, so
//! loading a checkpoint runs no code.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

use tch::{Kind, Tensor};

use crate::error::{Error, Result};

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

impl<'a> Machine<'a> {
    fn new(data: &'a [u8], pos: usize, nodes: &'a mut Vec<Node>) -> Self {
        Machine {
            data,
            pos,
            nodes,
            stack: Vec::new(),
            marks: Vec::new(),
            memo: HashMap::new(),
            storages: Vec::new(),
            work: 0,
        }
    }

    /// The work allowed for this pickle: linear in its size.
    fn budget(&self) -> u64 {
        16 * self.data.len() as u64 + (1 << 20)
    }

    fn charge(&mut self, items: usize) -> PResult<()> {
        self.work += items as u64;
        if self.work > self.budget() {
            return Err(format!(
                "the pickle makes its opcodes walk more than {} items (a crafted or corrupt \
                 file: shared containers re-used through the memo)",
                self.budget()
            ));
        }
        Ok(())
    }

    fn push_node(&mut self, n: Node) {
        self.nodes.push(n);
        self.stack.push(self.nodes.len() - 1);
    }

    fn take(&mut self, n: usize) -> PResult<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.data.len())
            .ok_or_else(|| format!("truncated pickle at byte {}", self.pos))?;
        let s = &self.data[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn u8(&mut self) -> PResult<u8> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> PResult<u16> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> PResult<u32> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> PResult<u64> {
        let b = self.take(8)?;
        Ok(u64::from_le_bytes(b.try_into().expect("8 bytes")))
    }

    fn line(&mut self) -> PResult<String> {
        let rest = &self.data[self.pos..];
        let n = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or("unterminated text line in pickle")?;
        let s = String::from_utf8_lossy(&rest[..n]).into_owned();
        self.pos += n + 1;
        Ok(s)
    }

    fn pop(&mut self) -> PResult<Id> {
        self.stack
            .pop()
            .ok_or_else(|| "pickle stack underflow".to_string())
    }

    fn pop_mark(&mut self) -> PResult<Vec<Id>> {
        let m = self.marks.pop().ok_or("pickle MARK missing")?;
        if m > self.stack.len() {
            return Err("pickle MARK beyond the stack".into());
        }
        Ok(self.stack.split_off(m))
    }

    fn top(&self) -> PResult<Id> {
        self.stack
            .last()
            .copied()
            .ok_or_else(|| "pickle stack empty".into())
    }

    fn str_of(&self, id: Id) -> Option<&str> {
        match &self.nodes[id] {
            Node::Str(s) => Some(s),
            _ => None,
        }
    }

    fn int_of(&self, id: Id) -> Option<i64> {
        match &self.nodes[id] {
            Node::Int(i) => Some(*i),
            Node::Bool(b) => Some(*b as i64),
            _ => None,
        }
    }

    /// Items of a tuple or list (or a `torch.Size(tuple)` object, looked through iteratively and
    /// at most [`MAX_WRAP`] levels deep, so a long chain of wrapped objects cannot overflow the
    /// stack).
    fn seq_of(&self, id: Id) -> Option<&[Id]> {
        let mut id = id;
        for _ in 0..MAX_WRAP {
            match &self.nodes[id] {
                Node::Tuple(v) | Node::List(v) => return Some(v),
                Node::Object { args, .. } => match &self.nodes[*args] {
                    Node::Tuple(a) if a.len() == 1 => id = a[0],
                    _ => return None,
                },
                _ => return None,
            }
        }
        None
    }

    fn ints_of(&mut self, id: Id) -> PResult<Vec<i64>> {
        let items = self.seq_of(id).ok_or("tensor size/stride is not a tuple")?;
        let n = items.len();
        let v = items
            .iter()
            .map(|&i| {
                self.int_of(i)
                    .ok_or_else(|| "tensor size/stride holds a non-integer".to_string())
            })
            .collect::<PResult<Vec<_>>>()?;
        self.charge(n)?;
        Ok(v)
    }

    fn add_item(&mut self, target: Id, k: Id, v: Id) -> PResult<()> {
        match &mut self.nodes[target] {
            Node::Dict(items) | Node::Object { items, .. } => {
                items.push((k, v));
                Ok(())
            }
            other => Err(format!("SETITEM on a {}", node_name(other))),
        }
    }

    fn append(&mut self, target: Id, v: Id) -> PResult<()> {
        match &mut self.nodes[target] {
            Node::List(items) => {
                items.push(v);
                Ok(())
            }
            // list subclasses rebuilt as objects: keep items under integer keys
            Node::Object { items, .. } => {
                let k = items.len() as i64;
                self.nodes.push(Node::Int(k));
                let kid = self.nodes.len() - 1;
                if let Node::Object { items, .. } = &mut self.nodes[target] {
                    items.push((kid, v));
                }
                Ok(())
            }
            other => Err(format!("APPEND on a {}", node_name(other))),
        }
    }

    /// Interprets until STOP; returns the pickled object.
    fn run(&mut self) -> PResult<Id> {
        loop {
            let at = self.pos;
            let op = self.u8()?;
            match op {
                0x80 => {
                    self.u8()?; // PROTO
                }
                0x95 => {
                    self.u64()?; // FRAME: the length is only a hint
                }
                b'.' => return self.pop(),
                b'(' => self.marks.push(self.stack.len()),
                b'N' => self.push_node(Node::None),
                0x88 => self.push_node(Node::Bool(true)),
                0x89 => self.push_node(Node::Bool(false)),
                b'J' => {
                    let v = self.u32()? as i32 as i64;
                    self.push_node(Node::Int(v));
                }
                b'K' => {
                    let v = self.u8()? as i64;
                    self.push_node(Node::Int(v));
                }
                b'M' => {
                    let v = self.u16()? as i64;
                    self.push_node(Node::Int(v));
                }
                0x8a | 0x8b => {
                    // LONG1 / LONG4: little-endian two's complement of n bytes
                    let n = if op == 0x8a {
                        self.u8()? as usize
                    } else {
                        self.u32()? as usize
                    };
                    let b = self.take(n)?;
                    let v = if n == 0 {
                        0
                    } else if n <= 16 {
                        let mut buf = if b[n - 1] & 0x80 != 0 {
                            [0xffu8; 16]
                        } else {
                            [0u8; 16]
                        };
                        buf[..n].copy_from_slice(b);
                        let v = i128::from_le_bytes(buf);
                        // Only the legacy magic number (80 bits) is this large; clamp it.
                        v.clamp(i64::MIN as i128, i64::MAX as i128) as i64
                    } else {
                        return Err(format!("integer of {n} bytes in pickle"));
                    };
                    self.push_node(Node::Int(v));
                }
                b'I' => {
                    let l = self.line()?;
                    let node = match l.as_str() {
                        "00" => Node::Bool(false),
                        "01" => Node::Bool(true),
                        s => Node::Int(s.trim().parse().map_err(|_| format!("bad INT `{s}`"))?),
                    };
                    self.push_node(node);
                }
                b'L' => {
                    let l = self.line()?;
                    let v = l
                        .trim_end_matches('L')
                        .parse()
                        .map_err(|_| format!("bad LONG `{l}`"))?;
                    self.push_node(Node::Int(v));
                }
                b'G' => {
                    let b = self.take(8)?;
                    let v = f64::from_be_bytes(b.try_into().expect("8 bytes"));
                    self.push_node(Node::Float(v));
                }
                b'F' => {
                    let l = self.line()?;
                    let v = l.trim().parse().map_err(|_| format!("bad FLOAT `{l}`"))?;
                    self.push_node(Node::Float(v));
                }
                b'X' | 0x8c | 0x8d => {
                    let n = match op {
                        b'X' => self.u32()? as usize,
                        0x8c => self.u8()? as usize,
                        _ => self.u64()? as usize,
                    };
                    let s = String::from_utf8_lossy(self.take(n)?).into_owned();
                    self.push_node(Node::Str(s));
                }
                b'U' | b'T' => {
                    // Python 2 byte strings (legacy checkpoints pickled under Python 2)
                    let n = if op == b'U' {
                        self.u8()? as usize
                    } else {
                        self.u32()? as usize
                    };
                    let s = String::from_utf8_lossy(self.take(n)?).into_owned();
                    self.push_node(Node::Str(s));
                }
                b'C' | b'B' | 0x8e => {
                    let n = match op {
                        b'C' => self.u8()? as usize,
                        b'B' => self.u32()? as usize,
                        _ => self.u64()? as usize,
                    };
                    let b = self.take(n)?.to_vec();
                    self.push_node(Node::Bytes(b));
                }
                b'V' => {
                    let l = self.line()?;
                    self.push_node(Node::Str(l));
                }
                b'}' => self.push_node(Node::Dict(Vec::new())),
                b']' => self.push_node(Node::List(Vec::new())),
                b')' => self.push_node(Node::Tuple(Vec::new())),
                0x8f => self.push_node(Node::List(Vec::new())), // EMPTY_SET, kept as a list
                b'd' => {
                    let items = self.pop_mark()?;
                    let pairs = items
                        .chunks(2)
                        .filter(|c| c.len() == 2)
                        .map(|c| (c[0], c[1]))
                        .collect();
                    self.push_node(Node::Dict(pairs));
                }
                b'l' => {
                    let items = self.pop_mark()?;
                    self.push_node(Node::List(items));
                }
                b't' => {
                    let items = self.pop_mark()?;
                    self.push_node(Node::Tuple(items));
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    if self.stack.len() < n {
                        return Err("pickle stack underflow in TUPLEn".into());
                    }
                    let items = self.stack.split_off(self.stack.len() - n);
                    self.push_node(Node::Tuple(items));
                }
                b'q' => {
                    let k = self.u8()? as u32;
                    self.memo.insert(k, self.top()?);
                }
                b'r' => {
                    let k = self.u32()?;
                    self.memo.insert(k, self.top()?);
                }
                b'p' => {
                    let k = self.line()?.trim().parse().map_err(|_| "bad PUT")?;
                    self.memo.insert(k, self.top()?);
                }
                0x94 => {
                    let k = self.memo.len() as u32;
                    self.memo.insert(k, self.top()?); // MEMOIZE
                }
                b'h' | b'j' | b'g' => {
                    let k = match op {
                        b'h' => self.u8()? as u32,
                        b'j' => self.u32()?,
                        _ => self.line()?.trim().parse().map_err(|_| "bad GET")?,
                    };
                    let id = *self
                        .memo
                        .get(&k)
                        .ok_or_else(|| format!("pickle memo {k} unset"))?;
                    self.stack.push(id);
                }
                b'0' => {
                    self.pop()?;
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'2' => {
                    let t = self.top()?;
                    self.stack.push(t);
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    self.push_node(Node::Global { module, name });
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    let (Some(m), Some(n)) = (self.str_of(module), self.str_of(name)) else {
                        return Err("STACK_GLOBAL of non-strings".into());
                    };
                    let node = Node::Global {
                        module: m.to_string(),
                        name: n.to_string(),
                    };
                    self.push_node(node);
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    let d = self.top()?;
                    self.add_item(d, k, v)?;
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    let d = self.top()?;
                    for c in items.chunks(2) {
                        if let [k, v] = c {
                            self.add_item(d, *k, *v)?;
                        }
                    }
                }
                b'a' => {
                    let v = self.pop()?;
                    let l = self.top()?;
                    self.append(l, v)?;
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    let l = self.top()?;
                    for v in items {
                        self.append(l, v)?;
                    }
                }
                0x90 => {
                    // ADDITEMS (sets)
                    let items = self.pop_mark()?;
                    let l = self.top()?;
                    for v in items {
                        self.append(l, v)?;
                    }
                }
                b'R' => {
                    let args = self.pop()?;
                    let func = self.pop()?;
                    let node = self.reduce(func, args)?;
                    self.push_node(node);
                }
                0x81 => {
                    let args = self.pop()?;
                    let class = self.pop()?;
                    let node = self.reduce(class, args)?;
                    self.push_node(node);
                }
                0x92 => {
                    let _kwargs = self.pop()?;
                    let args = self.pop()?;
                    let class = self.pop()?;
                    let node = self.reduce(class, args)?;
                    self.push_node(node);
                }
                b'b' => {
                    let state = self.pop()?;
                    let target = self.top()?;
                    if let Node::Object { state: s, .. } = &mut self.nodes[target] {
                        *s = Some(state);
                    }
                    // BUILD on a dict (an OrderedDict's `_metadata`) or a tensor: nothing to keep.
                }
                b'Q' => {
                    let pid = self.pop()?;
                    let node = self.persistent(pid)?;
                    self.push_node(node);
                }
                b'P' => return Err("text persistent ids (PERSID) are not supported".into()),
                other => {
                    return Err(format!(
                        "unsupported pickle opcode 0x{other:02x} at byte {at}"
                    ))
                }
            }
        }
    }

    /// `('storage', storage_type, key, location, numel[, view_metadata])`.
    fn persistent(&mut self, pid: Id) -> PResult<Node> {
        // Only the first six fields are read; a longer tuple is not copied.
        let items: Vec<Id> = self
            .seq_of(pid)
            .ok_or("persistent id is not a tuple")?
            .iter()
            .take(6)
            .copied()
            .collect();
        // Legacy whole-module pickles record each module class with its source code:
        // ('module', class, source_file, source). The class is all that is needed.
        if items.len() >= 2 && self.str_of(items[0]) == Some("module") {
            return Ok(self.nodes[items[1]].clone());
        }
        if items.len() < 5 || self.str_of(items[0]) != Some("storage") {
            return Err("persistent id is not a storage".into());
        }
        let kind = match &self.nodes[items[1]] {
            Node::Global { name, .. } => storage_kind(name)?,
            _ => return Err("storage type is not a class".into()),
        };
        let key = match &self.nodes[items[2]] {
            Node::Str(s) => s.clone(),
            Node::Int(i) => i.to_string(),
            _ => return Err("storage key is not a string".into()),
        };
        let view = match items.get(5).map(|&i| &self.nodes[i]) {
            Some(Node::Tuple(v)) if v.len() >= 2 => {
                let root = match &self.nodes[v[0]] {
                    Node::Str(s) => s.clone(),
                    Node::Int(i) => i.to_string(),
                    _ => return Err("storage view key is not a string".into()),
                };
                let off = self.int_of(v[1]).ok_or("storage view offset")?;
                Some((root, off))
            }
            _ => None,
        };
        let s = StorageRef { key, kind, view };
        self.storages.push(s.clone());
        Ok(Node::Storage(s))
    }

    fn reduce(&mut self, func: Id, args: Id) -> PResult<Node> {
        let (module, name) = match &self.nodes[func] {
            Node::Global { module, name } => (module.clone(), name.clone()),
            _ => {
                return Ok(Node::Object {
                    class: func,
                    args,
                    state: None,
                    items: Vec::new(),
                })
            }
        };
        // The rebuild functions take at most 8 arguments; a longer tuple is not copied.
        let (n_args, a): (usize, Vec<Id>) = self
            .seq_of(args)
            .map(|v| (v.len(), v.iter().take(8).copied().collect()))
            .unwrap_or_default();
        match (module.as_str(), name.as_str()) {
            ("torch._utils", "_rebuild_tensor" | "_rebuild_tensor_v2" | "_rebuild_tensor_v3") => {
                if n_args < 4 {
                    return Err(format!("{name} with {n_args} arguments"));
                }
                let Node::Storage(storage) = self.nodes[a[0]].clone() else {
                    return Err(format!("{name}: first argument is not a storage"));
                };
                let offset = self.int_of(a[1]).ok_or("tensor storage offset")?;
                let size = self.ints_of(a[2])?;
                let stride = self.ints_of(a[3])?;
                // v3: (storage, offset, size, stride, requires_grad, hooks, dtype, metadata)
                let dtype = if name == "_rebuild_tensor_v3" {
                    match a.get(6).map(|&i| &self.nodes[i]) {
                        Some(Node::Global { name, .. }) => Some(dtype_kind(name)?),
                        _ => None,
                    }
                } else {
                    None
                };
                let kind = dtype
                    .or(storage.kind)
                    .ok_or("tensor without a dtype (untyped storage)")?;
                Ok(Node::Tensor(TensorRef {
                    storage,
                    kind,
                    offset,
                    size,
                    stride,
                }))
            }
            ("torch._utils", "_rebuild_parameter" | "_rebuild_parameter_with_state")
            | ("torch.nn.parameter", "Parameter") => {
                let data = *a.first().ok_or("Parameter without data")?;
                Ok(self.nodes[data].clone())
            }
            ("collections", "OrderedDict") | ("builtins" | "__builtin__", "dict") => {
                let mut items = Vec::new();
                let mut walked = 0;
                // OrderedDict([(k, v), ...]) in older pickles
                if let Some(first) = a.first() {
                    if let Some(pairs) = self.seq_of(*first) {
                        walked = pairs.len();
                        for &p in pairs {
                            if let Some(&[k, v]) = self.seq_of(p) {
                                items.push((k, v));
                            }
                        }
                    }
                }
                self.charge(walked)?;
                Ok(Node::Dict(items))
            }
            ("copy_reg" | "copyreg", "_reconstructor") => {
                let class = *a.first().ok_or("_reconstructor without a class")?;
                Ok(Node::Object {
                    class,
                    args,
                    state: None,
                    items: Vec::new(),
                })
            }
            ("torch._utils", other) if other.starts_with("_rebuild") => Err(format!(
                "torch._utils.{other} (a quantized, sparse or device-specific tensor) is not supported"
            )),
            _ => Ok(Node::Object {
                class: func,
                args,
                state: None,
                items: Vec::new(),
            }),
        }
    }
}

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

fn storage_kind(name: &str) -> PResult<Option<Kind>> {
    Ok(Some(match name {
        "FloatStorage" => Kind::Float,
        "DoubleStorage" => Kind::Double,
        "HalfStorage" => Kind::Half,
        "BFloat16Storage" => Kind::BFloat16,
        "LongStorage" => Kind::Int64,
        "IntStorage" => Kind::Int,
        "ShortStorage" => Kind::Int16,
        "CharStorage" => Kind::Int8,
        "ByteStorage" => Kind::Uint8,
        "BoolStorage" => Kind::Bool,
        "UntypedStorage" => return Ok(None),
        other => return Err(format!("unsupported storage type torch.{other}")),
    }))
}

fn dtype_kind(name: &str) -> PResult<Kind> {
    Ok(match name {
        "float32" | "float" => Kind::Float,
        "float64" | "double" => Kind::Double,
        "float16" | "half" => Kind::Half,
        "bfloat16" => Kind::BFloat16,
        "int64" | "long" => Kind::Int64,
        "int32" | "int" => Kind::Int,
        "int16" | "short" => Kind::Int16,
        "int8" => Kind::Int8,
        "uint8" => Kind::Uint8,
        "bool" => Kind::Bool,
        other => return Err(format!("unsupported dtype torch.{other}")),
    })
}

/// Where each storage's bytes are.
trait StorageSource {
    fn bytes(&mut self, key: &str) -> Result<std::borrow::Cow<'_, [u8]>>;
}

struct ZipStorages {
    archive: zip::ZipArchive<std::fs::File>,
    prefix: String,
    path: std::path::PathBuf,
    /// The archive's size on disk: what every entry's declared size is checked against.
    file_len: u64,
    cache: HashMap<String, Vec<u8>>,
}

/// Deflate cannot expand data more than about 1032 times; a larger claimed ratio is a lie.
const MAX_DEFLATE_RATIO: u64 = 1032;

/// Reads one zip entry whole, after checking the sizes its header declares against the archive
/// file: a stored (uncompressed, what `torch.save` writes) entry cannot be larger than the file,
/// a compressed one cannot expand more than deflate can. The read stops at the declared size, so
/// a lying header cannot make it allocate more either.
fn read_entry(
    archive: &mut zip::ZipArchive<std::fs::File>,
    name: &str,
    file_len: u64,
    path: &Path,
) -> Result<Vec<u8>> {
    let f = archive
        .by_name(name)
        .map_err(|e| Error::file(path, format!("entry `{name}`: {e}")))?;
    let (size, packed) = (f.size(), f.compressed_size());
    let limit = match f.compression() {
        zip::CompressionMethod::Stored => packed.min(file_len),
        _ => packed.min(file_len).saturating_mul(MAX_DEFLATE_RATIO),
    };
    if size > limit {
        return Err(Error::file(
            path,
            format!(
                "entry `{name}` claims {size} bytes, more than the {file_len}-byte archive can \
                 hold ({packed} bytes compressed): a corrupt or crafted zip header"
            ),
        ));
    }
    let mut buf = Vec::with_capacity(size as usize);
    f.take(size + 1)
        .read_to_end(&mut buf)
        .map_err(|e| Error::io(path, e))?;
    if buf.len() as u64 != size {
        return Err(Error::file(
            path,
            format!(
                "entry `{name}` holds {} bytes, its header says {size}",
                buf.len()
            ),
        ));
    }
    Ok(buf)
}

impl StorageSource for ZipStorages {
    fn bytes(&mut self, key: &str) -> Result<std::borrow::Cow<'_, [u8]>> {
        if !self.cache.contains_key(key) {
            let name = format!("{}data/{key}", self.prefix);
            let buf = read_entry(&mut self.archive, &name, self.file_len, &self.path)?;
            // A tensor's storage is read once; keep only the latest to bound memory.
            self.cache.clear();
            self.cache.insert(key.to_string(), buf);
        }
        Ok(std::borrow::Cow::Borrowed(&self.cache[key]))
    }
}

struct LegacyStorages<'a> {
    data: &'a [u8],
    /// key → byte range of its elements
    ranges: HashMap<String, (usize, usize)>,
}

impl StorageSource for LegacyStorages<'_> {
    fn bytes(&mut self, key: &str) -> Result<std::borrow::Cow<'_, [u8]>> {
        let (a, b) =
            self.ranges.get(key).copied().ok_or_else(|| {
                Error::Invalid(format!("legacy checkpoint has no storage `{key}`"))
            })?;
        Ok(std::borrow::Cow::Borrowed(&self.data[a..b]))
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
    // Errors found deep in the unpickler (a storage the stream names but the file lacks, say)
    // carry no path: every error leaves here naming the file (found by fuzzing).
    let named = |e: Error| match e {
        Error::Invalid(message) => Error::file(path, message),
        other => other,
    };
    if head.starts_with(b"PK") {
        load_zip(path).map_err(named)
    } else if head[0] == 0x80 {
        load_legacy(path).map_err(named)
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

fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}

fn key_str(nodes: &[Node], k: Id) -> Option<String> {
    match &nodes[k] {
        Node::Str(s) => Some(s.clone()),
        Node::Int(i) => Some(i.to_string()),
        _ => None,
    }
}

/// Walks the pickled object and names every tensor reachable through dicts, lists and module
/// state (`_parameters`, `_buffers`, `_modules` contribute no name part). A container that
/// contains itself (a memo cycle), nesting deeper than [`MAX_DEPTH`], or shared containers that
/// would make the walk visit more than a few times as many nodes as the pickle holds are errors:
/// each would otherwise hang the walk or overflow its stack.
fn collect(nodes: &[Node], root: Id) -> PResult<Vec<(String, TensorRef)>> {
    let mut walk = Walk {
        nodes,
        on_path: vec![false; nodes.len()],
        visits: 0,
        max_visits: 4 * nodes.len() as u64 + (1 << 16),
        out: Vec::new(),
    };
    walk.visit(root, "", 0)?;
    Ok(walk.out)
}

struct Walk<'a> {
    nodes: &'a [Node],
    /// Containers on the path from the root to the node being visited.
    on_path: Vec<bool>,
    visits: u64,
    max_visits: u64,
    out: Vec<(String, TensorRef)>,
}

impl Walk<'_> {
    fn visit(&mut self, id: Id, prefix: &str, depth: usize) -> PResult<()> {
        self.visits += 1;
        if self.visits > self.max_visits {
            return Err(format!(
                "the pickled object graph is too large to walk (more than {} visits for {} \
                 objects: shared containers nested inside each other)",
                self.max_visits,
                self.nodes.len()
            ));
        }
        if depth > MAX_DEPTH {
            return Err(format!(
                "objects nested more than {MAX_DEPTH} levels deep (at `{prefix}`)"
            ));
        }
        let nodes = self.nodes;
        match &nodes[id] {
            Node::Tensor(t) => {
                self.out.push((prefix.to_string(), t.clone()));
                return Ok(());
            }
            Node::Dict(_) | Node::List(_) | Node::Tuple(_) | Node::Object { .. } => {}
            _ => return Ok(()),
        }
        if self.on_path[id] {
            let at = if prefix.is_empty() {
                "the root"
            } else {
                prefix
            };
            return Err(format!(
                "a {} contains itself (a reference cycle at `{at}`)",
                node_name(&nodes[id])
            ));
        }
        self.on_path[id] = true;
        let r = self.children(id, prefix, depth);
        self.on_path[id] = false;
        r
    }

    fn items(&mut self, pairs: &[(Id, Id)], prefix: &str, depth: usize) -> PResult<()> {
        for &(k, v) in pairs {
            let Some(k) = key_str(self.nodes, k) else {
                continue;
            };
            if matches!(k.as_str(), "_parameters" | "_buffers" | "_modules") {
                self.visit(v, prefix, depth + 1)?;
            } else if !k.starts_with('_') {
                self.visit(v, &join(prefix, &k), depth + 1)?;
            }
        }
        Ok(())
    }

    fn children(&mut self, id: Id, prefix: &str, depth: usize) -> PResult<()> {
        let nodes = self.nodes;
        match &nodes[id] {
            Node::Dict(pairs) => self.items(pairs, prefix, depth)?,
            Node::List(v) | Node::Tuple(v) => {
                for (i, &x) in v.iter().enumerate() {
                    self.visit(x, &join(prefix, &i.to_string()), depth + 1)?;
                }
            }
            Node::Object {
                state, items: own, ..
            } => {
                self.items(own, prefix, depth)?;
                if let Some(s) = *state {
                    match &nodes[s] {
                        Node::Dict(pairs) => self.items(pairs, prefix, depth)?,
                        // (state, slotstate) tuples
                        Node::Tuple(v) => {
                            for &x in v {
                                if let Node::Dict(pairs) = &nodes[x] {
                                    self.items(pairs, prefix, depth)?;
                                }
                            }
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
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
}
