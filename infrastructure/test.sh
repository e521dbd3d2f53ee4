#!/usr/bin/env bash
# Run the checks and the test suite. Bootstraps .venv with requirements-dev.txt when no environment is
# active. ruff (lint), mypy (types), both configured in pyproject.toml, and the generated-reference check
# (python -m common.reference --check: docs/CONFIGURATION.md's generated tables are current) run first;
# then pytest with any extra arguments (e.g. ./infrastructure/test.sh -k sdxl -x). The run fails when any
# of them fails; pytest runs even after a lint or type failure, so one run shows everything.
# --fast (first argument): the edit-test loop, ruff, mypy and only the unit and app tiers (tests/unit/,
# tests/app/: no processes) on 2 pytest processes (they are CPU-bound: one per core); without it every tier
# runs, as CI does, on 3 (pytest-xdist handing out whole modules, tests/conftest.py: most of a stack test's
# time is waiting on its processes, so three keep two cores busy). TEST_PROCESSES=N sets the count; 1 runs
# the tests in this process.
set -uo pipefail
tiers=()
processes=${TEST_PROCESSES:-3}
if [ "${1:-}" = "--fast" ]; then
  shift
  tiers=(tests/unit tests/app)
  processes=${TEST_PROCESSES:-2}
fi
parallel=(-n "$processes")
if [ "$processes" = 1 ]; then
  parallel=()
fi
source "$(dirname "${BASH_SOURCE[0]}")/bootstrap.sh" requirements-dev.txt
# The ops-page browser test drives Debian's chromium; redis-server is needed by the queue tests.
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "test.sh: installing Debian's chromium for the browser test" >&2
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
      || echo "test.sh: could not install chromium; the browser test will fail saying how to get it" >&2
  else
    echo "test.sh: chromium missing: apt-get install chromium (the browser test fails without it)" >&2
  fi
fi
command -v redis-server >/dev/null 2>&1 \
  || echo "test.sh: redis-server missing: apt-get install redis-server (the queue tests fail without it)" >&2
set +e
failed=()
echo "test.sh: ruff check ." >&2
python -m ruff check . || failed+=(ruff)
echo "test.sh: mypy" >&2
python -m mypy || failed+=(mypy)
echo "test.sh: python -m common.reference --check" >&2
python -m common.reference --check || failed+=(reference)
# Bytecode is kept for the run even where the environment says not to (PYTHONDONTWRITEBYTECODE=1 on this
# machine): pytest then caches its assertion-rewritten modules (the tests and the plugins' packages, about 340)
# instead of rewriting them in every pytest process, which took each of them 13.6 s of collection, not 4.4 s;
# and the workers and pods the tests start read compiled modules. git ignores __pycache__/.
env -u PYTHONDONTWRITEBYTECODE python -m pytest "${tiers[@]}" "${parallel[@]}" "$@"
pytest_status=$?
if [ "$pytest_status" -ne 0 ]; then
  failed+=(pytest)
fi
if [ ${#failed[@]} -gt 0 ]; then
  echo "test.sh: FAILED: ${failed[*]}" >&2
  [ "$pytest_status" -ne 0 ] && exit "$pytest_status"
  exit 1
fi
