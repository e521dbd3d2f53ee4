#!/usr/bin/env bash
# Run the test suite. Bootstraps .venv with requirements-dev.txt when no environment is active.
# Extra arguments go to pytest (e.g. ./infrastructure/test.sh -k sdxl -x).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/bootstrap.sh" requirements-dev.txt
exec python -m pytest "$@"
