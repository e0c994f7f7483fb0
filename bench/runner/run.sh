#!/usr/bin/env bash
# Runner benchmark (issue 2): no-op latency of `adaptor run`/`status` on a 200-instance manifest,
# fingerprinting of a large external input (cold and cached), and DVC 3 on the same 200-stage shape.
#
# Idempotent: every measurement starts from a state this script creates itself (it wipes its own
# work folders first). Prints a markdown table and writes it to bench/runner/results.md.
#
# Usage:  bench/runner/run.sh                  # everything, 10 GB of fingerprint data
#         FP_GB=1 SKIP_DVC=1 bench/runner/run.sh   # quick run
#
# Settings (environment):
#   FP_GB=10            size of the external input, in GiB (FP_FILES files of FP_GB/FP_FILES GiB each)
#   FP_FILES=10         number of files the external input is split into
#   DATA_DIR=/work/bench-data        where the external input is written (deleted at the end unless KEEP=1)
#   KEEP=0              1 keeps DATA_DIR (a later run reuses it if the sizes match)
#   WORK_DIR=/work/bench-runner-work manifests, stores, caches and the DVC project (outside the repo)
#   CHAINS=20 STEPS=10  the shape of the 200-stage pipeline
#   RUNS=10             timed runs of each adaptor no-op command (after WARMUP=2 untimed ones)
#   DVC_RUNS=5          timed runs of no-op `dvc repro` and of `dvc status` (after 1 untimed)
#   DVC_SCM=git         `git` (a git repo, the usual set-up) or `none` (`dvc init --no-scm`)
#   SMALL_FILES=100000  also time a fingerprint cache hit on a folder of this many 1 KiB files (0: skip)
#   SKIP_CHAINS=0 SKIP_DVC=0 SKIP_FP=0 SKIP_BUILD=0   skip a part
#   DROP_CACHES=1       drop the page cache before cold reads (needs root; else the cache state is noted)
#   QUIET_BUSY=25 QUIET_WAIT=300  before the no-op measurements, wait up to QUIET_WAIT s for the
#                       machine's CPU use (all processes, sampled over 2 s) to fall below QUIET_BUSY %
#   CARGO_TARGET_DIR=/work/target-bench  BUILD_JOBS=1   release build of the binary
#   BUILD_FROM=worktree `worktree`: build the checkout as it is (uncommitted edits included);
#                       `head`: build a `git archive HEAD` export in WORK_DIR/src (a named commit)
#   ADAPTOR=...         use this binary instead of building one
#   VENV=<repo>/.venv-bench           Python venv holding DVC (created, `pip install dvc`)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)

FP_GB=${FP_GB:-10}
FP_FILES=${FP_FILES:-10}
DATA_DIR=${DATA_DIR:-/work/bench-data}
KEEP=${KEEP:-0}
WORK_DIR=${WORK_DIR:-/work/bench-runner-work}
CHAINS=${CHAINS:-20}
STEPS=${STEPS:-10}
RUNS=${RUNS:-10}
WARMUP=${WARMUP:-2}
DVC_RUNS=${DVC_RUNS:-5}
DVC_SCM=${DVC_SCM:-git}
SKIP_DVC=${SKIP_DVC:-0}
SKIP_CHAINS=${SKIP_CHAINS:-0}
SMALL_FILES=${SMALL_FILES:-100000}
BUILD_FROM=${BUILD_FROM:-worktree}
SKIP_FP=${SKIP_FP:-0}
SKIP_BUILD=${SKIP_BUILD:-0}
DROP_CACHES=${DROP_CACHES:-1}
QUIET_BUSY=${QUIET_BUSY:-25}
QUIET_WAIT=${QUIET_WAIT:-300}
BUILD_JOBS=${BUILD_JOBS:-1}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/work/target-bench}
ADAPTOR=${ADAPTOR:-$CARGO_TARGET_DIR/release/adaptor}
VENV=${VENV:-$ROOT/.venv-bench}
RESULTS=${RESULTS:-$HERE/results.md}

NSTAGES=$((CHAINS * STEPS))
RAW="$WORK_DIR/raw"          # hyperfine JSON and logs
TSV="$RAW/results.tsv"       # one row per figure: id, label, median, min, max, n, unit, note

