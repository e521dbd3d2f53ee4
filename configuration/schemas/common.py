"""The shared schema fragments and the validation entry point, where the families not yet declared as request
models (configuration/requests/) and the tests find them; they live in configuration/requests/common.py."""
from configuration.requests.common import (
    CONTENT_TIER,
    DIALECT,
    END,
    GENERATION_SEED,
    MAX_SAFE_INTEGER,
    NEGATIVE_PROMPT,
    NOT_SPACE,
    PROMPT,
    REFERENCE_URL,
    SAFE_ID,
    SEED,
    SEED_RANGE,
    STRENGTH,
    WHICH,
    ValidationFailed,
    check,
    compiled_validator,
    field_error,
    nullable,
    size_schemas,
    validate,
    without_nulls,
)

__all__ = ["CONTENT_TIER", "DIALECT", "END", "GENERATION_SEED", "MAX_SAFE_INTEGER", "NEGATIVE_PROMPT", "NOT_SPACE",
           "PROMPT", "REFERENCE_URL", "SAFE_ID", "SEED", "SEED_RANGE", "STRENGTH", "WHICH", "ValidationFailed", "check",
           "compiled_validator", "field_error", "nullable", "size_schemas", "validate", "without_nulls"]
