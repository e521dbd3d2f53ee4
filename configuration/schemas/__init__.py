"""The central JSON Schemas (draft 2020-12) of every request body, keyed `<worker>.<endpoint>`.

The schemas of the requests declared as models (configuration/requests/) are generated from them; the other
families still keep theirs in a module here. `schema(name)` builds one for the active settings (profile bounds
come from configuration/models.json), `validate_request` checks a body against it (the published contract, as
any other validator reads it), and `openapi.py` generates the OpenAPI description from the same dictionaries.
"""
from __future__ import annotations

import functools
import importlib

import jsonschema

from configuration.requests import MODELS, schema_of
from configuration.schemas.common import ValidationFailed, check, compiled_validator, field_error, validate
from configuration.settings import Settings

# schema family -> module that defines SCHEMAS(settings) -> {endpoint: schema}
_FAMILIES = ("chat", "orchestrator")


@functools.lru_cache(maxsize=32)
def schemas(settings: Settings) -> dict[str, dict]:
    """Every schema for these settings (cached: settings are immutable; treat the result as read-only)."""
    result = {name: schema_of(name, settings) for name in MODELS}
    for family in _FAMILIES:
        try:
            module = importlib.import_module(f"configuration.schemas.{family}")
        except ModuleNotFoundError as exc:
            if exc.name == f"configuration.schemas.{family}":
                continue
            raise
        for endpoint, body in module.schemas(settings).items():
            result[f"{family}.{endpoint}"] = body
    return result


def schema(name: str, settings: Settings) -> dict:
    return schemas(settings)[name]


@functools.lru_cache(maxsize=256)
def _validator(name: str, settings: Settings) -> jsonschema.Draft202012Validator:
    return compiled_validator(schema(name, settings))


def validate_request(name: str, body: object, settings: Settings) -> None:
    check(_validator(name, settings), body)


__all__ = ["ValidationFailed", "field_error", "schema", "schemas", "validate", "validate_request"]
