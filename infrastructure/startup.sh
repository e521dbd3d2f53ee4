#!/usr/bin/env bash
# Bring the whole pod up in the foreground: orchestrator + SDXL, chat and WAN workers.
# With no model paths configured this runs the placeholder profile (tiny local models, no GPU).
# Ctrl-C (or SIGTERM) stops everything cleanly: running jobs finish within SHUTDOWN_GRACE_S.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/bootstrap.sh" requirements.txt
python -m configuration.check
if [ "$(python -c 'from configuration.settings import Settings; print(Settings.from_env().model_profile)')" = "placeholder" ]; then
  python -m workers.placeholders
fi
exec python -m orchestrator
