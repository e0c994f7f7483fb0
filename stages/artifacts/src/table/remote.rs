//! Embedding tables read straight from a remote store (S3), without a local copy: the footer by a
//! ranged read, the body by one sequential GET whose chunks are hashed as parquet's async reader
//! decodes the row groups from them. The blake3 digest of the whole file is compared with the one
//! `_manifest.json` records when the last row group is done: a mismatch is the iterator's last
//! item, an error naming the file, so a stage that reads the table to its end fails before its
//! output is published (docs/store.md, "Tables read from S3").

use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;

use arrow_array::RecordBatch;
use bytes::{Bytes, BytesMut};
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt};
use object_store::path::Path as ObjPath;
use object_store::{GetOptions, GetRange, ObjectStore, ObjectStoreExt};
use parquet::arrow::arrow_reader::ArrowReaderOptions;
use parquet::arrow::async_reader::{AsyncFileReader, ParquetRecordBatchStream};
use parquet::arrow::ParquetRecordBatchStreamBuilder;
use parquet::errors::ParquetError;
use parquet::file::metadata::{FooterTail, ParquetMetaData, ParquetMetaDataReader};
use pipeline::{RemoteFile, RemoteInput, Store, StoreSettings, StoreUrl};

use super::{batch_rows, row_bytes, TableMeta};
use crate::error::{Error, Result};

/// The footer is fetched with one ranged read of this many bytes from the end (a second one when
/// the metadata is larger).
const FOOTER_GUESS: u64 = 64 << 10;

/// A table file streamed from a remote store: its metadata, then its rows in batches of
/// at most [`RemoteTable::batch_rows`] rows. The iterator yields `None` only after the file's
/// digest matched the manifest; a mismatch (or a short or changed object) is its last item.
/// Callers read it to its end before they use what they read (one pass = one verification).
pub struct RemoteTable {
    /// How messages name the file: `s3://bucket/prefix/<kind>/<key>/<attempt>/<file>`.
    pub path: PathBuf,
    pub meta: TableMeta,
    pub rows: usize,
    pub batch_rows: usize,
    store: Arc<Store>,
    stream: ParquetRecordBatchStream<Verifying>,
    body: Arc<tokio::sync::Mutex<Body>>,
    digest: String,
    finished: bool,
}

/// Opens `file` of the remote artifact `remote`: the store with `access` (`AWS_*` settings the
/// binary collected), the footer read and parsed. `budget` is the memory this reader may use, as
/// for [`super::open_stream`]: batches of [`super::batch_rows`]`(budget, row bytes)` rows; the
/// reader holds one row group's column chunks besides (the writer bounds them).
pub fn open_remote(
    remote: &RemoteInput,
    file: &str,
    access: &[(String, String)],
    budget: u64,
) -> Result<RemoteTable> {
    let rf = remote.file(file).ok_or_else(|| Error::NotInStore {
        path: PathBuf::from(format!("{}/{file}", remote.store)),
        message: "not in the artifact's _manifest.json",
    })?;
    let path = PathBuf::from(format!("{}/{}", remote.store, rf.object));
    let url = StoreUrl::parse(&remote.store, std::path::Path::new("/")).map_err(|message| {
        Error::Remote {
            path: path.clone(),
            message,
        }
    })?;
    let settings = StoreSettings {
        aws: access.to_vec(),
        ..Default::default()
    };
    let store = Store::open_existing(&url, &settings, &std::env::temp_dir()).map_err(|source| {
        Error::Store {
            path: path.clone(),
            source,
        }
    })?;
    open_file(Arc::new(store), rf, path, budget)
}

fn open_file(
    store: Arc<Store>,
    rf: &RemoteFile,
    path: PathBuf,
    budget: u64,
) -> Result<RemoteTable> {
    let (inner, object) = store.object(&rf.object);
    let body = Arc::new(tokio::sync::Mutex::new(Body {
        inner,
        object,
        size: rf.bytes,
        e_tag: None,
        stream: None,
        resumed: 0,
        carry: Bytes::new(),
        received: 0,
        hasher: blake3::Hasher::new(),
        footer: Bytes::new(),
        footer_start: rf.bytes,
        error: None,
    }));
    let mut reader = Verifying { body: body.clone() };
    let metadata = store
        .runtime()
        .block_on(reader.get_metadata(None))
        .map_err(|e| remote_error(&path, &body, e))?;
    let rows = metadata.file_metadata().num_rows().max(0) as usize;
    let key_value = metadata
        .file_metadata()
        .key_value_metadata()
        .cloned()
        .unwrap_or_default();
    let meta = TableMeta::from_key_values(&path, &key_value)?;
    let batch_rows = batch_rows(budget, row_bytes(&meta));
    let arrow = parquet::arrow::arrow_reader::ArrowReaderMetadata::try_new(
        metadata,
        ArrowReaderOptions::new(),
    )
    .map_err(Error::parquet(&path))?;
    let stream = ParquetRecordBatchStreamBuilder::new_with_metadata(reader, arrow)
        .with_batch_size(batch_rows)
        .build()
        .map_err(Error::parquet(&path))?;
    Ok(RemoteTable {
        path,
        meta,
        rows,
        batch_rows,
        store,
        stream,
        body,
        digest: rf.blake3.clone(),
        finished: false,
    })
}

