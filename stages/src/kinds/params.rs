//! Typed stage parameters: one Rust struct per kind, from which the planner's [`ParamSpec`]s
//! (names, types, defaults, docs), the range checks and the worker's reading are all derived.
//!
//! [`stage_params!`] declares a kind's struct field by field (`name: Type = default, check f; "doc"`,
//! the check optional), [`param_group!`] a group of fields several kinds share with defaults of
//! their own (the training settings of `classify` and `segment`), [`choice!`] a closed set of
//! strings as a Rust enum. A field's [`ParamValue`] type fixes its [`ParamType`]: `i64` is an
//! `Int`, `f64` a `Float` (integers widen), so the canonical parameters, hence keys, are exactly
//! what the hand-written lists gave.

use pipeline::stage::ParamError;
use pipeline::{ParamSpec, ParamType, Params, Value};

/// A Rust type a parameter can have: its manifest type and its conversions.
pub trait ParamValue: Sized {
    fn param_type() -> ParamType;
    fn to_value(&self) -> Value;
    /// The value the planner checked against [`ParamValue::param_type`]; `Err` says why not.
    fn from_value(v: &Value) -> Result<Self, String>;
}

fn mismatch<T: ParamValue>(v: &Value) -> String {
    format!(
        "expected {}, found {} ({v})",
        T::param_type().describe(),
        v.type_name()
    )
}

/// `bool`, `i64` and `f64` parameters: `Value::Bool`, `Value::Int`, `Value::Float` (an integer
/// is read as a float where a float is declared, as the planner widened it).
macro_rules! scalar_param {
    ($($ty:ty => $param:ident, $variant:ident, $read:ident;)*) => {$(
        impl ParamValue for $ty {
            fn param_type() -> ParamType {
                ParamType::$param
            }
            fn to_value(&self) -> Value {
                Value::$variant(*self)
            }
            fn from_value(v: &Value) -> Result<Self, String> {
                v.$read().ok_or_else(|| mismatch::<Self>(v))
            }
        }
    )*};
}

scalar_param! {
    bool => Bool, Bool, as_bool;
    i64 => Int, Int, as_i64;
    f64 => Float, Float, as_f64;
}

impl ParamValue for String {
    fn param_type() -> ParamType {
        ParamType::Str
    }
    fn to_value(&self) -> Value {
        Value::Str(self.clone())
    }
    fn from_value(v: &Value) -> Result<Self, String> {
        v.as_str()
            .map(str::to_string)
            .ok_or_else(|| mismatch::<Self>(v))
    }
}

/// A kind's parameters as one struct (see [`stage_params!`]).
pub trait ParamSet: Sized {
    /// The declarations the planner checks manifests against, in documentation order.
    fn specs() -> Vec<ParamSpec>;
    /// Reads resolved parameters (defaults filled in, types checked by the planner). Only
    /// converts: the worker reads what the runner validated.
    fn read(params: &Params) -> Result<Self, ParamError>;
    /// The checks beyond types (ranges, combinations), naming the parameter at fault.
    fn check(&self) -> Result<(), ParamError>;

    /// What the planner calls: read, then check, once.
    fn validate(params: &Params) -> Result<Self, ParamError> {
        let p = Self::read(params)?;
        p.check()?;
        Ok(p)
    }
}

/// Fields several kinds share, each kind with its own defaults (see [`param_group!`]).
pub trait ParamGroup: Sized {
    fn specs(defaults: &Self) -> Vec<ParamSpec>;
    fn read(params: &Params) -> Result<Self, ParamError>;
    fn check(&self) -> Result<(), ParamError>;
}

/// Reads parameter `name` as a `T`.
pub fn read_field<T: ParamValue>(params: &Params, name: &str) -> Result<T, ParamError> {
    let v = params
        .get(name)
        .ok_or_else(|| ParamError::at(name, "missing (the planner fills in every default)"))?;
    T::from_value(v).map_err(|m| ParamError::at(name, m))
}

/// Reads a late parameter (`ParamSpec::late`): absent means its default, which the planner
/// leaves out of the resolved parameters so that adding the parameter changed no key.
pub fn read_late_field<T: ParamValue>(
    params: &Params,
    name: &str,
    default: T,
) -> Result<T, ParamError> {
    match params.get(name) {
        None => Ok(default),
        Some(v) => T::from_value(v).map_err(|m| ParamError::at(name, m)),
    }
}

/// Runs one field's check, naming the field.
pub fn check_field<T>(
    name: &str,
    value: &T,
    check: impl Fn(&T) -> Result<(), String>,
) -> Result<(), ParamError> {
    check(value).map_err(|m| ParamError::at(name, m))
}

