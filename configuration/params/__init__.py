"""Normalisation of validated request bodies into each engine's internal parameter form.

`normalise_generation(worker, body, settings)` turns a body that passed its JSON schema into the flat
parameter dict the engine runs with: legacy field names mapped, presets applied to what the caller
left out, sizes resolved and bounded. What it returns is exactly what is reported back as used.
"""
from __future__ import annotations

import importlib

from configuration import requests
from configuration.settings import Settings


def normalise_generation(worker: str, body: dict, settings: Settings) -> dict:
    """The engine's parameters of a generation body; a worker whose request is a model
    (configuration/requests/) validates it there, bounds and cross-field rules in one step."""
    if f"{worker}.generate" in requests.MODELS:
        return dict(requests.normalise(f"{worker}.generate", body, settings))
    module = importlib.import_module(f"configuration.params.{worker}")
    return module.normalise(body, settings)


__all__ = ["normalise_generation"]
