//! The processes a stage starts (the `command` stage's shell, the `adaptor-torch` worker): each in a
//! process group of its own that dies with the runner, stops on cancel or timeout, and is read
//! without ever letting a stray process hang the runner.
//!
//! How a group dies with its runner, even on `kill -9`:
//! - the direct child gets `PR_SET_PDEATHSIG = SIGKILL` (Linux), set in the child before `exec`;
//! - that only reaches the direct child, not what a shell starts in the background. So a *sentinel*
//!   joins the group: `sh -c 'read -r line; kill -KILL 0'` with its stdin on a pipe whose only
//!   writer is the runner. When the runner exits, however it exits, the kernel closes the pipe,
//!   `read` returns, and `kill -KILL 0` kills every process of the group, the sentinel included.
//!   The sentinel ignores SIGTERM, SIGINT and SIGHUP, so a graceful stop cannot remove it early.
//!
//! A process that leaves the group on purpose (`setsid`, `set -m`) is out of reach: it is a daemon,
//! not part of the stage. Its hold on the stage's output does not hang the runner either: once the
//! stage's main process has exited, the rest of the group is killed and output is read for at most
//! [`DRAIN`] more.

use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::stage::StageContext;

/// Which stream of the process a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// Between SIGTERM and SIGKILL when the runner stops a group (cancel, timeout).
pub const GRACE: Duration = Duration::from_secs(3);

/// How long output is still read after the main process exited and the group was killed: what a
/// process outside the group (which kept the pipe open) writes after that is not read.
pub const DRAIN: Duration = Duration::from_secs(2);

/// A longer line is cut into pieces of this size (a process writing without newlines cannot
/// make the runner hold unbounded memory).
pub const MAX_LINE: usize = 1 << 20;

/// How often the loop looks at the process, the cancel flag and the clock.
const TICK_MS: i32 = 100;

/// What the sentinel runs (see the module documentation).
const SENTINEL: &str = "trap '' TERM INT HUP; read -r line; kill -KILL 0";

/// How a group ended.
#[derive(Debug)]
pub struct Finished {
    pub status: ExitStatus,
    /// The runner stopped the group (the stage was cancelled or timed out) before it exited.
    pub stopped: bool,
    /// Things the stage log should say (output cut off, ...).
    pub notes: Vec<String>,
}

