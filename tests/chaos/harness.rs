//! What the chaos scenarios share: a case folder with a store (local or on the moto S3 server),
//! `adaptor` processes with a chosen endpoint, the small `command`-stage manifests whose builds
//! leave a line in a log outside the store, and the checks (each key built once, every complete
//! artifact has the bytes its stage writes).

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::moto::{self, http_bytes, list_keys, s3_env, Moto};
use crate::proxy::Rng;

pub use crate::common::bin;

/// The lease timeout of the suspended-runner scenario (seconds): small, so that a takeover
/// happens within a test. The other scenarios keep the default (a 2 s lease on a loaded 2-core
/// machine can expire under a runner that is merely starved of CPU).
pub const LEASE_SECS: &str = "2";

/// Repetitions of a scenario: `ci` in the test suite; with `CHAOS_REPS=N` (bench/chaos/run.sh),
/// `N * per_100 / 100` (at least 1).
pub fn reps(ci: usize, per_100: usize) -> usize {
    match std::env::var("CHAOS_REPS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
    {
        Some(n) => (n * per_100 / 100).max(1),
        None => ci,
    }
}

/// Whether the bench script asked for full repetitions.
pub fn full() -> bool {
    std::env::var_os("CHAOS_REPS").is_some()
}

/// The seed of a scenario's random timing: `CHAOS_SEED`, else the clock; printed so that a
/// failure can be replayed.
pub fn seed(scenario: &str) -> u64 {
    let s = std::env::var("CHAOS_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("{scenario}: seed {s} (replay with CHAOS_SEED={s})");
    s
}

/// One row of the bench table, appended as a JSON line to `$CHAOS_RESULTS` when set.
pub struct Row<'a> {
    pub scenario: &'a str,
    pub reps: usize,
    pub faults: u64,
    pub lost_or_corrupt: usize,
    pub recovered: usize,
    pub seconds: f64,
    pub note: String,
}

pub fn record(row: Row) {
    eprintln!(
        "{}: {} repetitions, {} faults, {} lost or corrupt, {} recovered, {:.1}s {}",
        row.scenario,
        row.reps,
        row.faults,
        row.lost_or_corrupt,
        row.recovered,
        row.seconds,
        row.note
    );
    if let Some(path) = std::env::var_os("CHAOS_RESULTS") {
        use std::io::Write;
        let line = serde_json::json!({
            "scenario": row.scenario, "reps": row.reps, "faults": row.faults,
            "lost_or_corrupt": row.lost_or_corrupt, "recovered": row.recovered,
            "seconds": row.seconds, "note": row.note,
        });
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap();
        writeln!(f, "{line}").unwrap();
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Backend {
    Local,
    S3,
}

/// A case folder, its store and (for S3) the moto server.
pub struct Case {
    pub dir: tempfile::TempDir,
    pub backend: Backend,
    pub moto: Option<Arc<Moto>>,
    pub bucket: String,
    /// `--store` for every command.
    pub store: String,
    /// `ADAPTOR_LEASE_SECS` for every command, when set.
    pub lease_secs: Option<&'static str>,
}

impl Case {
    pub fn new(backend: Backend) -> Case {
        let dir = tempfile::tempdir().unwrap();
        let (moto, store, bucket) = match backend {
            Backend::Local => (
                None,
                dir.path().join("store").display().to_string(),
                String::new(),
            ),
            Backend::S3 => {
                let bucket = "chaos".to_string();
                let moto = moto::start(&bucket);
                (Some(Arc::new(moto)), format!("s3://{bucket}/runs"), bucket)
            }
        };
        Case {
            dir,
            backend,
            moto,
            bucket,
            store,
            lease_secs: None,
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn moto_port(&self) -> u16 {
        self.moto.as_ref().expect("an S3 case").port
    }

    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.path().join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, text).unwrap();
        p
    }

    /// `adaptor ARGS --store STORE` as runner `tag` (its own cache folder, `CHAOS_TAG` in the
    /// stages' environment), reaching S3 through `port` (moto's, or a proxy's).
    pub fn cmd_via(&self, args: &[&str], tag: &str, port: Option<u16>) -> Command {
        let mut c = Command::new(bin());
        c.args(args)
            .args(["--store", &self.store])
            .current_dir(self.path())
            .env(
                "ADAPTOR_CACHE_DIR",
                self.path().join(format!("cache-{tag}")),
            )
            .env("CHAOS_TAG", tag)
            .stdin(Stdio::null());
        if let Some(secs) = self.lease_secs {
            c.env("ADAPTOR_LEASE_SECS", secs);
        }
        if self.backend == Backend::S3 {
            s3_env(&mut c, port.unwrap_or_else(|| self.moto_port()));
        }
        c
    }

    pub fn cmd(&self, args: &[&str], tag: &str) -> Command {
        self.cmd_via(args, tag, None)
    }

    /// Runs to the end (direct to the store), with a deadline: a hang is a failure.
    pub fn run(&self, args: &[&str], tag: &str) -> Output {
        wait_output(
            self.cmd(args, tag)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap(),
            Duration::from_secs(120),
            args,
        )
    }

    pub fn ok(&self, args: &[&str], tag: &str) -> String {
        let out = self.run(args, tag);
        assert!(
            out.status.success(),
            "adaptor {args:?} failed:\n{}",
            text(&out)
        );
        text(&out)
    }

    /// A runner in its own process group, output discarded.
    pub fn spawn(&self, args: &[&str], tag: &str, port: Option<u16>) -> Child {
        self.cmd_via(args, tag, port)
            .process_group(0)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    /// `status --json`: instance → (state, key).
    pub fn states(&self, manifest: &str) -> BTreeMap<String, (String, String)> {
        let out = self.run(&["status", manifest, "--json"], "check");
        assert!(out.status.success(), "status failed:\n{}", text(&out));
        let json: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("status --json: {e}\n{}", text(&out)));
        json.as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r["instance"].as_str().unwrap().to_string(),
                    (
                        r["state"].as_str().unwrap().to_string(),
                        r["key"].as_str().unwrap().to_string(),
                    ),
                )
            })
            .collect()
    }

    pub fn complete(&self, manifest: &str) -> BTreeSet<String> {
        self.states(manifest)
            .into_iter()
            .filter(|(_, (s, _))| s == "up-to-date")
            .map(|(n, _)| n)
            .collect()
    }

    /// The bytes of one file of a complete artifact, read straight from the store (not through
    /// the runner's cache): `None` if the artifact is not complete or lacks the file.
    pub fn artifact_file(&self, kind: &str, key: &str, file: &str) -> Option<Vec<u8>> {
        let manifest = self.artifact_manifest(kind, key)?;
        let listed = manifest["files"]
            .as_array()?
            .iter()
            .find(|f| f["path"].as_str() == Some(file))?
            .clone();
        match self.backend {
            Backend::Local => {
                std::fs::read(Path::new(&self.store).join(kind).join(key).join(file)).ok()
            }
            Backend::S3 => {
                // Where the manifest says the file's object is: the attempt's folder when it names
                // one, else the artifact folder.
                let dir = format!("runs/{kind}/{key}");
                let object = match manifest["attempt"].as_str() {
                    Some(a) => format!("{dir}/{a}/{file}"),
                    None => listed["object"]
                        .as_str()
                        .map(|o| format!("runs/{o}"))
                        .unwrap_or_else(|| format!("{dir}/{file}")),
                };
                let (status, body) = http_bytes(
                    self.moto_port(),
                    "GET",
                    &format!(
                        "/{}/{}",
                        self.bucket,
                        crate::common::moto::urlencode(&object)
                    ),
                    &[],
                );
                (status == 200).then_some(body)
            }
        }
    }

    pub fn artifact_manifest(&self, kind: &str, key: &str) -> Option<serde_json::Value> {
        let bytes = match self.backend {
            Backend::Local => std::fs::read(
                Path::new(&self.store)
                    .join(kind)
                    .join(key)
                    .join("_manifest.json"),
            )
            .ok()?,
            Backend::S3 => {
                let (status, body) = http_bytes(
                    self.moto_port(),
                    "GET",
                    &format!("/{}/runs/{kind}/{key}/_manifest.json", self.bucket),
                    &[],
                );
                if status != 200 {
                    return None;
                }
                body
            }
        };
        serde_json::from_slice(&bytes).ok()
    }

    /// Every object (S3) or file (local) under a store-relative folder.
    pub fn list(&self, rel: &str) -> Vec<String> {
        match self.backend {
            Backend::Local => walk(&Path::new(&self.store).join(rel))
                .into_iter()
                .map(|p| p.strip_prefix(&self.store).unwrap().display().to_string())
                .collect(),
            Backend::S3 => list_keys(self.moto_port(), &self.bucket, &format!("runs/{rel}"))
                .into_iter()
                .map(|k| k.trim_start_matches("runs/").to_string())
                .collect(),
        }
    }

    /// Writes a store-relative object (local: a file) directly, as something other than the
    /// runner would (another tool, a user, a disk that lost bytes).
    pub fn put_raw(&self, rel: &str, bytes: &[u8]) {
        match self.backend {
            Backend::Local => {
                let p = Path::new(&self.store).join(rel);
                std::fs::create_dir_all(p.parent().unwrap()).unwrap();
                std::fs::write(p, bytes).unwrap();
            }
            Backend::S3 => {
                let (status, body) = http_bytes(
                    self.moto_port(),
                    "PUT",
                    &format!("/{}/runs/{rel}", self.bucket),
                    bytes,
                );
                assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
            }
        }
    }

    pub fn exists_raw(&self, rel: &str) -> bool {
        match self.backend {
            Backend::Local => Path::new(&self.store).join(rel).exists(),
            Backend::S3 => {
                let (status, _) = http_bytes(
                    self.moto_port(),
                    "HEAD",
                    &format!("/{}/runs/{rel}", self.bucket),
                    &[],
                );
                status == 200
            }
        }
    }

    pub fn delete_raw(&self, rel: &str) {
        match self.backend {
            Backend::Local => std::fs::remove_file(Path::new(&self.store).join(rel)).unwrap(),
            Backend::S3 => {
                let (status, _) = http_bytes(
                    self.moto_port(),
                    "DELETE",
                    &format!("/{}/runs/{rel}", self.bucket),
                    &[],
                );
                assert!(status == 204 || status == 200, "DELETE {rel}: {status}");
            }
        }
    }
}

