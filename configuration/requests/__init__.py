"""Typed request models (pydantic v2): for each worker endpoint, one model holding the field bounds, the
cross-field rules and `to_params()`, the conversion into what the engine runs with.

Every request body of the pod is one: the SDXL and WAN workers' (`sdxl.generate`, `wan.generate`), every
worker's memory action (`memory.action`), the chat worker's (`chat.*`) and the orchestrator's (`orchestrator.*`).
`request_model(name, settings)` is the model of a published request schema name (`sdxl.generate`) for a
profile; `check(name, body, settings)` validates a body with it (the frozen model, or `ValidationFailed`: a
JSON pointer per failing field) and `normalise(name, body, settings)` also returns the engine's parameters
(`to_params(settings)`). The published JSON Schemas are generated from these models
(`configuration/publish.py`; `schemas()` for /openapi.json). The app's queued payload is not a request of
ours but a translator onto one (`configuration/requests/app_payload.py`).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from configuration.requests.chat import CHAT_REQUESTS
from configuration.requests.fields import parse, published_schema
from configuration.requests.memory import memory_action
from configuration.requests.orchestrator import ORCHESTRATOR_REQUESTS
from configuration.requests.sdxl import sdxl_request
from configuration.requests.wan import wan_request
from configuration.settings import Settings

# request schema name -> the factory of its model for a profile
MODELS: dict[str, Callable[[Settings], Any]] = {"sdxl.generate": sdxl_request, "wan.generate": wan_request,
                                                "memory.action": memory_action, **CHAT_REQUESTS,
                                                **ORCHESTRATOR_REQUESTS}


# (name, profile) -> model: a model's bounds depend on the profile alone (configuration/models.json limits), and
# looking it up must cost nothing per request (hashing a Settings costs more than validating a field).
_BUILT: dict[tuple[str, str], Any] = {}


def request_model(name: str, settings: Settings) -> Any:
    key = (name, settings.model_profile)
    model = _BUILT.get(key)
    if model is None:
        model = _BUILT[key] = MODELS[name](settings)
    return model


def check(name: str, body: object, settings: Settings) -> Any:
    """`body` as its validated (frozen) request model; ValidationFailed when it is refused."""
    return parse(request_model(name, settings), body, settings)


def normalise(name: str, body: object, settings: Settings) -> Any:
    """The engine's parameters of `body`: validated (bounds, then the cross-field rules) and converted."""
    return check(name, body, settings).to_params(settings)


# (name, profile) -> published schema: generated once (the queue intake reads one per job; read-only)
_PUBLISHED: dict[tuple[str, str], dict] = {}


def schema_of(name: str, settings: Settings) -> dict:
    """The published JSON Schema of request `name` on this profile, generated from its model (once; treat it
    as read-only)."""
    key = (name, settings.model_profile)
    schema = _PUBLISHED.get(key)
    if schema is None:
        schema = _PUBLISHED[key] = published_schema(request_model(name, settings))
    return schema


def schemas(settings: Settings) -> dict[str, dict]:
    """Every request's published schema on this profile, by name: what /openapi.json describes."""
    return {name: schema_of(name, settings) for name in MODELS}


__all__ = ["MODELS", "check", "normalise", "request_model", "schema_of", "schemas"]
