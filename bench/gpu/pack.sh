#!/usr/bin/env bash
# Packs what bench/gpu/run.sh needs on the GPU machine into one compressed file, since nothing is
# built there: the release binaries (`adaptor`, `adaptor-torch`, the `bench_train` example),
# stripped, the benchmark's scripts, the reference module of the training comparison, the demo
# manifest and BERT's uncased tokenizer files (from all-MiniLM-L6-v2: the weights are made there).
#
#   bench/gpu/pack.sh [OUT_DIR=.gpu-bundle]     # prints each part's size and the bundle's
#
# Settings (environment): BIN_DIR (default target/release: `cargo build --release --locked
# --workspace` and `... --workspace --example bench_train` first), TOKENIZER (default
# .cache/test-assets/all-MiniLM-L6-v2, from scripts/test-assets-encoders.sh).
# The bundle is xz (Python's tarfile reads it: the GPU machine needs no xz or zstd binary) and
# must stay under the device tool's 64 MiB carry limit, with the working tree beside it.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
out="${1:-.gpu-bundle}"
bin="${BIN_DIR:-target/release}"
tok="${TOKENIZER:-.cache/test-assets/all-MiniLM-L6-v2}"
limit=$((64 * 1024 * 1024))

for b in adaptor adaptor-torch examples/bench_train; do
  [ -x "$bin/$b" ] || { echo "pack.sh: $bin/$b missing (cargo build --release --locked --workspace; cargo build --release --locked --workspace --example bench_train)" >&2; exit 1; }
done
for f in tokenizer.json vocab.txt tokenizer_config.json special_tokens_map.json; do
  [ -s "$tok/$f" ] || { echo "pack.sh: $tok/$f missing (scripts/test-assets-encoders.sh)" >&2; exit 1; }
done

stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/bin" "$stage/tokenizer" "$stage/bench/gpu" "$stage/bench/encoders" "$stage/tools" "$stage/manifests"
size() { stat -c %s "$1"; }
mib() { awk -v b="$1" 'BEGIN { printf "%.1f MiB", b / 1048576 }'; }
for b in adaptor adaptor-torch examples/bench_train; do
  name="$(basename "$b")"
  strip -o "$stage/bin/$name" "$bin/$b"
  printf '%-14s %10s -> stripped %10s\n' "$name" "$(mib "$(size "$bin/$b")")" "$(mib "$(size "$stage/bin/$name")")"
done
cp bench/gpu/*.py bench/gpu/run.sh "$stage/bench/gpu/"
cp bench/encoders/make_inputs.py bench/encoders/hf_encode.py "$stage/bench/encoders/"
cp bench/timing.py "$stage/bench/"
cp tools/adaptor_reference.py tools/machine.py "$stage/tools/"
cp manifests/demo.toml "$stage/manifests/"
cp "$tok"/{tokenizer.json,vocab.txt,tokenizer_config.json,special_tokens_map.json} "$stage/tokenizer/"
git describe --always --dirty --abbrev=40 > "$stage/COMMIT" 2>/dev/null || echo unknown > "$stage/COMMIT"
(cd "$stage" && find . -type f | sort | xargs sha256sum) > "$stage.sums" && mv "$stage.sums" "$stage/SHA256SUMS"

mkdir -p "$out"
bundle="$out/adaptor-gpu.tar.xz"
tar -C "$stage" -cf - . | xz -T0 -6 > "$bundle.tmp"
mv "$bundle.tmp" "$bundle"
echo "unpacked     $(mib "$(du -sb "$stage" | cut -f1)")"
echo "bundle       $(mib "$(size "$bundle")")  $bundle"
tree=$(git ls-files -z | xargs -0 stat -c %s | awk '{ s += $1 } END { print s }')
echo "working tree $(mib "$tree") (tracked files, which travel beside it)"
total=$((tree + $(size "$bundle")))
echo "total        $(mib "$total") of the 64 MiB the device tool carries"
[ "$total" -lt "$limit" ] || { echo "pack.sh: over the 64 MiB limit" >&2; exit 1; }
