//! `adaptor stages`: the stage kinds this binary knows, with their parameters, inputs and
//! sharding, from plain descriptions ([`StageDoc`]) that the command builds from the registry.

use std::fmt::Write as _;

use pipeline::stage::Stage;

/// What `adaptor stages` says about one stage kind.
pub struct StageDoc {
    pub kind: String,
    pub version: u32,
    pub about: String,
    pub params: Vec<ParamDoc>,
    pub inputs: Vec<InputDoc>,
    /// The sharding parameter and what the merge of the shards does.
    pub sharding: Option<(String, String)>,
}

pub struct ParamDoc {
    pub name: String,
    /// The type, as `ParamType::describe` says it.
    pub ty: String,
    /// The default as written in a manifest; `None`: required.
    pub default: Option<String>,
    /// The same default as a JSON value (`stages --json`).
    pub default_json: Option<serde_json::Value>,
    pub doc: String,
}

pub struct InputDoc {
    pub name: String,
    pub required: bool,
    pub doc: String,
}

impl StageDoc {
    /// The description of a registered stage kind.
    pub fn of(stage: &dyn Stage) -> StageDoc {
        StageDoc {
            kind: stage.kind().to_string(),
            version: stage.version(),
            about: stage.about().to_string(),
            params: stage
                .params()
                .into_iter()
                .map(|p| ParamDoc {
                    name: p.name.to_string(),
                    ty: p.ty.describe(),
                    default: p.default.as_ref().map(|d| d.to_string()),
                    default_json: p
                        .default
                        .as_ref()
                        .map(|d| serde_json::to_value(d).expect("parameter values serialise")),
                    doc: p.doc.to_string(),
                })
                .collect(),
            inputs: stage
                .inputs()
                .into_iter()
                .map(|i| InputDoc {
                    name: i.name.to_string(),
                    required: i.required,
                    doc: i.doc.to_string(),
                })
                .collect(),
            sharding: stage
                .sharding()
                .map(|s| (s.param.to_string(), s.merge.to_string())),
        }
    }
}

/// Each kind with its parameters, inputs and sharding, then the parameters the runner itself
/// takes for every kind (`runner_params`: name and doc).
pub fn render_stages(stages: &[StageDoc], runner_params: &[(&str, &str)]) -> String {
    let mut s = String::new();
    for stage in stages {
        let _ = writeln!(
            s,
            "{} (version {}): {}",
            stage.kind, stage.version, stage.about
        );
        for p in &stage.params {
            let default = p
                .default
                .as_ref()
                .map_or("required".to_string(), |d| format!("default {d}"));
            let _ = writeln!(s, "  param {} ({}; {default}): {}", p.name, p.ty, p.doc);
        }
        for i in &stage.inputs {
            let _ = writeln!(
                s,
                "  input {}{}: {}",
                i.name,
                if i.required { "" } else { " (optional)" },
                i.doc
            );
        }
        if let Some((param, merge)) = &stage.sharding {
            let _ = writeln!(
                s,
                "  shards = N: N instances with {param} = \"i/N\"; the merge {merge}"
            );
        }
    }
    let _ = writeln!(s, "every kind also takes (not part of the key):");
    for (name, doc) in runner_params {
        let _ = writeln!(s, "  param {name}: {doc}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn param(name: &str, ty: &str, default: Option<&str>, doc: &str) -> ParamDoc {
        ParamDoc {
            name: name.into(),
            ty: ty.into(),
            default: default.map(str::to_string),
            default_json: default.map(|d| serde_json::from_str(d).expect("JSON in the fixture")),
            doc: doc.into(),
        }
    }

    #[test]
    fn stages() {
        let stages = [
            StageDoc {
                kind: "encode".into(),
                version: 3,
                about: "embed texts and images with frozen backbones".into(),
                params: vec![
                    param(
                        "batch_size",
                        "integer",
                        Some("32"),
                        "items per forward pass",
                    ),
                    param("text", "string", None, "the text backbone folder"),
                    param(
                        "device",
                        "one of cpu, cuda",
                        Some("\"cpu\""),
                        "where the model runs",
                    ),
                ],
                inputs: vec![
                    InputDoc {
                        name: "records".into(),
                        required: true,
                        doc: "a records table".into(),
                    },
                    InputDoc {
                        name: "extra".into(),
                        required: false,
                        doc: "more records".into(),
                    },
                ],
                sharding: Some(("shard".into(), "concatenates the tables in order".into())),
            },
            StageDoc {
                kind: "report".into(),
                version: 1,
                about: "tables and plots of every result".into(),
                params: vec![],
                inputs: vec![],
                sharding: None,
            },
        ];
        let runner = [
            ("timeout", "a time limit; default none"),
            ("watchdog", "silence before a stage is called silent"),
        ];
        insta::assert_snapshot!(render_stages(&stages, &runner));
    }

    /// The real registry renders through the same path (its text is the stages crate's to change).
    #[test]
    fn the_registered_kinds_render() {
        let reg = crate::commands::registry(std::path::Path::new("adaptor-torch"));
        let docs: Vec<StageDoc> = reg.iter().map(|s| StageDoc::of(s.as_ref())).collect();
        let text = render_stages(&docs, pipeline::stage::RUNNER_PARAMS);
        assert!(text.contains("command (version"), "{text}");
        assert!(text.contains("every kind also takes"), "{text}");
    }

    /// The two kinds that evaluate without labels, as `adaptor stages` shows them.
    #[test]
    fn zero_shot_and_retrieve() {
        let reg = crate::commands::registry(std::path::Path::new("adaptor-torch"));
        let docs: Vec<StageDoc> = (reg.iter())
            .filter(|s| ["zero-shot", "retrieve"].contains(&s.kind()))
            .map(|s| StageDoc::of(s.as_ref()))
            .collect();
        assert_eq!(docs.len(), 2);
        insta::assert_snapshot!(render_stages(&docs, &[]));
    }
}