/// Starts `cmd` in a new process group that dies with the runner (see the module documentation),
/// writes `stdin` to it (or gives it `/dev/null`), hands every output line to `on_line`, and
/// returns once the main process has exited. Non-UTF-8 bytes are replaced (lossy decoding).
///
/// While it runs, [`StageContext::is_cancelled`] is checked every 100 ms: when it turns true the
/// group gets SIGTERM, then SIGKILL after [`GRACE`]. When the main process exits, what is left of
/// the group is killed (a stage's processes never outlive it, and nothing can still be writing
/// into its output folder when the runner commits it).
///
/// The parent-death signal is tied to the calling *thread*: the thread that calls this must be the
/// one that waits, which this function does.
pub fn run_group(
    mut cmd: Command,
    stdin: Option<Vec<u8>>,
    ctx: &StageContext,
    mut on_line: impl FnMut(Stream, String),
) -> io::Result<Finished> {
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .process_group(0);
    let runner = std::process::id() as libc::pid_t;
    // SAFETY: the closure runs in the forked child before exec and only makes async-signal-safe
    // system calls (prctl, getppid); it touches no memory shared with the parent.
    unsafe {
        cmd.pre_exec(move || die_with_parent(runner));
    }
    let mut child = cmd.spawn()?;
    let pgid = child.id() as libc::pid_t;
    let sentinel = match spawn_sentinel(pgid) {
        Ok(s) => s,
        Err(e) => {
            kill_group(pgid, libc::SIGKILL);
            let _ = child.wait();
            return Err(io::Error::new(
                e.kind(),
                format!("cannot start the process-group sentinel (`sh`): {e}"),
            ));
        }
    };

    // The input is written from a thread: a process that does not read it cannot block the loop,
    // and the write fails (EPIPE) once the group is killed.
    let writer = match (stdin, child.stdin.take()) {
        (Some(bytes), Some(mut pipe)) => Some(std::thread::spawn(move || {
            let _ = pipe.write_all(&bytes);
        })),
        _ => None,
    };
    let mut readers = [
        LineReader::new(Stream::Stdout, child.stdout.take().map(Box::new)),
        LineReader::new(Stream::Stderr, child.stderr.take().map(Box::new)),
    ];
    // From here on, however this function is left (an error, a panic in `on_line`), the group
    // is killed and its processes reaped.
    let mut group = Group {
        pgid,
        child,
        sentinel,
        writer,
        reaped: false,
    };
    for r in &readers {
        if let Some(fd) = r.fd() {
            set_nonblocking(fd)?;
        }
    }

    let mut status: Option<ExitStatus> = None;
    let mut exited_at: Option<Instant> = None;
    let mut term_sent: Option<Instant> = None;
    let mut kill_sent = false;
    let mut notes = Vec::new();
    loop {
        let mut fds: Vec<libc::pollfd> = readers
            .iter()
            .filter_map(|r| r.fd())
            .map(|fd| libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        if fds.is_empty() {
            std::thread::sleep(Duration::from_millis(TICK_MS as u64));
        } else {
            // SAFETY: `fds` is a valid array of `fds.len()` pollfd structs we own.
            let rc = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, TICK_MS) };
            if rc < 0 {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
        for r in &mut readers {
            r.read_available(&mut on_line);
        }

        if status.is_none() {
            if exited_without_reaping(pgid)? {
                // Kill what is left of the group before reaping: while the main process is an
                // unreaped zombie its pid, hence the group id, cannot be reused.
                kill_group(pgid, libc::SIGKILL);
                let (st, peak_kib) = group.reap()?;
                ctx.record_peak_rss(peak_kib);
                status = Some(st);
                exited_at = Some(Instant::now());
            } else if ctx.is_cancelled() {
                match term_sent {
                    None => {
                        kill_group(pgid, libc::SIGTERM);
                        term_sent = Some(Instant::now());
                    }
                    Some(t) if !kill_sent && t.elapsed() >= GRACE => {
                        kill_group(pgid, libc::SIGKILL);
                        kill_sent = true;
                    }
                    _ => {}
                }
            }
        }
        if let Some(t) = exited_at {
            if readers.iter().all(|r| r.fd().is_none()) {
                break;
            }
            if t.elapsed() >= DRAIN {
                notes.push(format!(
                    "stopped reading the output {}s after the stage's process exited: a process \
                     outside its process group still holds it open",
                    DRAIN.as_secs()
                ));
                break;
            }
        }
    }
    for r in &mut readers {
        r.finish(&mut on_line);
    }
    drop(group);
    Ok(Finished {
        status: status.expect("the loop ends after the process exited"),
        stopped: term_sent.is_some(),
        notes,
    })
}

/// A started group: the main process, the sentinel and the thread writing the input.
struct Group {
    pgid: libc::pid_t,
    child: Child,
    sentinel: Child,
    writer: Option<std::thread::JoinHandle<()>>,
    /// The main process was reaped by [`Group::reap`] (its pid may already be reused).
    reaped: bool,
}

impl Group {
    /// Waits for the main process: its exit status and peak resident set size in KiB (the
    /// largest of it and the descendants it waited for, as `wait4` reports `ru_maxrss`).
    fn reap(&mut self) -> io::Result<(ExitStatus, u64)> {
        let pid = self.child.id() as libc::pid_t;
        let mut status: libc::c_int = 0;
        // SAFETY: `usage` is a zeroed rusage we own; wait4 only writes into it and `status`.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        loop {
            // SAFETY: `pid` is our own unreaped child; the pointers are to locals we own.
            let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
            if rc == pid {
                break;
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
        self.reaped = true;
        Ok((
            ExitStatus::from_raw(status),
            u64::try_from(usage.ru_maxrss).unwrap_or(0),
        ))
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        // The group id stays reserved until the sentinel is reaped (a zombie still holds it), so
        // this can only reach the stage's own processes.
        kill_group(self.pgid, libc::SIGKILL);
        drop(self.sentinel.stdin.take());
        if !self.reaped {
            let _ = self.child.wait();
        }
        let _ = self.sentinel.wait();
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
    }
}

/// "exited with status 3", "was killed by SIGSEGV (core dumped)".
pub fn describe_exit(status: &ExitStatus) -> String {
    if let Some(code) = status.code() {
        return format!("exited with status {code}");
    }
    match status.signal() {
        Some(sig) => {
            let mut text = format!("was killed by {}", signal_name(sig));
            if status.core_dumped() {
                text.push_str(" (core dumped)");
            }
            if sig == libc::SIGKILL {
                text.push_str(" (the kernel's out-of-memory killer sends SIGKILL too)");
            }
            text
        }
        None => format!("ended with {status}"),
    }
}

/// The conventional name of a signal number (`SIGKILL`), or `signal N`.
pub fn signal_name(sig: i32) -> String {
    let name = match sig {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGTRAP => "SIGTRAP",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGUSR2 => "SIGUSR2",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGALRM => "SIGALRM",
        libc::SIGTERM => "SIGTERM",
        libc::SIGXCPU => "SIGXCPU",
        libc::SIGXFSZ => "SIGXFSZ",
        libc::SIGSYS => "SIGSYS",
        _ => return format!("signal {sig}"),
    };
    name.to_string()
}

/// In the child, before exec: die when the runner does.
fn die_with_parent(runner: libc::pid_t) -> io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: prctl with these arguments only sets a flag of the calling process.
        if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    // The runner may have died between fork and prctl: then nobody would send the signal.
    // SAFETY: getppid has no preconditions.
    if unsafe { libc::getppid() } != runner {
        return Err(io::Error::other(
            "the runner exited while starting the stage",
        ));
    }
    Ok(())
}

fn spawn_sentinel(pgid: libc::pid_t) -> io::Result<Child> {
    Command::new("sh")
        .args(["-c", SENTINEL])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(pgid)
        .spawn()
}

/// Signals every process of the group (errors mean it is already gone).
pub fn kill_group(pgid: libc::pid_t, signal: i32) {
    // SAFETY: kill has no memory preconditions; a negative pid names a process group.
    unsafe { libc::kill(-pgid, signal) };
}

/// Whether process `pid` (our child) has exited, without reaping it.
fn exited_without_reaping(pid: libc::pid_t) -> io::Result<bool> {
    // SAFETY: `info` is a zeroed siginfo_t we own; waitid only writes into it.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    let rc = unsafe {
        libc::waitid(
            libc::P_PID,
            pid as libc::id_t,
            &mut info,
            libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: after a successful waitid, si_pid is set (0 when nothing changed state).
    Ok(unsafe { info.si_pid() } != 0)
}

fn set_nonblocking(fd: i32) -> io::Result<()> {
    // SAFETY: fcntl on a file descriptor we own, with integer arguments only.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

trait Pipe: Read + AsRawFd {}
impl<T: Read + AsRawFd> Pipe for T {}

/// Splits one non-blocking pipe into lines.
struct LineReader {
    stream: Stream,
    pipe: Option<Box<dyn Pipe>>,
    pending: Vec<u8>,
}

impl LineReader {
    fn new<P: Pipe + 'static>(stream: Stream, pipe: Option<Box<P>>) -> Self {
        LineReader {
            stream,
            pipe: pipe.map(|p| p as Box<dyn Pipe>),
            pending: Vec::new(),
        }
    }

    fn fd(&self) -> Option<i32> {
        self.pipe.as_ref().map(|p| p.as_raw_fd())
    }

    /// Reads what is there without blocking; closes the pipe at end of file.
    fn read_available(&mut self, on_line: &mut impl FnMut(Stream, String)) {
        let mut buf = [0u8; 64 * 1024];
        // Bounded, so one chatty stream cannot starve the other or the exit check.
        for _ in 0..64 {
            let Some(pipe) = self.pipe.as_mut() else {
                return;
            };
            match pipe.read(&mut buf) {
                Ok(0) => {
                    self.pipe = None;
                    break;
                }
                Ok(n) => {
                    self.pending.extend_from_slice(&buf[..n]);
                    self.emit_lines(on_line);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => {
                    self.pipe = None;
                    break;
                }
            }
        }
    }

    fn emit_lines(&mut self, on_line: &mut impl FnMut(Stream, String)) {
        let mut start = 0;
        while let Some(nl) = self.pending[start..].iter().position(|&b| b == b'\n') {
            let end = start + nl;
            on_line(self.stream, lossy(&self.pending[start..end]));
            start = end + 1;
        }
        self.pending.drain(..start);
        while self.pending.len() >= MAX_LINE {
            let piece: Vec<u8> = self.pending.drain(..MAX_LINE).collect();
            on_line(self.stream, lossy(&piece));
        }
    }

    /// Hands over a last line that had no newline, and stops reading.
    fn finish(&mut self, on_line: &mut impl FnMut(Stream, String)) {
        if !self.pending.is_empty() {
            let rest = std::mem::take(&mut self.pending);
            on_line(self.stream, lossy(&rest));
        }
        self.pipe = None;
    }
}

fn lossy(bytes: &[u8]) -> String {
    let bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
    String::from_utf8_lossy(bytes).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_have_their_names() {
        assert_eq!(signal_name(libc::SIGKILL), "SIGKILL");
        assert_eq!(signal_name(libc::SIGSEGV), "SIGSEGV");
        assert_eq!(signal_name(200), "signal 200");
        assert_eq!(
            describe_exit(&ExitStatus::from_raw(libc::SIGSEGV | 0x80)),
            "was killed by SIGSEGV (core dumped)"
        );
        assert_eq!(
            describe_exit(&ExitStatus::from_raw(3 << 8)),
            "exited with status 3"
        );
    }

    #[test]
    fn lines_are_split_decoded_lossily_and_bounded() {
        let mut r = LineReader {
            stream: Stream::Stdout,
            pipe: None,
            pending: b"ok\n\xff\xfebad\r\npartial".to_vec(),
        };
        let mut lines = Vec::new();
        r.emit_lines(&mut |_, l| lines.push(l));
        assert_eq!(lines, ["ok", "\u{fffd}\u{fffd}bad"]);
        r.finish(&mut |_, l| lines.push(l));
        assert_eq!(lines.last().unwrap(), "partial");

        r.pending = vec![b'x'; MAX_LINE * 2 + 5];
        let mut sizes = Vec::new();
        r.emit_lines(&mut |_, l| sizes.push(l.len()));
        assert_eq!(sizes, [MAX_LINE, MAX_LINE]);
        assert_eq!(r.pending.len(), 5);
    }
}
