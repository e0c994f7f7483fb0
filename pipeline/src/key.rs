//! Content keys of stage instances.
//!
//! A key is blake3 over the stage kind, its version constant, the canonical form of its resolved
//! parameters and the keys (or content digests) of its inputs. Nothing else goes in: not the
//! manifest's path or formatting, not the store, not credentials, not the tool version.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::value::{canonical_params, Params};

/// A 256-bit blake3 digest, shown as 64 hex digits (12 in short form). Every value is valid: the
/// only ways to make one are [`StageKey::from_hash`], [`StageKey::parse`] and deserializing,
/// which checks the text the same way (a key read back from the store, in `_manifest.json`, the
/// run index or a job record, is untrusted).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct StageKey(String);

impl<'de> Deserialize<'de> for StageKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        StageKey::parse(&s).ok_or_else(|| {
            let shown: String = s.chars().take(80).collect();
            serde::de::Error::custom(format!(
                "`{shown}` is not a stage key (64 lowercase hex digits)"
            ))
        })
    }
}

impl StageKey {
    pub fn from_hash(h: blake3::Hash) -> Self {
        StageKey(h.to_hex().to_string())
    }

    /// Parses a full 64-hex-digit key.
    pub fn parse(s: &str) -> Option<Self> {
        (s.len() == 64
            && s.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()))
        .then(|| StageKey(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The first 12 hex digits, as shown by `status`.
    pub fn short(&self) -> &str {
        self.0.get(..12).unwrap_or(&self.0)
    }
}

impl fmt::Display for StageKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for StageKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StageKey({})", self.short())
    }
}

/// Everything that determines a key, kept so that `explain` can say which part changed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyRecipe {
    pub kind: String,
    pub version: u32,
    pub params: Params,
    /// Input slot → the keys or digests bound to it, in binding order.
    pub inputs: BTreeMap<String, Vec<String>>,
}

impl KeyRecipe {
    /// The bytes that are hashed. Versioned by the leading tag, so the encoding itself can change
    /// without colliding with old keys.
    pub fn canonical(&self) -> String {
        let mut s = String::from("adaptor-stage-key/1\n");
        s.push_str(&serde_json::to_string(&self.kind).expect("string"));
        s.push('\n');
        s.push_str(&self.version.to_string());
        s.push('\n');
        s.push_str(&canonical_params(&self.params));
        s.push('\n');
        for (name, keys) in &self.inputs {
            s.push_str(&serde_json::to_string(name).expect("string"));
            s.push('=');
            s.push_str(&keys.join(","));
            s.push('\n');
        }
        s
    }

    pub fn key(&self) -> StageKey {
        StageKey::from_hash(blake3::hash(self.canonical().as_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_validated_when_deserialized() {
        let good = "0123456789abcdef".repeat(4);
        let k: StageKey = serde_json::from_str(&format!("\"{good}\"")).unwrap();
        assert_eq!(k.as_str(), good);
        assert_eq!(k.short(), "0123456789ab");
        for bad in [
            "\"abc\"".to_string(),
            "\"\"".to_string(),
            format!("\"{}\"", good.to_uppercase()),
            format!("\"{good}0\""),
            format!("\"{}é\"", &good[..62]),
            "42".to_string(),
        ] {
            let e = serde_json::from_str::<StageKey>(&bad)
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("is not a stage key") || e.contains("invalid type"),
                "{bad}: {e}"
            );
        }
    }
}
