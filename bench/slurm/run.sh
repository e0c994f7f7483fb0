#!/usr/bin/env bash
# Overhead of the Slurm executor against the local one, on a real single-node Slurm started here.
#   1. a manifest (default: manifests/demo.toml, whose small instances share jobs through its
#      `group` settings) run into a fresh store (and a fresh cache) with each executor: seconds,
#      per instance, and the ratio Slurm / local;
#   2. the submission rate for a generated 200-instance manifest (20 chains x 10 trivial stages),
#      submitted with --detach (jobs are then cancelled).
# Usage: bench/slurm/run.sh [MANIFEST]      Writes bench/slurm/results.md.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
manifest="${1:-manifests/demo.toml}"
work="$(mktemp -d /tmp/adaptor-slurm-bench.XXXXXX)"
trap 'scripts/slurm-cluster.sh stop "$work/cluster" >/dev/null 2>&1 || true; rm -rf "$work"' EXIT

scripts/slurm-cluster.sh install
source scripts/env.sh
cargo build --release --locked --workspace --bin adaptor --bin adaptor-torch >/dev/null 2>&1
bin="$root/target/release/adaptor"
eval "$(SLURM_PORT_BASE=${SLURM_PORT_BASE:-17817} scripts/slurm-cluster.sh start "$work/cluster")"
load_before="$(uptime | sed 's/.*load average: //')"

secs() { python3 -c 'import sys,time; print(f"{time.time()-float(sys.argv[1]):.2f}")' "$1"; }
now() { python3 -c 'import time; print(time.time())'; }

n_inst=$("$bin" status "$manifest" --store "$work/probe" --json | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))')
export ADAPTOR_CACHE_DIR="$work/cache-local"
t=$(now); "$bin" run "$manifest" -q --store "$work/local"; local_s=$(secs "$t")
export ADAPTOR_CACHE_DIR="$work/cache-slurm"
t=$(now); "$bin" run "$manifest" -q --executor slurm --store "$work/slurm"; slurm_s=$(secs "$t")
jobs_demo=$(squeue -h -t all -o %i | wc -l)
load_after="$(uptime | sed 's/.*load average: //')"

# 200 instances: 20 chains of 10, each stage copying its upstream's file and appending its parameter.
gen="$work/gen"; mkdir -p "$gen"
python3 - "$gen/m200.toml" <<'PY'
import sys
out = []
for c in range(20):
    for s in range(10):
        name = f"c{c}s{s}"
        out.append(f"[stages.{name}]\nkind = 'command'")
        if s > 0:
            out.append(f"inputs.deps = 'c{c}s{s-1}'")
            out.append(f"params = {{ run = 'cp $IN_DEPS/f $OUT/f; echo {s} >> $OUT/f', vars = {{ p = {s} }} }}")
        else:
            out.append(f"params = {{ run = 'echo {c} > $OUT/f', vars = {{ p = {s} }} }}")
        out.append("")
open(sys.argv[1], "w").write("\n".join(out))
PY
t=$(now); "$bin" run "$gen/m200.toml" -q --executor slurm --detach --store "$work/s200"; submit_s=$(secs "$t")
scancel --name="" -u "$(id -un)" >/dev/null 2>&1 || scancel -u "$(id -un)" >/dev/null 2>&1 || true

rate=$(python3 -c "print(f'{200/float($submit_s):.0f}')")
per_local=$(python3 -c "print(f'{float($local_s)/$n_inst:.2f}')")
per_slurm=$(python3 -c "print(f'{float($slurm_s)/$n_inst:.2f}')")
ratio=$(python3 -c "print(f'{float($slurm_s)/float($local_s):.2f}')")
{
  echo "| measure | local executor | Slurm executor |"
  echo "|---|---|---|"
  echo "| \`$manifest\` ($n_inst instances), cold store | ${local_s} s (${per_local} s/instance) | ${slurm_s} s (${per_slurm} s/instance, ${jobs_demo} jobs): ${ratio}× local |"
  echo "| submit 200 instances (\`--detach\`) | – | ${submit_s} s (${rate} instances/s) |"
  echo
  echo "Machine: $(nproc) cores; load average (1, 5, 15 min) $load_before before the demo runs, $load_after after them; $(date -u +%F). Script: \`bench/slurm/run.sh\`."
} | tee bench/slurm/results.md
