#!/usr/bin/env bash
# Peak resident memory of `adaptor ingest mimic-cxr --verify exists` against the dataset size (a
# synthetic MIMIC-CXR of N studies at 64 px), optionally beside an earlier binary whose records
# table must hold the same values (compared with pyarrow). Prints one markdown table.
# Usage: bench/ingest/run.sh [N ...]            (default: 10000 50000)
# Env: ADAPTOR_BIN (default target/debug/adaptor), BEFORE_BIN (an earlier adaptor, optional),
#      SYNTH_BIN (makes the datasets; default ADAPTOR_BIN), WORK (scratch folder; a dataset already
#      at $WORK/N/mimic is reused), PYTHON (with pyarrow; default .venv/bin/python).
set -euo pipefail
REPO=$(cd "$(dirname "$0")/../.." && pwd)
BIN=${ADAPTOR_BIN:-$REPO/target/debug/adaptor}
SYNTH=${SYNTH_BIN:-$BIN}
BEFORE=${BEFORE_BIN:-}
PYTHON=${PYTHON:-$REPO/.venv/bin/python}
WORK=${WORK:-$(mktemp -d "${TMPDIR:-/tmp}/adaptor-ingest.XXXXXX")}
SIZES=("${@:-10000 50000}")
command -v /usr/bin/time >/dev/null || { echo "needs GNU time (/usr/bin/time)" >&2; exit 2; }

# Peak RSS (MiB), wall and user CPU seconds of one ingest (its summary to $2.stdout).
ingest() { # binary out raw
  /usr/bin/time -f '%M %e %U' -o "$2.time" "$1" ingest -q --verify exists --raw "$3" --out "$2" \
    mimic-cxr >"$2.stdout"
  awk '{printf "%d MiB, %.1f s (%.1f s user)", $1 / 1024, $2, $3}' "$2.time"
}

echo "| studies | images | streamed (ADAPTOR_BIN) | before (BEFORE_BIN) | same records |"
echo "|---|---|---|---|---|"
for N in ${SIZES[*]}; do
  D="$WORK/$N"; mkdir -p "$D"
  [ -d "$D/mimic" ] || "$SYNTH" synth mimic-cxr --out "$D/mimic" --n "$N" --image-size 64 -q
  images=$(( $(gzip -dc "$D/mimic/mimic-cxr-2.0.0-metadata.csv.gz" | wc -l) - 1 ))
  rm -rf "$D/after" "$D/before"
  after=$(ingest "$BIN" "$D/after" "$D/mimic")
  before="-"; same="-"
  if [ -n "$BEFORE" ]; then
    before=$(ingest "$BEFORE" "$D/before" "$D/mimic")
    same=$("$PYTHON" - "$D/before" "$D/after" <<'PY'
import json, sys
import pyarrow.parquet as pq
a, b = (pq.read_table(f"{d}/records.parquet") for d in sys.argv[1:3])
same = (a.schema.names == b.schema.names
        and [f.type for f in a.schema] == [f.type for f in b.schema]
        and a.cast(b.schema).equals(b)
        and json.load(open(f"{sys.argv[1]}/summary.json")) == json.load(open(f"{sys.argv[2]}/summary.json")))
groups = [pq.ParquetFile(f"{d}/records.parquet").num_row_groups for d in sys.argv[1:3]]
print(f"{'yes' if same else 'NO'} ({a.num_rows} rows; row groups {groups[0]} → {groups[1]})")
PY
)
  fi
  echo "| $N | $images | $after | $before | $same |"
done
