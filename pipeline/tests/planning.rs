//! Manifests → plans → keys: key stability, grid expansion, and the errors people read.

mod common;

use std::path::Path;
use std::sync::Arc;

use common::{registry, sharded_registry, write};
use pipeline::executor::resolve;
use pipeline::{FingerprintCache, StageKey, StageRegistry};
use proptest::prelude::*;

fn keys_of(dir: &Path, text: &str, reg: &StageRegistry) -> Vec<(String, StageKey)> {
    let path = write(dir, "m.toml", text);
    let plan = pipeline::plan::load(&path, reg).unwrap_or_else(|e| panic!("{e}\n---\n{text}"));
    let cache = FingerprintCache::new(dir.join("cache"));
    let resolved = resolve(&plan, reg, &cache, false).unwrap();
    plan.instances
        .iter()
        .map(|i| i.name.clone())
        .zip(resolved.keys)
        .collect()
}

#[derive(Debug, Clone)]
enum Scalar {
    Int(i64),
    Float(f64),
    Str(String),
    Bool(bool),
}

fn scalar() -> impl Strategy<Value = Scalar> {
    prop_oneof![
        (-1_000_000i64..1_000_000).prop_map(Scalar::Int),
        (-1e6f64..1e6).prop_map(Scalar::Float),
        (1e-9f64..1e-2).prop_map(Scalar::Float),
        "[a-z0-9 _./-]{0,12}".prop_map(Scalar::Str),
        any::<bool>().prop_map(Scalar::Bool),
    ]
}

/// Two spellings of the same value.
fn spell(s: &Scalar, alt: bool) -> String {
    match s {
        Scalar::Int(i) if alt && i.abs() >= 1000 => {
            // 1_000 style digit separators.
            let digits = i.abs().to_string();
            let mut out = String::new();
            for (n, c) in digits.chars().enumerate() {
                if n > 0 && (digits.len() - n) % 3 == 0 {
                    out.push('_');
                }
                out.push(c);
            }
            if *i < 0 {
                format!("-{out}")
            } else {
                out
            }
        }
        Scalar::Int(i) => i.to_string(),
        Scalar::Float(f) if alt => format!("{f:e}"),
        Scalar::Float(f) => format!("{f:?}"),
        Scalar::Str(s) if alt => format!("'{s}'"),
        Scalar::Str(s) => serde_json::to_string(s).unwrap(),
        Scalar::Bool(b) => b.to_string(),
    }
}

