#!/usr/bin/env bash
# Run the checks and the test suite. Bootstraps .venv with requirements-dev.txt when no environment is
# active. ruff (lint) and mypy (types) run first, configured in pyproject.toml; then pytest, with any
# extra arguments (e.g. ./infrastructure/test.sh -k sdxl -x).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/bootstrap.sh" requirements-dev.txt
# Not yet enforced: the code is being made clean under issue 9; until then the findings are printed
# and the suite still runs. (Phase 2 of issue 9 makes both fail the run.)
python -m ruff check . || echo "test.sh: ruff found problems (not yet enforced, issue 9)" >&2
python -m mypy || echo "test.sh: mypy found problems (not yet enforced, issue 9)" >&2
# The queue tests start their own redis-server (never the shared 6379) and fail without one.
command -v redis-server >/dev/null || echo "test.sh: redis-server is not installed, so the queue tests will FAIL." \
    "Install it: sudo apt-get install redis-server (Debian/Ubuntu; the service need not run) or brew install redis" >&2
# The ops page's browser test drives Debian's chromium (tests/test_ops_page.py) and fails without it:
# installed here when missing and we may (root with apt-get), else said how.
if ! command -v chromium >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "test.sh: installing chromium for the ops page's browser test" >&2
        apt-get update -qq && apt-get install -y -qq chromium >/dev/null
    else
        echo "test.sh: chromium is not installed, so the ops page's browser test will FAIL." \
            "Install it: sudo apt-get install chromium" >&2
    fi
fi
exec python -m pytest "$@"
