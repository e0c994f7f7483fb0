//! Step one of two: manifest files → a located tree.
//!
//! TOML is parsed with spans, `include`s are merged (the including file wins), and every value keeps
//! the file and line it came from, so that step two ([`crate::plan`]) can report errors as
//! `file:line:col: key.path: message`.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{ManifestError, Result};

/// A manifest file's text, kept to turn byte offsets into lines.
#[derive(Debug)]
pub struct SourceFile {
    /// As given (for messages).
    pub path: PathBuf,
    /// The absolute folder of the file (for resolving relative paths).
    dir: PathBuf,
    text: String,
}

impl SourceFile {
    /// 1-based line and column of a byte offset.
    pub fn line_col(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let before = &self.text[..offset];
        let line = before.matches('\n').count() + 1;
        let col = before.rfind('\n').map_or(offset, |nl| offset - nl - 1) + 1;
        (line, col)
    }

    /// The folder relative paths in this file resolve against.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// Where a value was written.
#[derive(Clone)]
pub struct Loc {
    pub file: Arc<SourceFile>,
    pub offset: usize,
}

impl Loc {
    pub fn line_col(&self) -> (usize, usize) {
        self.file.line_col(self.offset)
    }

    /// An error at this location about the dotted key `key`.
    pub fn error(&self, key: &str, message: impl Into<String>) -> ManifestError {
        let (line, col) = self.line_col();
        ManifestError {
            file: self.file.path.clone(),
            line,
            col,
            key: key.to_string(),
            message: message.into(),
        }
    }
}

impl fmt::Debug for Loc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (l, c) = self.line_col();
        write!(f, "{}:{l}:{c}", self.file.path.display())
    }
}

/// A TOML value with its location. Tables keep keys sorted; the order keys were written in never
/// matters anywhere downstream.
#[derive(Debug, Clone)]
pub struct Node {
    pub value: NodeValue,
    pub loc: Loc,
}

#[derive(Debug, Clone)]
pub enum NodeValue {
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Array(Vec<Node>),
    Table(BTreeMap<String, Node>),
}

impl Node {
    pub fn type_name(&self) -> &'static str {
        match self.value {
            NodeValue::Bool(_) => "a boolean",
            NodeValue::Int(_) => "an integer",
            NodeValue::Float(_) => "a float",
            NodeValue::Str(_) => "a string",
            NodeValue::Array(_) => "an array",
            NodeValue::Table(_) => "a table",
        }
    }

    pub fn as_table(&self) -> Option<&BTreeMap<String, Node>> {
        match &self.value {
            NodeValue::Table(t) => Some(t),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match &self.value {
            NodeValue::Str(s) => Some(s),
            _ => None,
        }
    }

    /// Converts to a plain [`crate::Value`] (locations dropped).
    pub fn to_value(&self) -> crate::Value {
        use crate::Value;
        match &self.value {
            NodeValue::Bool(b) => Value::Bool(*b),
            NodeValue::Int(i) => Value::Int(*i),
            NodeValue::Float(f) => Value::Float(*f),
            NodeValue::Str(s) => Value::Str(s.clone()),
            NodeValue::Array(a) => Value::Array(a.iter().map(Node::to_value).collect()),
            NodeValue::Table(t) => {
                Value::Table(t.iter().map(|(k, v)| (k.clone(), v.to_value())).collect())
            }
        }
    }

    /// Deep merge: tables merge key by key, anything else in `over` replaces `self`.
    fn merge(&mut self, over: Node) {
        match (&mut self.value, over.value) {
            (NodeValue::Table(base), NodeValue::Table(top)) => {
                for (k, v) in top {
                    match base.get_mut(&k) {
                        Some(existing) => existing.merge(v),
                        None => {
                            base.insert(k, v);
                        }
                    }
                }
            }
            (_, value) => {
                self.value = value;
                self.loc = over.loc;
            }
        }
    }
}