/// `lo..=hi`, for integers.
pub fn int_in(lo: i64, hi: i64) -> impl Fn(&i64) -> Result<(), String> {
    move |&v| {
        if (lo..=hi).contains(&v) {
            Ok(())
        } else {
            Err(format!("must be in {lo}..={hi}, got {v}"))
        }
    }
}

/// `[lo, hi]`, for numbers.
pub fn float_in(lo: f64, hi: f64) -> impl Fn(&f64) -> Result<(), String> {
    move |&v| {
        if v.is_finite() && (lo..=hi).contains(&v) {
            Ok(())
        } else {
            Err(format!("must be in [{lo}, {hi}], got {v}"))
        }
    }
}

/// `(0, hi]`: a learning rate, a share.
pub fn positive_up_to(hi: f64) -> impl Fn(&f64) -> Result<(), String> {
    move |&v| {
        if v > 0.0 && v <= hi {
            Ok(())
        } else {
            Err(format!("must be in (0, {hi}], got {v}"))
        }
    }
}

/// A finite number ≥ 0.
pub fn non_negative(v: &f64) -> Result<(), String> {
    if v.is_finite() && *v >= 0.0 {
        Ok(())
    } else {
        Err(format!("must be a finite number ≥ 0, got {v}"))
    }
}

/// Declares a kind's parameter struct and implements [`ParamSet`] for it:
///
/// ```
/// use pipeline::{ParamType, Params, Value};
/// use stages::kinds::params::{int_in, ParamSet};
///
/// stages::stage_params! {
///     /// Parameters of an example kind.
///     pub struct ExampleParams {
///         dataset: String; "which dataset's layout to write",              // required
///         n: i64 = 200, check int_in(1, 1_000_000); "studies or images",
///     }
/// }
/// // A group shared with other kinds comes last: `with training: Training = Training::BASE;`.
///
/// let specs = ExampleParams::specs();
/// assert_eq!((specs[0].name, specs[0].default.clone()), ("dataset", None));
/// assert_eq!((specs[1].ty.clone(), specs[1].default.clone()), (ParamType::Int, Some(Value::Int(200))));
///
/// let mut params = Params::new();
/// params.insert("dataset".into(), Value::Str("rsna".into()));
/// params.insert("n".into(), Value::Int(0));
/// let e = ExampleParams::validate(&params).unwrap_err();
/// assert_eq!(e.key.as_deref(), Some("n"));
/// ```
///
/// Fields keep their order in `adaptor stages` and error messages; late fields (`late { .. }`
/// after the struct: parameters added after artifacts of the kind existed, left out of the key at
/// their default, see `pipeline::ParamSpec::late`) come next, a group last.
#[macro_export]
macro_rules! stage_params {
    (
        $(#[$meta:meta])*
        pub struct $name:ident {
            $( $field:ident : $ty:ty $(= $default:expr)? $(, check $check:expr)? ; $doc:expr ),* $(,)?
        }
        $( late {
            $( $lfield:ident : $lty:ty = $ldefault:expr $(, check $lcheck:expr)? ; $ldoc:expr ),* $(,)?
        } )?
        $( with $group:ident : $gty:ty = $gdefault:expr ; )?
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq)]
        pub struct $name {
            $( pub $field: $ty, )*
            $( $( pub $lfield: $lty, )* )?
            $( pub $group: $gty, )?
        }

        impl $crate::kinds::params::ParamSet for $name {
            fn specs() -> Vec<pipeline::ParamSpec> {
                #[allow(unused_mut)]
                let mut specs = vec![$({
                    #[allow(unused_mut, unused_assignments)]
                    let mut default: Option<pipeline::Value> = None;
                    $( let d: $ty = $default;
                       default = Some($crate::kinds::params::ParamValue::to_value(&d)); )?
                    pipeline::ParamSpec {
                        name: stringify!($field),
                        ty: <$ty as $crate::kinds::params::ParamValue>::param_type(),
                        default,
                        doc: $doc,
                        late: false,
                    }
                }),*];
                $( $( {
                    let d: $lty = $ldefault;
                    specs.push(pipeline::ParamSpec {
                        name: stringify!($lfield),
                        ty: <$lty as $crate::kinds::params::ParamValue>::param_type(),
                        default: Some($crate::kinds::params::ParamValue::to_value(&d)),
                        doc: $ldoc,
                        late: true,
                    });
                } )* )?
                $( let d: $gty = $gdefault;
                   specs.extend(<$gty as $crate::kinds::params::ParamGroup>::specs(&d)); )?
                specs
            }

            fn read(
                params: &pipeline::Params,
            ) -> Result<Self, pipeline::stage::ParamError> {
                let _ = params; // a kind without parameters reads none
                Ok($name {
                    $( $field: $crate::kinds::params::read_field(params, stringify!($field))?, )*
                    $( $( $lfield: $crate::kinds::params::read_late_field(
                        params,
                        stringify!($lfield),
                        $ldefault,
                    )?, )* )?
                    $( $group: <$gty as $crate::kinds::params::ParamGroup>::read(params)?, )?
                })
            }

            fn check(&self) -> Result<(), pipeline::stage::ParamError> {
                $( $( $crate::kinds::params::check_field(stringify!($field), &self.$field, $check)?; )? )*
                $( $( $( $crate::kinds::params::check_field(stringify!($lfield), &self.$lfield, $lcheck)?; )? )* )?
                $( $crate::kinds::params::ParamGroup::check(&self.$group)?; )?
                Ok(())
            }
        }
    };
}

