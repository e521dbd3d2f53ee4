"""Schema fragments shared by every request (the request models of configuration/requests/ validate with them and
publish them), the error of a refused request, and jsonschema validation for what is not a request of ours (the
app's queued payload, configuration/requests/app_payload.py)."""
from __future__ import annotations

import functools
import secrets
from collections.abc import Iterable, Mapping
from typing import TypeVar, cast

import jsonschema

DIALECT = "https://json-schema.org/draft/2020-12/schema"

# End of input in both regex dialects a schema meets: ECMA-262 (what JSON Schema specifies, the app's TypeScript)
# has no `\Z`, and Python's `$` also matches before a trailing newline; "no character follows" means the same in
# both, so "abc\n" stays refused (tests/unit/test_schema_regex.py checks every published pattern under ECMA-262).
END = "(?![\\s\\S])"
SAFE_ID = {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}" + END,
           "description": "Letters, digits, `_`, `-`, `.`; used in storage paths, so no slashes."}
# A character that is not white space in either dialect: `\S` alone differs between them (Python counts U+001C-U+001F
# and U+0085 as space, ECMA-262 counts U+FEFF), so a prompt of only those would pass one validator and not the other.
NOT_SPACE = "[^\\s\\x1c-\\x1f\\x85\\ufeff]"
PROMPT = {"type": "string", "minLength": 1, "maxLength": 20000, "pattern": NOT_SPACE,
          "description": "Non-empty text."}
NEGATIVE_PROMPT = {"type": "string", "maxLength": 20000}
SEED = {"type": "integer", "minimum": 0, "maximum": 4294967295,
        "description": "Any unsigned 32-bit integer; 0 is a seed like any other. Random (and reported) when absent."}
# The generators' seed range (`resolve_seed` below) and what the app can send: any
# integer a JavaScript number holds exactly.
SEED_RANGE = 2**32
MAX_SAFE_INTEGER = 2**53 - 1
GENERATION_SEED = {"type": "integer", "minimum": -MAX_SAFE_INTEGER, "maximum": MAX_SAFE_INTEGER,
                   "description": "Any integer up to 2^53-1 in magnitude (what a JavaScript number holds exactly); 0 "
                                  "is a seed like any other. The generators take 32-bit seeds: the seed used is "
                                  "`seed mod 2^32` (reported as `seed`, the one sent as `seed_requested` when they "
                                  "differ). Random (and reported) when absent."}
REFERENCE_URL = {"type": "string", "minLength": 1, "maxLength": 14000000,
                 "pattern": "^(https?://|data:image/)",
                 "description": "http(s) URL or a `data:image/...` URL."}
STRENGTH = {"type": "number", "minimum": 0.0, "maximum": 1.0}
CONTENT_TIER = {"enum": ["sfw", "nsfw"],
                "description": "Content tier (docs/POLICY.md): sfw also refuses explicit sexual prompts and checks "
                               "image and video outputs; the floor (no sexual content involving minors) holds in both. "
                               "Default: CONTENT_TIER_DEFAULT."}


def nullable(prop: dict) -> dict:
    """`prop` also accepting JSON `null`, which callers send for an absent optional value (the app's browser-built
    bodies pass `project_context: null`, `conversation_id: null`); the request model then holds None for it, as for
    a field left out."""
    result = dict(prop)
    if "enum" in result:
        result["enum"] = [*result["enum"], None]
    elif "const" in result:
        result["enum"] = [result.pop("const"), None]
    elif "type" in result:
        types = result["type"] if isinstance(result["type"], list) else [result["type"]]
        result["type"] = [*types, "null"] if "null" not in types else types
    else:
        raise ValueError(f"nullable() needs a type, enum or const: {prop}")
    return result


def size_schemas(limits: dict) -> tuple[dict, dict]:
    """The `width`/`height` and `resolution` schemas of a model's size limits (per profile, from
    configuration/models.json): the one place these bounds are checked."""
    low, high, step = limits["min_size"], limits["max_size"], limits["multiple"]
    allowed = f"a multiple of {step} in [{low}, {high}]"
    size = {"type": "integer", "minimum": low, "maximum": high, "multipleOf": step,
            "description": f"Pixels; {allowed}."}
    first = -(-low // step) * step
    values = "|".join(str(v) for v in range(first, high + 1, step))
    resolution = {"type": "string", "pattern": f"^({values})x({values}){END}",
                  "description": f"`WIDTHxHEIGHT`, each {allowed}, e.g. `{first}x{first}`."}
    return size, resolution


class ValidationFailed(Exception):
    """A request failed validation. `details` is a list of {"path": JSON pointer, "message": str}."""

    def __init__(self, details: list[dict]):
        self.details = details
        super().__init__("; ".join(f"{d['path'] or '/'}: {d['message']}" for d in details))


def field_error(path: str, message: str) -> ValidationFailed:
    return ValidationFailed([{"path": path, "message": message}])


def _pointer(parts: Iterable[str | int]) -> str:
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in parts)


def _detail(error: jsonschema.ValidationError) -> dict:
    path = list(error.absolute_path)
    message = error.message
    # (the stubs allow a bool or an unset schema; the keywords read here only occur in object schemas)
    schema = error.schema if isinstance(error.schema, Mapping) else {}
    # Point at the missing / unexpected field itself rather than at its parent object.
    if error.validator == "required" and isinstance(error.validator_value, list):
        missing = [p for p in error.validator_value if isinstance(error.instance, dict) and p not in error.instance]
        if missing:
            path.append(missing[0])
            message = "is required"
    elif error.validator == "additionalProperties" and isinstance(error.instance, dict):
        allowed = set(schema.get("properties", {}))
        extra = sorted(k for k in error.instance if k not in allowed)
        if extra:
            path.append(extra[0])
            message = "is not an accepted field"
    elif error.validator == "pattern" and "description" in schema:
        message = f"{error.instance!r} is not of the form {schema['description']}"
    if len(message) > 300:
        message = message[:300] + "..."
    return {"path": _pointer(path), "message": message}


def compiled_validator(schema: dict) -> jsonschema.Draft202012Validator:
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


@functools.cache
def _validator_for_json(schema_json: str) -> jsonschema.Draft202012Validator:
    import json
    return compiled_validator(json.loads(schema_json))


def validate(schema: dict, instance: object) -> None:
    """Raise ValidationFailed listing every failing field (sorted by path) when `instance` does not match."""
    import json
    check(_validator_for_json(json.dumps(schema, sort_keys=True)), instance)


def check(validator: jsonschema.Draft202012Validator, instance: object) -> None:
    errors = sorted(validator.iter_errors(instance), key=lambda e: (list(map(str, e.absolute_path)), e.message))
    if errors:
        seen, details = set(), []
        for error in errors:
            # `oneOf`/`anyOf` failures carry their sub-errors; report the most specific one.
            if error.context:
                error = min(error.context, key=lambda e: -len(list(e.absolute_path)))
            detail = _detail(error)
            if (detail["path"], detail["message"]) not in seen:
                seen.add((detail["path"], detail["message"]))
                details.append(detail)
        raise ValidationFailed(details)


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


_J = TypeVar("_J")


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
