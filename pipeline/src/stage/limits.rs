//! The runner parameters every stage kind takes: `timeout`, `watchdog` and `memory`, kept out of
//! keys, and `threads`, the CPU thread count a stage runs with; the durations and sizes they are
//! written in.

use std::time::Duration;

use crate::value::Value;

/// Parameters every stage kind takes, which the runner reads and keeps out of `params`: `timeout`
/// and `watchdog` say how long an attempt may take, not what the artifact is (see [`Limits`]), so
/// they never reach the key; `threads` does where the kind's output depends on it (see
/// [`DEFAULT_THREADS`]). A kind must not declare a parameter of the same name.
pub const RUNNER_PARAMS: &[(&str, &str)] = &[
    (
        "timeout",
        "a time limit (\"90s\", \"30m\", \"2h\", \"1h30m\" or seconds): the stage's processes are \
         killed and the instance fails with \"timed out after ...\"; default none",
    ),
    (
        "watchdog",
        "how long the stage may go without a progress report or log line before `status` and the \
         live display call it silent (same form as timeout; default 10m)",
    ),
    (
        "threads",
        "the CPU threads the stage computes with (libtorch's intra-op threads), whatever `-j` and \
         the machine: results are bit-identical only at the same count. Default 1; another count \
         is part of the key of a kind whose output depends on it (the libtorch kinds, `command`); \
         the in-process kinds (synth, ingest, report) write the same bytes at any count and take \
         their share of the cores when it is unset. The pool runs a stage beside others only while \
         their threads fit in the cores (or `-j`); a stage that needs more runs alone",
    ),
    (
        "memory",
        "the memory budget of the stage's tables (\"512MiB\", \"4GiB\", \"2G\" or bytes): streaming \
         readers hold batches within it, and `train-adaptor` and `segment` keep what does not fit \
         in scratch files on disk. Never part of the key (the output is the same at any budget). \
         Default: the memory available to the run divided by `-j`",
    ),
];

/// The `threads` of a kind whose output depends on its thread count, when the manifest sets none.
/// One, because the default `-j` (one stage per core) gave every stage exactly one thread before
/// `threads` existed: an instance at this count keeps the key it had then (the parameter enters
/// the key only at another count), and the artifacts such runs built are what it builds now.
pub const DEFAULT_THREADS: usize = 1;

/// The most `threads` a stage may ask for.
pub const MAX_THREADS: usize = 1024;

/// Reads the `threads` runner parameter: an integer from 1 to [`MAX_THREADS`].
pub fn parse_threads(value: &Value) -> Result<usize, String> {
    match value {
        Value::Int(i) if (1..=MAX_THREADS as i64).contains(i) => Ok(*i as usize),
        _ => Err(format!(
            "expected a thread count, an integer from 1 to {MAX_THREADS}, found {value}"
        )),
    }
}

/// The default of the `watchdog` runner parameter.
pub const DEFAULT_WATCHDOG: Duration = Duration::from_secs(600);

/// What the runner parameters ([`RUNNER_PARAMS`]) of an instance say. Never part of a key: the same
/// artifact may be built under any limit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// After this long the attempt is stopped and fails ("timed out after ...").
    pub timeout: Option<Duration>,
    /// Silence (no progress, no log line) longer than this is reported, not acted on.
    pub watchdog: Duration,
    /// The `memory` budget in bytes, when the manifest sets it (else the runner's share).
    pub memory: Option<u64>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            timeout: None,
            watchdog: DEFAULT_WATCHDOG,
            memory: None,
        }
    }
}