log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# --- helpers --------------------------------------------------------------------------------------

# CPU use of the whole machine (percent, all processes) over $1 seconds.
cpu_busy() {
    local a b
    read -r -a a < <(grep '^cpu ' /proc/stat)
    sleep "${1:-2}"
    read -r -a b < <(grep '^cpu ' /proc/stat)
    local idle=$(( (b[4] + b[5]) - (a[4] + a[5]) )) total=0 i
    for i in 1 2 3 4 5 6 7 8; do total=$(( total + b[i] - a[i] )); done
    (( total > 0 )) || { echo 0; return; }
    echo $(( 100 * (total - idle) / total ))
}

load_note() {
    local busy
    busy=$(cpu_busy 2)
    echo "load $(cut -d' ' -f1-3 /proc/loadavg), CPU ${busy}% busy"
}

# Waits (up to QUIET_WAIT s) until other processes leave the CPUs mostly idle.
wait_quiet() {
    local waited=0 busy
    while :; do
        busy=$(cpu_busy 2)
        if (( busy < QUIET_BUSY )); then break; fi
        if (( waited >= QUIET_WAIT )); then
            log "machine still ${busy}% busy after ${waited}s; measuring anyway"
            break
        fi
        log "machine ${busy}% busy (others' work); waiting for < ${QUIET_BUSY}%"
        sleep 10
        waited=$((waited + 12))
    done
}

drop_caches() {
    if [[ $DROP_CACHES == 1 ]] && sync && { echo 3 > /proc/sys/vm/drop_caches; } 2>/dev/null; then
        echo dropped
    else
        echo warm
    fi
}

now_ns() { date +%s%N; }

