#!/usr/bin/env bash
# Run the checks and the test suite. Bootstraps .venv with requirements-dev.txt when no environment is
# active. ruff (lint) and mypy (types), configured in pyproject.toml, run first; then pytest with any extra
# arguments (e.g. ./infrastructure/test.sh -k sdxl -x). The run fails when any of the three fails; pytest
# runs even after a lint or type failure, so one run shows everything.
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/bootstrap.sh" requirements-dev.txt
set +e
failed=()
echo "test.sh: ruff check ." >&2
python -m ruff check . || failed+=(ruff)
echo "test.sh: mypy" >&2
python -m mypy || failed+=(mypy)
python -m pytest "$@"
pytest_status=$?
if [ "$pytest_status" -ne 0 ]; then
  failed+=(pytest)
fi
if [ ${#failed[@]} -gt 0 ]; then
  echo "test.sh: FAILED: ${failed[*]}" >&2
  [ "$pytest_status" -ne 0 ] && exit "$pytest_status"
  exit 1
fi
