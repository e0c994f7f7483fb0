#!/usr/bin/env bash
# The main job on the embedded default: builds the release binary and runs manifests/demo.toml
# (extra arguments go to `adaptor run`, e.g. --store s3://bucket/prefix). Run it again: it is a no-op.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
scripts/setup.sh
source scripts/env.sh
cargo build --release --locked --bin adaptor
target/release/adaptor run manifests/demo.toml "$@"
target/release/adaptor status manifests/demo.toml