/// The same manifest written two ways: inline and sorted, or as a table, reversed, with comments
/// and other whitespace and number spellings.
fn render(lr: f64, seed: i64, extra: &[(String, Scalar)], alt: bool) -> String {
    let lr = Scalar::Float(lr);
    let seed = Scalar::Int(seed);
    if !alt {
        let extra: Vec<String> = extra
            .iter()
            .map(|(k, v)| format!("{k} = {}", spell(v, false)))
            .collect();
        format!(
            "[stages.s]\nkind = \"echo\"\nparams = {{ extra = {{ {} }}, lr = {}, seed = {} }}\n",
            extra.join(", "),
            spell(&lr, false),
            spell(&seed, false)
        )
    } else {
        let mut t = String::from("# the same experiment\n[stages.s.params.extra]\n");
        for (k, v) in extra.iter().rev() {
            t.push_str(&format!("   {k}   =   {}   # a comment\n", spell(v, true)));
        }
        t.push_str(&format!(
            "\n[stages.s.params]\nseed={}\nlr    = {}\n\n",
            spell(&seed, true),
            spell(&lr, true)
        ));
        t.push_str("[stages.s]\n# kind last\nkind = 'echo'\n");
        t
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn formatting_never_changes_a_key(
        lr in 1e-9f64..10.0,
        seed in -1000i64..1000,
        extra in proptest::collection::btree_map("[a-z][a-z0-9_]{0,6}", scalar(), 0..5),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let f = registry(1);
        let extra: Vec<(String, Scalar)> = extra.into_iter().collect();
        let a = keys_of(dir.path(), &render(lr, seed, &extra, false), &f.reg);
        let b = keys_of(dir.path(), &render(lr, seed, &extra, true), &f.reg);
        prop_assert_eq!(a, b);
    }

    #[test]
    fn any_value_changes_the_key(
        lr in 1e-9f64..10.0,
        seed in -1000i64..1000,
        extra in proptest::collection::btree_map("[a-z][a-z0-9_]{0,6}", scalar(), 1..5),
        which in 0usize..3,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let f = registry(1);
        let extra: Vec<(String, Scalar)> = extra.into_iter().collect();
        let base = keys_of(dir.path(), &render(lr, seed, &extra, false), &f.reg);
        let (lr2, seed2, mut extra2) = (lr, seed, extra.clone());
        let changed = match which {
            0 => render(lr2 * 1.5, seed2, &extra2, false),
            1 => render(lr2, seed2 + 1, &extra2, false),
            _ => {
                let v = &mut extra2[0].1;
                *v = match v.clone() {
                    Scalar::Int(i) => Scalar::Int(i + 1),
                    Scalar::Float(x) => Scalar::Float(x * 2.0 + 1.0),
                    Scalar::Str(s) => Scalar::Str(format!("{s}!")),
                    Scalar::Bool(b) => Scalar::Bool(!b),
                };
                render(lr2, seed2, &extra2, false)
            }
        };
        let other = keys_of(dir.path(), &changed, &f.reg);
        prop_assert_ne!(base[0].1.clone(), other[0].1.clone());
    }
}

#[test]
fn int_and_float_spellings_of_a_float_param_agree() {
    let dir = tempfile::tempdir().unwrap();
    let f = registry(1);
    let a = keys_of(
        dir.path(),
        "[stages.s]\nkind='echo'\nparams.lr = 1\n",
        &f.reg,
    );
    let b = keys_of(
        dir.path(),
        "[stages.s]\nkind='echo'\nparams.lr = 1.0\n",
        &f.reg,
    );
    let c = keys_of(
        dir.path(),
        "[stages.s]\nkind='echo'\nparams.lr = 1e0\n",
        &f.reg,
    );
    assert_eq!(a, b);
    assert_eq!(b, c);
    // Omitting a parameter is the same as giving its default.
    let d = keys_of(dir.path(), "[stages.s]\nkind='echo'\n", &f.reg);
    let e = keys_of(
        dir.path(),
        "[stages.s]\nkind='echo'\nparams.lr = 0.001\n",
        &f.reg,
    );
    assert_eq!(d, e);
}

#[test]
fn stage_version_changes_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let text = "[stages.s]\nkind='echo'\n";
    let v1 = keys_of(dir.path(), text, &registry(1).reg);
    let v2 = keys_of(dir.path(), text, &registry(2).reg);
    assert_ne!(v1[0].1, v2[0].1);
}

#[test]
fn input_bytes_change_the_key_and_a_touch_does_not() {
    let dir = tempfile::tempdir().unwrap();
    let f = registry(1);
    write(dir.path(), "raw/a.csv", "id,label\n1,0\n");
    write(dir.path(), "raw/sub/b.csv", "x\n");
    let text = "[datasets.raw]\nkind='csv'\nroot='raw'\n[stages.s]\nkind='echo'\ninputs.data='datasets.raw'\n[stages.t]\nkind='echo'\ninputs.src='s'\n";
    let k1 = keys_of(dir.path(), text, &f.reg);
    // Same bytes rewritten: new mtime, same key.
    write(dir.path(), "raw/a.csv", "id,label\n1,0\n");
    assert_eq!(keys_of(dir.path(), text, &f.reg), k1);
    // One byte different: this key and its dependent's key change.
    write(dir.path(), "raw/a.csv", "id,label\n1,1\n");
    let k2 = keys_of(dir.path(), text, &f.reg);
    assert_ne!(k1[0].1, k2[0].1);
    assert_ne!(k1[1].1, k2[1].1);
    // The dataset's kind is part of what an input stands for.
    let text3 = text.replace("kind='csv'", "kind='tsv'");
    assert_ne!(keys_of(dir.path(), &text3, &f.reg)[0].1, k2[0].1);
}

