//! Which store a manifest names ([`StoreUrl`]) and how it is opened: a local folder, memory, or
//! an S3 bucket under an explicit retry and timeout policy.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey, S3ConditionalPut};
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::{BackoffConfig, ClientOptions, ObjectStore, RetryConfig};

use crate::error::{Error, IoContext, Result};

use super::Store;

/// The store a manifest names, before it is opened.
#[derive(Debug, Clone, PartialEq)]
pub enum StoreUrl {
    Local(PathBuf),
    S3 { bucket: String, prefix: String },
    Memory,
}

impl StoreUrl {
    /// Parses `s3://bucket/prefix`, `memory://`, `file:///path` or a path (relative to `base`).
    pub fn parse(s: &str, base: &Path) -> std::result::Result<Self, String> {
        if let Some(rest) = s.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(format!(
                    "`{s}` has no bucket name (expected s3://bucket/prefix)"
                ));
            }
            return Ok(StoreUrl::S3 {
                bucket: bucket.into(),
                prefix: prefix.trim_matches('/').into(),
            });
        }
        if s == "memory://" || s == "memory" {
            return Ok(StoreUrl::Memory);
        }
        if let Some((scheme, _)) = s.split_once("://") {
            if scheme != "file" {
                return Err(format!(
                    "unsupported store scheme `{scheme}://` (expected a path, file://, s3:// or memory://)"
                ));
            }
        }
        let path = s.strip_prefix("file://").unwrap_or(s);
        if path.is_empty() {
            return Err("empty store path".into());
        }
        Ok(StoreUrl::Local(base.join(path)))
    }
}

impl std::fmt::Display for StoreUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreUrl::Local(p) => write!(f, "{}", p.display()),
            StoreUrl::S3 { bucket, prefix } if prefix.is_empty() => write!(f, "s3://{bucket}"),
            StoreUrl::S3 { bucket, prefix } => write!(f, "s3://{bucket}/{prefix}"),
            StoreUrl::Memory => write!(f, "memory://"),
        }
    }
}

/// Environment-derived settings for remote stores, collected by the binary (the library never reads
/// the environment). Values are secrets: they are never printed or hashed.
#[derive(Clone, Default)]
pub struct StoreSettings {
    /// `AWS_*` variables as (name, value).
    pub aws: Vec<(String, String)>,
    /// Retries per S3 request instead of [`S3_MAX_RETRIES`] (`ADAPTOR_S3_RETRIES`).
    pub s3_retries: Option<usize>,
    /// Copy every remote input into the cache folder, the streamed table inputs too
    /// (`ADAPTOR_S3_CACHE_TABLES=1`); by default stages stream those from the store.
    pub cache_tables: bool,
}

impl std::fmt::Debug for StoreSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.aws.iter().map(|(k, _)| k.as_str()).collect();
        write!(f, "StoreSettings {{ aws: {names:?} (values hidden) }}")
    }
}

/// S3 request policy (documented in README "Store guarantees"): each request is at most one
/// chunk ([`CHUNK`]) of a transfer, so a per-request timeout bounds a stuck connection without
/// capping the size of a file.
pub const S3_CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
pub const S3_REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);
pub const S3_MAX_RETRIES: usize = 10;
pub const S3_RETRY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(180);

impl Store {
    /// Opens a store. `cache_dir` holds local copies of remote artifacts and staging directories.
    pub fn open(url: &StoreUrl, settings: &StoreSettings, cache_dir: &Path) -> Result<Store> {
        Self::open_inner(url, settings, cache_dir, true)
    }

    /// Opens a store for reading only: a local store folder that does not exist reads as empty and
    /// is not created (`status`, `explain`, `show` leave nothing behind).
    pub fn open_existing(
        url: &StoreUrl,
        settings: &StoreSettings,
        cache_dir: &Path,
    ) -> Result<Store> {
        Self::open_inner(url, settings, cache_dir, false)
    }