/// Reads a manifest and its includes into one located tree. `include = ["a.toml", ...]` at the top
/// level merges those files first (recursively, in order), then this file over them.
pub fn load(path: &Path) -> Result<Node> {
    let mut stack = Vec::new();
    load_inner(path, &mut stack)
}

fn load_inner(path: &Path, stack: &mut Vec<PathBuf>) -> Result<Node> {
    let canonical = path.canonicalize().map_err(|e| ManifestError {
        file: path.to_path_buf(),
        line: 0,
        col: 0,
        key: String::new(),
        message: format!("cannot read manifest: {e}"),
    })?;
    if stack.contains(&canonical) {
        let chain: Vec<String> = stack
            .iter()
            .chain(std::iter::once(&canonical))
            .map(|p| p.display().to_string())
            .collect();
        return Err(ManifestError {
            file: path.to_path_buf(),
            line: 0,
            col: 0,
            key: "include".into(),
            message: format!("include cycle: {}", chain.join(" -> ")),
        }
        .into());
    }
    let text = std::fs::read_to_string(&canonical).map_err(|e| ManifestError {
        file: path.to_path_buf(),
        line: 0,
        col: 0,
        key: String::new(),
        message: format!("cannot read manifest: {e}"),
    })?;
    let dir = canonical
        .parent()
        .map_or_else(|| PathBuf::from("/"), Path::to_path_buf);
    let file = Arc::new(SourceFile {
        path: path.to_path_buf(),
        dir,
        text,
    });
    let mut root = parse_toml(&file)?;

    let includes = match &mut root.value {
        NodeValue::Table(t) => t.remove("include"),
        _ => None,
    };
    let Some(includes) = includes else {
        return Ok(root);
    };
    let items = match includes.value {
        NodeValue::Array(items) => items,
        NodeValue::Str(_) => vec![includes.clone()],
        _ => {
            return Err(includes
                .loc
                .error(
                    "include",
                    format!(
                        "expected an array of file paths, found {}",
                        includes.type_name()
                    ),
                )
                .into())
        }
    };
    stack.push(canonical);
    let mut merged: Option<Node> = None;
    for (i, item) in items.iter().enumerate() {
        let Some(rel) = item.as_str() else {
            return Err(item
                .loc
                .error(
                    &format!("include[{i}]"),
                    format!("expected a file path, found {}", item.type_name()),
                )
                .into());
        };
        let target = file.dir().join(rel);
        // A folder, FIFO or device is refused here, where the including line can be named
        // (reading a FIFO would also block forever).
        if !target.is_file() {
            let what = if target.exists() {
                "is not a regular file"
            } else {
                "does not exist"
            };
            return Err(item
                .loc
                .error(
                    &format!("include[{i}]"),
                    format!("included file {} {what}", target.display()),
                )
                .into());
        }
        let node = load_inner(&target, stack)?;
        match &mut merged {
            Some(m) => m.merge(node),
            None => merged = Some(node),
        }
    }
    stack.pop();
    match merged {
        Some(mut base) => {
            base.merge(root);
            Ok(base)
        }
        None => Ok(root),
    }
}

/// Parses one file's TOML into a located tree.
pub fn parse_toml(file: &Arc<SourceFile>) -> Result<Node> {
    let doc = toml_edit::ImDocument::parse(file.text.clone()).map_err(|e| {
        let offset = e.span().map_or(0, |s| s.start);
        let (line, col) = file.line_col(offset);
        let message = e
            .message()
            .trim()
            .lines()
            .map(str::trim)
            .collect::<Vec<_>>()
            .join("; ");
        ManifestError {
            file: file.path.clone(),
            line,
            col,
            key: String::new(),
            message: format!("invalid TOML: {message}"),
        }
    })?;
    convert_table(file, doc.as_table(), 0, "")
}

fn loc(file: &Arc<SourceFile>, span: Option<std::ops::Range<usize>>, fallback: usize) -> Loc {
    Loc {
        file: file.clone(),
        offset: span.map_or(fallback, |s| s.start),
    }
}

