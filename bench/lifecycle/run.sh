#!/usr/bin/env bash
# How fast a stage's processes die with their runner, and what the process group costs per stage.
#   bench/lifecycle/run.sh [REPEATS]   (default 20; needs target/debug/adaptor: cargo build -p adaptor)
# 1. kill -9 of `adaptor run` while a `command` stage waits on `sleep 300 &`: milliseconds until
#    no process of the stage's group is left (read from /proc), over REPEATS runs.
# 2. SIGTERM instead: milliseconds until the runner has exited and the group is gone.
# 3. The cost of starting a stage in its group (sentinel included): a manifest of 50 `command`
#    stages running `true`, first run with -j 1, median of 5 runs; with BASELINE_BIN=path also for
#    another build (e.g. one from before process groups had a sentinel) for comparison.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
bin="${ADAPTOR_BIN:-$root/target/debug/adaptor}"
repeats="${1:-20}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
now_ms() { date +%s%3N; }

# Live (not zombie) members of process group $1.
members() {
  local pg=$1 n=0 f
  for f in /proc/[0-9]*/stat; do
    { read -r line < "$f"; } 2>/dev/null || continue
    rest="${line##*) }"
    set -- $rest
    [ "$3" = "$pg" ] && [ "$1" != Z ] && n=$((n + 1))
  done
  echo $n
}

die_with_runner() {
  local signal=$1 out=()
  for i in $(seq "$repeats"); do
    d="$work/$signal-$i"; mkdir -p "$d"
    printf "[stages.s]\nkind = 'command'\nparams.run = 'echo \$\$ > %s/pgid; sleep 300 & wait'\n" "$d" > "$d/m.toml"
    (cd "$d" && ADAPTOR_CACHE_DIR="$d/cache" exec "$bin" run m.toml -q 2>/dev/null) &
    runner=$!
    while [ ! -s "$d/pgid" ]; do sleep 0.01; done
    pg=$(cat "$d/pgid")
    while [ "$(members "$pg")" -lt 3 ]; do sleep 0.01; done  # sh, sleep, sentinel
    t0=$(now_ms)
    kill -"$signal" "$runner"
    while [ "$(members "$pg")" -gt 0 ]; do sleep 0.005; done
    wait "$runner" 2>/dev/null || true
    out+=($(( $(now_ms) - t0 )))
  done
  printf '%s\n' "${out[@]}" | sort -n | awk -v s="$signal" '{a[NR]=$1} END {printf "SIG%s: group gone after median %d ms, max %d ms (%d runs)\n", s, a[int((NR+1)/2)], a[NR], NR}'
}

die_with_runner KILL
die_with_runner TERM

d="$work/many"; mkdir -p "$d"
for i in $(seq 50); do printf "[stages.s%d]\nkind = 'command'\nparams.run = 'true'\n" "$i"; done > "$d/m.toml"
per_stage() {
  local b=$1 times=()
  for r in 1 2 3 4 5; do
    rm -rf "$d/artifacts"
    t0=$(now_ms)
    (cd "$d" && ADAPTOR_CACHE_DIR="$d/cache" "$b" run m.toml -q -j 1)
    times+=($(( $(now_ms) - t0 )))
  done
  printf '%s\n' "${times[@]}" | sort -n | awk -v b="$b" '{a[NR]=$1} END {printf "50 command stages, -j 1, %s: median %d ms (%.1f ms per stage)\n", b, a[3], a[3]/50}'
}
per_stage "$bin"
if [ -n "${BASELINE_BIN:-}" ]; then per_stage "$BASELINE_BIN"; fi