/// The verifier's own message when it has one (a short or changed object), the decoder's otherwise.
fn remote_error(
    path: &std::path::Path,
    body: &Arc<tokio::sync::Mutex<Body>>,
    e: ParquetError,
) -> Error {
    match body.try_lock().ok().and_then(|mut b| b.error.take()) {
        Some(message) => Error::Remote {
            path: path.to_path_buf(),
            message,
        },
        None => Error::Parquet {
            path: path.to_path_buf(),
            source: e,
        },
    }
}

impl RemoteTable {
    /// The table's rows through the one decoder every reader shares ([`super::RowBatches`]); the
    /// digest is checked when the last batch has been read.
    pub fn rows(self) -> super::RowBatches<RemoteTable> {
        let (path, meta) = (self.path.clone(), self.meta.clone());
        super::RowBatches::new(&path, meta, self)
    }

    /// Reads the rest of the body (the bytes after the last row group: the footer), then compares
    /// the digest of every byte received with the manifest's.
    fn verify(&mut self) -> Result<()> {
        let (body, digest) = (self.body.clone(), self.digest.clone());
        let message = self.store.runtime().block_on(async move {
            let mut b = body.lock().await;
            let size = b.size;
            if b.skip_to(size).await.is_err() {
                return b.error.take();
            }
            let found = b.hasher.finalize().to_hex().to_string();
            (found != digest).then(|| {
                format!(
                    "content digest {found} differs from the recorded {digest} (the object \
                     changed after it was published; nothing read from it may be used)"
                )
            })
        });
        match message {
            None => Ok(()),
            Some(message) => Err(Error::Remote {
                path: self.path.clone(),
                message,
            }),
        }
    }
}

impl Iterator for RemoteTable {
    type Item = Result<RecordBatch>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.finished {
            return None;
        }
        match self.store.runtime().block_on(self.stream.next()) {
            Some(Ok(batch)) => Some(Ok(batch)),
            Some(Err(e)) => {
                self.finished = true;
                Some(Err(remote_error(&self.path, &self.body, e)))
            }
            None => {
                self.finished = true;
                self.verify().err().map(Err)
            }
        }
    }
}

/// The object's body as one sequential GET, pinned to the ETag the footer was read at, every byte
/// received hashed in order.
struct Body {
    inner: Arc<dyn ObjectStore>,
    object: ObjPath,
    /// The size the manifest records (checked against the object's).
    size: u64,
    e_tag: Option<String>,
    stream: Option<BoxStream<'static, object_store::Result<Bytes>>>,
    /// Times the body's GET was resumed after a cut.
    resumed: u32,
    /// Received and hashed, not yet handed out: the bytes just before `received`.
    carry: Bytes,
    received: u64,
    hasher: blake3::Hasher,
    /// The footer as the ranged read returned it; the body's last bytes must equal it.
    footer: Bytes,
    footer_start: u64,
    /// What went wrong, in words (the decoder only sees a generic error).
    error: Option<String>,
}

impl Body {
    fn fail(&mut self, message: String) -> ParquetError {
        let e = ParquetError::External(message.clone().into());
        self.error = Some(message);
        e
    }

    /// The offset of `carry`'s first byte.
    fn at(&self) -> u64 {
        self.received - self.carry.len() as u64
    }

    /// Receives the next chunk of the body (opening the GET on first use), hashed. A body cut
    /// mid-stream is resumed from the byte it stopped at (pinned to the same ETag), 3 times.
    async fn next_chunk(&mut self) -> Result<Bytes, ParquetError> {
        let chunk = loop {
            if self.stream.is_none() {
                let opts = GetOptions {
                    if_match: self.e_tag.clone(),
                    range: (self.received > 0).then_some(GetRange::Offset(self.received)),
                    ..Default::default()
                };
                let got = self.inner.get_opts(&self.object, opts).await;
                let got = got.map_err(|e| self.fail(format!("cannot read the object: {e}")))?;
                self.stream = Some(got.into_stream());
            }
            match self.stream.as_mut().expect("opened").next().await {
                Some(Ok(c)) => break c,
                Some(Err(_)) if self.resumed < 3 => {
                    self.resumed += 1;
                    self.stream = None;
                }
                Some(Err(e)) => {
                    return Err(self.fail(format!("reading byte {}: {e}", self.received)))
                }
                None => {
                    return Err(self.fail(format!(
                        "the object ended at byte {} of the {} the manifest records",
                        self.received, self.size
                    )))
                }
            }
        };
        let start = self.received;
        let end = start + chunk.len() as u64;
        if end > self.size {
            return Err(self.fail(format!(
                "the object is longer than the {} bytes the manifest records",
                self.size
            )));
        }
        self.hasher.update(&chunk);
        // The part of the footer this chunk holds must be the footer the decoder was given.
        if end > self.footer_start {
            let a = start.max(self.footer_start);
            let mine = &chunk[(a - start) as usize..];
            let f = (a - self.footer_start) as usize;
            if mine != &self.footer[f..f + mine.len()] {
                return Err(self
                    .fail("the footer changed between its ranged read and the body's GET".into()));
            }
        }
        self.received = end;
        Ok(chunk)
    }

