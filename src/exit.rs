//! The exit codes of `adaptor`, in one place: what each means ([`Exit`], [`EXIT_CODES_HELP`],
//! shown by `adaptor --help`) and the one mapping from an error that stopped a command to its
//! code ([`Exit::of_error`]).

use std::process::ExitCode;

use pipeline::ErrorClass;

/// How a command ended, as a script or CI job sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// 0: done (for `status --exit-code`: everything up to date).
    Done,
    /// 1: the work failed: a stage of a run, `exec`, `ingest`, `synth` or `embed` failed (or was
    /// cancelled), `verify` found a bad artifact, `status --exit-code` found an instance that is
    /// not up to date.
    Failed,
    /// 2: usage or manifest error: a bad flag or environment variable, a manifest that does not
    /// parse or plan, an input it names that cannot be read, an instance that does not exist.
    Usage,
    /// 3: store or network error: the store is unreachable or refuses (permissions), a request
    /// kept failing, a record in it does not read back; the Slurm scheduler likewise.
    Store,
}

/// The table `adaptor --help` ends with (docs/running.md has the same).
pub const EXIT_CODES_HELP: &str = "\
Exit codes:
  0    done (status --exit-code: every instance up to date)
  1    a stage failed or was cancelled (run, exec, ingest, synth, embed); verify: a bad
       artifact; status --exit-code: an instance not up to date
  2    usage or manifest error: a bad flag or environment variable, a manifest that does not
       parse or plan, an input folder it names that cannot be read, an unknown instance or key
  3    store or network error: the store unreachable, refusing (permissions) or holding a
       record that does not read back; the Slurm scheduler unavailable or failing
  130  a second Ctrl-C during run";

impl Exit {
    pub fn code(self) -> u8 {
        match self {
            Exit::Done => 0,
            Exit::Failed => 1,
            Exit::Usage => 2,
            Exit::Store => 3,
        }
    }

    /// The exit code of an error that stopped a command: the first error in its chain whose type
    /// says what it is (an error of the runner, of a stage's code); anything else (a flag or a
    /// value this binary refused) is a usage error.
    pub fn of_error(e: &anyhow::Error) -> Exit {
        for cause in e.chain() {
            if let Some(e) = cause.downcast_ref::<pipeline::Error>() {
                return match e.class() {
                    ErrorClass::Input => Exit::Usage,
                    ErrorClass::Store | ErrorClass::Scheduler => Exit::Store,
                    ErrorClass::Build => Exit::Failed,
                };
            }
            if let Some(e) = cause.downcast_ref::<stages::Error>() {
                return Exit::of_stage_error(e);
            }
        }
        Exit::Usage
    }

    /// An error of the stages' code, reached outside a run (`ingest`, `synth`): a setting that
    /// was refused is a usage error, anything else (bad rows, unreadable images, a table that
    /// cannot be written) is the work failing.
    fn of_stage_error(e: &stages::Error) -> Exit {
        match e {
            stages::Error::DecodeLimit { .. }
            | stages::Error::SynthParam { .. }
            | stages::Error::UnknownDataset { .. } => Exit::Usage,
            _ => Exit::Failed,
        }
    }
}

/// The message of an error that stopped a command: its chain of causes joined by `: `, leaving
/// out a cause whose text is already in the message (an error that prints its source, as
/// object_store's do, would otherwise print it once more per level).
pub fn error_message(e: &anyhow::Error) -> String {
    let mut message = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if message.contains(&text) {
            continue;
        }
        if !message.is_empty() {
            message.push_str(": ");
        }
        message.push_str(&text);
    }
    message
}

impl From<Exit> for ExitCode {
    fn from(e: Exit) -> ExitCode {
        ExitCode::from(e.code())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context as _;
    use std::path::PathBuf;

    #[test]
    fn each_error_class_maps_to_its_code() {
        let manifest = pipeline::Error::Manifest(pipeline::ManifestError {
            file: PathBuf::from("m.toml"),
            line: 3,
            col: 1,
            key: "stages.s".into(),
            message: "unknown".into(),
        });
        let store = pipeline::Error::Store {
            url: "s3://b/p".into(),
            message: "connection refused".into(),
        };
        let slurm = pipeline::Error::SlurmFailed {
            command: "sbatch".into(),
            stderr: "down".into(),
        };
        let cancelled = pipeline::Error::CancelledWaiting {
            instance: "a".into(),
        };
        let bad_row = stages::Error::Row {
            path: "r.csv".into(),
            line: 3,
            message: "empty label".into(),
        };
        let limit = stages::Error::DecodeLimit {
            var: "ADAPTOR_MAX_IMAGE_BYTES",
            value: "1GB".into(),
        };
        let code = |e: anyhow::Error| Exit::of_error(&e).code();
        assert_eq!(code(manifest.into()), 2);
        // A context line on top does not hide the cause.
        assert_eq!(
            code(anyhow::Error::from(store).context("cannot open store s3://b/p")),
            3
        );
        assert_eq!(code(slurm.into()), 3);
        assert_eq!(code(cancelled.into()), 1);
        assert_eq!(code(bad_row.into()), 1);
        assert_eq!(code(limit.into()), 2);
        assert_eq!(code(anyhow::anyhow!("--store: unsupported scheme")), 2);
        let io: Result<(), std::io::Error> = Err(std::io::ErrorKind::NotFound.into());
        assert_eq!(code(io.context("out").unwrap_err()), 2);
    }

    #[test]
    fn a_cause_already_in_the_message_is_not_repeated() {
        /// An error that prints its source and also returns it as its source.
        #[derive(Debug)]
        struct Outer(std::io::Error);
        impl std::fmt::Display for Outer {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "store s3://b/p: {}", self.0)
            }
        }
        impl std::error::Error for Outer {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let inner = std::io::Error::other("connection refused");
        let e = anyhow::Error::from(Outer(inner)).context("cannot open store s3://b/p");
        assert_eq!(
            error_message(&e),
            "cannot open store s3://b/p: store s3://b/p: connection refused"
        );
    }
}