pub fn text(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr)
}

/// Waits for a child with a deadline; past it the child's group is killed and the test fails.
pub fn wait_output(mut child: Child, limit: Duration, what: &[&str]) -> Output {
    let t0 = Instant::now();
    // Read the pipes on threads so that a chatty child cannot block on a full pipe.
    let mut so = child.stdout.take();
    let mut se = child.stderr.take();
    let a = std::thread::spawn(move || {
        let mut v = Vec::new();
        if let Some(s) = so.as_mut() {
            let _ = std::io::Read::read_to_end(s, &mut v);
        }
        v
    });
    let b = std::thread::spawn(move || {
        let mut v = Vec::new();
        if let Some(s) = se.as_mut() {
            let _ = std::io::Read::read_to_end(s, &mut v);
        }
        v
    });
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Output {
                status,
                stdout: a.join().unwrap(),
                stderr: b.join().unwrap(),
            };
        }
        if t0.elapsed() > limit {
            signal(child.id() as i32, 9);
            let _ = child.wait();
            panic!(
                "adaptor {what:?} did not finish within {limit:?}: {}",
                String::from_utf8_lossy(&b.join().unwrap())
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

extern "C" {
    fn kill(pid: i32, sig: i32) -> i32;
}

/// `kill(pid, sig)`; a negative pid signals a process group.
pub fn signal(pid: i32, sig: i32) -> bool {
    // SAFETY: kill(2) touches no memory of ours.
    unsafe { kill(pid, sig) == 0 }
}

/// Processes a scenario suspended: if the scenario fails before resuming them, they are resumed
/// and killed rather than left stopped.
pub struct Suspended(pub Vec<i32>);

impl Drop for Suspended {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for &p in &self.0 {
                signal(p, SIGCONT);
                signal(p, SIGKILL);
            }
        }
    }
}

