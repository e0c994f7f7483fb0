#!/usr/bin/env bash
# Decode + preprocess benchmark: Rust (stages::images, rayon) vs the original's Python path
# (OpenCV + pydicom) on the same files. Inputs are generated (not committed) into .cache/bench-images.
# Needs: .venv with opencv-python-headless and pydicom (pip install opencv-python-headless pydicom).
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
dir="$root/.cache/bench-images"
target="${CARGO_TARGET_DIR:-$root/target}"
imsize="${IMSIZE:-256}"
rounds="${ROUNDS:-2}"
cd "$root"
CARGO_TARGET_DIR="$target" cargo build --release -q --locked --workspace --example bench_images
bin="$target/release/examples/bench_images"
if [ ! -d "$dir/jpeg" ]; then
  "$bin" gen "$dir" "${N_JPEG:-16}" "${N_DICOM:-48}"
fi
echo "machine: $(nproc) cores, $(uptime | sed 's/.*load average/load average/')"
printf 'impl\tkind\tworkers\timages\tseconds\timages/s\n'
for w in 1 $(nproc); do
  "$bin" run "$dir" "$imsize" "$w" "$rounds"
  "$root/.venv/bin/python" bench/images/bench_python.py "$dir" "$imsize" "$w" "$rounds"
done
# single-threaded split: decode vs resize_img, per image
"$bin" parts "$dir"
"$root/.venv/bin/python" bench/images/bench_python.py parts "$dir" "$imsize"
echo "machine after: $(uptime | sed 's/.*load average/load average/')"
