"""Typed request models (pydantic v2): for each worker endpoint, one model holding the field bounds, the
cross-field rules and `to_params()`, the conversion into what the engine runs with.

`request_model(name, settings)` is the model of a published request schema name (`sdxl.generate`) for a
profile; `normalise(name, body, settings)` validates a body with it and returns the engine's parameters,
raising `ValidationFailed` (a JSON pointer per failing field) when the body is refused. The published JSON
Schemas are generated from these models (`configuration/publish.py`).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from configuration.requests.fields import parse, published_schema
from configuration.requests.sdxl import sdxl_request
from configuration.requests.wan import wan_request
from configuration.settings import Settings

# request schema name -> the factory of its model for a profile
MODELS: dict[str, Callable[[Settings], Any]] = {"sdxl.generate": sdxl_request, "wan.generate": wan_request}


# (name, profile) -> model: a model's bounds depend on the profile alone (configuration/models.json limits), and
# looking it up must cost nothing per request (hashing a Settings costs more than validating a field).
_BUILT: dict[tuple[str, str], Any] = {}


def request_model(name: str, settings: Settings) -> Any:
    key = (name, settings.model_profile)
    model = _BUILT.get(key)
    if model is None:
        model = _BUILT[key] = MODELS[name](settings)
    return model


def normalise(name: str, body: object, settings: Settings) -> Any:
    """The engine's parameters of `body`: validated (bounds, then the cross-field rules) and converted."""
    return parse(request_model(name, settings), body, settings).to_params(settings)


def schema_of(name: str, settings: Settings) -> dict:
    """The published JSON Schema of request `name` on this profile, generated from its model."""
    return published_schema(request_model(name, settings))


__all__ = ["MODELS", "normalise", "request_model", "schema_of"]
