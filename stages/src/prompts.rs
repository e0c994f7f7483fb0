//! The prompts of `zero-shot`: per-class prompt lists as a parameter ([`Prompts`]), the classes
//! of each downstream dataset in label order, and the committed defaults (`data/prompts/*.toml`,
//! compiled in) used when a manifest gives none.

use std::collections::BTreeMap;

use pipeline::{ParamType, Value};

use crate::kinds::params::ParamValue;

/// `prompts = { pneumonia = ["…", …], normal = ["…"] }`: class name → its prompts. Empty (the
/// default) means the committed defaults of the records' dataset.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Prompts(pub BTreeMap<String, Vec<String>>);

impl ParamValue for Prompts {
    fn param_type() -> ParamType {
        ParamType::Any
    }

    fn to_value(&self) -> Value {
        Value::Table(
            self.0
                .iter()
                .map(|(class, ps)| {
                    let list = ps.iter().map(|p| Value::Str(p.clone())).collect();
                    (class.clone(), Value::Array(list))
                })
                .collect(),
        )
    }

    fn from_value(v: &Value) -> Result<Self, String> {
        let Value::Table(t) = v else {
            return Err(format!(
                "expected a table of prompt lists (`{{ pneumonia = [\"…\"], normal = [\"…\"] }}`), \
                 found {} ({v})",
                v.type_name()
            ));
        };
        let mut out = BTreeMap::new();
        for (class, list) in t {
            let Value::Array(items) = list else {
                return Err(format!(
                    "class `{class}`: expected an array of prompts, found {}",
                    list.type_name()
                ));
            };
            let mut prompts = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                match item.as_str() {
                    Some(s) if !s.trim().is_empty() => prompts.push(s.to_string()),
                    Some(_) => return Err(format!("class `{class}`, prompt {i}: empty")),
                    None => {
                        return Err(format!(
                            "class `{class}`, prompt {i}: expected a string, found {}",
                            item.type_name()
                        ))
                    }
                }
            }
            if prompts.is_empty() {
                return Err(format!("class `{class}` has no prompts"));
            }
            out.insert(class.clone(), prompts);
        }
        Ok(Prompts(out))
    }
}

/// Empty (the defaults) or at least two classes.
pub fn two_classes_or_none(p: &Prompts) -> Result<(), String> {
    match p.0.len() {
        1 => Err(format!(
            "one class (`{}`); zero-shot classification needs a prompt list per class (or none: \
             the committed defaults)",
            p.0.keys().next().expect("one")
        )),
        _ => Ok(()),
    }
}

/// The classes of a downstream dataset in label order (`classify`'s labels), its label column
/// and the number of outputs its metrics take (1: binary, AUROC on the positive class).
pub fn classes_of(dataset: &str) -> Result<(&'static [&'static str], &'static str), String> {
    match dataset {
        "rsna" => Ok((&["normal", "pneumonia"], "target")),
        "covidx" => Ok((&["normal", "pneumonia", "COVID-19"], "label")),
        other => Err(format!(
            "the records are `{other}`; zero-shot classification is defined for rsna (normal, \
             pneumonia) and covidx (normal, pneumonia, COVID-19)"
        )),
    }
}

const RSNA_TOML: &str = include_str!("../../data/prompts/rsna.toml");
const COVIDX_TOML: &str = include_str!("../../data/prompts/covidx.toml");