#[test]
fn how_an_input_is_checked_is_not_part_of_any_key() {
    let dir = tempfile::tempdir().unwrap();
    let f = registry(1);
    write(dir.path(), "raw/a.csv", "1\n");
    write(dir.path(), "raw/sub/b.csv", "2\n");
    let text = "[datasets.raw]\nkind='csv'\nroot='raw'\n[stages.s]\nkind='echo'\ninputs.data='datasets.raw'\n";
    let keys = keys_of(dir.path(), text, &f.reg);
    use pipeline::Check;
    for (setting, check) in [
        ("check='files'", Check::Files),
        ("check='folders'", Check::Folders),
        ("immutable=true", Check::Immutable),
        ("immutable=false", Check::Files),
    ] {
        let with = text.replace("root='raw'", &format!("root='raw'\n{setting}"));
        let plan = pipeline::plan::load(&write(dir.path(), "m.toml", &with), &f.reg).unwrap();
        assert_eq!(plan.externals[0].check, check, "{setting}");
        assert_eq!(keys_of(dir.path(), &with, &f.reg), keys, "{setting}");
    }
}

#[test]
fn moving_a_dataset_or_the_manifest_does_not_change_keys() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let f = registry(1);
    let text = "[datasets.raw]\nkind='csv'\nroot='raw'\n[stages.s]\nkind='echo'\ninputs.data='datasets.raw'\n";
    write(a.path(), "raw/a.csv", "1\n");
    write(b.path(), "raw/a.csv", "1\n");
    assert_eq!(
        keys_of(a.path(), text, &f.reg),
        keys_of(b.path(), text, &f.reg)
    );
}

#[test]
fn grids_expand_into_named_instances_with_dependencies() {
    let dir = tempfile::tempdir().unwrap();
    let f = registry(1);
    let text = r#"
[matrix]
vision = ["dinov2-s", "resnet-ae"]
text = ["bert", "cxr-bert"]
fraction = [0.01, 0.1, 1.0]
seed = [0, 1]

[stages.encode]
kind = "echo"
foreach = ["vision"]
params.name = "${vision}"

[stages.train]
kind = "echo"
foreach = ["vision", "text"]
inputs.src = "encode[vision=${vision}]"
params = { name = "${vision}+${text}" }

[stages.eval]
kind = "echo"
foreach = ["vision", "text", "fraction", "seed"]
inputs.src = ["train[text=${text},vision=${vision}]"]
params = { lr = "${fraction}", seed = "${seed}" }

[stages.report]
kind = "other"
inputs.src = "eval[*]"

[stages.rsna_only]
kind = "other"
foreach = { fraction = [0.01, 1.0] }
inputs.src = "eval[fraction=${fraction},vision=dinov2-s,*]"
"#;
    let path = write(dir.path(), "grid.toml", text);
    let plan = pipeline::plan::load(&path, &f.reg).unwrap();
    assert_eq!(plan.instances.len(), 2 + 4 + 24 + 1 + 2);
    let mut out = String::new();
    for inst in &plan.instances {
        let deps: Vec<&str> = inst
            .deps()
            .map(|d| plan.instances[d].name.as_str())
            .collect();
        let params: Vec<String> = inst
            .params
            .iter()
            .filter(|(k, _)| ["name", "lr", "seed"].contains(&k.as_str()))
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let shown = if deps.len() > 4 {
            format!("{} instances", deps.len())
        } else {
            deps.join(" ")
        };
        out.push_str(&format!(
            "{}  [{}]  <- {}\n",
            inst.name,
            params.join(" "),
            shown
        ));
    }
    insta::assert_snapshot!(out);
    // Typed substitution: the fraction axis arrives as a float.
    let e = plan
        .instance("eval[vision=resnet-ae,text=bert,fraction=0.1,seed=1]")
        .unwrap();
    assert_eq!(plan.instances[e].params["lr"], pipeline::Value::Float(0.1));
    assert_eq!(plan.instances[e].params["seed"], pipeline::Value::Int(1));
}

