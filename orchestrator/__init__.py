"""The orchestrator: supervises the workers, leases GPU memory between them, routes enhance-then-generate
jobs. `python -m orchestrator` runs it (infrastructure/startup.sh does); docs/OPERATIONS.md explains it.

It imports configuration/ and common/, never workers/ (tests/unit/test_architecture.py). Kept import-light:
`orchestrator.launch` runs in every worker's launch."""
