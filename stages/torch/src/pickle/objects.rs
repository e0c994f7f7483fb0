//! What torch's pickles mean: persistent ids become storages, `_rebuild_tensor_v2` and friends
//! become tensor views, other classes stay recorded objects; dtype and storage names map to
//! libtorch kinds.

use tch::Kind;

use super::{Id, Machine, Node, PResult, StorageRef, TensorRef};

impl Machine<'_> {
    /// `('storage', storage_type, key, location, numel[, view_metadata])`.
    pub(super) fn persistent(&mut self, pid: Id) -> PResult<Node> {
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

    pub(super) fn reduce(&mut self, func: Id, args: Id) -> PResult<Node> {
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