/// Parses a prompts file: top-level keys are classes, each an array of strings.
pub fn parse_prompts_toml(text: &str, file: &str) -> Result<Prompts, String> {
    let doc: toml_edit::DocumentMut = text.parse().map_err(|e| format!("{file}: {e}"))?;
    let mut t = BTreeMap::new();
    for (class, item) in doc.iter() {
        let list = item
            .as_array()
            .ok_or_else(|| format!("{file}: `{class}` is not an array of prompts"))?;
        let items = list
            .iter()
            .map(|v| {
                v.as_str()
                    .map(|s| Value::Str(s.to_string()))
                    .ok_or_else(|| format!("{file}: `{class}` holds a non-string"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        t.insert(class.to_string(), Value::Array(items));
    }
    Prompts::from_value(&Value::Table(t)).map_err(|e| format!("{file}: {e}"))
}

/// The committed default prompts of `dataset` (`data/prompts/DATASET.toml`).
pub fn default_prompts(dataset: &str) -> Result<Prompts, String> {
    match dataset {
        "rsna" => parse_prompts_toml(RSNA_TOML, "data/prompts/rsna.toml"),
        "covidx" => parse_prompts_toml(COVIDX_TOML, "data/prompts/covidx.toml"),
        other => Err(format!("no default prompts for `{other}`")),
    }
}

/// The prompt lists of `dataset`'s classes in label order: `given` when not empty, else the
/// defaults. Classes match case-insensitively; a missing or unknown class is an error naming both
/// lists.
pub fn resolve(dataset: &str, given: &Prompts) -> Result<Vec<(String, Vec<String>)>, String> {
    let (classes, _) = classes_of(dataset)?;
    let (prompts, whose) = if given.0.is_empty() {
        (default_prompts(dataset)?, "the default prompts")
    } else {
        (given.clone(), "`prompts`")
    };
    let mut out = Vec::with_capacity(classes.len());
    for class in classes {
        let found = prompts
            .0
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(class))
            .ok_or_else(|| {
                format!(
                    "{whose} have no class `{class}` ({dataset}'s classes: {}; given: {})",
                    classes.join(", "),
                    prompts.0.keys().cloned().collect::<Vec<_>>().join(", ")
                )
            })?;
        out.push((class.to_string(), found.1.clone()));
    }
    if prompts.0.len() != classes.len() {
        let extra: Vec<&String> = (prompts.0.keys())
            .filter(|k| !classes.iter().any(|c| c.eq_ignore_ascii_case(k)))
            .collect();
        return Err(format!(
            "{whose} name classes {dataset} does not have: {extra:?} (its classes: {})",
            classes.join(", ")
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_committed_defaults_cover_every_class_in_label_order() {
        let rsna = resolve("rsna", &Prompts::default()).unwrap();
        assert_eq!(rsna[0].0, "normal");
        assert_eq!(rsna[1].0, "pneumonia");
        assert!(rsna[1]
            .1
            .contains(&"findings suggesting pneumonia".to_string()));
        let covidx = resolve("covidx", &Prompts::default()).unwrap();
        let names: Vec<&str> = covidx.iter().map(|c| c.0.as_str()).collect();
        assert_eq!(names, ["normal", "pneumonia", "COVID-19"]);
        assert!(covidx.iter().all(|c| !c.1.is_empty()));
    }

    #[test]
    fn given_prompts_must_name_the_datasets_classes() {
        let p = |pairs: &[(&str, &str)]| {
            Prompts(
                pairs
                    .iter()
                    .map(|(c, s)| (c.to_string(), vec![s.to_string()]))
                    .collect(),
            )
        };
        let ok = resolve("rsna", &p(&[("Pneumonia", "opacity"), ("normal", "clear")])).unwrap();
        assert_eq!(ok[1].1, ["opacity"]);
        let e = resolve("rsna", &p(&[("pneumonia", "x"), ("healthy", "y")])).unwrap_err();
        assert!(
            e.contains("no class `normal`") && e.contains("healthy"),
            "{e}"
        );
        let e = resolve(
            "rsna",
            &p(&[("pneumonia", "x"), ("normal", "y"), ("effusion", "z")]),
        )
        .unwrap_err();
        assert!(e.contains("effusion"), "{e}");
        assert!(resolve("siim", &Prompts::default()).is_err());
    }

    #[test]
    fn a_prompt_table_is_read_and_checked() {
        let v = Value::Table(
            [(
                "pneumonia".to_string(),
                Value::Array(vec![Value::Str("a".into())]),
            )]
            .into_iter()
            .collect(),
        );
        let p = Prompts::from_value(&v).unwrap();
        assert_eq!(p.to_value(), v);
        assert!(two_classes_or_none(&p).unwrap_err().contains("one class"));
        let bad = Value::Table(
            [("normal".to_string(), Value::Array(vec![Value::Int(3)]))]
                .into_iter()
                .collect(),
        );
        let e = Prompts::from_value(&bad).unwrap_err();
        assert!(e.contains("class `normal`, prompt 0"), "{e}");
        assert!(Prompts::from_value(&Value::Str("x".into())).is_err());
    }
}
