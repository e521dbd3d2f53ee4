"""JSON Schema semantics as pydantic types, the adapter from pydantic errors to the contract's error answers,
and the conversion of a request model into its published JSON Schema.

Why a validator of its own (`Schema`): a request is JSON, and the published schema (what the app and every other
validator read) says what is valid. pydantic's types differ from JSON Schema in ways a caller would notice: lax
mode turns "20" into 20 and `true` into 1, strict mode refuses 20.0 (a JSON Schema integer), its `pattern`
anchors at the start (JSON Schema searches) and its Rust regex has no look-ahead. A field annotated with
`Schema(fragment)` validates exactly what the fragment it publishes means.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, GetCoreSchemaHandler, GetJsonSchemaHandler, ValidationError
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, PydanticCustomError, core_schema

from configuration.requests.common import DIALECT, ValidationFailed

# Every request model: unknown fields refused; a model is a value.
STRICT_OBJECT = ConfigDict(extra="forbid", strict=True, frozen=True)
# A caller's free-form object: the listed fields are checked, every other key is the caller's own.
OPEN_OBJECT = ConfigDict(extra="allow", strict=True, frozen=True)

_TYPES: dict[str, Callable[[Any], bool]] = {
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: type(v) is int or (type(v) is float and v.is_integer()),
    "number": lambda v: type(v) in (int, float),
    "boolean": lambda v: type(v) is bool,
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "null": lambda v: v is None,
}


def _json_equal(a: Any, b: Any) -> bool:
    """Equality as JSON Schema's `enum`/`const` mean it: 1.0 equals 1, `true` does not."""
    return (type(a) is bool) == (type(b) is bool) and a == b


# keyword, whether a value breaks it, jsonschema's words for that
_BOUNDS: tuple[tuple[str, Callable[[float, float], bool], str], ...] = (
    ("minimum", lambda v, b: v < b, "is less than the minimum of"),
    ("maximum", lambda v, b: v > b, "is greater than the maximum of"),
    ("exclusiveMinimum", lambda v, b: v <= b, "is less than or equal to the minimum of"),
    ("exclusiveMaximum", lambda v, b: v >= b, "is greater than or equal to the maximum of"),
)


def _enum_key(value: Any) -> tuple[bool, Any]:
    """A scalar's key in an enum set, equal where JSON values are equal (1.0 and 1) and apart where they are not
    (`true` and 1)."""
    return type(value) is bool, value


