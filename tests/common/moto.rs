//! A real S3-compatible server (moto, from the venv `scripts/setup.sh` makes) on 127.0.0.1,
//! started and stopped by the test that needs it; the requests the client under test does not
//! make (reading, writing and deleting objects behind the runner's back, listing every key), and
//! the settings that point an `adaptor` process at the server (or at a proxy in front of it).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Moto {
    child: Child,
    pub port: u16,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn moto_server() -> PathBuf {
    let p = super::repo().join(".venv/bin/moto_server");
    assert!(
        p.exists(),
        "{} is missing: run `scripts/setup.sh` (it installs moto into .venv)",
        p.display()
    );
    p
}

/// Starts moto on a free port and creates `bucket`.
pub fn start(bucket: &str) -> Moto {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    start_on(port, bucket)
}

/// Starts moto on `port` (e.g. again after it was killed; it starts empty) and creates `bucket`.
pub fn start_on(port: u16, bucket: &str) -> Moto {
    let child = Command::new(moto_server())
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let moto = Moto { child, port };
    let t0 = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(t0.elapsed() < Duration::from_secs(30), "moto did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (status, body) = http_bytes(port, "PUT", &format!("/{bucket}"), &[]);
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    moto
}

impl Moto {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// One request without a body; the response body as text.
    pub fn http(&self, method: &str, path: &str) -> String {
        String::from_utf8_lossy(&http_bytes(self.port, method, path, &[]).1).into_owned()
    }

    /// Every object key under a prefix.
    pub fn keys(&self, bucket: &str, prefix: &str) -> Vec<String> {
        list_keys(self.port, bucket, prefix)
    }

    /// The AWS_* settings that point a client at this server.
    pub fn env(&self) -> Vec<(String, String)> {
        s3_vars(self.port)
    }
}

/// Moto answers object reads of unsigned requests with 403; it does not check signatures, so a
/// well-formed header with a made-up signature does.
const AUTH: &str = "Authorization: AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=0";

/// One plain HTTP request with a body (signed in form only, see [`AUTH`]): (status code, response
/// body); status 0 when the connection closed before an answer.
pub fn http_bytes(port: u16, method: &str, path: &str, body: &[u8]) -> (u16, Vec<u8>) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{AUTH}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .unwrap();
    // A connection cut by a fault proxy reads as no answer (status 0), not as a test failure.
    let _ = s.write_all(body);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let head_end = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(out.len(), |p| p + 4);
    let head = String::from_utf8_lossy(&out[..head_end]).into_owned();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    let mut body = out[head_end..].to_vec();
    if chunked {
        body = dechunk(&body);
    }
    (status, body)
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = b.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size = usize::from_str_radix(
            String::from_utf8_lossy(&b[..eol])
                .split(';')
                .next()
                .unwrap_or("")
                .trim(),
            16,
        )
        .unwrap_or(0);
        if size == 0 || b.len() < eol + 2 + size {
            return out;
        }
        out.extend_from_slice(&b[eol + 2..eol + 2 + size]);
        b = &b[(eol + 4 + size).min(b.len())..];
    }
}

/// Every object key under a prefix of a bucket (ListObjectsV2, following continuation tokens).
pub fn list_keys(port: u16, bucket: &str, prefix: &str) -> Vec<String> {
    let mut keys = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let mut path = format!("/{bucket}?list-type=2&prefix={prefix}");
        if let Some(t) = &token {
            path.push_str(&format!("&continuation-token={}", urlencode(t)));
        }
        let (status, body) = http_bytes(port, "GET", &path, &[]);
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        let text = String::from_utf8_lossy(&body).into_owned();
        keys.extend(between_all(&text, "<Key>", "</Key>").map(xml_unescape));
        token = between_all(&text, "<NextContinuationToken>", "</NextContinuationToken>")
            .next()
            .map(str::to_string);
        if token.is_none() {
            return keys;
        }
    }
}

fn between_all<'a>(text: &'a str, open: &'a str, close: &'a str) -> impl Iterator<Item = &'a str> {
    text.split(open)
        .skip(1)
        .filter_map(move |s| s.split(close).next())
}

fn xml_unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&")
}

pub fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The AWS_* settings that reach the S3 server on `port` of 127.0.0.1 (moto itself, or a proxy
/// in front of it). The secret is one that tests check never appears in output.
pub fn s3_vars(port: u16) -> Vec<(String, String)> {
    [
        ("AWS_ACCESS_KEY_ID", "testing".to_string()),
        (
            "AWS_SECRET_ACCESS_KEY",
            "secret-that-must-not-leak".to_string(),
        ),
        ("AWS_DEFAULT_REGION", "us-east-1".to_string()),
        ("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{port}")),
        ("AWS_ALLOW_HTTP", "true".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// Points an `adaptor` process at the S3 server on `port` (see [`s3_vars`]).
pub fn s3_env(c: &mut Command, port: u16) -> &mut Command {
    c.envs(s3_vars(port))
}
