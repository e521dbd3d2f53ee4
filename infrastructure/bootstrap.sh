# Sourced by startup.sh and test.sh: make sure a Python environment with the project's pinned
# requirements is active. Uses the active virtualenv when there is one, else creates ./.venv.
# Usage: source infrastructure/bootstrap.sh <requirements file>
set -euo pipefail
_repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
_reqs="${1:-requirements.txt}"
if [ -z "${VIRTUAL_ENV:-}" ]; then
  if [ ! -x "$_repo/.venv/bin/python" ]; then
    echo "bootstrap: creating $_repo/.venv" >&2
    "${PYTHON:-python3}" -m venv "$_repo/.venv"
  fi
  # shellcheck disable=SC1091
  source "$_repo/.venv/bin/activate"
fi
_stamp="$VIRTUAL_ENV/.ourvidz-$(basename "$_reqs").sha256"
_want="$(cat "$_repo/requirements.txt" "$_repo/$_reqs" | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$_stamp" 2>/dev/null || true)" != "$_want" ]; then
  echo "bootstrap: installing $_reqs into $VIRTUAL_ENV (torch pinned to 2.13.0)" >&2
  python -m pip install --quiet --disable-pip-version-check -r "$_repo/$_reqs"
  echo "$_want" > "$_stamp"
fi
cd "$_repo"
export PYTHONPATH="$_repo${PYTHONPATH:+:$PYTHONPATH}"
