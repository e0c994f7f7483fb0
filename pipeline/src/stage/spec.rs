//! What a stage kind declares: its parameters (name, type, default) and its input slots (what
//! each accepts, one or many). The planner checks manifests against these declarations.

use std::fmt;

use crate::value::Value;

/// The type a parameter must have. Checked by the planner, so `run` can rely on it.
#[derive(Debug, Clone, PartialEq)]
pub enum ParamType {
    Bool,
    Int,
    /// A float; integers are accepted and widened (`lr = 1` means `1.0`).
    Float,
    Str,
    /// A string from a closed set, listed in errors.
    Choice(&'static [&'static str]),
    /// An array whose items all have the given type.
    List(Box<ParamType>),
    /// Anything (a table of options, say); the stage validates it in [`Stage::validate`].
    Any,
}

impl ParamType {
    pub fn describe(&self) -> String {
        match self {
            ParamType::Bool => "a boolean".into(),
            ParamType::Int => "an integer".into(),
            ParamType::Float => "a number".into(),
            ParamType::Str => "a string".into(),
            ParamType::Choice(c) => format!("one of {}", c.join(", ")),
            ParamType::List(t) => format!("an array of {}", strip_article(&t.describe())),
            ParamType::Any => "any value".into(),
        }
    }

    /// Checks `value` against this type and returns it normalised (ints widened to floats where a
    /// float is expected, so `lr = 1` and `lr = 1.0` give the same key).
    pub fn coerce(&self, value: &Value) -> Option<Value> {
        match (self, value) {
            (ParamType::Bool, Value::Bool(_))
            | (ParamType::Int, Value::Int(_))
            | (ParamType::Str, Value::Str(_))
            | (ParamType::Any, _) => Some(value.clone()),
            (ParamType::Float, Value::Float(f)) if f.is_finite() => Some(value.clone()),
            (ParamType::Float, Value::Int(i)) => Some(Value::Float(*i as f64)),
            (ParamType::Choice(choices), Value::Str(s)) if choices.contains(&s.as_str()) => {
                Some(value.clone())
            }
            (ParamType::List(item), Value::Array(items)) => items
                .iter()
                .map(|v| item.coerce(v))
                .collect::<Option<Vec<_>>>()
                .map(Value::Array),
            _ => None,
        }
    }
}

fn strip_article(s: &str) -> String {
    s.strip_prefix("an ")
        .or_else(|| s.strip_prefix("a "))
        .map(|r| format!("{r}s"))
        .unwrap_or_else(|| s.to_string())
}

/// One declared parameter. `default: None` makes it required.
#[derive(Debug, Clone)]
pub struct ParamSpec {
    pub name: &'static str,
    pub ty: ParamType,
    pub default: Option<Value>,
    pub doc: &'static str,
    /// Added to its kind after artifacts of the kind existed: at its default it is left out of
    /// the resolved parameters, hence out of the key (the kind reads the default itself), so
    /// adding it changed no key. Set to anything else, it is a parameter like any other.
    pub late: bool,
}

impl ParamSpec {
    pub fn required(name: &'static str, ty: ParamType, doc: &'static str) -> Self {
        ParamSpec {
            name,
            ty,
            default: None,
            doc,
            late: false,
        }
    }

    pub fn optional(name: &'static str, ty: ParamType, default: Value, doc: &'static str) -> Self {
        ParamSpec {
            name,
            ty,
            default: Some(default),
            doc,
            late: false,
        }
    }
}

/// Parameters a stage's checks refused ([`Stage::validate`]): which one (`None` when no single
/// parameter is at fault) and why. The planner reports it at the key in the manifest
/// (`stages.NAME.params.KEY: message`).
#[derive(Debug, Clone, PartialEq)]
pub struct ParamError {
    pub key: Option<String>,
    pub message: String,
}

impl ParamError {
    pub fn at(key: impl Into<String>, message: impl Into<String>) -> Self {
        ParamError {
            key: Some(key.into()),
            message: message.into(),
        }
    }
}

impl fmt::Display for ParamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.key {
            Some(key) => write!(f, "parameter `{key}`: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for ParamError {}

impl From<String> for ParamError {
    fn from(message: String) -> Self {
        ParamError { key: None, message }
    }
}

/// What one reference of an input slot is bound to, as [`crate::Stage::check_inputs`] sees it at
/// plan time: an upstream instance (its kind, name and resolved parameters) or an external folder
/// (its kind and its manifest parameters).
#[derive(Debug, Clone, Copy)]
pub struct BoundInput<'a> {
    /// The upstream stage kind, or the external folder's `kind` (`dinov2`, `rsna`, ...).
    pub kind: &'a str,
    /// The upstream instance's name, or the external's reference (`backbones.vit`).
    pub name: &'a str,
    pub params: &'a crate::value::Params,
}

/// What an input slot accepts.
#[derive(Debug, Clone, PartialEq)]
pub enum InputAccepts {
    /// An external folder declared in the manifest under `[datasets.NAME]`.
    Dataset,
    /// An external folder declared under `[backbones.NAME]`.
    Backbone,
    /// The output of a stage of one of these kinds.
    Stage(&'static [&'static str]),
    /// A dataset folder or the output of one of these stage kinds (e.g. raw data that may be a
    /// downloaded dataset or a `synth` artifact).
    DatasetOrStage(&'static [&'static str]),
    /// Anything: a dataset, a backbone or any stage's output (generic stages such as `command`).
    Any,
}

/// One declared input slot.
#[derive(Debug, Clone)]
pub struct InputSpec {
    pub name: &'static str,
    pub accepts: InputAccepts,
    pub required: bool,
    /// Whether the slot takes a list (`"eval[*]"`, or an array of references).
    pub many: bool,
    pub doc: &'static str,
    /// The stage reads this slot's tables straight from a remote store (ranged reads, digests
    /// checked as they stream), so the runner makes no cache copy of it (see [`InputSpec::streamed`]).
    pub streamed: bool,
}

impl InputSpec {
    pub fn one(name: &'static str, accepts: InputAccepts, doc: &'static str) -> Self {
        InputSpec {
            name,
            accepts,
            required: true,
            many: false,
            doc,
            streamed: false,
        }
    }

    pub fn many(name: &'static str, accepts: InputAccepts, doc: &'static str) -> Self {
        InputSpec {
            name,
            accepts,
            required: true,
            many: true,
            doc,
            streamed: false,
        }
    }

    pub fn optional(mut self) -> Self {
        self.required = false;
        self
    }

    /// Declares that the stage reads this slot's artifacts from a remote store itself, through
    /// [`crate::stage::StageContext::remote`]: on an S3 store the runner passes their location
    /// instead of a cache copy (unless the store settings ask for cache copies).
    pub fn streamed(mut self) -> Self {
        self.streamed = true;
        self
    }
}