# record ID LABEL MEDIAN MIN MAX N UNIT NOTE
record() { printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$@" >> "$TSV"; }

# Times one run of a command (in the current directory); prints elapsed ms.
time_once() {
    local t0 t1
    t0=$(now_ns)
    "$@" > "$RAW/last.out" 2> "$RAW/last.err" || { cat "$RAW/last.err" >&2; die "command failed: $*"; }
    t1=$(now_ns)
    echo $(( (t1 - t0) / 1000000 ))
}

# bench ID LABEL RUNS WARMUP NOTE -- CMD...: median/min/max wall-clock of the whole process, in ms.
bench() {
    local id=$1 label=$2 runs=$3 warmup=$4 note=$5
    shift 6
    local json="$RAW/$id.json"
    if command -v hyperfine > /dev/null; then
        # --shell=none: no shell in between, the figure is the process itself.
        hyperfine --shell=none --style basic --warmup "$warmup" --runs "$runs" \
            --export-json "$json" -- "$(printf '%q ' "$@")" > "$RAW/$id.hyperfine.txt" 2>&1 \
            || { cat "$RAW/$id.hyperfine.txt" >&2; die "$label failed"; }
    else
        local i times=()
        for ((i = 0; i < warmup; i++)); do "$@" > /dev/null 2>&1; done
        for ((i = 0; i < runs; i++)); do times+=("$(time_once "$@")"); done
        printf '{"results":[{"times":[%s]}]}\n' \
            "$(printf '%s\n' "${times[@]}" | awk '{printf "%s%.6f", (NR>1?",":""), $1/1000}')" > "$json"
    fi
    "$PY" - "$json" "$id" "$label" "$note" >> "$TSV" <<'EOF'
import json, statistics, sys
path, id_, label, note = sys.argv[1:]
t = [x * 1000 for x in json.load(open(path))["results"][0]["times"]]
print(f"{id_}\t{label}\t{statistics.median(t):.1f}\t{min(t):.1f}\t{max(t):.1f}\t{len(t)}\tms\t{note}")
EOF
    tail -n1 "$TSV" | awk -F'\t' '{printf "[bench] %s: median %s ms (min %s, max %s, n=%s)\n", $2, $3, $4, $5, $6}' >&2
}

get() { awk -F'\t' -v id="$1" -v col="${2:-3}" '$1 == id {v = $col} END {print v}' "$TSV"; }

# --- setup ----------------------------------------------------------------------------------------

mkdir -p "$WORK_DIR"
rm -rf "$RAW"
mkdir -p "$RAW"
: > "$TSV"

# What is measured: the commit, and whether uncommitted edits went into the binary.
HEAD_REV=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
if [[ $BUILD_FROM == head ]]; then
    SRC="$WORK_DIR/src"
    rm -rf "$SRC"
    mkdir -p "$SRC"
    git -C "$ROOT" archive HEAD | tar -x -C "$SRC"
    SOURCE="commit $HEAD_REV (git archive HEAD)"
else
    SRC=$ROOT
    # --no-optional-locks: read-only, never refreshes the index of a checkout others work in.
    DIRTY=$(git -C "$ROOT" --no-optional-locks status --porcelain --untracked-files=no -- Cargo.toml Cargo.lock src pipeline 2>/dev/null \
        | awk '{print $2}' | paste -sd, - || true)
    SOURCE="commit $HEAD_REV${DIRTY:+ + uncommitted edits to $DIRTY}"
fi
if [[ $SKIP_BUILD != 1 && ${ADAPTOR} == "$CARGO_TARGET_DIR/release/adaptor" ]]; then
    # Others may be mid-edit in the checkout: retry a failed build a few times.
    for try in 1 2 3 4; do
        log "building adaptor from $SRC (release, CARGO_TARGET_DIR=$CARGO_TARGET_DIR, -j $BUILD_JOBS, try $try)"
        if (cd "$SRC" && cargo build --release -j "$BUILD_JOBS" --bin adaptor) > "$RAW/build.log" 2>&1; then
            break
        fi
        tail -15 "$RAW/build.log" >&2
        ((try < 4)) || die "cargo build failed (see $RAW/build.log)"
        log "build failed; retrying in 60 s"
        sleep 60
    done
fi
[[ -x $ADAPTOR ]] || die "no adaptor binary at $ADAPTOR"

if ! command -v hyperfine > /dev/null; then
    if [[ $(id -u) == 0 ]] && command -v apt-get > /dev/null; then
        log "installing hyperfine (apt-get)"
        apt-get install -y hyperfine > "$RAW/apt.log" 2>&1 \
            || { apt-get update > /dev/null 2>&1 && apt-get install -y hyperfine >> "$RAW/apt.log" 2>&1; } \
            || log "no hyperfine; using a shell timing loop (adds a fork/exec of date per run)"
    fi
fi

if [[ $SKIP_DVC != 1 ]]; then
    if [[ ! -x $VENV/bin/dvc ]]; then
        log "creating $VENV with DVC"
        python3 -m venv "$VENV"
        "$VENV/bin/pip" install -q dvc > "$RAW/pip.log" 2>&1 || { tail -20 "$RAW/pip.log" >&2; die "pip install dvc failed"; }
    fi
    PY="$VENV/bin/python"
else
    PY=$(command -v python3)
fi

CPU_MODEL=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')
MACHINE="$(nproc) cores ($CPU_MODEL), $(free -g | awk '/^Mem:/ {print $2}') GiB RAM, $(uname -sr), \
$(df -h "$WORK_DIR" | awk 'NR==2 {print $1}') ($(findmnt -no FSTYPE --target "$WORK_DIR" 2>/dev/null || echo '?'))"
TOOLS="adaptor $("$ADAPTOR" --version | awk '{print $2}') (release), $(command -v hyperfine > /dev/null && hyperfine --version || echo 'shell timing loop')"
[[ $SKIP_DVC == 1 ]] || TOOLS="$TOOLS, DVC $("$VENV/bin/dvc" --version), $($PY --version)"
log "machine: $MACHINE"
log "source: $SOURCE"
log "tools: $TOOLS"

# --- 1. adaptor: 200 trivial stages, no-op run ----------------------------------------------------

chain_name() { printf 'c%02d' "$1"; }

AD="$WORK_DIR/adaptor-chains"
gen_adaptor_manifest() {
    rm -rf "$AD"
    mkdir -p "$AD"
    {
        echo "# Generated by bench/runner/run.sh: $CHAINS chains x $STEPS trivial command stages."
        echo '[store]'
        echo 'url = "artifacts"'
        echo
        echo '[matrix]'
        local c s sep=''
        printf 'chain = ['
        for ((c = 0; c < CHAINS; c++)); do printf '%s"%s"' "$sep" "$(chain_name $c)"; sep=', '; done
        echo ']'
        for ((s = 0; s < STEPS; s++)); do
            echo
            echo "[stages.s$s]"
            echo 'kind = "command"'
            echo 'foreach = ["chain"]'
            if ((s == 0)); then
                echo "params = { run = 'echo \"\$VAR_P\" > \"\$OUT/out.txt\"', vars = { p = \"\${chain}-s$s-v1\" } }"
            else
                echo "inputs = { deps = \"s$((s - 1))[chain=\${chain}]\" }"
                echo "params = { run = 'cp \"\$IN_DEPS/out.txt\" \"\$OUT/out.txt\" && echo \"\$VAR_P\" >> \"\$OUT/out.txt\"', vars = { p = \"\${chain}-s$s-v1\" } }"
            fi
        done
    } > "$AD/chains.toml"
}

if [[ $SKIP_CHAINS != 1 ]]; then
log "adaptor: $NSTAGES-instance manifest in $AD"
gen_adaptor_manifest
A=("$ADAPTOR" --cache-dir "$AD/cache")
cd "$AD"

wait_quiet
NOTE_COLD=$(load_note)
ms=$(time_once "${A[@]}" run -q chains.toml)
record cold_run "adaptor run, first (cold) full run, $NSTAGES instances, -j $(nproc)" "$ms" "$ms" "$ms" 1 ms "$NOTE_COLD"
log "cold run: $ms ms"
"${A[@]}" status chains.toml > "$RAW/status-after-cold.txt"
grep -q "all $NSTAGES instance(s) up to date" "$RAW/status-after-cold.txt" || die "not all instances up to date after the first run"
# Check one chain's end result.
last=$("$ADAPTOR" --cache-dir "$AD/cache" status --json chains.toml | "$PY" -c \
    "import json,sys; r=[x for x in json.load(sys.stdin) if x['instance']=='s$((STEPS-1))[chain=c00]'][0]; print(r['key'])")
lines=$(wc -l < "$AD/artifacts/command/$last/out.txt")
[[ $lines == "$STEPS" ]] || die "chain c00 ends with $lines lines, expected $STEPS"

# Same cold run, one stage at a time (DVC runs stages one after another).
rm -rf "$AD/artifacts" "$AD/cache"
ms=$(time_once "${A[@]}" run -q -j 1 chains.toml)
record cold_run_j1 "adaptor run, first (cold) full run, -j 1" "$ms" "$ms" "$ms" 1 ms "$(load_note)"
log "cold run -j 1: $ms ms"

wait_quiet
NOTE_NOOP=$(load_note)
bench noop_run "adaptor run, no-op ($NSTAGES up to date)" "$RUNS" "$WARMUP" "$NOTE_NOOP" -- "${A[@]}" run -q chains.toml
bench noop_status "adaptor status ($NSTAGES up to date)" "$RUNS" "$WARMUP" "$NOTE_NOOP" -- "${A[@]}" status chains.toml
bench noop_run_j1 "adaptor run -j 1, no-op" "$RUNS" "$WARMUP" "$NOTE_NOOP" -- "${A[@]}" run -q -j 1 chains.toml
bench version "adaptor --version (process start-up floor)" "$RUNS" "$WARMUP" "$NOTE_NOOP" -- "$ADAPTOR" --version
cd "$ROOT"
fi

# --- 2. fingerprinting a large external input -----------------------------------------------------

if [[ $SKIP_FP != 1 ]]; then
    FILE_MIB=$(( FP_GB * 1024 / FP_FILES ))
    TOTAL_BYTES=$(( FILE_MIB * FP_FILES * 1024 * 1024 ))
    mkdir -p "$DATA_DIR"
    # Reuse data of the right shape (KEEP=1 from an earlier run); otherwise write it anew.
    ok=1
    for ((i = 0; i < FP_FILES; i++)); do
        f=$(printf '%s/part-%02d.bin' "$DATA_DIR" "$i")
        [[ -f $f && $(stat -c %s "$f") == $((FILE_MIB * 1024 * 1024)) ]] || ok=0
    done
    [[ $(find "$DATA_DIR" -type f | wc -l) == "$FP_FILES" ]] || ok=0
    if [[ $ok != 1 ]]; then
        log "writing $FP_FILES x $FILE_MIB MiB of random-looking bytes to $DATA_DIR"
        rm -rf "${DATA_DIR:?}"/*
        for ((i = 0; i < FP_FILES; i++)); do
            f=$(printf '%s/part-%02d.bin' "$DATA_DIR" "$i")
            if command -v openssl > /dev/null; then
                # AES-CTR keystream: incompressible like /dev/urandom, several times faster.
                { openssl enc -aes-128-ctr -nosalt -pass "pass:bench-$i" -pbkdf2 < /dev/zero 2> /dev/null || true; } \
                    | head -c "$((FILE_MIB * 1024 * 1024))" > "$f"
            else
                head -c "$((FILE_MIB * 1024 * 1024))" /dev/urandom > "$f"
            fi
        done
        sync
    else
        log "reusing $DATA_DIR ($FP_FILES x $FILE_MIB MiB)"
    fi
    GB=$("$PY" -c "print(f'{$TOTAL_BYTES / 1e9:.1f}')")
    gbps() { "$PY" -c "print(f'{$TOTAL_BYTES / 1e9 / ($1 / 1000):.2f}')"; }

    FP="$WORK_DIR/adaptor-fp"
    rm -rf "$FP"
    mkdir -p "$FP"
    cat > "$FP/fp.toml" <<EOF
# Generated by bench/runner/run.sh: one external input of $FP_GB GiB and one stage reading it.
[store]
url = "artifacts"

[datasets.big]
kind = "raw"
root = "$DATA_DIR"

[stages.listing]
kind = "command"
inputs = { deps = "datasets.big" }
params = { run = 'ls -l "\$IN_DEPS" > "\$OUT/listing.txt" && du -sb "\$IN_DEPS" >> "\$OUT/listing.txt"' }
EOF
    F=("$ADAPTOR" --cache-dir "$FP/cache")
    cd "$FP"

    # Raw read speed of the same files. Measured again after the cold fingerprint: on a VM the
    # host may cache the disk image, which the guest's drop_caches does not reach.
    raw_read() {
        local state ms
        state=$(drop_caches)
        ms=$(time_once sh -c "cat '$DATA_DIR'/* > /dev/null")
        record "$1" "cat of the $GB GB to /dev/null ($2, page cache $state)" "$ms" "$ms" "$ms" 1 ms "$(gbps "$ms") GB/s"
        log "raw read $2 ($state): $ms ms"
    }
    raw_read raw_read "before"

    # Cold fingerprint cache, cold page cache: hashes everything from disk.
    rm -rf "$FP/cache"
    state=$(drop_caches)
    ms=$(time_once "${F[@]}" status fp.toml)
    record fp_cold_disk "adaptor status, cold fingerprint cache (page cache $state)" "$ms" "$ms" "$ms" 1 ms "$(gbps "$ms") GB/s"
    log "fingerprint, cold cache, page cache $state: $ms ms"
    raw_read raw_read2 "after"

    # Cold fingerprint cache, data in the page cache: the hashing itself.
    rm -rf "$FP/cache"
    cat "$DATA_DIR"/* > /dev/null
    ms=$(time_once "${F[@]}" status fp.toml)
    record fp_cold_warm "adaptor status, cold fingerprint cache (page cache warm)" "$ms" "$ms" "$ms" 1 ms "$(gbps "$ms") GB/s"
    log "fingerprint, cold cache, page cache warm: $ms ms"

    "${F[@]}" run -q fp.toml
    wait_quiet
    NOTE_FP=$(load_note)
    bench fp_hit "adaptor status, fingerprint cache hit ($FP_FILES files, $GB GB)" "$RUNS" "$WARMUP" "$NOTE_FP" -- "${F[@]}" status fp.toml
    bench fp_hit_run "adaptor run, no-op, fingerprint cache hit" "$RUNS" "$WARMUP" "$NOTE_FP" -- "${F[@]}" run -q fp.toml
    bench fp_hit_verify "adaptor run --verify, no-op (rehashes everything, page cache warm)" 3 1 "$NOTE_FP" -- "${F[@]}" run -q --verify fp.toml
    cd "$ROOT"
    if [[ $KEEP != 1 ]]; then
        log "deleting $DATA_DIR (KEEP=1 keeps it)"
        rm -rf "${DATA_DIR:?}"
    fi
fi

# --- 2b. a cache hit on many small files (the shape of an image dataset) ------------------------

if [[ $SKIP_FP != 1 && $SMALL_FILES -gt 0 ]]; then
    SM="$WORK_DIR/small-files"
    rm -rf "$SM"
    mkdir -p "$SM/data"
    log "writing $SMALL_FILES files of 1 KiB under $SM/data (100 folders)"
    "$PY" - "$SM/data" "$SMALL_FILES" <<'PYEOF'
import os, sys
root, n = sys.argv[1], int(sys.argv[2])
per = max(1, n // 100)
for i in range(n):
    d = os.path.join(root, f"d{i // per:03d}")
    if i % per == 0:
        os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, f"f{i:07d}.bin"), "wb") as f:
        f.write(os.urandom(1024))
PYEOF
    cat > "$SM/small.toml" <<TOMLEOF
[store]
url = "artifacts"

[datasets.small]
kind = "raw"
root = "$SM/data"

[stages.listing]
kind = "command"
inputs = { deps = "datasets.small" }
params = { run = 'find "\$IN_DEPS" -type f | wc -l > "\$OUT/count.txt"' }
TOMLEOF
    S=("$ADAPTOR" --cache-dir "$SM/cache")
    cd "$SM"
    ms=$(time_once "${S[@]}" status small.toml)
    record small_cold "adaptor status, cold fingerprint cache ($SMALL_FILES files of 1 KiB, page cache warm)" "$ms" "$ms" "$ms" 1 ms ""
    "${S[@]}" run -q small.toml
    wait_quiet
    bench small_hit "adaptor status, fingerprint cache hit ($SMALL_FILES files of 1 KiB)" "$RUNS" "$WARMUP" "$(load_note)" -- "${S[@]}" status small.toml
    cd "$ROOT"
    rm -rf "$SM"
fi

# --- 3. DVC on the same shape ---------------------------------------------------------------------

if [[ $SKIP_DVC != 1 ]]; then
    DV="$WORK_DIR/dvc-chains"
    rm -rf "$DV"
    mkdir -p "$DV/data"
    DVC="$VENV/bin/dvc"
    export DVC_NO_ANALYTICS=1
    cd "$DV"
    if [[ $DVC_SCM == git ]]; then
        git init -q .
        git config user.email bench@localhost
        git config user.name bench
        "$DVC" init -q
    else
        "$DVC" init -q --no-scm
    fi
    "$DVC" config core.analytics false
    "$DVC" config core.autostage false
    {
        for ((c = 0; c < CHAINS; c++)); do
            echo "$(chain_name $c):"
            for ((s = 0; s < STEPS; s++)); do echo "  s$s: $(chain_name $c)-s$s-v1"; done
        done
    } > params.yaml
    {
        echo "# Generated by bench/runner/run.sh: $CHAINS chains x $STEPS trivial copy stages."
        echo 'stages:'
        for ((c = 0; c < CHAINS; c++)); do
            cn=$(chain_name $c)
            for ((s = 0; s < STEPS; s++)); do
                echo "  ${cn}_s$s:"
                if ((s == 0)); then
                    echo "    cmd: echo \${$cn.s$s} > data/${cn}_s$s.txt"
                else
                    echo "    cmd: cp data/${cn}_s$((s - 1)).txt data/${cn}_s$s.txt && echo \${$cn.s$s} >> data/${cn}_s$s.txt"
                    echo "    deps:"
                    echo "      - data/${cn}_s$((s - 1)).txt"
                fi
                echo "    params:"
                echo "      - $cn.s$s"
                echo "    outs:"
                echo "      - data/${cn}_s$s.txt"
            done
        done
    } > dvc.yaml
    if [[ $DVC_SCM == git ]]; then
        touch data/.gitkeep
        git add -A > /dev/null
        git commit -qm "bench pipeline"
    fi
    log "dvc: $NSTAGES stages in $DV ($DVC_SCM); first dvc repro (anchor: 151 s)"
    NOTE_DVC=$(load_note)
    ms=$(time_once "$DVC" repro -q)
    record dvc_cold "dvc repro, first (cold) full run" "$ms" "$ms" "$ms" 1 ms "$NOTE_DVC"
    log "dvc first repro: $ms ms"
    [[ $(wc -l < "data/$(chain_name 0)_s$((STEPS - 1)).txt") == "$STEPS" ]] || die "DVC chain c00 is wrong"
    if [[ $DVC_SCM == git ]]; then
        git add -A > /dev/null
        git commit -qm "lock"
    fi
    wait_quiet
    NOTE_DVC=$(load_note)
    bench dvc_noop "dvc repro, no-op" "$DVC_RUNS" 1 "$NOTE_DVC" -- "$DVC" repro -q
    bench dvc_status "dvc status" "$DVC_RUNS" 1 "$NOTE_DVC" -- "$DVC" status -q
    cd "$ROOT"
fi

# --- table ----------------------------------------------------------------------------------------

"$PY" - "$TSV" "$RESULTS" "$MACHINE" "$TOOLS" "$NSTAGES" "$CHAINS" "$STEPS" "$SOURCE" <<'EOF'
import sys, datetime
tsv, out, machine, tools, nstages, chains, steps, source = sys.argv[1:]
rows = [l.rstrip("\n").split("\t") for l in open(tsv) if l.strip()]
by = {r[0]: r for r in rows}

def fmt_ms(v):
    v = float(v)
    return f"{v / 1000:.2f} s" if v >= 10000 else f"{v:.0f} ms" if v >= 100 else f"{v:.1f} ms"

targets = {"noop_run": ("≤ 100 ms", 100.0), "fp_hit": ("< 50 ms", 50.0)}
anchors = {"dvc_cold": "151 s", "dvc_noop": "≈ 10.7 s", "dvc_status": "≈ 5.2 s"}
lines = [
    f"Measured {datetime.datetime.now().strftime('%Y-%m-%d %H:%M')} on {machine}.",
    f"Binary built from {source}.",
    f"Tools: {tools}. Pipeline: {chains} chains × {steps} trivial copy stages = {nstages} instances.",
    "",
    "| Measurement | Median | Min – max | Runs | Target / anchor | Notes |",
    "|---|---|---|---|---|---|",
]
for r in rows:
    id_, label, med, lo, hi, n, unit, note = r
    tgt = ""
    if id_ in targets:
        t, lim = targets[id_]
        tgt = f"{t} ({'met' if float(med) <= lim else 'MISSED'})"
    elif id_ in anchors:
        tgt = f"anchor {anchors[id_]}"
    spread = "–" if n == "1" else f"{fmt_ms(lo)} – {fmt_ms(hi)}"
    lines.append(f"| {label} | {fmt_ms(med)} | {spread} | {n} | {tgt} | {note} |")
if "dvc_noop" in by and "noop_run" in by:
    ratio = float(by["dvc_noop"][2]) / float(by["noop_run"][2])
    lines.append(f"| **DVC no-op repro / adaptor no-op run** | **{ratio:.0f}×** | | | | medians |")
if "dvc_status" in by and "noop_status" in by:
    ratio = float(by["dvc_status"][2]) / float(by["noop_status"][2])
    lines.append(f"| **dvc status / adaptor status** | **{ratio:.0f}×** | | | | medians |")
if "dvc_cold" in by and "cold_run" in by:
    ratio = float(by["dvc_cold"][2]) / float(by["cold_run"][2])
    lines.append(f"| **DVC first repro / adaptor first run** | **{ratio:.0f}×** | | | | |")
text = "\n".join(lines) + "\n"
open(out, "w").write(text)
print(text)
EOF
log "wrote $RESULTS (raw data in $RAW)"
