"""What workers and the orchestrator share: job records and their journal (jobs), terminal callbacks
(callbacks), errors and their one HTTP mapping (errors), bearer auth (auth), request bodies and their
size cap (body), and HTTP helpers (http). It imports configuration/ and nothing else of the project;
workers/ and orchestrator/ import it and never each other (tests/unit/test_architecture.py)."""
