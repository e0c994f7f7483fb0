//! A fault-injecting HTTP proxy on 127.0.0.1 between the runner and the S3 server (moto): per
//! request it may answer 500/503 itself, drop the connection in the middle of the request body or
//! of the response body (after the server applied the request), stall, or add latency, following
//! a seeded random schedule. One request per client connection (`Connection: close`), so every
//! request is framed by the proxy and every fault hits exactly one request.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A small seeded generator (splitmix64): the schedule is reproducible from its seed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Uniform in [lo, hi).
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        if hi <= lo {
            lo
        } else {
            lo + self.next_u64() % (hi - lo)
        }
    }
    pub fn duration(&mut self, lo: Duration, hi: Duration) -> Duration {
        let (a, b) = (lo.as_micros() as u64, hi.as_micros() as u64);
        Duration::from_micros(self.range(a, b.max(a + 1)))
    }
}

/// How often each fault is injected (probabilities per request; their sum must be <= 1) and how
/// long stalls and the added latency last.
#[derive(Debug, Clone, Default)]
pub struct FaultPlan {
    /// Answer `503 SlowDown` without forwarding.
    pub p_503: f64,
    /// Answer `500 InternalError` without forwarding.
    pub p_500: f64,
    /// Read part of the request body, then close: the server never sees the request.
    pub p_drop_request: f64,
    /// Forward the request, then send the client only part of the response and close: the server
    /// applied a request whose answer the client never gets.
    pub p_drop_response: f64,
    /// Only requests with these methods get their answer cut (all when empty): `GET` and `HEAD`
    /// for reads, `PUT`, `POST` and `DELETE` for writes whose outcome the client cannot know.
    pub cut_methods: &'static [&'static str],
    /// Hold the request for `stall` before forwarding it.
    pub p_stall: f64,
    pub stall: Duration,
    /// Added to every request, uniform in the range.
    pub latency: (Duration, Duration),
}

/// What happened to one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    None,
    Error503,
    Error500,
    DropRequest,
    DropResponse,
    Stall,
}

/// Counters, read by the tests and the bench table.
#[derive(Debug, Default)]
pub struct Stats {
    pub requests: AtomicU64,
    pub error_503: AtomicU64,
    pub error_500: AtomicU64,
    pub drop_request: AtomicU64,
    pub drop_response: AtomicU64,
    pub stall: AtomicU64,
}

impl Stats {
    /// Faults injected so far (every kind but latency, which every request gets).
    pub fn faults(&self) -> u64 {
        self.error_503.load(Ordering::Relaxed)
            + self.error_500.load(Ordering::Relaxed)
            + self.drop_request.load(Ordering::Relaxed)
            + self.drop_response.load(Ordering::Relaxed)
            + self.stall.load(Ordering::Relaxed)
    }
    pub fn summary(&self) -> String {
        format!(
            "{} requests: {} x 503, {} x 500, {} dropped mid-request, {} dropped mid-response, {} stalled",
            self.requests.load(Ordering::Relaxed),
            self.error_503.load(Ordering::Relaxed),
            self.error_500.load(Ordering::Relaxed),
            self.drop_request.load(Ordering::Relaxed),
            self.drop_response.load(Ordering::Relaxed),
            self.stall.load(Ordering::Relaxed)
        )
    }
}

struct Shared {
    upstream: u16,
    plan: Mutex<FaultPlan>,
    rng: Mutex<Rng>,
    stats: Stats,
    stop: AtomicBool,
}

pub struct Proxy {
    pub port: u16,
    shared: Arc<Shared>,
}

impl Proxy {
    /// Starts the proxy in front of `127.0.0.1:upstream`, with faults drawn from `seed`.
    pub fn start(upstream: u16, plan: FaultPlan, seed: u64) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let port = listener.local_addr().unwrap().port();
        let shared = Arc::new(Shared {
            upstream,
            plan: Mutex::new(plan),
            rng: Mutex::new(Rng::new(seed)),
            stats: Stats::default(),
            stop: AtomicBool::new(false),
        });
        let s = shared.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let s = s.clone();
                std::thread::spawn(move || {
                    let _ = serve(&s, conn);
                });
            }
        });
        Proxy { port, shared }
    }

    pub fn stats(&self) -> &Stats {
        &self.shared.stats
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so that it sees `stop`.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// A request as read from the client: the head (request line and headers) and the body.
struct Request {
    method: String,
    head: Vec<String>,
    body: Vec<u8>,
}

fn header<'a>(lines: &'a [String], name: &str) -> Option<&'a str> {
    lines.iter().skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// Reads the request line and headers; `None` at a clean end of stream.
