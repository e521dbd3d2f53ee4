"""The HTTP layer: one Flask app factory for every worker, shared endpoints written once."""
