//! Retries the object_store client does not do itself: a response body cut mid-way (a GET or a
//! listing) is requested again from scratch, a few times with a short backoff.

use std::sync::Arc;

use bytes::Bytes;
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, ObjectStoreExt};

/// GETs a (small) object whole, retrying from scratch when its body is cut mid-way: object_store
/// retries a request that fails, not a body that breaks after the response has started.
pub(super) async fn get_whole(
    inner: &Arc<dyn ObjectStore>,
    path: &ObjPath,
) -> object_store::Result<(Bytes, object_store::ObjectMeta)> {
    let mut tries = 0u32;
    loop {
        let r = async {
            let r = inner.get(path).await?;
            let meta = r.meta.clone();
            Ok((r.bytes().await?, meta))
        }
        .await;
        let retry = tries < 3
            && matches!(&r, Err(e) if !matches!(e,
                object_store::Error::NotFound { .. }
                | object_store::Error::Precondition { .. }
                | object_store::Error::NotModified { .. }));
        if !retry {
            return r;
        }
        tries += 1;
        tokio::time::sleep(std::time::Duration::from_millis(100 << tries)).await;
    }
}

/// Runs a listing again when its response is cut mid-body (see [`get_whole`]); at most 3 more
/// times, with a short backoff.
pub(super) async fn retry_cut<T, F, Fut>(mut f: F) -> object_store::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = object_store::Result<T>>,
{
    let mut tries = 0u32;
    loop {
        let r = f().await;
        let retry = tries < 3
            && matches!(&r, Err(e) if !matches!(e,
                object_store::Error::NotFound { .. }
                | object_store::Error::Precondition { .. }));
        if !retry {
            return r;
        }
        tries += 1;
        tokio::time::sleep(std::time::Duration::from_millis(100 << tries)).await;
    }
}