/// Reads a duration parameter: a positive number of seconds, or a string of `<number><unit>` parts
/// with units `ms`, `s`, `m`, `h`, `d` (`"90s"`, `"1h30m"`, `"2.5h"`).
pub fn parse_duration(value: &Value) -> Result<Duration, String> {
    let bad = || {
        format!(
            "expected a duration such as \"90s\", \"30m\", \"2h\", \"1h30m\" or a number of \
             seconds, found {value}"
        )
    };
    let secs = match value {
        Value::Int(i) => *i as f64,
        Value::Float(f) => *f,
        Value::Str(s) => {
            let text = s.trim();
            if text.is_empty() {
                return Err(bad());
            }
            let mut total = 0.0;
            let mut rest = text;
            while !rest.is_empty() {
                let num_end = rest
                    .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                    .ok_or_else(bad)?;
                let number: f64 = rest[..num_end].parse().map_err(|_| bad())?;
                rest = &rest[num_end..];
                let unit_end = rest
                    .find(|c: char| c.is_ascii_digit() || c == '.')
                    .unwrap_or(rest.len());
                let scale = match rest[..unit_end].trim() {
                    "ms" => 0.001,
                    "s" => 1.0,
                    "m" | "min" => 60.0,
                    "h" => 3600.0,
                    "d" => 86400.0,
                    _ => return Err(bad()),
                };
                total += number * scale;
                rest = &rest[unit_end..];
            }
            total
        }
        _ => return Err(bad()),
    };
    if !secs.is_finite() || secs <= 0.0 || secs > 1e9 {
        return Err(format!("expected a positive duration, found {value}"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// The smallest `memory` budget a stage may be given (below it a batch of one row may not fit).
pub const MIN_MEMORY: u64 = 1 << 20;

/// The budget of a stage when the runner knows nothing of its machine (a worker job from an
/// older runner).
pub const DEFAULT_MEMORY: u64 = 2 << 30;

/// Reads a memory size: a positive number of bytes, or a string `<number><unit>` with units `B`,
/// `K`/`KB`/`KiB`, `M`/`MB`/`MiB`, `G`/`GB`/`GiB`, `T`/`TB`/`TiB` (all binary: `1G` = `1GiB` =
/// 2^30 bytes, as memory is counted), at least [`MIN_MEMORY`].
pub fn parse_memory(value: &Value) -> Result<u64, String> {
    let bad = || {
        format!(
            "expected a memory size such as \"512MiB\", \"4GiB\", \"2G\" or a number of bytes, \
             found {value}"
        )
    };
    let bytes = match value {
        Value::Int(i) if *i > 0 => *i as f64,
        Value::Str(s) => {
            let text = s.trim();
            let split = text
                .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                .unwrap_or(text.len());
            let number: f64 = text[..split].parse().map_err(|_| bad())?;
            let scale: u64 = match text[split..].trim() {
                "" | "B" => 1,
                "K" | "KB" | "KiB" | "k" | "kB" => 1 << 10,
                "M" | "MB" | "MiB" => 1 << 20,
                "G" | "GB" | "GiB" => 1 << 30,
                "T" | "TB" | "TiB" => 1 << 40,
                _ => return Err(bad()),
            };
            number * scale as f64
        }
        _ => return Err(bad()),
    };
    if !bytes.is_finite() || bytes < MIN_MEMORY as f64 || bytes > (1u64 << 50) as f64 {
        return Err(format!(
            "expected a memory size from {} to 1PiB, found {value}",
            format_bytes(MIN_MEMORY)
        ));
    }
    Ok(bytes as u64)
}

/// A size the way people write it: `512MiB`, `1.5GiB`, `900B`.
pub fn format_bytes(bytes: u64) -> String {
    const UNITS: [(&str, u64); 4] = [
        ("TiB", 1 << 40),
        ("GiB", 1 << 30),
        ("MiB", 1 << 20),
        ("KiB", 1 << 10),
    ];
    for (unit, scale) in UNITS {
        if bytes >= scale {
            let text = format!("{:.1}", bytes as f64 / scale as f64);
            let text = text.trim_end_matches('0').trim_end_matches('.');
            return format!("{text}{unit}");
        }
    }
    format!("{bytes}B")
}

/// A duration the way people write it: `1.5s`, `90s` → `1m30s`, `2h`, `1h0m5s`.
pub fn format_duration(d: Duration) -> String {
    let secs = d.as_secs_f64();
    if secs < 60.0 {
        let text = format!("{secs:.3}");
        let text = text.trim_end_matches('0').trim_end_matches('.');
        return format!("{text}s");
    }
    let whole = d.as_secs();
    let (h, m, s) = (whole / 3600, whole / 60 % 60, whole % 60);
    let mut out = String::new();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if m > 0 || (h > 0 && s > 0) {
        out.push_str(&format!("{m}m"));
    }
    if s > 0 {
        out.push_str(&format!("{s}s"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_and_print_the_way_people_write_them() {
        let d = |v: Value| parse_duration(&v);
        assert_eq!(d(Value::Int(90)), Ok(Duration::from_secs(90)));
        assert_eq!(d(Value::Float(0.5)), Ok(Duration::from_millis(500)));
        assert_eq!(d(Value::Str("1h30m".into())), Ok(Duration::from_secs(5400)));
        assert_eq!(d(Value::Str("2.5h".into())), Ok(Duration::from_secs(9000)));
        assert_eq!(
            d(Value::Str("250ms".into())),
            Ok(Duration::from_millis(250))
        );
        assert_eq!(d(Value::Str("1d".into())), Ok(Duration::from_secs(86400)));
        for bad in ["", "soon", "10", "5 parsecs", "m", "1h-5m"] {
            assert!(d(Value::Str(bad.into())).is_err(), "{bad:?} accepted");
        }
        assert!(d(Value::Int(0)).is_err());
        assert!(d(Value::Int(-3)).is_err());
        assert!(d(Value::Bool(true)).is_err());
        assert_eq!(parse_threads(&Value::Int(4)), Ok(4));
        for bad in [
            Value::Int(0),
            Value::Int(-1),
            Value::Int(5000),
            Value::Float(2.0),
        ] {
            assert!(parse_threads(&bad).is_err(), "{bad} accepted");
        }
        assert_eq!(format_duration(Duration::from_secs(1)), "1s");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(format_duration(Duration::from_secs(90)), "1m30s");
        assert_eq!(format_duration(Duration::from_secs(7200)), "2h");
        assert_eq!(format_duration(Duration::from_secs(3605)), "1h0m5s");
    }

    #[test]
    fn memory_sizes_read_and_print_the_way_people_write_them() {
        let m = |s: &str| parse_memory(&Value::Str(s.into()));
        assert_eq!(m("512MiB"), Ok(512 << 20));
        assert_eq!(m("4GiB"), Ok(4 << 30));
        assert_eq!(m("2G"), Ok(2 << 30));
        assert_eq!(m("1.5 GB"), Ok(3 << 29));
        assert_eq!(m("2097152"), Ok(2 << 20));
        assert_eq!(parse_memory(&Value::Int(1 << 21)), Ok(1 << 21));
        for bad in ["", "lots", "5 parsecs", "GiB", "-1G", "1KiB", "2PiB"] {
            assert!(m(bad).is_err(), "{bad:?} accepted");
        }
        assert!(parse_memory(&Value::Int(0)).is_err());
        assert!(parse_memory(&Value::Float(1e9)).is_err());
        assert_eq!(format_bytes(512 << 20), "512MiB");
        assert_eq!(format_bytes(3 << 29), "1.5GiB");
        assert_eq!(format_bytes(900), "900B");
    }
}
