#!/usr/bin/env bash
# The GPU benchmark (issue 15): runs ON the GPU machine (one GPU, 16 cores, PyTorch 2.11 with
# transformers installed, no network, no Rust), from the bundle that bench/gpu/pack.sh made on
# another machine. It builds nothing: it unpacks the release binaries, puts this machine's
# torch/lib on LD_LIBRARY_PATH, makes its inputs (random BERT-base, DINOv2-B, DINOv2-S in the HF
# layout, texts, 1,024-px JPEGs) and measures, side by side in the same run:
#   - DINOv2-B, 224 px, bf16: `adaptor-torch embed image` vs HF Dinov2Model + DataLoader (same
#     preprocessing, batch size and cores): images/s forward only and end to end; the
#     DataLoader's decode-only rate on the same cores, the limit;
#   - BERT-base, pooler, 112 tokens, bf16: texts/s, ours vs HF;
#   - Adaptor training, batch 1024, 768-d, fp32 and bf16: steps/s and epochs/min over 200k
#     pairs, `bench_train` vs PyTorch eager;
#   - fp32 parity (max |ours − HF| on the same inputs) and bf16 rows' cosine to fp32 (≥ 0.999);
#   - manifests/demo.toml with the random BERT-base and DINOv2-S as its backbones, end to end.
# Results: $OUT/results.json, $OUT/results.md, $OUT/raw.jsonl and $OUT/log.txt.
#
#   bench/gpu/run.sh [--bundle .gpu-bundle/adaptor-gpu.tar.xz]     # on the GPU machine
#   bench/gpu/run.sh --cpu-smoke                                    # the same steps, tiny, on a CPU
#
# Without CUDA (and without --cpu-smoke) it stops at once with status 3 and one line saying so.
# Environment: OUT (default ./.gpu-out), WORK (default /tmp/adaptor-gpu-bench), PYTHON (default
# python3: the one with torch), STEPS (default "inputs decode vision texts parity training demo";
# parity reads the bf16 tables of vision and texts), BUDGET_S (seconds the whole run may take, default 450, 1800 for
# --cpu-smoke: the demo gets what is left and is stopped at the limit).
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
mode=gpu
bundle="$here/../../.gpu-bundle/adaptor-gpu.tar.xz"
while [ $# -gt 0 ]; do
  case "$1" in
    --cpu-smoke) mode=smoke ;;
    --bundle) bundle="$2"; shift ;;
    *) echo "usage: bench/gpu/run.sh [--cpu-smoke] [--bundle FILE]" >&2; exit 2 ;;
  esac
  shift
done
PY="${PYTHON:-python3}"
OUT="${OUT:-$PWD/.gpu-out}"
WORK="${WORK:-/tmp/adaptor-gpu-bench}"
BUDGET_S="${BUDGET_S:-$([ "$mode" = gpu ] && echo 450 || echo 1800)}"
# die MESSAGE [STATUS]: one line on stderr, then exit (status 2 unless given).
die() { echo "bench/gpu/run.sh: $1" >&2; exit "${2:-2}"; }

# Before anything else: a GPU this PyTorch can use (one line and status 3 if not).
torch_cuda="$("$PY" -c 'import torch; print(torch.__version__, torch.cuda.is_available())' 2>/dev/null)" \
  || die "no PyTorch in \`$PY\` (set PYTHON to the python that has torch 2.11)"
if [ "$mode" = gpu ] && [ "${torch_cuda#* }" != True ]; then
  die "no CUDA device: torch ${torch_cuda% *} sees no GPU on $(uname -n); this benchmark needs one (--cpu-smoke checks the script on a CPU)" 3
fi
"$PY" -c 'import transformers, cv2, pyarrow' 2>/dev/null \
  || die "\`$PY\` lacks transformers, opencv (cv2) or pyarrow: carry their wheels (bench/gpu/README.md, \"Missing packages\")"
[ -f "$bundle" ] || die "no bundle at $bundle (make it with bench/gpu/pack.sh and carry its folder)"

mkdir -p "$OUT" "$WORK"
log="$OUT/log.txt" raw="$OUT/raw.jsonl"
: > "$log"; : > "$raw"
exec 3>&2  # the terminal; inside a step, stderr goes to the log
say() { echo "[$(printf '%4d' "$SECONDS") s] $*" | tee -a "$log" >&3; }
say "mode $mode, bundle $bundle, work $WORK"
rm -rf "$WORK/b"
"$PY" -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2], filter="data")' "$bundle" "$WORK/b" \
  || die "cannot unpack $bundle"
