#!/usr/bin/env bash
# Runs every fuzz target of stages/torch/tests/fuzz.rs for MINUTES in total (split evenly over
# the targets, after the harness's self-test) and writes the inputs tried and the failures found
# per target to bench/fuzz/results.md (or $RESULTS). Failing inputs are saved under
# target/fuzz-failures/.
#
#   bench/fuzz/run.sh 60            # an hour
#   SEED=7 bench/fuzz/run.sh 10     # another mutation stream
#
# The binary is the dev-profile test binary (the image codecs, stages and adaptor-torch
# are optimised in dev builds; see Cargo.toml), copied aside so a rebuild cannot replace it
# mid-run. Run it under `nice -n 19` on a shared machine.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
minutes="${1:?usage: bench/fuzz/run.sh MINUTES}"
seed="${SEED:-$(date +%s)}"
results="${RESULTS:-bench/fuzz/results.md}"
# The libtorch build environment, unless the caller already has one.
[ -n "${VIRTUAL_ENV:-}" ] || source scripts/env.sh
commit="$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- pipeline stages src Cargo.toml Cargo.lock || echo ' + uncommitted changes')"
exe="$(cargo test --locked -p adaptor-torch --test fuzz --no-run --message-format=json 2>/dev/null \
  | sed -n 's/.*"executable":"\([^"]*fuzz-[^"]*\)".*/\1/p' | tail -1)"
[ -x "$exe" ] || { echo "could not build the fuzz binary" >&2; exit 1; }
mkdir -p target/fuzz-bin
cp "$exe" target/fuzz-bin/fuzz
targets=11
seconds=$(( minutes * 60 / targets ))
out="$(mktemp)"
started="$(date -u +%FT%TZ)"
status=0
target/fuzz-bin/fuzz --seconds "$seconds" --seed "$seed" --results "$out" || status=$?
{
  echo "# Fuzzing results"
  echo
  echo "Written by \`bench/fuzz/run.sh $minutes\` (seed $seed), started $started on $(nproc) cores,"
  echo "built from commit $commit."
  echo "Each input ran in a child process under a data-size cap with a 20 s deadline;"
  echo "a panic, an abort (the child died), a hang, or an error not naming the file is a failure."
  echo
  cat "$out"
} > "$results"
rm -f "$out"
cat "$results"
exit "$status"
