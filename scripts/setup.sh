#!/usr/bin/env bash
# One-time setup, idempotent and cached: a project-local Python virtualenv (.venv).
#   scripts/setup.sh --demo    what the demo needs: torch only
#   scripts/setup.sh           what the tests need (scripts/test.sh): all but transformers
#   scripts/setup.sh --tools   also what the fixture scripts under tools/ need (transformers)
# It holds
#   - torch==2.11.0: libtorch for the tch-based stages (tch 0.24 pins PyTorch 2.11.0; the PyPI wheel
#     pulls the CUDA libraries too, about 2.7 GB downloaded once into pip's cache);
#   - moto[server]: the S3-compatible server the store's tests start on 127.0.0.1;
#   - numpy and safetensors: the PyTorch reference script a training test runs (tools/adaptor_reference.py);
#   - pandas, pyarrow, polars and duckdb: the clients every Parquet table must read in
#     (tools/check_tables.py, run by tests/learning.rs; also what a researcher reads results with).
#   - transformers: the reference the golden values of the tests come from (tools/make_golden_values.py).
# Prints the environment a cargo build that links libtorch needs (sourced by the other scripts).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="$root/.venv"
py="${PYTHON:-python3}"

if [ ! -x "$venv/bin/python" ]; then
  echo "setup: creating $venv"
  "$py" -m venv "$venv"
fi
vpy="$venv/bin/python"
mode="${1:-tests}"
case "$mode" in --demo|tests|--tools) ;; *) echo "usage: scripts/setup.sh [--demo|--tools]" >&2; exit 2;; esac

if ! "$vpy" -c 'import sys, torch; sys.exit(torch.__version__.split("+")[0] != "2.11.0")' 2>/dev/null; then
  echo "setup: installing torch==2.11.0 into $venv (libtorch; first time only)"
  "$vpy" -m pip install --quiet --disable-pip-version-check "torch==2.11.0"
fi
[ "$mode" = --demo ] && exit 0
if ! "$vpy" -c 'import numpy, safetensors' 2>/dev/null; then
  echo "setup: installing numpy and safetensors into $venv (PyTorch reference in the tests)"
  "$vpy" -m pip install --quiet --disable-pip-version-check "numpy==2.4.6" "safetensors==0.8.0"
fi
if [ ! -x "$venv/bin/moto_server" ]; then
  echo "setup: installing moto[server]==5.2.5 into $venv (local S3 server for tests)"
  "$vpy" -m pip install --quiet --disable-pip-version-check "moto[server]==5.2.5"
fi
if ! "$vpy" -c 'import sys, pandas, pyarrow, polars, duckdb
sys.exit((pandas.__version__, pyarrow.__version__, polars.__version__, duckdb.__version__)
         != ("3.1.1", "26.0.1", "2.1.0", "2.0.1"))' 2>/dev/null; then
  echo "setup: installing pandas, pyarrow, polars and duckdb into $venv (the table readers the tests check)"
  "$vpy" -m pip install --quiet --disable-pip-version-check \
    "pandas==3.1.1" "pyarrow==26.0.1" "polars==2.1.0" "duckdb==2.0.1"
fi
[ "$mode" = --tools ] || exit 0
if ! "$vpy" -c 'import sys, transformers; sys.exit(transformers.__version__ != "5.24.0")' 2>/dev/null; then
  echo "setup: installing transformers==5.24.0 into $venv (tools/make_golden_values.py, the encoders' reference)"
  "$vpy" -m pip install --quiet --disable-pip-version-check "transformers==5.24.0"
fi
