# Sourced by startup.sh and test.sh: make sure a Python environment with the project's pinned
# requirements is active. Uses the active virtualenv when there is one, else creates ./.venv.
# On an image whose python3 ships a CUDA build of torch that sees a GPU (the RunPod PyTorch images), the
# venv is created with --system-site-packages and every pinned requirement but torch is installed into it:
# the image's CUDA torch is used, never replaced by the pinned wheel. Elsewhere torch is the 2.13.0 pin.
# Usage: source infrastructure/bootstrap.sh <requirements file>
set -euo pipefail
_repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
_reqs="${1:-requirements.txt}"
_python="${PYTHON:-python3}"
_cuda_probe='import sys, torch; sys.exit(0 if torch.version.cuda and torch.cuda.is_available() else 1)'
if [ -z "${VIRTUAL_ENV:-}" ]; then
  if [ ! -x "$_repo/.venv/bin/python" ]; then
    if "$_python" -c "$_cuda_probe" 2>/dev/null; then
      echo "bootstrap: creating $_repo/.venv on the image's CUDA torch ($("$_python" -c 'import torch; print(torch.__version__)'))" >&2
      "$_python" -m venv --system-site-packages "$_repo/.venv"
      touch "$_repo/.venv/.ourvidz-system-torch"
    else
      echo "bootstrap: creating $_repo/.venv" >&2
      "$_python" -m venv "$_repo/.venv"
    fi
  fi
  # shellcheck disable=SC1091
  source "$_repo/.venv/bin/activate"
fi
_stamp="$VIRTUAL_ENV/.ourvidz-$(basename "$_reqs").sha256"
_want="$(cat "$_repo/requirements.txt" "$_repo/$_reqs" | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$_stamp" 2>/dev/null || true)" != "$_want" ]; then
  if [ -f "$VIRTUAL_ENV/.ourvidz-system-torch" ]; then
    # The requirements with requirements.txt inlined and the torch pin dropped: the image's torch stays.
    _filtered="$VIRTUAL_ENV/.ourvidz-$(basename "$_reqs").without-torch"
    { grep -v -E '^\s*(-r|torch==)' "$_repo/requirements.txt"
      [ "$_reqs" = "requirements.txt" ] || grep -v -E '^\s*(-r|torch==)' "$_repo/$_reqs"; } > "$_filtered"
    echo "bootstrap: installing $_reqs into $VIRTUAL_ENV without the torch pin (the image's CUDA torch is used)" >&2
    python -m pip install --quiet --disable-pip-version-check -r "$_filtered"
  else
    echo "bootstrap: installing $_reqs into $VIRTUAL_ENV (torch pinned to 2.13.0)" >&2
    python -m pip install --quiet --disable-pip-version-check -r "$_repo/$_reqs"
  fi
  echo "$_want" > "$_stamp"
fi
cd "$_repo"
export PYTHONPATH="$_repo${PYTHONPATH:+:$PYTHONPATH}"
