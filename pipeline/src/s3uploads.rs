//! A bucket's multipart uploads in progress (S3 `ListMultipartUploads`), which object_store 0.13
//! cannot list: one GET per page of up to 1,000 uploads, signed with Signature Version 4 using
//! the store's own credentials (environment, profile, instance role: whatever object_store found).
//! gc uses it to abort the uploads of runners that died, including one killed between starting an
//! upload and recording it under `_uploads/`.

use chrono::{DateTime, Utc};
use object_store::aws::AwsCredential;
use ring::{digest, hmac};

/// One multipart upload in progress.
#[derive(Debug, Clone, PartialEq)]
pub struct PendingUpload {
    /// The object's full key in the bucket.
    pub key: String,
    pub upload_id: String,
    /// When the upload was started, by the server's clock (Unix seconds).
    pub initiated_unix: f64,
}

/// Where and how to ask.
#[derive(Debug, Clone)]
pub struct Lister {
    /// `scheme://host[:port]` of the bucket's requests, without a trailing slash.
    pub base_url: String,
    /// The bucket's path on that host: `/<bucket>` (path style) or `/` (virtual-hosted style).
    pub path: String,
    pub region: String,
}

impl Lister {
    /// From the store's settings as object_store read them: its endpoint (AWS's regional one by
    /// default), the bucket, the region and the addressing style.
    pub fn new(endpoint: Option<&str>, bucket: &str, region: &str, virtual_hosted: bool) -> Lister {
        let (base_url, path) = match (endpoint, virtual_hosted) {
            (Some(e), false) => (e.trim_end_matches('/').to_string(), format!("/{bucket}")),
            // object_store's virtual-hosted endpoints already name the bucket.
            (Some(e), true) => (e.trim_end_matches('/').to_string(), "/".to_string()),
            (None, false) => (
                format!("https://s3.{region}.amazonaws.com"),
                format!("/{bucket}"),
            ),
            (None, true) => (
                format!("https://{bucket}.s3.{region}.amazonaws.com"),
                "/".to_string(),
            ),
        };
        Lister {
            base_url,
            path: uri_encode(&path, false),
            region: region.to_string(),
        }
    }
}

/// SHA-256 of an empty body.
const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

impl Lister {
    /// Every upload in progress under `prefix` (all pages).
    pub async fn list(
        &self,
        client: &reqwest::Client,
        credential: &AwsCredential,
        prefix: &str,
    ) -> Result<Vec<PendingUpload>, String> {
        let mut out = Vec::new();
        let (mut key_marker, mut id_marker) = (String::new(), String::new());
        loop {
            let mut query = vec![("prefix", prefix.to_string()), ("uploads", String::new())];
            if !key_marker.is_empty() {
                query.push(("key-marker", key_marker.clone()));
                query.push(("upload-id-marker", id_marker.clone()));
            }
            let body = self.get(client, credential, &query).await?;
            for upload in elements(&body, "Upload") {
                let field = |name: &str| elements(upload, name).next().map(unescape);
                let (Some(key), Some(upload_id), Some(initiated)) =
                    (field("Key"), field("UploadId"), field("Initiated"))
                else {
                    return Err(format!(
                        "an <Upload> without Key, UploadId or Initiated: {upload}"
                    ));
                };
                let initiated_unix = DateTime::parse_from_rfc3339(&initiated)
                    .map_err(|e| format!("Initiated `{initiated}`: {e}"))?
                    .timestamp_millis() as f64
                    / 1000.0;
                out.push(PendingUpload {
                    key,
                    upload_id,
                    initiated_unix,
                });
            }
            let truncated = elements(&body, "IsTruncated").next() == Some("true");
            if !truncated {
                return Ok(out);
            }
            let next = |name: &str| elements(&body, name).next().map(unescape);
            match (next("NextKeyMarker"), next("NextUploadIdMarker")) {
                (Some(k), Some(i)) if (k.as_str(), i.as_str()) != (&key_marker, &id_marker) => {
                    key_marker = k;
                    id_marker = i;
                }
                _ => return Err("a truncated listing without a new marker".into()),
            }
        }
    }

