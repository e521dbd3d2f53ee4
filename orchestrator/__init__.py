"""The orchestrator: supervises the workers, leases GPU memory between them, routes enhance-then-generate
jobs. `python -m orchestrator` runs it (infrastructure/startup.sh does); docs/OPERATIONS.md explains it.

Kept import-light: `orchestrator.launch` runs in every worker's launch and `orchestrator.client` in
every worker process."""