class Schema:
    """Annotation metadata: validate a field exactly as the JSON Schema fragment says, and publish that fragment.

    The shared fragments (configuration/schemas/common.py: SAFE_ID, PROMPT, GENERATION_SEED, ...) and the
    per-profile ones (sizes) are then the one statement of a field's bounds, for the model and the published
    schema alike. Keywords: type, enum, const, minimum, maximum, exclusiveMinimum, exclusiveMaximum, multipleOf,
    minLength, maxLength, pattern (searched, as JSON Schema specifies)."""

    _KNOWN = {"type", "enum", "const", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf",
              "minLength", "maxLength", "pattern", "description"}

    def __init__(self, fragment: Mapping[str, Any], **changes: Any) -> None:
        self.fragment = {**fragment, **changes}
        unknown = set(self.fragment) - self._KNOWN
        if unknown:
            raise ValueError(f"Schema() cannot validate {sorted(unknown)}: {self.fragment}")
        kind = self.fragment.get("type")
        self.types = [kind] if isinstance(kind, str) else list(kind or [])
        self.regex = re.compile(self.fragment["pattern"]) if "pattern" in self.fragment else None
        # What validate() runs on every request, prepared once: the type tests and the enum as a set of JSON keys
        self.type_tests = [_TYPES[t] for t in self.types]
        self.enum = {_enum_key(v) for v in self.fragment["enum"]} if "enum" in self.fragment else None
        # (keyword, test, words, bound) of the bounds this fragment has: checked per request, so found once here
        self.bounds = [(key, failed, words, self.fragment[key])
                       for key, failed, words in _BOUNDS if key in self.fragment]

    def __get_pydantic_core_schema__(self, _source: Any, _handler: GetCoreSchemaHandler) -> CoreSchema:
        return self._native() or core_schema.no_info_plain_validator_function(self.validate)

    def _native(self) -> CoreSchema | None:
        """pydantic-core's own validator where it means exactly what the fragment means (faster: no Python call
        per field): strict strings without a pattern (lengths in code points, as JSON Schema counts), strict
        numbers (an int is a number; a bool is not), booleans, and enums of strings. Integers stay in Python:
        JSON Schema accepts 20.0 as an integer, strict pydantic does not."""
        f = self.fragment
        keys = set(f) - {"description"}
        if self.types == ["string"] and keys <= {"type", "minLength", "maxLength"}:
            return core_schema.str_schema(strict=True, min_length=f.get("minLength"), max_length=f.get("maxLength"))
        if self.types == ["number"] and keys <= {"type", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"}:
            return core_schema.float_schema(strict=True, ge=f.get("minimum"), le=f.get("maximum"),
                                            gt=f.get("exclusiveMinimum"), lt=f.get("exclusiveMaximum"))
        if self.types == ["boolean"] and keys == {"type"}:
            return core_schema.bool_schema(strict=True)
        if keys == {"enum"} and all(isinstance(v, str) for v in f["enum"]):
            return core_schema.literal_schema(list(f["enum"]))
        return None

    def __get_pydantic_json_schema__(self, _schema: CoreSchema, _handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        return dict(self.fragment)

    def validate(self, value: Any) -> Any:
        f = self.fragment
        if self.type_tests and not any(test(value) for test in self.type_tests):
            raise PydanticCustomError("type", "{value} is not of type {types}",
                                      {"value": _short(value), "types": ", ".join(repr(t) for t in self.types)})
        if self.enum is not None and not (isinstance(value, (str, int, float)) and _enum_key(value) in self.enum):
            raise PydanticCustomError("enum", "{value} is not one of {values}",
                                      {"value": _short(value), "values": repr(f["enum"])})
        if "const" in f and not _json_equal(value, f["const"]):
            raise PydanticCustomError("const", "{const!r} was expected", {"const": f["const"]})
        if type(value) in (int, float):
            self._bounds(value)
            if type(value) is float and "integer" in self.types:
                value = int(value)
        elif isinstance(value, str):
            self._text(value)
        return value

    def check(self, path: str, value: Any) -> None:
        """ValidationFailed at `path` when `value` does not match (a cross-field rule applying a fragment)."""
        try:
            self.validate(value)
        except PydanticCustomError as exc:
            raise ValidationFailed([{"path": path, "message": str(exc)}]) from None

    def _bounds(self, value: float) -> None:
        f = self.fragment
        for key, failed, words, bound in self.bounds:
            if failed(value, bound):
                raise PydanticCustomError(key, "{value!r} " + words + " {bound!r}", {"value": value, "bound": bound})
        step = f.get("multipleOf")
        if step is not None:
            if isinstance(step, float) or isinstance(value, float):
                quotient = value / step
                bad = not (quotient == quotient and quotient not in (float("inf"), float("-inf"))) or \
                    int(quotient) != quotient
            else:
                bad = bool(value % step)
            if bad:
                raise PydanticCustomError("multipleOf", "{value!r} is not a multiple of {step!r}",
                                          {"value": value, "step": step})

    def _text(self, value: str) -> None:
        f = self.fragment
        if "minLength" in f and len(value) < f["minLength"]:
            raise PydanticCustomError("minLength", "{value} is too short", {"value": _short(value)})
        if "maxLength" in f and len(value) > f["maxLength"]:
            raise PydanticCustomError("maxLength", "{value} is too long", {"value": _short(value)})
        if self.regex is not None and not self.regex.search(value):
            # jsonschema's words: the description, when there is one, says what the form is
            if "description" in f:
                raise PydanticCustomError("pattern", "{value} is not of the form {form}",
                                          {"value": _short(value), "form": f["description"]})
            raise PydanticCustomError("pattern", "{value} does not match {pattern!r}",
                                      {"value": _short(value), "pattern": f["pattern"]})


# --- errors -----------------------------------------------------------------------------------------------

_MESSAGES: dict[str, Callable[[Any, dict], str]] = {
    "missing": lambda _v, _c: "is required",
    "extra_forbidden": lambda _v, _c: "is not an accepted field",
    "model_type": lambda v, _c: f"{_short(v)} is not of type 'object'",
    # pydantic-core's own validators (Schema._native), in jsonschema's words
    "string_type": lambda v, _c: f"{_short(v)} is not of type 'string'",
    "string_too_short": lambda v, _c: f"{_short(v)} is too short",
    "string_too_long": lambda v, _c: f"{_short(v)} is too long",
    "float_type": lambda v, _c: f"{_short(v)} is not of type 'number'",
    "bool_type": lambda v, _c: f"{_short(v)} is not of type 'boolean'",
    "greater_than_equal": lambda v, c: f"{v!r} is less than the minimum of {c['ge']!r}",
    "less_than_equal": lambda v, c: f"{v!r} is greater than the maximum of {c['le']!r}",
    "greater_than": lambda v, c: f"{v!r} is less than or equal to the minimum of {c['gt']!r}",
    "less_than": lambda v, c: f"{v!r} is greater than or equal to the maximum of {c['lt']!r}",
    "literal_error": lambda v, c: f"{_short(v)} is not one of {c.get('expected', '')}",
    "dict_type": lambda v, _c: f"{_short(v)} is not of type 'object'",
}


def _short(value: Any) -> str:
    shown = repr(value)
    return shown if len(shown) <= 80 else shown[:80] + "..."


def _pointer(location: tuple[int | str, ...]) -> str:
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in location)


def validation_failed(error: ValidationError) -> ValidationFailed:
    """The contract's error answer (400, `details[].path` a JSON pointer) of a pydantic error: one detail per
    failing field, sorted by path, in the words jsonschema used for the same failure (what the app shows)."""
    details, seen = [], set()
    for item in error.errors(include_url=False):
        path = _pointer(tuple(item["loc"]))
        render = _MESSAGES.get(item["type"])
        message = render(item.get("input"), item.get("ctx") or {}) if render else item["msg"]
        if len(message) > 300:
            message = message[:300] + "..."
        if (path, message) not in seen:
            seen.add((path, message))
            details.append({"path": path, "message": message})
    return ValidationFailed(sorted(details, key=lambda d: d["path"]))


def parse(model: type[BaseModel], body: object, settings: Any) -> Any:
    """`body` validated into `model` (the settings in the validation context, for the rules that read the
    profile's presets); ValidationFailed (the contract's error) when it is not valid."""
    try:
        return model.model_validate(body, context={"settings": settings})
    except ValidationError as exc:
        raise validation_failed(exc) from None


# --- published schema -------------------------------------------------------------------------------------

def published_schema(model: type[BaseModel]) -> dict:
    """The JSON Schema (draft 2020-12) of `model` in the published shape: sub-models inlined, no generated
    titles or defaults (absent is not the same as the default: presets fill what the caller left out), and
    `additionalProperties` only where unknown fields are refused."""
    generated = model.model_json_schema(mode="validation")
    definitions = generated.pop("$defs", {})
    title = generated.get("title")
    body = _clean(generated, definitions)
    return {"$schema": DIALECT, **({"title": title} if title else {}), **body}


def _clean(node: Any, definitions: dict) -> Any:
    if isinstance(node, list):
        return [_clean(item, definitions) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        target = definitions[node["$ref"].rsplit("/", 1)[1]]
        merged = {**{k: v for k, v in target.items() if k != "title"}, **{k: v for k, v in node.items() if k != "$ref"}}
        return _clean(merged, definitions)
    result = {}
    for key, value in node.items():
        if key in ("title", "default") or (key == "additionalProperties" and value is True):
            continue
        if key == "properties":
            result[key] = {name: _clean(prop, definitions) for name, prop in value.items()}
        else:
            result[key] = _clean(value, definitions)
    return result
