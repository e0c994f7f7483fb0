//! Shared helpers of the integration tests: where the real test assets live.
#![allow(dead_code)]

use std::path::PathBuf;

/// The folder `scripts/test-assets.sh` fills (or `ADAPTOR_TEST_ASSETS`). Fails, never skips, when a
/// file is missing: these tests are the only check against real data.
pub fn asset(name: &str) -> PathBuf {
    let dir = std::env::var_os("ADAPTOR_TEST_ASSETS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../.cache/test-assets"
            ))
        });
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "test asset {} is missing: run scripts/test-assets.sh (it downloads the torchxrayvision, \
         pydicom and pydicom-data wheels from PyPI and unpacks the files tests read)",
        path.display()
    );
    path
}

pub fn data(rel: &str) -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../data")).join(rel)
}