pub const SIGKILL: i32 = 9;
pub const SIGCONT: i32 = 18;
pub const SIGSTOP: i32 = 19;

pub use crate::common::walk;

/// The build log outside the store: one line per stage start, `<instance> <runner tag>`.
pub struct BuildLog {
    pub path: PathBuf,
    seen: usize,
}

impl BuildLog {
    pub fn new(case: &Case) -> BuildLog {
        BuildLog {
            path: case.path().join("builds.log"),
            seen: 0,
        }
    }
    fn lines(&self) -> Vec<String> {
        std::fs::read_to_string(&self.path)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }
    /// The lines written since the last call.
    pub fn take(&mut self) -> Vec<String> {
        let all = self.lines();
        let new = all[self.seen.min(all.len())..].to_vec();
        self.seen = all.len();
        new
    }
}

/// Instances started by a window of the build log: each at most once, and none that was
/// complete before it (a key is never built again once committed).
pub fn check_builds(lines: &[String], complete_before: &BTreeSet<String>, what: &str) {
    let mut seen = BTreeSet::new();
    for l in lines {
        let name = l
            .rsplit_once(' ')
            .map_or(l.as_str(), |(n, _)| n)
            .to_string();
        assert!(
            !complete_before.contains(&name),
            "{what}: {name} was built although it was already complete (log: {lines:?})"
        );
        assert!(
            seen.insert(name.clone()),
            "{what}: {name} was built twice in one run (log: {lines:?})"
        );
    }
}