#[test]
fn includes_share_defaults_and_the_including_file_wins() {
    let dir = tempfile::tempdir().unwrap();
    let f = registry(1);
    write(
        dir.path(),
        "common/base.toml",
        "[defaults.echo]\nlr = 0.5\nseed = 3\n[datasets.raw]\nkind = 'csv'\nroot = '../raw'\n",
    );
    write(dir.path(), "raw/a.csv", "1\n");
    let path = write(
        dir.path(),
        "m.toml",
        "include = ['common/base.toml']\n[defaults.echo]\nseed = 4\n[stages.s]\nkind='echo'\ninputs.data = 'datasets.raw'\n",
    );
    let plan = pipeline::plan::load(&path, &f.reg).unwrap();
    let s = &plan.instances[0];
    assert_eq!(s.params["lr"], pipeline::Value::Float(0.5));
    assert_eq!(s.params["seed"], pipeline::Value::Int(4));
    // The included file's relative root resolves against the included file's folder.
    assert_eq!(
        plan.externals[0].path.canonicalize().unwrap(),
        dir.path().join("raw").canonicalize().unwrap()
    );
}

#[test]
fn bad_manifests_say_where_and_what() {
    let f = registry(1);
    let mut reg = f.reg.clone();
    reg.register(Arc::new(pipeline::builtin::CommandStage));
    let cases: &[(&str, &str)] = &[
        ("syntax", "[stages.s\nkind = 'echo'\n"),
        ("unknown top-level key", "[stage.s]\nkind = 'echo'\n"),
        ("unknown stage key", "[stages.s]\nkind = 'echo'\nparam = { lr = 1 }\n"),
        ("unknown stage kind", "[stages.s]\nkind = 'ecko'\n"),
        ("unknown parameter", "[stages.s]\nkind = 'echo'\nparams.learning_rate = 0.1\n"),
        ("wrong parameter type", "[stages.s]\nkind = 'echo'\n\n[stages.s.params]\nlr = 'fast'\n"),
        ("choice outside its set", "[stages.s]\nkind = 'echo'\nparams.mode = 'medium'\n"),
        ("missing required parameter", "[stages.c]\nkind = 'command'\n"),
        ("stage's own validation", "[stages.s]\nkind = 'echo'\nparams.lr = -1.0\n"),
        ("unknown axis", "[matrix]\nseed = [0, 1]\n[stages.s]\nkind = 'echo'\nforeach = ['seeds']\n"),
        ("template names no axis", "[matrix]\nseed = [0]\n[stages.s]\nkind = 'echo'\nforeach = ['seed']\nparams.name = 'run-${sed}'\n"),
        ("undeclared dataset", "[stages.s]\nkind = 'echo'\ninputs.data = 'datasets.mimic'\n"),
        ("reference matches nothing", "[matrix]\nd = ['a']\n[stages.s]\nkind='echo'\nforeach=['d']\n[stages.t]\nkind='echo'\ninputs.src='s[d=b]'\n"),
        ("reference to an unknown stage", "[stages.t]\nkind='echo'\ninputs.src='ingest'\n"),
        ("input of the wrong sort", "[stages.s]\nkind='echo'\n[stages.t]\nkind='echo'\ninputs.data='s'\n"),
        ("one-artifact slot bound to many", "[datasets.a]\nkind='x'\nroot='.'\n[datasets.b]\nkind='x'\nroot='.'\n[stages.t]\nkind='echo'\ninputs.data=['datasets.a','datasets.b']\n"),
        ("unknown input slot", "[stages.t]\nkind='echo'\ninputs.records='datasets.a'\n"),
        ("dependency cycle", "[stages.a]\nkind='echo'\ninputs.src='b'\n[stages.b]\nkind='echo'\ninputs.src='a'\n"),
        ("dataset without a root", "[datasets.rsna]\nkind = 'rsna'\n"),
        ("dataset with an unknown key", "[datasets.rsna]\nkind = 'rsna'\nroot = '.'\npath = '.'\n"),
        ("dataset check unknown", "[datasets.rsna]\nkind = 'rsna'\nroot = '.'\ncheck = 'inodes'\n"),
        ("dataset immutable not a boolean", "[datasets.rsna]\nkind = 'rsna'\nroot = '.'\nimmutable = 'yes'\n"),
        ("dataset immutable with a check", "[datasets.rsna]\nkind = 'rsna'\nroot = '.'\nimmutable = true\ncheck = 'folders'\n"),
        ("unsupported store", "store = 'gs://bucket/x'\n"),
        ("nan", "[stages.s]\nkind='echo'\nparams.lr = nan\n"),
        ("duplicate axis value", "[matrix]\nseed = [0, 1, 0]\n"),
        ("empty axis", "[matrix]\nseed = []\n"),
        ("missing include", "include = ['nope.toml']\n"),
        ("self include", "include = ['m.toml']\n"),
        ("include of a folder", "include = ['.']\n"),
    ];
    let mut out = String::new();
    for (name, text) in cases {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), "m.toml", text);
        let err = match pipeline::plan::load(&path, &reg) {
            Ok(_) => panic!("case `{name}` was accepted"),
            Err(e) => e.to_string(),
        };
        let root = dir.path().to_string_lossy().to_string();
        let canonical = dir
            .path()
            .canonicalize()
            .unwrap()
            .to_string_lossy()
            .to_string();
        out.push_str(&format!(
            "{name}:\n  {}\n",
            err.replace(&canonical, "$DIR").replace(&root, "$DIR")
        ));
    }
    insta::assert_snapshot!(out);
}

