#!/usr/bin/env bash
# Decode once: the three vision encodes (two DINOv2 and a ResNet-AE, the repository's tiny test
# backbones, so that decoding dominates as it does on a GPU) of a synthetic MIMIC-CXR, once from
# the JPEG files (three decodes of every image) and once through a `preprocess` stage (one decode).
# Prints a markdown table: per stage its wall time and the image files it decoded (from the
# stages' own log lines), then the totals.
#
# Env: N (studies, default 100), SIZE (image side in px, default 1024), THREADS (each stage's
# threads, default 2), ADAPTOR (the binary, default target/debug/adaptor; its adaptor-torch beside
# it), WORK (a folder to keep the synthetic dataset in between runs; default a temporary one). Run
# it niced on a shared machine: `nice -n 10 bench/preprocess/run.sh`.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
bin="${ADAPTOR:-$root/target/debug/adaptor}"
N="${N:-100}" SIZE="${SIZE:-1024}" THREADS="${THREADS:-2}"
if [ -n "${WORK:-}" ]; then
  work="$WORK"; mkdir -p "$work"
else
  work="$(mktemp -d)"; trap 'rm -rf "$work"' EXIT
fi
mkdir -p "$work/ae"
cp "$root/data/encoders/resnet-ae/state-dict.pt" "$work/ae/"

common() {
  cat <<TOML
[backbones.dinov2]
kind = "dinov2"
weights = "$root/data/encoders/dinov2"

[backbones.dinov2-renamed]
kind = "dinov2"
weights = "$root/data/encoders/dinov2-renamed"

[backbones.resnet-ae]
kind = "resnet-ae"
weights = "$work/ae"

[stages.synth]
kind = "synth"
params = { dataset = "mimic-cxr", n = $N, seed = 1, image_size = $SIZE }

[stages.ingest]
kind = "ingest"
inputs.raw = "synth"
params = { verify = "exists" }
TOML
}

{ common; cat <<TOML

[stages.image]
kind = "encode-image"
foreach = { b = ["dinov2", "dinov2-renamed", "resnet-ae"] }
params = { resize = 256, image_size = 224, threads = $THREADS }
inputs = { records = "ingest", raw = "synth", backbone = "backbones.\${b}" }
TOML
} > "$work/direct.toml"

{ common; cat <<TOML

[stages.preprocess]
kind = "preprocess"
params = { size = 256, threads = $THREADS }
inputs = { records = "ingest", raw = "synth" }

[stages.image]
kind = "encode-image"
foreach = { b = ["dinov2", "dinov2-renamed", "resnet-ae"] }
params = { resize = 256, image_size = 224, threads = $THREADS }
inputs = { records = "ingest", images = "preprocess", backbone = "backbones.\${b}" }
TOML
} > "$work/once.toml"

cd "$work"
# Inputs first, untimed: the synthetic JPEGs and their records (shared by both runs).
"$bin" run direct.toml --store st -q --only ingest
echo "# synthetic MIMIC-CXR JPEGs of ${SIZE}x${SIZE} px ($N studies), threads $THREADS per stage, -j 1"
echo
echo "| run | stage | wall (s) | its decode/encode loop (s) | image files decoded |"
echo "|---|---|---|---|---|"
for m in direct once; do
  rm -rf st/preprocess st/encode-image
  start=$(date +%s.%N)
  "$bin" run "$m.toml" --store st -j 1 -v > "$m.out" 2>&1
  end=$(date +%s.%N)
  total=0
  # `done     NAME  (12.34s)` per stage; decodes from the stage's log in its artifact.
  while read -r name secs; do
    log="$("$bin" path "$m.toml" --store st "$name")/_log.txt"
    dec=$(grep -oE 'decoded [0-9]+ image files|decoded [0-9]+/[0-9]+ images' "$log" | tail -1 \
      | grep -oE '[0-9]+' | head -1)
    # The loop's own time, without starting the worker and loading the backbone.
    loop=$(grep -oE '(encoded|decoded) ([0-9]+)/\2 (images )?in [0-9.]+ s' "$log" | tail -1 \
      | grep -oE '[0-9.]+ s$' | tr -d ' s')
    echo "| $m | $name | $secs | $loop | $dec |"
    total=$((total + dec))
  done < <(grep -E '^done ' "$m.out" | grep -vE ' (synth|ingest) ' \
    | sed -E 's/^done +([^ ]+) +\(([0-9.]+)s\).*/\1 \2/')
  printf '| %s | **all (wall of the run)** | **%.1f** | | **%s** |\n' "$m" "$(echo "$end - $start" | bc)" "$total"
done