    /// Receives (and hashes) up to `offset`, dropping what lies before it.
    async fn skip_to(&mut self, offset: u64) -> Result<(), ParquetError> {
        while self.at() < offset {
            if self.carry.is_empty() {
                self.carry = self.next_chunk().await?;
            }
            let drop = (offset - self.at()).min(self.carry.len() as u64) as usize;
            let _ = self.carry.split_to(drop);
        }
        Ok(())
    }

    /// The bytes `range`, which must not lie before what was handed out already (the reader
    /// decodes row groups in file order), except in the footer.
    async fn read(&mut self, range: Range<u64>) -> Result<Bytes, ParquetError> {
        if range.end > self.size || range.start > range.end {
            return Err(self.fail(format!(
                "bytes {}..{} asked for, beyond the {} of the object",
                range.start, range.end, self.size
            )));
        }
        if range.start >= self.footer_start {
            let (a, b) = (
                range.start - self.footer_start,
                range.end - self.footer_start,
            );
            return Ok(self.footer.slice(a as usize..b as usize));
        }
        if range.start < self.at() {
            return Err(self.fail(format!(
                "bytes {}..{} asked for after byte {}: a streamed table is read in order",
                range.start,
                range.end,
                self.at()
            )));
        }
        self.skip_to(range.start).await?;
        let len = (range.end - range.start) as usize;
        if self.carry.len() >= len {
            return Ok(self.carry.split_to(len));
        }
        let mut out = BytesMut::with_capacity(len);
        out.extend_from_slice(&std::mem::take(&mut self.carry));
        while out.len() < len {
            let chunk = self.next_chunk().await?;
            let take = (len - out.len()).min(chunk.len());
            out.extend_from_slice(&chunk[..take]);
            self.carry = chunk.slice(take..);
        }
        Ok(out.freeze())
    }

    /// HEAD (size and ETag), then the footer by ranged reads pinned to that ETag.
    async fn metadata(&mut self) -> Result<ParquetMetaData, ParquetError> {
        let head = self.inner.head(&self.object).await;
        let head = head.map_err(|e| self.fail(format!("cannot read the object: {e}")))?;
        if head.size != self.size {
            return Err(self.fail(format!(
                "{} bytes, the manifest says {}",
                head.size, self.size
            )));
        }
        self.e_tag = head.e_tag;
        let size = self.size;
        let mut tail = self.range(size.saturating_sub(FOOTER_GUESS)..size).await?;
        if tail.len() < 8 {
            return Err(self.fail(format!("{size} bytes: too short for a Parquet file")));
        }
        let last: [u8; 8] = tail[tail.len() - 8..].try_into().expect("8 bytes");
        let meta_len = FooterTail::try_new(&last)?.metadata_length() as u64;
        let need = meta_len + 8;
        if need > size {
            return Err(self.fail(format!("its footer claims {meta_len} bytes of {size}")));
        }
        if need > tail.len() as u64 {
            tail = self.range(size - need..size).await?;
        }
        self.footer = tail.slice(tail.len() - need as usize..);
        self.footer_start = size - need;
        ParquetMetaDataReader::decode_metadata(&self.footer[..meta_len as usize])
    }

    async fn range(&mut self, range: Range<u64>) -> Result<Bytes, ParquetError> {
        let opts = GetOptions {
            if_match: self.e_tag.clone(),
            range: Some(GetRange::Bounded(range.clone())),
            ..Default::default()
        };
        let got = self.inner.get_opts(&self.object, opts).await;
        let got = got.map_err(|e| self.fail(format!("cannot read its footer: {e}")))?;
        let bytes = got.bytes().await;
        let bytes = bytes.map_err(|e| self.fail(format!("cannot read its footer: {e}")))?;
        if bytes.len() as u64 != range.end - range.start {
            return Err(self.fail(format!(
                "bytes {}..{} returned {} bytes",
                range.start,
                range.end,
                bytes.len()
            )));
        }
        Ok(bytes)
    }
}

/// parquet's async reader over [`Body`].
struct Verifying {
    body: Arc<tokio::sync::Mutex<Body>>,
}

impl AsyncFileReader for Verifying {
    fn get_bytes(&mut self, range: Range<u64>) -> BoxFuture<'_, parquet::errors::Result<Bytes>> {
        let body = self.body.clone();
        async move { body.lock().await.read(range).await }.boxed()
    }

    fn get_metadata<'a>(
        &'a mut self,
        _options: Option<&'a ArrowReaderOptions>,
    ) -> BoxFuture<'a, parquet::errors::Result<Arc<ParquetMetaData>>> {
        let body = self.body.clone();
        async move { body.lock().await.metadata().await.map(Arc::new) }.boxed()
    }
}