/// Stage processes of a killed runner, recorded by the chain manifest's stages in `pids/`.
/// Killing them too is what a node failure (or issue 13's death signal) does.
pub fn kill_orphans(case: &Case) {
    let dir = case.path().join("pids");
    for _ in 0..3 {
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            if let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() {
                signal(-pid, SIGKILL);
                signal(pid, SIGKILL);
            }
            let _ = std::fs::remove_file(e.path());
        }
        std::thread::sleep(Duration::from_millis(60));
    }
}

/// The chain manifest: `s[i]` writes `seq 1 (i*lines)` to `x` (plus `big.bin` of `big` bytes for
/// i = 1), `t[i]` counts and copies it, `all` lists the counts. Every stage logs its start into
/// the build log and its pid into `pids/`. `salt` changes every key.
pub fn chain_manifest(case: &Case, n: usize, salt: &str, sleep: &str, big: usize) -> String {
    let log = case.path().join("builds.log");
    let pids = case.path().join("pids");
    std::fs::create_dir_all(&pids).unwrap();
    let is: Vec<String> = (1..=n).map(|i| i.to_string()).collect();
    let (log, pids) = (log.display(), pids.display());
    format!(
        "[matrix]\ni = [{is}]\n\
         [stages.s]\nkind = 'command'\nforeach = ['i']\n\
         params.vars = {{ salt = '{salt}' }}\n\
         params.run = 'echo $$ > {pids}/$$; echo \"s[i=${{i}}] $CHAOS_TAG\" >> {log}; sleep {sleep}; seq 1 $((${{i}} * 300)) > $OUT/x; if [ ${{i}} = 1 ] && [ {big} -gt 0 ]; then head -c {big} /dev/zero | tr \"\\\\0\" a > $OUT/big.bin; fi; rm -f {pids}/$$'\n\
         [stages.t]\nkind = 'command'\nforeach = ['i']\ninputs.deps = 's[i=${{i}}]'\n\
         params.run = 'echo $$ > {pids}/$$; echo \"t[i=${{i}}] $CHAOS_TAG\" >> {log}; sleep {sleep}; wc -l < $IN_DEPS/x > $OUT/n; cp $IN_DEPS/x $OUT/copy; rm -f {pids}/$$'\n\
         [stages.all]\nkind = 'command'\ninputs.deps = 't[*]'\n\
         params.run = 'echo $$ > {pids}/$$; echo \"all $CHAOS_TAG\" >> {log}; for d in $(env | grep \"^IN_DEPS_[0-9]\" | cut -d= -f2); do cat $d/n; done | sort -n | tr -s \" \\\\n\" \" \" > $OUT/y; rm -f {pids}/$$'\n",
        is = is.join(", ")
    )
}

/// Checks every complete artifact of the chain manifest against the bytes its stage writes;
/// returns how many are wrong (a complete artifact with other bytes, or a file missing).
pub fn check_chain(case: &Case, manifest: &str, n: usize, big: usize) -> Vec<String> {
    let mut bad = Vec::new();
    for (name, (state, key)) in case.states(manifest) {
        // Whatever `status` says: an artifact is complete when its `_manifest.json` is there.
        if case.artifact_manifest("command", &key).is_none() {
            continue;
        }
        let seq = |i: usize| -> Vec<u8> {
            (1..=i * 300)
                .map(|k| format!("{k}\n"))
                .collect::<String>()
                .into_bytes()
        };
        let i: usize = name
            .split("i=")
            .nth(1)
            .and_then(|r| r.trim_end_matches(']').parse().ok())
            .unwrap_or(0);
        let mut expected: Vec<(&str, Vec<u8>)> = Vec::new();
        if name.starts_with("s[") {
            expected.push(("x", seq(i)));
            if i == 1 && big > 0 {
                expected.push(("big.bin", vec![b'a'; big]));
            }
        } else if name.starts_with("t[") {
            expected.push(("n", format!("{}\n", i * 300).into_bytes()));
            expected.push(("copy", seq(i)));
        } else {
            let counts: Vec<String> = (1..=n).map(|i| (i * 300).to_string()).collect();
            expected.push(("y", format!("{} ", counts.join(" ")).into_bytes()));
        }
        for (file, want) in expected {
            match case.artifact_file("command", &key, file) {
                Some(got) if got == want => {}
                Some(got) => bad.push(format!(
                    "{name} ({key}, {state}): {file} has {} bytes that differ from the {} its stage writes",
                    got.len(),
                    want.len()
                )),
                None => bad.push(format!("{name} ({key}, {state}): {file} is missing")),
            }
        }
    }
    bad
}

/// A random duration in [0, max).
pub fn jitter(rng: &mut Rng, max: Duration) -> Duration {
    rng.duration(Duration::ZERO, max)
}
