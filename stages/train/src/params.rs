//! Named parameters in a fixed order, their initialisation, and safetensors files written
//! byte-for-byte deterministically (tensors in the given order, a hand-built header), so two runs
//! with the same seed give identical checkpoint bytes.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::Path;

use tch::{Device, Kind, Tensor};

use crate::error::{io_err, Error, Result};
use crate::rng::{derive_seed, uniform_values};

/// How a tensor is initialised: `center + U(-bound, bound)`; `bound = 0` gives a constant.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Init {
    pub center: f64,
    pub bound: f64,
}

impl Init {
    pub const ZEROS: Init = Init {
        center: 0.0,
        bound: 0.0,
    };
    pub const ONES: Init = Init {
        center: 1.0,
        bound: 0.0,
    };

    /// PyTorch's `nn.Linear` default for weight and bias: kaiming-uniform with `a = √5`, i.e.
    /// `U(±1/√fan_in)`.
    pub fn linear(fan_in: i64) -> Init {
        Init {
            center: 0.0,
            bound: 1.0 / (fan_in as f64).sqrt(),
        }
    }

    /// `xavier_uniform_` (used by `nn.MultiheadAttention` for `in_proj_weight`).
    pub fn xavier(fan_out: i64, fan_in: i64) -> Init {
        Init {
            center: 0.0,
            bound: (6.0 / (fan_in + fan_out) as f64).sqrt(),
        }
    }

    pub fn constant(c: f64) -> Init {
        Init {
            center: c,
            bound: 0.0,
        }
    }
}

/// The trainable parameters of a model, in state-dict order. Models hold shallow clones of these
/// tensors, so loading into the store updates the model in place.
pub struct ParamStore {
    device: Device,
    entries: Vec<(String, Tensor)>,
}

impl ParamStore {
    pub fn new(device: Device) -> Self {
        ParamStore {
            device,
            entries: Vec::new(),
        }
    }

    pub fn device(&self) -> Device {
        self.device
    }

    /// Creates parameter `name` of `shape`, initialised from `seed` (each name gets its own
    /// stream, so adding a parameter never changes the others), and returns a handle to it.
    pub fn add(&mut self, name: &str, shape: &[i64], init: Init, seed: u64) -> Tensor {
        assert!(
            self.get(name).is_none(),
            "parameter `{name}` declared twice"
        );
        let n: i64 = shape.iter().product();
        let values = if init.bound == 0.0 {
            vec![init.center as f32; n as usize]
        } else {
            uniform_values(
                derive_seed(seed, name, 0),
                n as usize,
                init.center,
                init.bound,
            )
        };
        let t = Tensor::from_slice(&values)
            .reshape(shape)
            .to_device(self.device)
            .set_requires_grad(true);
        self.entries.push((name.to_string(), t.shallow_clone()));
        t
    }

    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.entries.iter().find(|(n, _)| n == name).map(|(_, t)| t)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &Tensor)> {
        self.entries.iter().map(|(n, t)| (n.as_str(), t))
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Number of trainable scalars.
    pub fn numel(&self) -> i64 {
        self.entries.iter().map(|(_, t)| t.numel() as i64).sum()
    }

    /// Copies `tensors` into the parameters of the same names. Every parameter must be given,
    /// with its exact shape; extra names are errors too (like PyTorch's `strict=True`).
    pub fn load(&self, tensors: &[(String, Tensor)], origin: &Path) -> Result<()> {
        let err = |message: String| Error::Checkpoint {
            path: origin.to_path_buf(),
            message,
        };
        let given: BTreeMap<&str, &Tensor> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
        let unexpected: Vec<&str> = given
            .keys()
            .copied()
            .filter(|n| self.get(n).is_none())
            .collect();
        if !unexpected.is_empty() {
            return Err(err(format!(
                "unexpected tensors: {}",
                unexpected.join(", ")
            )));
        }
        let missing: Vec<&str> = self
            .entries
            .iter()
            .map(|(n, _)| n.as_str())
            .filter(|n| !given.contains_key(n))
            .collect();
        if !missing.is_empty() {
            return Err(err(format!("missing tensors: {}", missing.join(", "))));
        }
        tch::no_grad(|| {
            for (name, p) in &self.entries {
                let src = given[name.as_str()];
                if src.size() != p.size() {
                    return Err(err(format!(
                        "tensor `{name}` has shape {:?}, expected {:?}",
                        src.size(),
                        p.size()
                    )));
                }
                p.shallow_clone().copy_(&src.to_kind(Kind::Float));
            }
            Ok(())
        })
    }

    /// Copies the current values (detached, on the CPU).
    pub fn snapshot(&self) -> Vec<(String, Tensor)> {
        self.entries
            .iter()
            .map(|(n, t)| (n.clone(), t.detach().to_device(Device::Cpu).copy()))
            .collect()
    }
}

