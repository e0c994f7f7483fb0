#!/usr/bin/env bash
# The scale benchmark: a synthetic MIMIC-CXR of N studies at 64 px (and a COVIDx of N/10 images
# for the classification head) through every stage, per stage wall time and peak resident memory,
# then the no-op rerun with each check of the dataset folder. Prints one markdown table and checks
# the pass rules (time at most linear in N, peak memory flat in N beyond what a stage documents).
# Usage: bench/scale/run.sh [N ...]            (default: 10000 100000 377000)
# Env: ADAPTOR_BIN (default target/release/adaptor; adaptor-torch is taken from beside it unless
#      ADAPTOR_TORCH is set), WORK (scratch folder, default a new one under $TMPDIR), JOBS (-j),
#      MEMORY (every stage's memory budget, the runner parameter `memory`; default 256MiB, so that
#      a stage whose data outgrow it shows whether it streams), VALID_FRACTION (MIMIC-CXR's
#      validate + test share of studies; default 0.022, the real dataset's official split).
set -euo pipefail
REPO=$(cd "$(dirname "$0")/../.." && pwd)
BIN=${ADAPTOR_BIN:-$REPO/target/release/adaptor}
export ADAPTOR_TORCH=${ADAPTOR_TORCH:-$(dirname "$BIN")/adaptor-torch}
WORK=${WORK:-$(mktemp -d "${TMPDIR:-/tmp}/adaptor-scale.XXXXXX")}
JOBS=${JOBS:-$(nproc)}
MEMORY=${MEMORY:-256MiB}
VALID_FRACTION=${VALID_FRACTION:-0.022}
SIZES=("${@:-10000 100000 377000}")
[ -x "$BIN" ] || { echo "no adaptor binary at $BIN (build it, or set ADAPTOR_BIN)" >&2; exit 2; }
[ -x "$ADAPTOR_TORCH" ] || { echo "no adaptor-torch at $ADAPTOR_TORCH (set ADAPTOR_TORCH)" >&2; exit 2; }
command -v /usr/bin/time >/dev/null || { echo "needs GNU time (/usr/bin/time)" >&2; exit 2; }
mkdir -p "$WORK"
RESULTS="$WORK/results.tsv"
: > "$RESULTS"

# One measured step: wall seconds and peak resident set size (MiB) of the command and every
# process it waited for (GNU time's maximum RSS: the runner and its stage processes).
measure() { # N stage command...
  local n=$1 stage=$2; shift 2
  local log="$WORK/$n/$stage.log"
  local t0 t1 kib
  t0=$(date +%s%N)
  if ! /usr/bin/time -f '%M' -o "$WORK/$n/$stage.time" "$@" >"$log" 2>&1; then
    echo "error: $stage at N=$n failed; see $log" >&2; tail -20 "$log" >&2; exit 1
  fi
  t1=$(date +%s%N)
  kib=$(tail -1 "$WORK/$n/$stage.time")
  printf '%s\t%s\t%s\t%s\n' "$n" "$stage" "$(echo "($t1 - $t0) / 10^9" | bc -l | xargs printf '%.3f')" \
    "$((kib / 1024))" | tee -a "$RESULTS" >&2
}

for N in ${SIZES[*]}; do
  D="$WORK/$N"; mkdir -p "$D"
  measure "$N" "synth mimic-cxr" "$BIN" synth mimic-cxr --out "$D/mimic" --n "$N" --image-size 64 \
    --valid-fraction "$VALID_FRACTION" -q
  measure "$N" "synth covidx" "$BIN" synth covidx --out "$D/covidx" --n "$((N / 10))" --image-size 64 -q
  # `preprocess` (decode once for every backbone) is measured when this binary has it.
  PREPROCESS=""
  IMAGES_FROM='raw = "datasets.${images}"'
  if "$BIN" stages 2>/dev/null | grep -q '^preprocess '; then
    PREPROCESS=$(sed -n "s/^#\([^ ].*\)/\1/p" "$REPO/bench/scale/preprocess.toml.in" \
      | sed "s/MEMORY/$MEMORY/")
    IMAGES_FROM='images = "preprocess[images=${images}]"'
  fi
  M="$D/scale.toml"
  cat > "$M" <<TOML
