//! `command`: a stage that runs a shell command, for steps that live outside this tool (a Python
//! script, a conversion) and for exercising the runner itself.
//!
//! The command runs under `sh -c` with `OUT` set to its output folder, `IN_<SLOT>` to each input's
//! folder (`IN_<SLOT>_<i>` when a slot has several), `THREADS`, and `VAR_<NAME>` for each entry of
//! the `vars` parameter. Its output and error streams go to the stage log. The shell and everything
//! it starts form one process group that never outlives the stage or the runner (`crate::process`):
//! background processes still running when the shell exits are killed.

use std::process::Command;

use crate::process::{self, Stream};
use crate::stage::{
    InputAccepts, InputSpec, ParamSpec, ParamType, Stage, StageContext, StageError,
};
use crate::value::Value;

pub struct CommandStage;

impl Stage for CommandStage {
    fn kind(&self) -> &'static str {
        "command"
    }

    fn version(&self) -> u32 {
        1
    }

    fn about(&self) -> &'static str {
        "Runs a shell command that writes its outputs into $OUT"
    }

    fn params(&self) -> Vec<ParamSpec> {
        vec![
            ParamSpec::required("run", ParamType::Str, "the shell command (run by `sh -c`)"),
            ParamSpec::optional(
                "vars",
                ParamType::Any,
                Value::Table(Default::default()),
                "a table of values exported as VAR_<NAME>",
            ),
        ]
    }

    fn inputs(&self) -> Vec<InputSpec> {
        vec![InputSpec::many(
            "deps",
            InputAccepts::Any,
            "folders the command reads, exported as IN_DEPS_<i>",
        )
        .optional()]
    }

    fn validate(&self, params: &crate::value::Params) -> Result<(), crate::stage::ParamError> {
        use crate::stage::ParamError;
        match params.get("vars") {
            Some(Value::Table(t)) => {
                for (k, v) in t {
                    if !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                        return Err(ParamError::at(
                            format!("vars.{k}"),
                            "names may use letters, digits and `_` only",
                        ));
                    }
                    if matches!(v, Value::Table(_) | Value::Array(_)) {
                        return Err(ParamError::at(
                            format!("vars.{k}"),
                            "expected a string, number or boolean",
                        ));
                    }
                }
                Ok(())
            }
            _ => Err(ParamError::at("vars", "must be a table")),
        }
    }

    fn run(&self, ctx: &StageContext) -> Result<(), StageError> {
        let script = ctx.str_param("run")?;
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(script)
            .env("OUT", ctx.out_dir())
            .env("THREADS", ctx.threads().to_string());
        let deps = ctx.inputs("deps");
        for (i, a) in deps.iter().enumerate() {
            cmd.env(format!("IN_DEPS_{i}"), &a.path);
        }
        if let Some(first) = deps.first() {
            cmd.env("IN_DEPS", &first.path);
        }
        if let Some(Value::Table(vars)) = ctx.params().get("vars") {
            for (k, v) in vars {
                let text = match v {
                    Value::Str(s) => s.clone(),
                    other => other.to_string(),
                };
                cmd.env(format!("VAR_{}", k.to_ascii_uppercase()), text);
            }
        }
        cmd.current_dir(ctx.out_dir());
        // Its own process group, which dies with the runner and is killed on cancel, on timeout
        // and once the shell has exited (crate::process).
        let mut tail = std::collections::VecDeque::<String>::new();
        let finished = process::run_group(cmd, None, ctx, |stream, line| match stream {
            Stream::Stdout => ctx.log(line),
            Stream::Stderr => {
                ctx.log(format!("stderr: {line}"));
                tail.push_back(line);
                if tail.len() > 5 {
                    tail.pop_front();
                }
            }
        })
        .map_err(|e| format!("cannot start `sh -c {script:?}`: {e}"))?;
        for note in &finished.notes {
            ctx.log(note);
        }
        if finished.stopped || (!finished.status.success() && ctx.is_cancelled()) {
            // Says "cancelled" or "timed out after ...".
            ctx.check_cancelled()?;
        }
        if !finished.status.success() {
            let mut msg = format!(
                "command `{script}` {}",
                process::describe_exit(&finished.status)
            );
            if !tail.is_empty() {
                msg.push_str(": ");
                msg.push_str(&tail.into_iter().collect::<Vec<_>>().join(" | "));
            }
            return Err(msg.into());
        }
        Ok(())
    }
}