/// Writes float32 (or int64) tensors as a safetensors file, in the given order, atomically
/// (a temporary file renamed into place). `metadata` goes to the `__metadata__` header entry.
pub fn write_safetensors(
    path: &Path,
    tensors: &[(String, Tensor)],
    metadata: &BTreeMap<String, String>,
) -> Result<()> {
    let mut header = String::from("{");
    if !metadata.is_empty() {
        header.push_str("\"__metadata__\":{");
        let items: Vec<String> = metadata
            .iter()
            .map(|(k, v)| format!("{}:{}", json_str(k), json_str(v)))
            .collect();
        header.push_str(&items.join(","));
        header.push('}');
    }
    let mut blobs: Vec<Vec<u8>> = Vec::with_capacity(tensors.len());
    let mut offset = 0usize;
    for (i, (name, t)) in tensors.iter().enumerate() {
        let t = t.detach().to_device(Device::Cpu).contiguous();
        let (dtype, bytes) = match t.kind() {
            Kind::Float => ("F32", to_le_bytes::<f32>(&t)?),
            Kind::Int64 => ("I64", to_le_bytes::<i64>(&t)?),
            k => {
                return Err(Error::Output {
                    path: path.to_path_buf(),
                    message: format!("tensor `{name}`: unsupported kind {k:?}"),
                })
            }
        };
        if i > 0 || !metadata.is_empty() {
            header.push(',');
        }
        let shape: Vec<String> = t.size().iter().map(|d| d.to_string()).collect();
        header.push_str(&format!(
            "{}:{{\"dtype\":\"{dtype}\",\"shape\":[{}],\"data_offsets\":[{},{}]}}",
            json_str(name),
            shape.join(","),
            offset,
            offset + bytes.len()
        ));
        offset += bytes.len();
        blobs.push(bytes);
    }
    header.push('}');
    // The data section starts 8-byte aligned (safetensors pads the header with spaces).
    while (header.len() + 8) % 8 != 0 {
        header.push(' ');
    }
    let tmp = path.with_extension("safetensors.tmp");
    {
        let mut f = fs::File::create(&tmp).map_err(io_err(&tmp))?;
        f.write_all(&(header.len() as u64).to_le_bytes())
            .map_err(io_err(&tmp))?;
        f.write_all(header.as_bytes()).map_err(io_err(&tmp))?;
        for b in &blobs {
            f.write_all(b).map_err(io_err(&tmp))?;
        }
        f.sync_all().map_err(io_err(&tmp))?;
    }
    fs::rename(&tmp, path).map_err(io_err(path))
}

/// Reads every tensor of a safetensors file (any writer), in file order.
pub fn read_safetensors(path: &Path) -> Result<Vec<(String, Tensor)>> {
    Tensor::read_safetensors(path).map_err(|e| Error::Checkpoint {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// Reads the `__metadata__` entry of a safetensors header.
pub fn read_safetensors_metadata(path: &Path) -> Result<BTreeMap<String, String>> {
    let bytes = fs::read(path).map_err(io_err(path))?;
    let bad = |m: &str| Error::Checkpoint {
        path: path.to_path_buf(),
        message: m.to_string(),
    };
    if bytes.len() < 8 {
        return Err(bad("file too short for a safetensors header"));
    }
    let n = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")) as usize;
    let header = bytes.get(8..8 + n).ok_or_else(|| bad("truncated header"))?;
    let v: serde_json::Value = serde_json::from_slice(header).map_err(|e| Error::Json {
        path: path.to_path_buf(),
        source: e,
    })?;
    Ok(v.get("__metadata__")
        .and_then(|m| m.as_object())
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_string())))
                .collect()
        })
        .unwrap_or_default())
}

fn to_le_bytes<T: tch::kind::Element + ToLe>(t: &Tensor) -> Result<Vec<u8>> {
    let n = t.numel();
    let mut v = vec![<T as ToLe>::ZERO; n];
    t.f_copy_data(&mut v, n)?;
    let mut out = Vec::with_capacity(n * std::mem::size_of::<T>());
    for x in v {
        x.put(&mut out);
    }
    Ok(out)
}

trait ToLe: Copy {
    const ZERO: Self;
    fn put(self, out: &mut Vec<u8>);
}

impl ToLe for f32 {
    const ZERO: Self = 0.0;
    fn put(self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_le_bytes());
    }
}

impl ToLe for i64 {
    const ZERO: Self = 0;
    fn put(self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_le_bytes());
    }
}

fn json_str(s: &str) -> String {
    serde_json::to_string(s).expect("a string serialises")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn safetensors_round_trip_keeps_order_values_and_metadata() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.safetensors");
        let tensors = vec![
            (
                "b.weight".to_string(),
                Tensor::from_slice(&[1.0f32, 2.0, 3.0, 4.0]).reshape([2, 2]),
            ),
            (
                "a".to_string(),
                Tensor::from_slice(&[7.5f32]).reshape([0i64; 0]),
            ),
            ("step".to_string(), Tensor::from_slice(&[3i64])),
        ];
        let meta = BTreeMap::from([("format".to_string(), "pt".to_string())]);
        write_safetensors(&path, &tensors, &meta).unwrap();
        let back = read_safetensors(&path).unwrap();
        let names: Vec<&str> = back.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names.len(), 3);
        let get = |n: &str| &back.iter().find(|(m, _)| m == n).unwrap().1;
        assert_eq!(get("b.weight").size(), vec![2, 2]);
        assert_eq!(get("a").size(), Vec::<i64>::new());
        assert_eq!(get("a").double_value(&[]), 7.5);
        assert_eq!(get("step").int64_value(&[0]), 3);
        assert_eq!(read_safetensors_metadata(&path).unwrap(), meta);
        // Same input, same bytes.
        let p2 = dir.path().join("y.safetensors");
        write_safetensors(&p2, &tensors, &meta).unwrap();
        assert_eq!(fs::read(&path).unwrap(), fs::read(&p2).unwrap());
    }
}