fn read_head(r: &mut BufReader<TcpStream>) -> io::Result<Option<Vec<String>>> {
    let mut lines = Vec::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            return if lines.is_empty() {
                Ok(None)
            } else {
                Err(io::ErrorKind::UnexpectedEof.into())
            };
        }
        let line = line.trim_end_matches(['\r', '\n']).to_string();
        if line.is_empty() {
            return Ok(Some(lines));
        }
        lines.push(line);
    }
}

/// Reads a body framed by Content-Length or chunked encoding, keeping the bytes as sent; with
/// `limit`, stops after that many bytes (a drop in the middle of the body).
fn read_body(
    r: &mut BufReader<TcpStream>,
    head: &[String],
    limit: Option<usize>,
) -> io::Result<Vec<u8>> {
    let chunked = header(head, "transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    let mut body = Vec::new();
    if chunked {
        loop {
            let mut size_line = String::new();
            r.read_line(&mut size_line)?;
            body.extend_from_slice(size_line.as_bytes());
            let size = usize::from_str_radix(size_line.trim().split(';').next().unwrap_or(""), 16)
                .map_err(|_| io::Error::from(io::ErrorKind::InvalidData))?;
            if limit.is_some_and(|l| body.len() >= l) {
                return Ok(body);
            }
            if size == 0 {
                // Trailers, up to an empty line.
                loop {
                    let mut t = String::new();
                    r.read_line(&mut t)?;
                    body.extend_from_slice(t.as_bytes());
                    if t.trim().is_empty() {
                        return Ok(body);
                    }
                }
            }
            let mut chunk = vec![0u8; size + 2];
            r.read_exact(&mut chunk)?;
            body.extend_from_slice(&chunk);
        }
    }
    let len: usize = header(head, "content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let take = limit.map_or(len, |l| l.min(len));
    body.resize(take, 0);
    r.read_exact(&mut body)?;
    Ok(body)
}

fn draw(s: &Shared, method: &str) -> (Fault, Duration) {
    let mut plan = s.plan.lock().unwrap().clone();
    if !plan.cut_methods.is_empty() && !plan.cut_methods.contains(&method) {
        plan.p_drop_response = 0.0;
    }
    let mut rng = s.rng.lock().unwrap();
    let latency = rng.duration(plan.latency.0, plan.latency.1);
    let x = rng.unit();
    let mut acc = 0.0;
    for (p, f) in [
        (plan.p_503, Fault::Error503),
        (plan.p_500, Fault::Error500),
        (plan.p_drop_request, Fault::DropRequest),
        (plan.p_drop_response, Fault::DropResponse),
        (plan.p_stall, Fault::Stall),
    ] {
        acc += p;
        if x < acc {
            let extra = if f == Fault::Stall {
                plan.stall
            } else {
                Duration::ZERO
            };
            return (f, latency + extra);
        }
    }
    (Fault::None, latency)
}

fn error_response(status: u16, code: &str) -> Vec<u8> {
    let reason = if status == 503 {
        "Service Unavailable"
    } else {
        "Internal Server Error"
    };
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>injected by the chaos proxy</Message></Error>"
    );
    format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn serve(s: &Shared, client: TcpStream) -> io::Result<()> {
    let mut reader = BufReader::new(client.try_clone()?);
    let mut client = client;
    let Some(head) = read_head(&mut reader)? else {
        return Ok(());
    };
    if s.stop.load(Ordering::SeqCst) {
        return Ok(());
    }
    s.stats.requests.fetch_add(1, Ordering::Relaxed);
    let method = head[0].split(' ').next().unwrap_or("").to_string();
    if header(&head, "expect").is_some_and(|v| v.eq_ignore_ascii_case("100-continue")) {
        client.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
    }
    let (fault, delay) = draw(s, &method);
    let counter = match fault {
        Fault::None => None,
        Fault::Error503 => Some(&s.stats.error_503),
        Fault::Error500 => Some(&s.stats.error_500),
        Fault::DropRequest => Some(&s.stats.drop_request),
        Fault::DropResponse => Some(&s.stats.drop_response),
        Fault::Stall => Some(&s.stats.stall),
    };
    if let Some(c) = counter {
        c.fetch_add(1, Ordering::Relaxed);
    }
    if fault == Fault::DropRequest {
        // Half of the body (none of it when there is none), then the connection goes away.
        let len: usize = header(&head, "content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let _ = read_body(&mut reader, &head, Some(len / 2));
        let _ = client.shutdown(Shutdown::Both);
        return Ok(());
    }
    let body = read_body(&mut reader, &head, None)?;
    let req = Request { method, head, body };
    std::thread::sleep(delay);
    match fault {
        Fault::Error503 => client.write_all(&error_response(503, "SlowDown"))?,
        Fault::Error500 => client.write_all(&error_response(500, "InternalError"))?,
        _ => {
            let response = forward(s.upstream, &req)?;
            if fault == Fault::DropResponse {
                // The server applied the request; the client gets a cut-off answer.
                let head_end = response
                    .windows(4)
                    .position(|w| w == b"\r\n\r\n")
                    .map_or(response.len(), |p| p + 4);
                let cut = if response.len() > head_end + 1 {
                    head_end + (response.len() - head_end) / 2
                } else {
                    head_end / 2
                };
                client.write_all(&response[..cut])?;
            } else {
                client.write_all(&response)?;
            }
        }
    }
    client.flush()?;
    let _ = client.shutdown(Shutdown::Both);
    Ok(())
}

/// Sends the request upstream with `Connection: close` and returns the whole response, its
/// `Connection` header rewritten to `close` (the proxy closes every client connection).
fn forward(upstream: u16, req: &Request) -> io::Result<Vec<u8>> {
    let mut up = TcpStream::connect(("127.0.0.1", upstream))?;
    let mut out = Vec::with_capacity(req.body.len() + 1024);
    out.extend_from_slice(req.head[0].as_bytes());
    out.extend_from_slice(b"\r\n");
    for line in &req.head[1..] {
        let name = line.split(':').next().unwrap_or("").trim();
        if name.eq_ignore_ascii_case("connection")
            || name.eq_ignore_ascii_case("keep-alive")
            || name.eq_ignore_ascii_case("expect")
        {
            continue;
        }
        out.extend_from_slice(line.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"Connection: close\r\n\r\n");
    out.extend_from_slice(&req.body);
    up.write_all(&out)?;
    let mut response = Vec::new();
    let mut r = BufReader::new(up);
    let head = read_head(&mut r)?.ok_or(io::ErrorKind::UnexpectedEof)?;
    let mut rewritten = Vec::new();
    rewritten.extend_from_slice(head[0].as_bytes());
    rewritten.extend_from_slice(b"\r\n");
    for line in &head[1..] {
        let name = line.split(':').next().unwrap_or("").trim();
        if name.eq_ignore_ascii_case("connection") || name.eq_ignore_ascii_case("keep-alive") {
            continue;
        }
        rewritten.extend_from_slice(line.as_bytes());
        rewritten.extend_from_slice(b"\r\n");
    }
    rewritten.extend_from_slice(b"Connection: close\r\n\r\n");
    response.extend_from_slice(&rewritten);
    let status: u16 = head[0]
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let no_body = req.method == "HEAD" || status == 204 || status == 304 || status / 100 == 1;
    if !no_body {
        if header(&head, "content-length").is_some() || header(&head, "transfer-encoding").is_some()
        {
            response.extend_from_slice(&read_body(&mut r, &head, None)?);
        } else {
            r.read_to_end(&mut response)?;
        }
    }
    Ok(response)
}