    pub(super) fn open_inner(
        url: &StoreUrl,
        settings: &StoreSettings,
        cache_dir: &Path,
        create: bool,
    ) -> Result<Store> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("adaptor-store")
            .enable_all()
            .build()
            .map_err(Error::StoreRuntime)?;
        let store_err = |message: String| Error::Store {
            url: url.to_string(),
            message,
        };
        let mut multipart: Option<Arc<dyn object_store::multipart::MultipartStore>> = None;
        let mut uploads = None;
        let (inner, prefix, local_root): (Arc<dyn ObjectStore>, String, Option<PathBuf>) = match url
        {
            // A local store that does not exist yet reads as empty; it is created by the first
            // write, so read-only commands (`status`, `explain`) leave no folder behind.
            StoreUrl::Local(root) if !create && !root.exists() => {
                let root = std::path::absolute(root).at(root)?;
                (Arc::new(InMemory::new()), String::new(), Some(root))
            }
            StoreUrl::Local(root) => {
                std::fs::create_dir_all(root).at(root)?;
                let root = root.canonicalize().at(root)?;
                let fs = LocalFileSystem::new_with_prefix(&root)
                    .map_err(|e| store_err(e.to_string()))?
                    .with_automatic_cleanup(true);
                (Arc::new(fs), String::new(), Some(root))
            }
            StoreUrl::Memory => {
                let m = Arc::new(InMemory::new());
                multipart = Some(m.clone());
                (m, String::new(), None)
            }
            StoreUrl::S3 { bucket, prefix } => {
                // Explicit retry and timeout policy (see the constants above); set before the
                // AWS_* settings, which may adjust the client options (AWS_ALLOW_HTTP).
                let mut b = AmazonS3Builder::new()
                    .with_bucket_name(bucket)
                    .with_retry(RetryConfig {
                        backoff: BackoffConfig {
                            init_backoff: std::time::Duration::from_millis(100),
                            max_backoff: std::time::Duration::from_secs(15),
                            base: 2.0,
                        },
                        max_retries: settings.s3_retries.unwrap_or(S3_MAX_RETRIES),
                        retry_timeout: S3_RETRY_TIMEOUT,
                    })
                    .with_client_options(
                        ClientOptions::new()
                            .with_connect_timeout(S3_CONNECT_TIMEOUT)
                            .with_timeout(S3_REQUEST_TIMEOUT),
                    );
                for (k, v) in &settings.aws {
                    match k.as_str() {
                        // The AWS SDKs' names, which object_store does not read itself.
                        "AWS_ENDPOINT_URL" | "AWS_ENDPOINT_URL_S3" | "AWS_ENDPOINT" => {
                            b = b.with_endpoint(v)
                        }
                        "AWS_ALLOW_HTTP" => b = b.with_allow_http(v == "true" || v == "1"),
                        _ => {
                            if let Ok(key) = k.to_ascii_lowercase().parse::<AmazonS3ConfigKey>() {
                                b = b.with_config(key, v);
                            }
                        }
                    }
                }
                // If-None-Match / If-Match: create-if-absent commits and leases.
                b = b.with_conditional_put(S3ConditionalPut::ETagMatch);

                let config = |k: AmazonS3ConfigKey| b.get_config_value(&k);
                let lister = crate::s3uploads::Lister::new(
                    config(AmazonS3ConfigKey::Endpoint).as_deref(),
                    bucket,
                    &config(AmazonS3ConfigKey::Region).unwrap_or_else(|| "us-east-1".into()),
                    config(AmazonS3ConfigKey::VirtualHostedStyleRequest)
                        .is_some_and(|v| v == "true"),
                );
                let s3 = Arc::new(b.build().map_err(|e| store_err(e.to_string()))?);
                uploads = Some((lister, s3.clone()));
                multipart = Some(s3.clone());
                (s3, prefix.clone(), None)
            }
        };
        Ok(Store {
            cache_tables: settings.cache_tables,
            url: url.clone(),
            inner,
            multipart,
            uploads,
            prefix,
            local_root,
            cache_dir: cache_dir.to_path_buf(),
            rt,
            clock_offset: std::sync::Mutex::new(None),
            warnings: std::sync::Mutex::new(Vec::new()),
        })
    }
}
