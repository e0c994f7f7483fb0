//! A real S3-compatible server (moto, from the venv `scripts/setup.sh` makes) on 127.0.0.1,
//! started and stopped by the test that needs it, plus unsigned requests to it.
#![allow(dead_code)]

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
    let created = moto.http("PUT", &format!("/{bucket}"));
    assert!(created.starts_with("HTTP/1.1 200"), "{created}");
    moto
}

impl Moto {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// One plain HTTP request (unsigned: moto accepts it); the whole response.
    pub fn http(&self, method: &str, path: &str) -> String {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        write!(s, "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", self.port).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }

    /// The object keys under a prefix (ListObjectsV2, first page).
    pub fn keys(&self, bucket: &str, prefix: &str) -> Vec<String> {
        let listing = self.http("GET", &format!("/{bucket}?list-type=2&prefix={prefix}"));
        listing
            .split("<Key>")
            .skip(1)
            .filter_map(|k| k.split("</Key>").next())
            .map(str::to_string)
            .collect()
    }

    /// The AWS_* settings that point a client at this server.
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("AWS_ACCESS_KEY_ID", "testing".to_string()),
            ("AWS_SECRET_ACCESS_KEY", "secret".to_string()),
            ("AWS_DEFAULT_REGION", "us-east-1".to_string()),
            (
                "AWS_ENDPOINT_URL",
                format!("http://127.0.0.1:{}", self.port),
            ),
            ("AWS_ALLOW_HTTP", "true".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }
}
