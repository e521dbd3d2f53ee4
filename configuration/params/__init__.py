"""Normalisation of generation request bodies into each engine's internal parameter form.

`normalise_generation(worker, body, settings)` is the worker's request model (configuration/requests/) applied
to `body`: bounds and cross-field rules checked in one step, then legacy field names mapped, presets applied to
what the caller left out, sizes resolved. What it returns is exactly what is reported back as used.
"""
from __future__ import annotations

from configuration import requests
from configuration.settings import Settings


def normalise_generation(worker: str, body: dict, settings: Settings) -> dict:
    return dict(requests.normalise(f"{worker}.generate", body, settings))


__all__ = ["normalise_generation"]
