//! `command`: a stage that runs a shell command, for steps that live outside this tool (a Python
//! script, a conversion) and for exercising the runner itself.
//!
//! The command runs under `sh -c` with `OUT` set to its output folder, `IN_<SLOT>` to each input's
//! folder (`IN_<SLOT>_<i>` when a slot has several), `THREADS`, and `VAR_<NAME>` for each entry of
//! the `vars` parameter. Its output and error streams go to the stage log.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Duration;

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

    fn validate(&self, params: &crate::value::Params) -> Result<(), String> {
        match params.get("vars") {
            Some(Value::Table(t)) => {
                for (k, v) in t {
                    if !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                        return Err(format!(
                            "vars.{k}: names may use letters, digits and `_` only"
                        ));
                    }
                    if matches!(v, Value::Table(_) | Value::Array(_)) {
                        return Err(format!("vars.{k}: expected a string, number or boolean"));
                    }
                }
                Ok(())
            }
            _ => Err("`vars` must be a table".into()),
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
        cmd.current_dir(ctx.out_dir())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // Its own process group: a terminal's Ctrl-C reaches the runner, which then stops it.
        cmd.process_group(0);
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start `sh -c {script:?}`: {e}"))?;

        let stdout = child.stdout.take().expect("piped");
        let stderr = child.stderr.take().expect("piped");
        let tail = std::sync::Mutex::new(std::collections::VecDeque::<String>::new());
        let status = std::thread::scope(|s| {
            s.spawn(|| {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    ctx.log(line);
                }
            });
            s.spawn(|| {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    ctx.log(format!("stderr: {line}"));
                    let mut t = tail.lock().expect("tail");
                    t.push_back(line);
                    if t.len() > 5 {
                        t.pop_front();
                    }
                }
            });
            // Block on the child; a watcher stops it if the run is cancelled.
            let pgid = child.id() as i32;
            let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
            s.spawn(move || loop {
                match done_rx.recv_timeout(Duration::from_millis(100)) {
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout) if ctx.is_cancelled() => {
                        // SAFETY: signalling the process group we created; no memory is touched.
                        unsafe { libc::kill(-pgid, libc::SIGTERM) };
                        return;
                    }
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                    _ => return,
                }
            });
            let status = child.wait();
            let _ = done_tx.send(());
            status
        })
        .map_err(|e| format!("waiting for `{script}`: {e}"))?;
        if ctx.is_cancelled() {
            return Err("cancelled".into());
        }
        if !status.success() {
            let tail: Vec<String> = tail.into_inner().expect("tail").into_iter().collect();
            let code = status
                .code()
                .map_or_else(|| "a signal".to_string(), |c| format!("status {c}"));
            let mut msg = format!("command `{script}` exited with {code}");
            if !tail.is_empty() {
                msg.push_str(": ");
                msg.push_str(&tail.join(" | "));
            }
            return Err(msg.into());
        }
        Ok(())
    }
}