(cd "$WORK/b" && sha256sum --quiet -c SHA256SUMS) || die "the unpacked bundle does not match its SHA256SUMS"
B="$WORK/b" BIN="$WORK/b/bin"
chmod +x "$BIN"/*
torch_lib="$("$PY" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')"
export LD_LIBRARY_PATH="$torch_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
say "bundle of commit $(cat "$B/COMMIT"); LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
"$BIN/adaptor-torch" env 2>&1 | tee -a "$log" >&2
if [ "$mode" = gpu ]; then
  "$BIN/adaptor-torch" env | grep -q '^cuda: available' \
    || die "adaptor-torch sees no CUDA with $torch_lib (its \`env\` is in $log)" 3
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >>"$log" 2>&1 || true
fi

if [ "$mode" = gpu ]; then
  DEVICE=cuda THREADS="$(nproc)" REPS=2 IMAGES=4096 PX=1024 TEXTS=16384 BS=256 TINY=
  PAIRS=200000 TBATCH=1024 TSTEPS=392 TWARM=10 PARITY_IMAGES=256 PARITY_TEXTS=512
else
  DEVICE=cpu THREADS=2 REPS=1 IMAGES=16 PX=256 TEXTS=32 BS=8 TINY=--tiny
  PAIRS=640 TBATCH=64 TSTEPS=3 TWARM=1 PARITY_IMAGES=8 PARITY_TEXTS=16
fi
PREC=bf16
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error HF_HUB_DISABLE_PROGRESS_BARS=1

# record CASE SIDE JSON: one line of raw.jsonl.
record() {
  "$PY" -c 'import json, sys; d = json.loads(sys.argv[3]); d.update(case=sys.argv[1], side=sys.argv[2]); print(json.dumps(d))' \
    "$1" "$2" "$3" >>"$raw" && tail -n 1 "$raw" | tee -a "$log" >&3
}
failed=()
STEPS="${STEPS:-inputs decode vision texts parity training demo}"
# step NAME CMD...: runs CMD (if NAME is in $STEPS), its stderr into the log; a failure is
# recorded and the run goes on.
step() {
  local name="$1"; shift
  [[ " $STEPS " == *" $name "* ]] || return 0
  local t0=$SECONDS
  if "$@" 2>>"$log"; then say "$name: done in $((SECONDS - t0)) s"; else say "$name: FAILED (see $log)"; failed+=("$name"); fi
}

inputs() {
  local j
  j="$("$PY" "$B/bench/gpu/inputs.py" --work "$WORK" --tokenizer "$B/tokenizer" --demo "$B/manifests/demo.toml" \
    --images "$IMAGES" --image-px "$PX" --texts "$TEXTS" --workers "$THREADS" $TINY)" && record inputs python "$j"
}

# ours CASE embed ARGS...: `adaptor-torch embed`, rates read from its own log lines (model loading
# and the warm-up excluded, as on the HF side).
ours() {
  local case="$1"; shift
  local err="$WORK/ours.log"
  "$BIN/adaptor-torch" "$@" --device "$DEVICE" --threads "$THREADS" --batch-size "$BS" --warmup 2 \
    >/dev/null 2>"$err" || { tr '\r' '\n' <"$err" | tail -n 5 >&2; return 1; }
  local j
  j="$(tr '\r' '\n' <"$err" | "$PY" -c '
import json, re, sys
log = sys.stdin.read()
n, e2e = re.findall(r"encoded (\d+)/\d+ \w+ in ([\d.]+) s", log)[-1]
fwd = float(re.findall(r"forward passes: ([\d.]+) s", log)[-1])
n, e2e = int(n), float(e2e)
print(json.dumps({"items": n, "forward_s": fwd, "forward_per_s": round(n / fwd, 1),
                  "end_to_end_s": e2e, "end_to_end_per_s": round(n / e2e, 1)}))')" && record "$case" adaptor "$j"
}

hf() {
  local case="$1"; shift
  local j
  j="$("$PY" "$B/bench/gpu/hf_side.py" "$@" --device "$DEVICE" --threads "$THREADS" --workers "$THREADS" \
    --batch-size "$BS")" && record "$case" "$([ "$1" = decode ] && echo opencv-dataloader || echo transformers)" "$j"
}

images=("$WORK"/images/img*.jpg)
image_case="DINOv2-B/14 224 px $PREC, CLS"
text_case="BERT-base pooler, 112 tokens, $PREC"
vision() {
  for r in $(seq "$REPS"); do
    ours "$image_case" embed image --backbone "$WORK/dinov2-base" --precision "$PREC" \
      --input "${images[@]}" --output "$WORK/ours-image-$PREC.parquet" || return 1
    hf "$image_case" image --model "$WORK/dinov2-base" --images "$WORK/images" --precision "$PREC" \
      --output "$WORK/hf-image.npy" || return 1
  done
}
texts() {
  for r in $(seq "$REPS"); do
    ours "$text_case" embed text --backbone "$WORK/bert-base" --pooling pooler --max-length 112 \
      --precision "$PREC" --input "$WORK/texts.txt" --output "$WORK/ours-text-$PREC.parquet" || return 1
    hf "$text_case" text --model "$WORK/bert-base" --input "$WORK/texts.txt" --precision "$PREC" \
      --output "$WORK/hf-text.npy" || return 1
  done
}
parity() {
  head -n "$PARITY_TEXTS" "$WORK/texts.txt" > "$WORK/texts-parity.txt"
  ours "parity run: image fp32" embed image --backbone "$WORK/dinov2-base" --precision fp32 \
    --input "${images[@]:0:$PARITY_IMAGES}" --output "$WORK/ours-image-fp32.parquet" || return 1
  ours "parity run: text fp32" embed text --backbone "$WORK/bert-base" --pooling pooler --max-length 112 \
    --precision fp32 --input "$WORK/texts-parity.txt" --output "$WORK/ours-text-fp32.parquet" || return 1
  local j
  j="$("$PY" "$B/bench/gpu/hf_side.py" parity --kind image --model "$WORK/dinov2-base" --images "$WORK/images" \
    --limit "$PARITY_IMAGES" --ours-fp32 "$WORK/ours-image-fp32.parquet" --ours-bf16 "$WORK/ours-image-$PREC.parquet" \
    --device "$DEVICE" --threads "$THREADS" --workers "$THREADS" --batch-size "$BS")" && record "parity: DINOv2-B" both "$j" || return 1
  j="$("$PY" "$B/bench/gpu/hf_side.py" parity --kind text --model "$WORK/bert-base" --input "$WORK/texts.txt" \
    --limit "$PARITY_TEXTS" --ours-fp32 "$WORK/ours-text-fp32.parquet" --ours-bf16 "$WORK/ours-text-$PREC.parquet" \
    --device "$DEVICE" --threads "$THREADS" --batch-size "$BS")" && record "parity: BERT-base" both "$j"
}
training() {
  local common=(--batch "$TBATCH" --dim 768 --pairs "$PAIRS" --steps "$TSTEPS" --warmup "$TWARM" --threads "$THREADS" --device "$DEVICE")
  local j
  for p in fp32 bf16; do
    local flag=(); [ "$p" = bf16 ] && flag=(--bf16)
    j="$("$BIN/bench_train" "${common[@]}" "${flag[@]}")" && record "Adaptor training $p" adaptor "$j" || return 1
    j="$("$PY" "$B/bench/gpu/train_torch.py" "${common[@]}" "${flag[@]}")" && record "Adaptor training $p" pytorch-eager "$j" || return 1
  done
}
demo() {
  local left=$((BUDGET_S - SECONDS))
  [ "$left" -gt 30 ] || { say "demo: skipped, only $left s of the ${BUDGET_S} s budget left"; return 1; }
  say "demo: up to $left s"
  local t0=$SECONDS rc=0
  (cd "$WORK" && rm -rf artifacts && timeout "$left" "$BIN/adaptor" run demo-gpu.toml) >>"$log" 2>&1 || rc=$?
  local s=$((SECONDS - t0))
  (cd "$WORK" && "$BIN/adaptor" results demo-gpu.toml) >>"$log" 2>&1 || true
  local built
  built="$(find "$WORK/artifacts" -name _manifest.json 2>/dev/null | wc -l)"
  record "demo manifest end to end" adaptor "{\"wall_s\": $s, \"exit\": $rc, \"artifacts\": $built, \"limit_s\": $left}"
  [ "$rc" = 0 ]
}

step inputs inputs
images=("$WORK"/images/img*.jpg)
images=("${images[@]:0:$IMAGES}")
step decode hf "decode only (same cores)" decode --images "$WORK/images"
step vision vision
step texts texts
step parity parity
step training training
step demo demo
"$PY" "$B/bench/gpu/report.py" --raw "$raw" --mode "$mode" --seconds "$SECONDS" \
  --failed "${failed[*]:-}" --json "$OUT/results.json" > "$OUT/results.md" || failed+=(report)
cat "$OUT/results.md"
say "total ${SECONDS} s; failed: ${failed[*]:-none}"
[ ${#failed[@]} -eq 0 ]