/// Declares a group of fields shared by several kinds ([`ParamGroup`]); each kind gives the
/// defaults (`with NAME: Group = Group { .. }` in [`stage_params!`]).
#[macro_export]
macro_rules! param_group {
    (
        $(#[$meta:meta])*
        pub struct $name:ident {
            $( $field:ident : $ty:ty $(, check $check:expr)? ; $doc:expr ),* $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq)]
        pub struct $name {
            $( pub $field: $ty, )*
        }

        impl $crate::kinds::params::ParamGroup for $name {
            fn specs(defaults: &Self) -> Vec<pipeline::ParamSpec> {
                vec![$(
                    pipeline::ParamSpec::optional(
                        stringify!($field),
                        <$ty as $crate::kinds::params::ParamValue>::param_type(),
                        $crate::kinds::params::ParamValue::to_value(&defaults.$field),
                        $doc,
                    )
                ),*]
            }

            fn read(params: &pipeline::Params) -> Result<Self, pipeline::stage::ParamError> {
                Ok($name {
                    $( $field: $crate::kinds::params::read_field(params, stringify!($field))?, )*
                })
            }

            fn check(&self) -> Result<(), pipeline::stage::ParamError> {
                $( $( $crate::kinds::params::check_field(stringify!($field), &self.$field, $check)?; )? )*
                Ok(())
            }
        }
    };
}

/// Declares a closed set of strings as an enum (`Choice` in manifests) with its names, in the
/// order errors and `adaptor stages` list them.
#[macro_export]
macro_rules! choice {
    (
        $(#[$meta:meta])*
        pub enum $name:ident { $( $(#[$vmeta:meta])* $variant:ident = $text:literal ),+ $(,)? }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
        pub enum $name {
            $( $(#[$vmeta])* #[serde(rename = $text)] $variant, )+
        }

        impl $name {
            pub const NAMES: &'static [&'static str] = &[$($text),+];

            pub fn name(self) -> &'static str {
                match self {
                    $( $name::$variant => $text, )+
                }
            }

            pub fn parse(s: &str) -> Option<Self> {
                match s {
                    $( $text => Some($name::$variant), )+
                    _ => None,
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.name())
            }
        }

        impl $crate::kinds::params::ParamValue for $name {
            fn param_type() -> pipeline::ParamType {
                pipeline::ParamType::Choice(Self::NAMES)
            }
            fn to_value(&self) -> pipeline::Value {
                pipeline::Value::Str(self.name().to_string())
            }
            fn from_value(v: &pipeline::Value) -> Result<Self, String> {
                v.as_str().and_then(Self::parse).ok_or_else(|| {
                    format!("expected one of {}, found {v}", Self::NAMES.join(", "))
                })
            }
        }
    };
}

choice! {
    /// Where a model runs: `auto` (CUDA when libtorch sees a GPU), `cpu` or `cuda`. The one
    /// parser of device names; the worker maps it to a libtorch device.
    pub enum Device { Auto = "auto", Cpu = "cpu", Cuda = "cuda" }
}

choice! {
    /// fp32, or bf16 weights and activations.
    pub enum Precision { Fp32 = "fp32", Bf16 = "bf16" }
}

/// `shard = "i/n"` is a string in manifests (and keys), a [`super::Shard`] here.
impl ParamValue for super::Shard {
    fn param_type() -> ParamType {
        ParamType::Str
    }
    fn to_value(&self) -> Value {
        Value::Str(self.to_string())
    }
    fn from_value(v: &Value) -> Result<Self, String> {
        super::Shard::parse(v.as_str().ok_or_else(|| mismatch::<Self>(v))?)
    }
}