fn join_key(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}.{key}")
    }
}

fn convert_table(
    file: &Arc<SourceFile>,
    table: &dyn toml_edit::TableLike,
    offset: usize,
    path: &str,
) -> Result<Node> {
    let mut out = BTreeMap::new();
    for (k, item) in table.iter() {
        let key_span = table.key(k).and_then(|key| key.span());
        let key_loc = loc(file, key_span, offset);
        let key_path = join_key(path, k);
        let node = convert_item(file, item, key_loc.offset, &key_path)?;
        // Point at the key, which is where a reader looks for `lr = ...`.
        let node = Node {
            loc: key_loc,
            ..node
        };
        out.insert(k.to_string(), node);
    }
    Ok(Node {
        value: NodeValue::Table(out),
        loc: loc(file, None, offset),
    })
}

fn convert_item(
    file: &Arc<SourceFile>,
    item: &toml_edit::Item,
    offset: usize,
    path: &str,
) -> Result<Node> {
    use toml_edit::Item;
    match item {
        Item::Value(v) => convert_value(file, v, offset, path),
        Item::Table(t) => convert_table(file, t, t.span().map_or(offset, |s| s.start), path),
        Item::ArrayOfTables(a) => Ok(Node {
            value: NodeValue::Array(
                a.iter()
                    .map(|t| convert_table(file, t, t.span().map_or(offset, |s| s.start), path))
                    .collect::<Result<_>>()?,
            ),
            loc: loc(file, a.span(), offset),
        }),
        Item::None => Ok(Node {
            value: NodeValue::Table(BTreeMap::new()),
            loc: loc(file, None, offset),
        }),
    }
}

fn convert_value(
    file: &Arc<SourceFile>,
    v: &toml_edit::Value,
    offset: usize,
    path: &str,
) -> Result<Node> {
    use toml_edit::Value as V;
    let here = loc(file, v.span(), offset);
    let value = match v {
        V::String(s) => NodeValue::Str(s.value().clone()),
        V::Integer(i) => NodeValue::Int(*i.value()),
        V::Float(f) => {
            let x = *f.value();
            if !x.is_finite() {
                return Err(here
                    .error(path, "nan and inf are not allowed in manifests")
                    .into());
            }
            NodeValue::Float(x)
        }
        V::Boolean(b) => NodeValue::Bool(*b.value()),
        V::Datetime(_) => {
            return Err(here
                .error(path, "dates and times are not supported in manifests")
                .into())
        }
        V::Array(a) => NodeValue::Array(
            a.iter()
                .enumerate()
                .map(|(i, item)| convert_value(file, item, here.offset, &format!("{path}[{i}]")))
                .collect::<Result<_>>()?,
        ),
        V::InlineTable(t) => {
            return convert_table(file, t, here.offset, path).map(|n| Node { loc: here, ..n })
        }
    };
    Ok(Node { value, loc: here })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Node {
        let file = Arc::new(SourceFile {
            path: "m.toml".into(),
            dir: "/".into(),
            text: text.into(),
        });
        parse_toml(&file).unwrap()
    }

    #[test]
    fn locations_point_at_keys() {
        let n = parse("a = 1\n[stages.x]\nkind = \"y\"\n");
        let t = n.as_table().unwrap();
        let kind = &t["stages"].as_table().unwrap()["x"].as_table().unwrap()["kind"];
        assert_eq!(kind.loc.line_col(), (3, 1));
    }

    #[test]
    fn merge_overrides_leaves_and_keeps_siblings() {
        let mut a = parse("[s]\nx = 1\ny = 2\n");
        let b = parse("[s]\ny = 3\n");
        a.merge(b);
        let s = a.as_table().unwrap()["s"].as_table().unwrap();
        assert!(matches!(s["x"].value, NodeValue::Int(1)));
        assert!(matches!(s["y"].value, NodeValue::Int(3)));
    }
}
