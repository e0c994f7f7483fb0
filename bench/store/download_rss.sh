#!/usr/bin/env bash
# Peak resident memory of `adaptor run` while it downloads (and verifies) a large upstream artifact
# from S3 (moto on 127.0.0.1), for several file sizes: flat means downloads stream in chunks.
# Usage: bench/store/download_rss.sh [SIZE_MIB...]   (default: 64 512 2048)
# Needs: target/{debug,release}/adaptor (ADAPTOR=path to choose), .venv with moto (scripts/setup.sh).
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
adaptor=${ADAPTOR:-$repo/target/release/adaptor}
[ -x "$adaptor" ] || adaptor=$repo/target/debug/adaptor
adaptor=$(realpath "$adaptor")
sizes=("$@")
[ ${#sizes[@]} -gt 0 ] || sizes=(64 512 2048)
work=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$repo/.venv/bin/moto_server" -H 127.0.0.1 -p "$port" >/dev/null 2>&1 &
moto=$!
trap 'kill $moto 2>/dev/null; rm -rf "$work"' EXIT
for _ in $(seq 100); do curl -s "http://127.0.0.1:$port" >/dev/null && break; sleep 0.1; done
curl -s -X PUT "http://127.0.0.1:$port/bench" >/dev/null
export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench AWS_DEFAULT_REGION=us-east-1 \
  AWS_ENDPOINT_URL=http://127.0.0.1:$port AWS_ALLOW_HTTP=true
printf '| file size | upload run: peak RSS | download run: peak RSS | download run: seconds |\n|---|---|---|---|\n'
for mib in "${sizes[@]}"; do
  dir=$work/$mib; mkdir -p "$dir"
  cat > "$dir/m.toml" <<TOML
store = 's3://bench/rss-$mib'
[stages.big]
kind = 'command'
params.run = 'head -c ${mib}M /dev/urandom > \$OUT/big.bin'
[stages.use]
kind = 'command'
inputs.deps = 'big'
params.run = 'wc -c < \$IN_DEPS/big.bin > \$OUT/n'
TOML
  cd "$dir"
  # %M: peak RSS in KiB of the runner (its stage processes are tiny: head, wc); %x: exit code.
  read -r up rc < <( { /usr/bin/time -f '%M %x' "$adaptor" -q run m.toml --only big --cache-dir "$dir/c1" ; } 2>&1 | tail -1)
  [ "$rc" = 0 ] || { echo "upload run failed ($rc)" >&2; exit 1; }
  t0=$(date +%s.%N)
  read -r down rc < <( { /usr/bin/time -f '%M %x' "$adaptor" -q run m.toml --cache-dir "$dir/c2" ; } 2>&1 | tail -1)
  [ "$rc" = 0 ] || { echo "download run failed ($rc)" >&2; exit 1; }
  t1=$(date +%s.%N)
  printf '| %s MiB | %s MiB | %s MiB | %.1f |\n' "$mib" $((up / 1024)) $((down / 1024)) "$(echo "$t1 - $t0" | bc)"
  rm -rf "$dir/c1" "$dir/c2"
done
