#!/usr/bin/env bash
# Decode + preprocess benchmark: Rust (stages::images, rayon) vs the original's Python path
# (OpenCV + pydicom) on the same files. Inputs are generated (not committed) into .cache/bench-images.
# Needs: .venv with opencv-python-headless and pydicom (pip install opencv-python-headless pydicom).
# Env: IMSIZE (256), ROUNDS (JPEG passes, 2), DICOM_ROUNDS (DICOM passes, 10), REPS (DICOM
# repetitions, Rust and Python side by side in each, alternating which goes first, 3), N_JPEG,
# N_DICOM (files generated on the first run).
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
dir="$root/.cache/bench-images"
target="${CARGO_TARGET_DIR:-$root/target}"
imsize="${IMSIZE:-256}"
rounds="${ROUNDS:-2}"
dicom_rounds="${DICOM_ROUNDS:-10}"
reps="${REPS:-3}"
cd "$root"
CARGO_TARGET_DIR="$target" cargo build --release -q --locked --workspace --example bench_images
bin="$target/release/examples/bench_images"
py=("$root/.venv/bin/python" bench/images/bench_python.py)
if [ ! -d "$dir/jpeg" ]; then
  "$bin" gen "$dir" "${N_JPEG:-16}" "${N_DICOM:-48}"
fi
# every DICOM of the benchmark: the fused loader equals the 8-bit conversion then resize_img
"$bin" check "$imsize" "$dir"/dicom/*.dcm
out="$(mktemp)"
trap 'rm -f "$out"' EXIT
echo "machine: $(nproc) cores, $(uptime | sed 's/.*load average/load average/')"
printf 'impl\tkind\tworkers\timages\tseconds\timages/s\tcpu ms/image\n'
for w in 1 $(nproc); do
  "$bin" run "$dir" "$imsize" "$w" "$rounds" jpeg | tee -a "$out"
  "${py[@]}" "$dir" "$imsize" "$w" "$rounds" jpeg | tee -a "$out"
done
for rep in $(seq "$reps"); do
  for w in 1 $(nproc); do
    rust=("$bin" run "$dir" "$imsize" "$w" "$dicom_rounds" dicom)
    python=("${py[@]}" "$dir" "$imsize" "$w" "$dicom_rounds" dicom)
    if [ $((rep % 2)) = 1 ]; then
      "${rust[@]}" | tee -a "$out"
      "${python[@]}" | tee -a "$out"
    else
      "${python[@]}" | tee -a "$out"
      "${rust[@]}" | tee -a "$out"
    fi
  done
  echo "  after repetition $rep: $(uptime | sed 's/.*load average/load average/')"
done
# Rust / Python images/s for each pair run side by side (DICOM: one pair per repetition).
echo "summary (Rust / Python images/s, each pair side by side; median [min, max] over the pairs):"
awk -F'\t' '
  { key = $2 "\t" $3; if ($1 == "rust") r[key, ++nr[key]] = $6; else p[key, ++np[key]] = $6 }
  END {
    for (key in nr) {
      n = 0
      for (i = 1; i <= nr[key]; i++) q[++n] = r[key, i] / p[key, i]
      for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (q[j] < q[i]) { t = q[i]; q[i] = q[j]; q[j] = t }
      med = (n % 2) ? q[(n + 1) / 2] : (q[n / 2] + q[n / 2 + 1]) / 2
      split(key, k, "\t")
      printf "  %s, %s worker(s): %.2fx [%.2f, %.2f] over %d pair(s)\n", k[1], k[2], med, q[1], q[n], n
    }
  }' "$out" | sort
# single-threaded split: decode vs resize_img, per image
"$bin" parts "$dir"
"${py[@]}" parts "$dir" "$imsize"
echo "machine after: $(uptime | sed 's/.*load average/load average/')"