store = "$D/store"

[datasets.mimic-cxr]
kind = "mimic-cxr"
root = "$D/mimic"
CHECK

[datasets.covidx]
kind = "covidx"
root = "$D/covidx"
CHECK

[backbones.bert]
kind = "bert"
weights = "$REPO/data/encoders/bert-safetensors"

[backbones.dinov2]
kind = "dinov2"
weights = "$REPO/data/encoders/dinov2"

[stages.ingest]
kind = "ingest"
foreach = { dataset = ["mimic-cxr", "covidx"] }
inputs.raw = "datasets.\${dataset}"
params = { verify = "exists", memory = "$MEMORY" }
$PREPROCESS
[stages.text]
kind = "encode-text"
params = { pooling = "mean", batch_size = 256, memory = "$MEMORY" }
inputs = { records = "ingest[dataset=mimic-cxr]", backbone = "backbones.bert" }

[stages.image]
kind = "encode-image"
foreach = { images = ["mimic-cxr", "covidx"] }
# At the images' own size (64 px, a 56-px crop: 4 × 4 DINOv2 patches), so that the benchmark
# measures the pipeline's cost per image rather than upscaling, and fits this machine's disk.
params = { pooling = "mean", batch_size = 256, resize = 64, image_size = 56, memory = "$MEMORY" }
inputs = { records = "ingest[dataset=\${images}]", $IMAGES_FROM, backbone = "backbones.dinov2" }

[stages.pretrain]
kind = "train-adaptor"
params = { epochs = 1, batch_size = 1024, memory = "$MEMORY" }
inputs = { image = "image[images=mimic-cxr]", text = "text" }

[stages.classify]
kind = "classify"
params = { fraction = 1.0, seed = 0, epochs = 1, memory = "$MEMORY" }
inputs = { features = "image[images=covidx]", records = "ingest[dataset=covidx]", adaptor = "pretrain" }
TOML
  sed 's/^CHECK$//' "$M" > "$D/files.toml"
  sed 's/^CHECK$/check = "folders"/' "$M" > "$D/folders.toml"
  sed 's/^CHECK$/immutable = true/' "$M" > "$D/immutable.toml"
  # The datasets' first fingerprint (one entry per file, held by the runner while it lists them)
  # is measured on its own; the stages then run against that fingerprint (`immutable`), so that
  # their rows measure the stage, not the listing of a million files.
  measure "$N" "fingerprint (first run)" "$BIN" status -q --cache-dir "$D/cache" "$D/files.toml"
  RUN=("$BIN" run -q -j "$JOBS" --cache-dir "$D/cache")
  measure "$N" ingest "${RUN[@]}" --only ingest "$D/immutable.toml"
  [ -n "$PREPROCESS" ] && measure "$N" preprocess "${RUN[@]}" --only preprocess "$D/immutable.toml"
  measure "$N" "encode-text" "${RUN[@]}" --only text "$D/immutable.toml"
  measure "$N" "encode-image" "${RUN[@]}" --only image "$D/immutable.toml"
  measure "$N" "train-adaptor (1 epoch)" "${RUN[@]}" --only pretrain "$D/immutable.toml"
  measure "$N" classify "${RUN[@]}" --only classify "$D/immutable.toml"
  for check in files folders immutable; do
    # A fresh fingerprint cache per check: its first run fingerprints, the next one is timed.
    # Folders changed within 2 s of a listing are listed again once (racily recent).
    C=("$BIN" run -q -j "$JOBS" --cache-dir "$D/cache-$check" "$D/$check.toml")
    "${C[@]}" >/dev/null; sleep 2; "${C[@]}" >/dev/null
    measure "$N" "no-op ($check)" "${C[@]}"
  done
  files=$(find "$D/mimic" "$D/covidx" -type f | wc -l)
  printf '%s\tfiles\t%s\t0\n' "$N" "$files" >> "$RESULTS"
done

python3 "$REPO/bench/scale/table.py" "$RESULTS"
