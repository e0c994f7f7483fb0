#!/usr/bin/env bash
# The test command (README, CI): sets up what the tests need, then runs every test of the workspace.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
scripts/setup.sh
scripts/test-assets.sh
scripts/test-assets-encoders.sh
scripts/slurm-cluster.sh install   # slurmctld, slurmd, munge from Debian (the Slurm tests start a throwaway cluster)
source scripts/env.sh
cargo test --workspace --locked "$@"
