#!/usr/bin/env bash
# The no-op `adaptor run` over a dataset folder of 377,000 files (default), in two layouts, with
# each check (`check = "files"` (default), `check = "folders"`, `immutable = true`):
#   nested  MIMIC-CXR-JPG's real layout: files/pXX/pXXXXXXXX/sXXXXXXXX/*.jpg, 65,379 patient and
#           227,835 study folders (the real counts, scaled with FILES)
#   flat    every file in one folder
# The files are tiny (content does not matter to a stat); one `command` stage reads the folder, so
# the first run fingerprints it and builds that stage, and every later run is a no-op.
# Usage: bench/scale/noop-files.sh [FILES] (env: ADAPTOR_BIN, WORK (scratch folder), RUNS)
set -euo pipefail
FILES=${1:-377000}
RUNS=${RUNS:-5}
REPO=$(cd "$(dirname "$0")/../.." && pwd)
BIN=${ADAPTOR_BIN:-$REPO/target/release/adaptor}
WORK=${WORK:-$(mktemp -d "${TMPDIR:-/tmp}/adaptor-noop.XXXXXX")}
[ -x "$BIN" ] || { echo "no adaptor binary at $BIN (build it, or set ADAPTOR_BIN)" >&2; exit 2; }
mkdir -p "$WORK"

make_files() { # layout folder
  [ -e "$2/.complete" ] && return
  python3 - "$1" "$2" "$FILES" <<'PY'
import os, sys
layout, root, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
# MIMIC-CXR-JPG 2.0.0: 377,110 images, 227,835 studies, 65,379 patients.
studies = max(1, n * 227_835 // 377_110)
patients = max(1, n * 65_379 // 377_110)
os.makedirs(root, exist_ok=True)
made = set()
for i in range(n):
    if layout == "flat":
        d = root
    else:
        study = i * studies // n
        patient = study * patients // studies
        p = 10_000_000 + patient * 137
        d = f"{root}/files/p{str(p)[:2]}/p{p}/s{50_000_000 + study}"
    if d not in made:
        os.makedirs(d, exist_ok=True)
        made.add(d)
    with open(f"{d}/{i:08x}-{i * 2654435761 % 4294967296:08x}.jpg", "wb") as f:
        f.write(i.to_bytes(4, "little"))
open(f"{root}/.complete", "w").close()
PY
}

noop() { # command... → "wall_ms cpu_ms" of one run (CPU: user + system, which load inflates less)
  /usr/bin/time -f '%e %U %S' -o "$WORK/time" "$@" >/dev/null
  awk '{printf "%d %d\n", $1 * 1000, ($2 + $3) * 1000}' "$WORK/time"
}

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
command -v /usr/bin/time >/dev/null || { echo "needs GNU time (/usr/bin/time)" >&2; exit 2; }

echo "| layout | files | folders | check | first run (s) | no-op wall, median of $RUNS (ms) | no-op CPU, median (ms) |"
echo "|---|---|---|---|---|---|---|"
for layout in nested flat; do
  data="$WORK/$layout"
  make_files "$layout" "$data"
  folders=$(find "$data" -type d | wc -l)
  for check in files folders immutable; do
    case $check in
      files) setting='check = "files"' ;;
      folders) setting='check = "folders"' ;;
      immutable) setting='immutable = true' ;;
    esac
    m="$WORK/$layout-$check.toml"
    cat > "$m" <<TOML
store = "$WORK/store"

[datasets.mimic]
kind = "mimic-cxr"
root = "$data"
$setting

[stages.count]
kind = "command"
inputs.deps = "datasets.mimic"
params.run = "ls \$IN_DEPS > \$OUT/top.txt"
TOML
    cache="$WORK/cache-$layout-$check"
    rm -rf "$cache"
    first=$(noop "$BIN" run -q --cache-dir "$cache" "$m" | cut -d' ' -f1)
    # Folders changed within 2 s of a listing are listed again once (racily recent).
    sleep 2; "$BIN" run -q --cache-dir "$cache" "$m" >/dev/null
    for _ in $(seq "$RUNS"); do noop "$BIN" run -q --cache-dir "$cache" "$m"; done > "$WORK/runs"
    printf '| %s | %d | %d | %s | %.1f | %d | %d |\n' "$layout" "$FILES" "$folders" "$setting" \
      "$(echo "$first / 1000" | bc -l)" "$(cut -d' ' -f1 "$WORK/runs" | median)" \
      "$(cut -d' ' -f2 "$WORK/runs" | median)"
  done
done
