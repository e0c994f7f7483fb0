#!/usr/bin/env bash
# The test command (README, CI): sets up what the tests need, then runs every test of the workspace.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
scripts/setup.sh
scripts/test-assets.sh
scripts/test-assets-encoders.sh
scripts/test-assets-browser.sh     # headless chromium for the report's browser test
scripts/slurm-cluster.sh install   # slurmctld, slurmd, munge from Debian (the Slurm tests start a throwaway cluster)
# Graphviz, so tests/commands.rs renders `adaptor dag`'s output (without it: its structure is checked).
if ! command -v dot >/dev/null; then
  { apt-get update -qq && apt-get install -y -qq --no-install-recommends graphviz >/dev/null; } \
    || echo "scripts/test.sh: graphviz not installed; the dag test checks the dot structure only"
fi
source scripts/env.sh

# The checks before a commit run here too, so CI refuses what a commit should not have let through:
# formatting, then clippy with every warning an error (all targets: tests, examples, benches).
if command -v rustup >/dev/null; then rustup component add rustfmt clippy >/dev/null 2>&1 || true; fi
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings

# --no-fail-fast: a failing test binary must not hide the state of the ones after it. The output
# is kept to count what passed and failed over all binaries for the closing line.
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
set +e
cargo test --workspace --locked --no-fail-fast "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
count() { grep -E '^test result: ' "$log" | grep -Eo "[0-9]+ $1" | awk '{s += $1} END {print s + 0}'; }
binaries=$(grep -cE '^test result: ' "$log" || true)
echo
echo "scripts/test.sh: $binaries test binaries, exit status $status"
echo "tests: $(count passed) passed, $(count failed) failed, $(count ignored) skipped"
if [ "$status" != 0 ] && [ "$(count failed)" = 0 ]; then
  echo "scripts/test.sh: a build failed or a test binary died before its summary (see cargo's errors above)"
fi
exit "$status"