    async fn get(
        &self,
        client: &reqwest::Client,
        credential: &AwsCredential,
        query: &[(&str, String)],
    ) -> Result<String, String> {
        let (host_url, path) = (&self.base_url, &self.path);
        let host = host_url
            .split_once("://")
            .map_or("", |(_, h)| h)
            .to_string();
        let mut pairs: Vec<(String, String)> = query
            .iter()
            .map(|(k, v)| (uri_encode(k, true), uri_encode(v, true)))
            .collect();
        pairs.sort();
        let canonical_query = pairs
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("&");
        let now = Utc::now();
        let amz_date = now.format("%Y%m%dT%H%M%SZ").to_string();
        let mut headers = vec![
            ("host".to_string(), host),
            ("x-amz-content-sha256".to_string(), EMPTY_SHA256.to_string()),
            ("x-amz-date".to_string(), amz_date.clone()),
        ];
        if let Some(token) = &credential.token {
            headers.push(("x-amz-security-token".to_string(), token.clone()));
        }
        let authorization = authorization(
            &Request {
                method: "GET",
                path,
                query: &canonical_query,
                headers: &headers,
                payload_sha256: EMPTY_SHA256,
            },
            &Scope {
                amz_date: &amz_date,
                region: &self.region,
                service: "s3",
            },
            &credential.key_id,
            &credential.secret_key,
        );
        let mut req = client
            .get(format!("{host_url}{path}?{canonical_query}"))
            .header("authorization", authorization);
        for (name, value) in headers.iter().filter(|(n, _)| n != "host") {
            req = req.header(name.as_str(), value.as_str());
        }
        let resp = req
            .send()
            .await
            .map_err(|e| format!("ListMultipartUploads: {e}"))?;
        let status = resp.status();
        let body = resp
            .text()
            .await
            .map_err(|e| format!("ListMultipartUploads: {e}"))?;
        if !status.is_success() {
            return Err(format!(
                "ListMultipartUploads: HTTP {status}: {}",
                body.chars().take(300).collect::<String>()
            ));
        }
        Ok(body)
    }
}

/// The parts of a request that its signature covers.
pub struct Request<'a> {
    pub method: &'a str,
    /// The URI path, already encoded.
    pub path: &'a str,
    /// The canonical query string (encoded, sorted).
    pub query: &'a str,
    /// Lower-case names with their values, every one of them signed.
    pub headers: &'a [(String, String)],
    pub payload_sha256: &'a str,
}

/// Date, region and service of a signature.
pub struct Scope<'a> {
    /// `YYYYMMDDTHHMMSSZ`.
    pub amz_date: &'a str,
    pub region: &'a str,
    pub service: &'a str,
}

