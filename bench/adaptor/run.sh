#!/usr/bin/env bash
# Adaptor training throughput on CPU: the Rust loop (tch) against the same module in PyTorch
# eager, same batch, width, thread count and machine, interleaved so that background load hits
# both alike. Peak memory is each process's peak RSS (libtorch included).
#
#   bench/adaptor/run.sh [threads=2] [steps=10] [repeats=3]
#
# Writes bench/adaptor/results-threadsN.jsonl (one JSON line per run) and prints a summary. The
# machine is shared: besides wall-clock steps/s (median run, and the fastest single step) it
# reports CPU seconds per step, which background load disturbs much less.
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/env.sh
threads="${1:-2}" steps="${2:-10}" repeats="${3:-3}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/work/target-train}"
cargo build --release -q -p train --example bench_train
bin="$CARGO_TARGET_DIR/release/examples/bench_train"
out="bench/adaptor/results-threads$threads.jsonl"
: > "$out"
common=(--batch 1024 --dim 768 --steps "$steps" --warmup 2 --threads "$threads")
for r in $(seq "$repeats"); do
  python bench/adaptor/bench_torch.py "${common[@]}" | tee -a "$out"
  "$bin" "${common[@]}" | tee -a "$out"
  "$bin" "${common[@]}" --full-attention | tee -a "$out"
done
python - "$out" <<'PY'
import json, sys, statistics as st
rows = [json.loads(l) for l in open(sys.argv[1])]
by = {}
for r in rows:
    by.setdefault(r["impl"], []).append(r)
torch = next(k for k in by if k.startswith("pytorch"))
base = st.median(r["steps_per_s"] for r in by[torch])
best = 1 / min(r["step_s_min"] for r in by[torch])
cpu = st.median(r["cpu_s_per_step"] for r in by[torch])
threads = rows[0]["threads"]
print(f"\nthreads {threads}, batch {rows[0]['batch']}, width {rows[0]['dim']}, {len(by[torch])} runs each")
print("| implementation | steps/s (median) | vs PyTorch | fastest step s | vs PyTorch | CPU s/step (median) | vs PyTorch | peak RSS MiB | RSS after start-up MiB |")
print("|---|---|---|---|---|---|---|---|---|")
for k, rs in by.items():
    v = st.median(r["steps_per_s"] for r in rs)
    m = min(r["step_s_min"] for r in rs)
    c = st.median(r["cpu_s_per_step"] for r in rs)
    print(f"| {k} | {v:.3f} | {v / base:.2f}× | {m:.3f} | {(1 / m) / best:.2f}× | {c:.2f} | {cpu / c:.2f}× | {max(r['peak_rss_mib'] for r in rs):.0f} | {max(r.get('base_rss_mib', float('nan')) for r in rs):.0f} |")
PY
