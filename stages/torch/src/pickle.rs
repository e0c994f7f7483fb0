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
}

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
        }
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

    /// Items of a tuple or list (or a `torch.Size(tuple)` object).
    fn seq_of(&self, id: Id) -> Option<Vec<Id>> {
        match &self.nodes[id] {
            Node::Tuple(v) | Node::List(v) => Some(v.clone()),
            Node::Object { args, .. } => match &self.nodes[*args] {
                Node::Tuple(a) if a.len() == 1 => self.seq_of(a[0]),
                _ => None,
            },
            _ => None,
        }
    }

    fn ints_of(&self, id: Id) -> PResult<Vec<i64>> {
        self.seq_of(id)
            .ok_or("tensor size/stride is not a tuple")?
            .into_iter()
            .map(|i| {
                self.int_of(i)
                    .ok_or_else(|| "tensor size/stride holds a non-integer".into())
            })
            .collect()
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
        let items = self.seq_of(pid).ok_or("persistent id is not a tuple")?;
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
        let a = self.seq_of(args).unwrap_or_default();
        match (module.as_str(), name.as_str()) {
            ("torch._utils", "_rebuild_tensor" | "_rebuild_tensor_v2" | "_rebuild_tensor_v3") => {
                if a.len() < 4 {
                    return Err(format!("{name} with {} arguments", a.len()));
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
                // OrderedDict([(k, v), ...]) in older pickles
                if let Some(first) = a.first() {
                    if let Some(pairs) = self.seq_of(*first) {
                        for p in pairs {
                            if let Some([k, v]) = self.seq_of(p).as_deref() {
                                items.push((*k, *v));
                            }
                        }
                    }
                }
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
    cache: HashMap<String, Vec<u8>>,
}

impl StorageSource for ZipStorages {
    fn bytes(&mut self, key: &str) -> Result<std::borrow::Cow<'_, [u8]>> {
        if !self.cache.contains_key(key) {
            let name = format!("{}data/{key}", self.prefix);
            let mut f = self
                .archive
                .by_name(&name)
                .map_err(|e| Error::file(&self.path, format!("storage `{name}`: {e}")))?;
            let mut buf = Vec::with_capacity(f.size() as usize);
            f.read_to_end(&mut buf)
                .map_err(|e| Error::io(&self.path, e))?;
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
    let mut archive = zip::ZipArchive::new(file)
        .map_err(|e| Error::file(path, format!("bad zip archive: {e}")))?;
    let pkl = archive
        .file_names()
        .find(|n| n.ends_with("data.pkl"))
        .map(str::to_string)
        .ok_or_else(|| Error::file(path, "zip archive without data.pkl: not a torch.save file"))?;
    let prefix = pkl[..pkl.len() - "data.pkl".len()].to_string();
    if let Ok(mut f) = archive.by_name(&format!("{prefix}byteorder")) {
        let mut s = String::new();
        let _ = f.read_to_string(&mut s);
        if s.trim() == "big" {
            return Err(Error::file(
                path,
                "big-endian checkpoints are not supported",
            ));
        }
    }
    let mut data = Vec::new();
    archive
        .by_name(&pkl)
        .map_err(|e| Error::file(path, e.to_string()))?
        .read_to_end(&mut data)
        .map_err(|e| Error::io(path, e))?;
    let mut nodes = Vec::new();
    let root = {
        let mut m = Machine::new(&data, 0, &mut nodes);
        m.run().map_err(|e| Error::file(path, e))?
    };
    let mut src = ZipStorages {
        archive,
        prefix,
        path: path.to_path_buf(),
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
    let mut refs = Vec::new();
    collect(nodes, root, "", &mut refs, 0);
    if refs.is_empty() {
        return Err(Error::file(path, "the checkpoint holds no tensors"));
    }
    let mut out = Vec::with_capacity(refs.len());
    for (name, t) in refs {
        let (key, base) = match &t.storage.view {
            Some((root, off)) => (root.as_str(), *off),
            None => (t.storage.key.as_str(), 0),
        };
        let bytes = src.bytes(key)?;
        let elt = t.kind.elt_size_in_bytes();
        let numel_storage = (bytes.len() / elt) as i64;
        let offset = base + t.offset;
        // The furthest element the view touches must lie inside the storage.
        let extent: i64 = t
            .size
            .iter()
            .zip(&t.stride)
            .map(|(&s, &st)| if s == 0 { 0 } else { (s - 1) * st })
            .sum();
        let empty = t.size.contains(&0);
        if !empty && offset + extent >= numel_storage {
            return Err(Error::file(
                path,
                format!("tensor `{name}` reaches beyond its storage `{key}`"),
            ));
        }
        let flat = Tensor::f_from_data_size(
            &bytes[..numel_storage as usize * elt],
            &[numel_storage],
            t.kind,
        )?;
        let tensor = if empty {
            Tensor::f_zeros(&t.size, (t.kind, tch::Device::Cpu))?
        } else {
            flat.f_as_strided(&t.size, &t.stride, offset)?
                .f_contiguous()?
        };
        out.push((name, tensor));
    }
    Ok(out)
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
/// state (`_parameters`, `_buffers`, `_modules` contribute no name part).
fn collect(nodes: &[Node], id: Id, prefix: &str, out: &mut Vec<(String, TensorRef)>, depth: usize) {
    if depth > 64 {
        return;
    }
    let items = |pairs: &[(Id, Id)], out: &mut Vec<(String, TensorRef)>| {
        for (k, v) in pairs {
            let Some(k) = key_str(nodes, *k) else {
                continue;
            };
            if matches!(k.as_str(), "_parameters" | "_buffers" | "_modules") {
                collect(nodes, *v, prefix, out, depth + 1);
            } else if !k.starts_with('_') {
                collect(nodes, *v, &join(prefix, &k), out, depth + 1);
            }
        }
    };
    match &nodes[id] {
        Node::Tensor(t) => out.push((prefix.to_string(), t.clone())),
        Node::Dict(pairs) => items(pairs, out),
        Node::List(v) | Node::Tuple(v) => {
            for (i, x) in v.iter().enumerate() {
                collect(nodes, *x, &join(prefix, &i.to_string()), out, depth + 1);
            }
        }
        Node::Object {
            state, items: own, ..
        } => {
            items(own, out);
            if let Some(s) = state {
                match &nodes[*s] {
                    Node::Dict(pairs) => items(pairs, out),
                    // (state, slotstate) tuples
                    Node::Tuple(v) => {
                        for x in v {
                            if let Node::Dict(pairs) = &nodes[*x] {
                                items(pairs, out);
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
        _ => {}
    }
}
