# Sourced by the scripts: the build environment for crates that link libtorch through tch
# (torch-sys runs `python` from VIRTUAL_ENV to find the wheel's libtorch).
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export VIRTUAL_ENV="$root/.venv"
export PATH="$VIRTUAL_ENV/bin:$PATH"
export LIBTORCH_USE_PYTORCH=1
