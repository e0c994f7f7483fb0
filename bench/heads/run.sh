#!/usr/bin/env bash
# Classification-head training throughput over cached features on CPU: the Rust step (tch)
# against the same head in PyTorch eager — batch 512, 768-d input, the original MLP head
# (394,753 parameters, binary BCE) and the linear probe — same thread count, interleaved in one
# run so that background load hits both alike.
#
#   bench/heads/run.sh [threads=1] [steps=50] [repeats=3]
#
# Writes bench/heads/results-threadsN.jsonl (one JSON line per run) and prints a Markdown table.
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/env.sh
threads="${1:-1}" steps="${2:-50}" repeats="${3:-3}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
cargo build --release -q -p train --example bench_heads
bin="$CARGO_TARGET_DIR/release/examples/bench_heads"
out="bench/heads/results-threads$threads.jsonl"
: > "$out"
common=(--batch 512 --dim 768 --classes 1 --steps "$steps" --warmup 5 --threads "$threads")
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
for r in $(seq "$repeats"); do
  for head in "" --linear; do
    python bench/heads/bench_torch.py "${common[@]}" $head | tee -a "$out"
    "$bin" "${common[@]}" $head | tee -a "$out"
  done
done
echo "load average before: $load_before, after: $(cut -d' ' -f1-3 /proc/loadavg), cores: $(nproc)"
python - "$out" <<'PY'
import json, sys, statistics as st
rows = [json.loads(l) for l in open(sys.argv[1])]
print(f"\nthreads {rows[0]['threads']}, batch {rows[0]['batch']}, width {rows[0]['dim']}, "
      f"{len(rows) // 4} repeats (PyTorch and Rust alternate within each repeat)")
print("| head | implementation | steps/s (median) | examples/s (median) | fastest step ms | CPU ms/step (median) | "
      "vs PyTorch: steps/s, median of paired ratios | vs PyTorch: fastest step | peak RSS MiB |")
print("|---|---|---|---|---|---|---|---|---|")
for head in ["mlp", "linear"]:
    by = {}
    for r in rows:
        if r["head"] == head:
            by.setdefault(r["impl"], []).append(r)
    base = by["pytorch-eager"]
    for impl, rs in by.items():
        paired = st.median(r["steps_per_s"] / b["steps_per_s"] for r, b in zip(rs, base))
        fastest = min(r["step_ms_min"] for r in rs)
        print(f"| {head} ({rs[0]['params']:,} params) | {impl} | {st.median(r['steps_per_s'] for r in rs):.1f} | "
              f"{st.median(r['examples_per_s'] for r in rs):,.0f} | {fastest:.2f} | "
              f"{st.median(r['cpu_ms_per_step'] for r in rs):.2f} | {paired:.2f}× | "
              f"{min(b['step_ms_min'] for b in base) / fastest:.2f}× | {max(r['peak_rss_mib'] for r in rs):.0f} |")
PY
