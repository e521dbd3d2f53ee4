"""Normalisation helpers shared by every generation worker."""
from __future__ import annotations

import secrets
from typing import Any, TypeVar, cast

from configuration.schemas.common import SEED_RANGE, field_error

_MISSING = object()
_J = TypeVar("_J")


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


def resolve_seed(config: dict) -> tuple[int, str]:
    """(seed, source): the caller's seed (0 included) reduced to the generators' range (`reduce_seed`), or a
    fresh random one, reported either way."""
    if "seed" in config and config["seed"] is not None:
        return reduce_seed(int(config["seed"])), "request"
    return secrets.randbelow(SEED_RANGE), "random"


def reduce_seed(seed: int) -> int:
    """The generator seed for any integer the caller may send: `seed mod 2^32` (Python's modulo, so a negative
    seed maps into [0, 2^32) too). Deterministic, and the identity on every seed already in range."""
    return seed % SEED_RANGE


def requested_seed(config: dict, used: int) -> dict:
    """{"seed_requested": n} when the caller's seed was reduced to `used`, else {} (for the parameters)."""
    sent = config.get("seed")
    return {"seed_requested": int(sent)} if sent is not None and int(sent) != used else {}


def caller_metadata(metadata: dict, known: set[str]) -> dict:
    """The caller's own metadata keys (not parameters), echoed back with the job."""
    return {k: v for k, v in metadata.items() if k not in known}


def summarise_data_urls(value: _J) -> _J:
    """A copy of `value` as job records, journals, callbacks and provenance report it: every `data:` URL
    replaced by a short summary (media type, size, hash), so they say which reference was used without
    carrying it; and every http(s) URL without its query string and fragment, where signed URLs carry
    their access token (`?token=...`, `X-Amz-Signature=...`), which must not be stored with the outputs.
    The copy has the shape of `value` (a dict stays a dict with the same keys, a list a list, a str a str)."""
    import hashlib

    if isinstance(value, dict):
        return cast(_J, {k: summarise_data_urls(v) for k, v in value.items()})
    if isinstance(value, list):
        return cast(_J, [summarise_data_urls(v) for v in value])
    if isinstance(value, str) and value.startswith("data:"):
        header, _, payload = value.partition(",")
        digest = hashlib.sha256(payload.encode()).hexdigest()[:16]
        return cast(_J, f"{header},<{len(payload)} chars, sha256 {digest}>")
    if isinstance(value, str) and value.startswith(("http://", "https://")) and ("?" in value or "#" in value):
        return cast(_J, value.split("?", 1)[0].split("#", 1)[0])
    return value
