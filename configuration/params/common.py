"""Normalisation helpers shared by every generation worker."""
from __future__ import annotations

from typing import Any

from configuration.requests.common import field_error, reduce_seed, resolve_seed, summarise_data_urls

_MISSING = object()


def aliased(section: dict, canonical: str, aliases: tuple[str, ...], path: str) -> Any:
    """The value of `canonical` or one of its legacy `aliases` (the caller's JSON value, or `_MISSING`: test
    it with `given`); two different values is an error."""
    found = [(name, section[name]) for name in (canonical, *aliases) if name in section]
    if not found:
        return _MISSING
    first_name, first_value = found[0]
    for name, value in found[1:]:
        if value != first_value:
            raise field_error(f"{path}/{name}", f"conflicts with {first_name}={first_value!r}")
    return first_value


def given(value: object) -> bool:
    return value is not _MISSING


def resolve_size(config: dict, defaults: dict) -> tuple[int, int]:
    """(width, height) from `width`/`height` or `resolution`, else the preset. The schema bounds every
    form (configuration/schemas/common.py `size_schemas`); here they only have to agree."""
    width, height = config.get("width"), config.get("height")
    if "resolution" in config:
        r_width, r_height = (int(v) for v in config["resolution"].split("x"))
        for name, value, other in (("width", width, r_width), ("height", height, r_height)):
            if value is not None and value != other:
                raise field_error(f"/config/{name}", f"conflicts with resolution {config['resolution']!r}")
        width, height = r_width, r_height
    return int(defaults["width"] if width is None else width), int(defaults["height"] if height is None else height)


def requested_seed(config: dict, used: int) -> dict:
    """{"seed_requested": n} when the caller's seed was reduced to `used`, else {} (for the parameters)."""
    sent = config.get("seed")
    return {"seed_requested": int(sent)} if sent is not None and int(sent) != used else {}


def caller_metadata(metadata: dict, known: set[str]) -> dict:
    """The caller's own metadata keys (not parameters), echoed back with the job."""
    return {k: v for k, v in metadata.items() if k not in known}


__all__ = ["aliased", "caller_metadata", "given", "reduce_seed", "requested_seed", "resolve_seed", "resolve_size",
           "summarise_data_urls"]