/// The `Authorization` header of a request (AWS Signature Version 4).
pub fn authorization(req: &Request, scope: &Scope, key_id: &str, secret: &str) -> String {
    let mut headers: Vec<(String, String)> = req
        .headers
        .iter()
        .map(|(n, v)| (n.to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    headers.sort();
    let canonical_headers: String = headers.iter().map(|(n, v)| format!("{n}:{v}\n")).collect();
    let signed_headers = headers
        .iter()
        .map(|(n, _)| n.as_str())
        .collect::<Vec<_>>()
        .join(";");
    let canonical_request = format!(
        "{}\n{}\n{}\n{canonical_headers}\n{signed_headers}\n{}",
        req.method, req.path, req.query, req.payload_sha256
    );
    let date = &scope.amz_date[..8];
    let credential_scope = format!("{date}/{}/{}/aws4_request", scope.region, scope.service);
    let string_to_sign = format!(
        "AWS4-HMAC-SHA256\n{}\n{credential_scope}\n{}",
        scope.amz_date,
        hex(digest::digest(&digest::SHA256, canonical_request.as_bytes()).as_ref())
    );
    let key = signing_key(secret, date, scope.region, scope.service);
    let signature = hex(hmac::sign(&key, string_to_sign.as_bytes()).as_ref());
    format!(
        "AWS4-HMAC-SHA256 Credential={key_id}/{credential_scope}, SignedHeaders={signed_headers}, Signature={signature}"
    )
}

/// kSigning = HMAC(HMAC(HMAC(HMAC("AWS4" + secret, date), region), service), "aws4_request").
pub fn signing_key(secret: &str, date: &str, region: &str, service: &str) -> hmac::Key {
    let step = |key: &[u8], data: &str| {
        hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), data.as_bytes())
    };
    let k_date = step(format!("AWS4{secret}").as_bytes(), date);
    let k_region = step(k_date.as_ref(), region);
    let k_service = step(k_region.as_ref(), service);
    let k_signing = step(k_service.as_ref(), "aws4_request");
    hmac::Key::new(hmac::HMAC_SHA256, k_signing.as_ref())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// RFC 3986 encoding as SigV4 wants it: unreserved characters kept, `/` kept in paths only.
fn uri_encode(s: &str, encode_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            b'/' if !encode_slash => out.push('/'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// The contents of every `<name>…</name>` element of `xml`, in order (no nesting of the same
/// name occurs in these responses).
fn elements<'a>(xml: &'a str, name: &str) -> impl Iterator<Item = &'a str> + 'a {
    let open = format!("<{name}>");
    let close = format!("</{name}>");
    let mut rest = xml;
    std::iter::from_fn(move || {
        let start = rest.find(&open)? + open.len();
        let len = rest[start..].find(&close)?;
        let inner = &rest[start..start + len];
        rest = &rest[start + len + close.len()..];
        Some(inner)
    })
}

/// XML's five predefined entities and numeric character references.
fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('&') {
        out.push_str(&rest[..i]);
        let Some(end) = rest[i..].find(';') else {
            out.push_str(&rest[i..]);
            return out;
        };
        let entity = &rest[i + 1..i + end];
        let decoded = match entity {
            "amp" => Some('&'),
            "lt" => Some('<'),
            "gt" => Some('>'),
            "quot" => Some('"'),
            "apos" => Some('\''),
            _ => entity
                .strip_prefix("#x")
                .and_then(|h| u32::from_str_radix(h, 16).ok())
                .or_else(|| entity.strip_prefix('#').and_then(|d| d.parse().ok()))
                .and_then(char::from_u32),
        };
        match decoded {
            Some(c) => out.push(c),
            None => out.push_str(&rest[i..=i + end]),
        }
        rest = &rest[i + end + 1..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The worked example of AWS's "derive a signing key" documentation (IAM, 2012-02-15).
    #[test]
    fn signing_key_matches_the_aws_example() {
        let key = signing_key(
            "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
            "20120215",
            "us-east-1",
            "iam",
        );
        // hmac::Key hides its bytes: compare what it signs with the documented key's signature.
        let documented = hmac::Key::new(
            hmac::HMAC_SHA256,
            &(0..32)
                .map(|i| {
                    u8::from_str_radix(
                        &"f4780e2d9f65fa895f9c67b32ce1baf0b0d8a43505a000a1a9e090d414db404d"
                            [2 * i..2 * i + 2],
                        16,
                    )
                    .unwrap()
                })
                .collect::<Vec<u8>>(),
        );
        assert_eq!(
            hmac::sign(&key, b"probe").as_ref(),
            hmac::sign(&documented, b"probe").as_ref()
        );
    }

    /// `get-vanilla` of AWS's Signature Version 4 test suite.
    #[test]
    fn get_vanilla_of_the_sigv4_test_suite() {
        let headers = vec![
            ("host".to_string(), "example.amazonaws.com".to_string()),
            ("x-amz-date".to_string(), "20150830T123600Z".to_string()),
        ];
        let auth = authorization(
            &Request {
                method: "GET",
                path: "/",
                query: "",
                headers: &headers,
                payload_sha256: EMPTY_SHA256,
            },
            &Scope {
                amz_date: "20150830T123600Z",
                region: "us-east-1",
                service: "service",
            },
            "AKIDEXAMPLE",
            "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
        );
        assert_eq!(
            auth,
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, \
             SignedHeaders=host;x-amz-date, \
             Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"
        );
    }

    #[test]
    fn listing_xml_is_read_with_entities_and_markers() {
        let xml = "<ListMultipartUploadsResult><IsTruncated>false</IsTruncated>\
            <Upload><Key>a/b&amp;c</Key><UploadId>id-1</UploadId>\
            <Initiated>2026-11-30T10:00:00.000Z</Initiated></Upload>\
            <Upload><Key>x</Key><UploadId>id-2</UploadId></Upload></ListMultipartUploadsResult>";
        let uploads: Vec<&str> = elements(xml, "Upload").collect();
        assert_eq!(uploads.len(), 2);
        assert_eq!(
            unescape(elements(uploads[0], "Key").next().unwrap()),
            "a/b&c"
        );
        assert_eq!(unescape("&#x41;&#66;&lt;"), "AB<");
        assert_eq!(uri_encode("runs/a b", true), "runs%2Fa%20b");
        assert_eq!(uri_encode("runs/a b", false), "runs/a%20b");
    }
}