const SHARDED: &str = r#"
[matrix]
d = ["a", "b"]

[stages.prep]
kind = "echo"
foreach = ["d"]
params.name = "${d}"

[stages.enc]
kind = "split"
foreach = ["d"]
shards = 3
inputs.src = "prep[d=${d}]"

[stages.one]
kind = "split"
shards = 2
params.lines = 5

[stages.use]
kind = "echo"
inputs.src = ["enc[d=a]", "one"]

[stages.all]
kind = "other"
inputs.src = "enc[*]"
"#;

#[test]
fn shards_expand_into_instances_and_a_merge_that_references_resolve_to() {
    let dir = tempfile::tempdir().unwrap();
    let (f, _) = sharded_registry();
    let path = write(dir.path(), "m.toml", SHARDED);
    let plan = pipeline::plan::load(&path, &f.reg).unwrap();
    let mut out = String::new();
    for inst in &plan.instances {
        let inputs: Vec<String> = inst
            .inputs
            .iter()
            .map(|(slot, refs)| {
                let names: Vec<&str> = refs
                    .iter()
                    .map(|r| match r {
                        pipeline::plan::InputRef::Stage(s) => plan.instances[*s].name.as_str(),
                        pipeline::plan::InputRef::External(_) => "external",
                    })
                    .collect();
                format!("{slot}: {}", names.join(" "))
            })
            .collect();
        let shard = inst
            .params
            .get("shard")
            .map(|v| format!(" shard={v}"))
            .unwrap_or_default();
        out.push_str(&format!(
            "{}  {:?}{shard}  <- {}\n",
            inst.name,
            inst.part,
            inputs.join("; ")
        ));
    }
    insta::assert_snapshot!(out);

    // Keys: every shard has its own; the merge's key differs from all of them and follows them.
    let keys = keys_of(dir.path(), SHARDED, &f.reg);
    let key = |name: &str| keys.iter().find(|(n, _)| n == name).unwrap().1.clone();
    let distinct: std::collections::HashSet<_> = keys.iter().map(|(_, k)| k.clone()).collect();
    assert_eq!(distinct.len(), keys.len());
    // One shard's upstream changes: that grid point's shards and merge change, the other's do not.
    let changed = keys_of(
        dir.path(),
        &SHARDED.replace("params.name = \"${d}\"", "params.name = \"${d}${d}\""),
        &f.reg,
    );
    let key2 = |name: &str| changed.iter().find(|(n, _)| n == name).unwrap().1.clone();
    for name in ["enc[d=a,shard=1/3]", "enc[d=a]", "use", "all"] {
        assert_ne!(key(name), key2(name), "{name}");
    }
    for name in ["one[shard=0/2]", "one"] {
        assert_eq!(key(name), key2(name), "{name}");
    }
    // Another shard count: new shards, a new merge key; the same parameters unsharded are another
    // instance again.
    let four = keys_of(
        dir.path(),
        &SHARDED.replace("shards = 2", "shards = 4"),
        &f.reg,
    );
    let key4 = |name: &str| four.iter().find(|(n, _)| n == name).map(|(_, k)| k.clone());
    assert_eq!(key4("one[shard=0/2]"), None);
    assert_ne!(key4("one").unwrap(), key("one"));
    let whole = keys_of(dir.path(), &SHARDED.replace("shards = 2\n", ""), &f.reg);
    let keyw = |name: &str| {
        whole
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, k)| k.clone())
    };
    assert_ne!(keyw("one").unwrap(), key("one"));
    // `shards = 1` is the unsharded stage.
    let one = keys_of(
        dir.path(),
        &SHARDED.replace("shards = 2", "shards = 1"),
        &f.reg,
    );
    assert_eq!(
        one.iter().find(|(n, _)| n == "one").unwrap().1,
        keyw("one").unwrap()
    );
    // `--only enc[d=a]` and `adaptor exec` name the merge alone; its closure holds the shards.
    let m = plan.select("enc[d=a]");
    assert_eq!(m.len(), 1);
    assert_eq!(plan.closure(&m).len(), 1 + 3 + 1);
}

#[test]
fn sharding_errors_say_where_and_what() {
    let (f, _) = sharded_registry();
    let cases: &[(&str, &str)] = &[
        ("a kind that cannot be sharded", "[stages.s]\nkind = 'echo'\nshards = 4\n"),
        ("zero shards", "[stages.s]\nkind = 'split'\nshards = 0\n"),
        ("too many shards", "[stages.s]\nkind = 'split'\nshards = 5000\n"),
        ("shards not a number", "[stages.s]\nkind = 'split'\nshards = 'four'\n"),
        ("shards and the shard parameter", "[stages.s]\nkind = 'split'\nshards = 2\nparams.shard = '0/2'\n"),
        ("a reference to a shard", "[stages.s]\nkind = 'split'\nshards = 2\n[stages.t]\nkind = 'echo'\ninputs.src = 's[shard=0/2]'\n"),
    ];
    let mut out = String::new();
    for (name, text) in cases {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), "m.toml", text);
        let err = match pipeline::plan::load(&path, &f.reg) {
            Ok(_) => panic!("case `{name}` was accepted"),
            Err(e) => e.to_string(),
        };
        let root = dir.path().to_string_lossy().to_string();
        out.push_str(&format!("{name}:\n  {}\n", err.replace(&root, "$DIR")));
    }
    insta::assert_snapshot!(out);
}

#[test]
fn slurm_job_group_sizes_are_per_kind_over_the_default_and_positive() {
    let dir = tempfile::tempdir().unwrap();
    let f = registry(1);
    let text = r#"
[stages.a]
kind = "echo"
params.name = "a"

[executor.slurm]
group = 4

[executor.slurm.resources.other]
cpus = 2

[executor.slurm.resources.echo]
group = 16
"#;
    let path = write(dir.path(), "m.toml", text);
    let plan = pipeline::plan::load(&path, &f.reg).unwrap();
    let spec = &plan.executor.slurm;
    assert_eq!(spec.defaults.group, Some(4));
    assert_eq!(spec.resources["echo"].over(&spec.defaults).group, Some(16));
    assert_eq!(spec.resources["other"].over(&spec.defaults).group, Some(4));
    // not an sbatch argument
    assert_eq!(
        spec.resources["echo"].over(&spec.defaults).sbatch_args(),
        Vec::<String>::new()
    );
    let path = write(
        dir.path(),
        "m.toml",
        &text.replace("group = 16", "group = 0"),
    );
    let e = pipeline::plan::load(&path, &f.reg).unwrap_err().to_string();
    assert!(
        e.ends_with(
            "executor.slurm.resources.echo.group: expected a positive integer (instances per job), found 0"
        ),
        "{e}"
    );
}
