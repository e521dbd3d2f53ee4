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

    The shared fragments (configuration/requests/common.py: SAFE_ID, PROMPT, GENERATION_SEED, ...) and the
    per-profile ones (sizes) are then the one statement of a field's bounds, for the model and the published
    schema alike. Keywords: type, enum, const, minimum, maximum, exclusiveMinimum, exclusiveMaximum, multipleOf,
    minLength, maxLength, pattern (searched, as JSON Schema specifies); for the JSON a caller nests (chat
    messages, stop lists, free-form objects): items, minItems, maxItems, properties, required,
    additionalProperties (false), maxProperties. A nested value is checked, not converted (it stays the JSON
    it was), and each failure inside it is reported at its own JSON pointer, as jsonschema reports it."""

    _KNOWN = {"type", "enum", "const", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf",
              "minLength", "maxLength", "pattern", "description", "items", "minItems", "maxItems", "properties",
              "required", "additionalProperties", "maxProperties"}

    def __init__(self, fragment: Mapping[str, Any], **changes: Any) -> None:
        self.fragment = {**fragment, **changes}
        unknown = set(self.fragment) - self._KNOWN
        if unknown:
            raise ValueError(f"Schema() cannot validate {sorted(unknown)}: {self.fragment}")
        kind = self.fragment.get("type")
        self.types = [kind] if isinstance(kind, str) else list(kind or [])
        self.regex = re.compile(self.fragment["pattern"]) if "pattern" in self.fragment else None
        # What validate() runs on every request, prepared once: the type test (an isinstance where the JSON types
        # are Python classes: a bool is an int in Python, not a JSON number), the enum as a set of JSON keys
        self.type_tests = [_TYPES[t] for t in self.types]
        simple: dict[str, type] = {"string": str, "array": list, "object": dict, "null": type(None), "boolean": bool}
        self.classes = tuple(simple[t] for t in self.types) if self.types and set(self.types) <= set(simple) else None
        self.enum = {_enum_key(v) for v in self.fragment["enum"]} if "enum" in self.fragment else None
        # (keyword, test, words, bound) of the bounds this fragment has: checked per request, so found once here
        self.bounds = [(key, failed, words, self.fragment[key])
                       for key, failed, words in _BOUNDS if key in self.fragment]
        self.const = "const" in self.fragment
        self.numeric = bool(self.bounds) or "multipleOf" in self.fragment
        self.textual = bool({"minLength", "maxLength", "pattern"} & set(self.fragment))
        if self.fragment.get("additionalProperties", False) is not False:
            raise ValueError(f"Schema() checks additionalProperties: false only: {self.fragment}")
        # The nested fragments' own Schemas (arrays: `items`; objects: `properties`), built once
        self.items = Schema(self.fragment["items"]) if "items" in self.fragment else None
        self.properties = {name: Schema(sub) for name, sub in self.fragment.get("properties", {}).items()}
        self.known = set(self.properties)
        self.required = tuple(self.fragment.get("required", ()))
        self.closed = "additionalProperties" in self.fragment
        self.nested = bool({"items", "minItems", "maxItems", "properties", "required", "additionalProperties",
                            "maxProperties"} & set(self.fragment))

    def __get_pydantic_core_schema__(self, _source: Any, _handler: GetCoreSchemaHandler) -> CoreSchema:
        return self._native() or core_schema.no_info_plain_validator_function(self.validate)

    def _native(self) -> CoreSchema | None:
        """pydantic-core's own validator where it means exactly what the fragment means (faster: no Python call
        per field): strict strings without a pattern (lengths in code points, as JSON Schema counts), strict
        numbers (an int is a number; a bool is not) with float bounds (pydantic reports a bound as a float: 0.0
        where the fragment says 0), booleans, and enums of strings. Integers stay in Python: JSON Schema accepts
        20.0 as an integer, strict pydantic does not."""
        f = self.fragment
        keys = set(f) - {"description"}
        bounds = {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"}
        if self.types == ["string"] and keys <= {"type", "minLength", "maxLength"}:
            return core_schema.str_schema(strict=True, min_length=f.get("minLength"), max_length=f.get("maxLength"))
        if self.types == ["number"] and keys <= {"type", *bounds} and \
                all(isinstance(f[key], float) for key in keys & bounds):
            return core_schema.float_schema(strict=True, ge=f.get("minimum"), le=f.get("maximum"),
                                            gt=f.get("exclusiveMinimum"), lt=f.get("exclusiveMaximum"))
        if self.types == ["boolean"] and keys == {"type"}:
            return core_schema.bool_schema(strict=True)
        if keys == {"enum"} and all(isinstance(v, str) for v in f["enum"]):
            # (its own error type: pydantic's literal_error words the choices otherwise than jsonschema does)
            return core_schema.custom_error_schema(core_schema.literal_schema(list(f["enum"])), "enum_of",
                                                   custom_error_message="is not one of {values}",
                                                   custom_error_context={"values": repr(f["enum"])})
        return None

    def __get_pydantic_json_schema__(self, _schema: CoreSchema, _handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        return dict(self.fragment)

    def validate(self, value: Any) -> Any:
        self._own(value)
        if self.nested and isinstance(value, (list, dict)):
            found = self._array(value, ()) if isinstance(value, list) else self._object(value, ())
            if found:
                raise _raised(found)
        elif type(value) is float and "integer" in self.types:
            value = int(value)
        return value

    def _own(self, value: Any) -> None:
        """The checks of the value itself (its nested values aside): the first one broken is raised."""
        f = self.fragment
        if self.classes is not None:
            if not isinstance(value, self.classes):
                raise self._type_error(value)
        elif self.type_tests and not any(test(value) for test in self.type_tests):
            raise self._type_error(value)
        if self.enum is not None and not (isinstance(value, (str, int, float, type(None)))
                                          and _enum_key(value) in self.enum):
            raise PydanticCustomError("enum", "{value} is not one of {values}",
                                      {"value": _short(value), "values": repr(f["enum"])})
        if self.const and not _json_equal(value, f["const"]):
            raise PydanticCustomError("const", "{const} was expected", {"const": repr(f["const"])})
        if self.numeric and type(value) in (int, float):
            self._bounds(value)
        elif self.textual and type(value) is str:
            self._text(value)

    def _type_error(self, value: Any) -> PydanticCustomError:
        return PydanticCustomError("type", "{value} is not of type {types}",
                                   {"value": _short(value), "types": ", ".join(repr(t) for t in self.types)})

    def _problems(self, value: Any, at: tuple[int | str, ...]) -> list[_Problem]:
        """Every failure at or under `value` (at `at`): its own first one, else those of its nested values."""
        try:
            self._own(value)
        except PydanticCustomError as exc:
            return [(at, exc, value)]
        if isinstance(value, list):
            return self._array(value, at)
        if isinstance(value, dict):
            return self._object(value, at)
        return []

    def _array(self, value: list, at: tuple[int | str, ...]) -> list[_Problem]:
        f, found = self.fragment, []
        if len(value) < f.get("minItems", 0):
            found.append((at, _sized("minItems", value, f["minItems"], "should be non-empty", "is too short"), value))
        if "maxItems" in f and len(value) > f["maxItems"]:
            found.append((at, _sized("maxItems", value, f["maxItems"], "is expected to be empty", "is too long",
                                     limit=0), value))
        if self.items is not None:
            for index, item in enumerate(value):
                self.items._descend(item, (*at, index), found)
        return found

    def _object(self, value: dict, at: tuple[int | str, ...]) -> list[_Problem]:
        """As jsonschema reports an object: the first missing required field, the first unknown one (sorted),
        too many fields, then each known field's own failures."""
        f, found = self.fragment, []
        for name in self.required:
            if name not in value:
                found.append(((*at, name), PydanticCustomError("required", "is required"), value))
                break
        if self.closed and not value.keys() <= self.known:
            extra = min(name for name in value if name not in self.known)
            found.append(((*at, extra), PydanticCustomError("additionalProperties", "is not an accepted field"),
                          value[extra]))
        if "maxProperties" in f and len(value) > f["maxProperties"]:
            found.append((at, _sized("maxProperties", value, f["maxProperties"], "is expected to be empty",
                                     "has too many properties", limit=0), value))
        for name, item in value.items():
            schema = self.properties.get(name)
            if schema is not None:
                schema._descend(item, (*at, name), found)
        return found

    def _descend(self, value: Any, at: tuple[int | str, ...], found: list[_Problem]) -> None:
        """The failures of a nested value, added to `found` (a leaf's own check without the recursion's cost:
        a chat body holds hundreds of them)."""
        if self.nested:
            found += self._problems(value, at)
            return
        try:
            self._own(value)
        except PydanticCustomError as exc:
            found.append((at, exc, value))

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
                raise PydanticCustomError(key, "{value} " + words + " {bound}", {"value": repr(value),
                                                                               "bound": repr(bound)})
        step = f.get("multipleOf")
        if step is not None:
            if isinstance(step, float) or isinstance(value, float):
                quotient = value / step
                bad = not (quotient == quotient and quotient not in (float("inf"), float("-inf"))) or \
                    int(quotient) != quotient
            else:
                bad = bool(value % step)
            if bad:
                raise PydanticCustomError("multipleOf", "{value} is not a multiple of {step}",
                                          {"value": repr(value), "step": str(step)})

    def _text(self, value: str) -> None:
        f = self.fragment
        if "minLength" in f and len(value) < f["minLength"]:
            raise _sized("minLength", value, f["minLength"], "should be non-empty", "is too short")
        if "maxLength" in f and len(value) > f["maxLength"]:
            raise _sized("maxLength", value, f["maxLength"], "is expected to be empty", "is too long", limit=0)
        if self.regex is not None and not self.regex.search(value):
            # jsonschema's words: the description, when there is one, says what the form is
            if "description" in f:
                raise PydanticCustomError("pattern", "{value} is not of the form {form}",
                                          {"value": _short(value), "form": f["description"]})
            raise PydanticCustomError("pattern", "{value} does not match {pattern}",
                                      {"value": _short(value), "pattern": repr(f["pattern"])})


# (where, the failure, the value that failed) of a nested value
_Problem = tuple[tuple[int | str, ...], PydanticCustomError, Any]


def _sized(keyword: str, value: Any, bound: int, at_limit: str, otherwise: str, limit: int = 1) -> PydanticCustomError:
    """A length bound broken, in jsonschema's words: a bound of 1 (minimum) or 0 (maximum) has its own."""
    return PydanticCustomError(keyword, "{value} " + (at_limit if bound == limit else otherwise),
                               {"value": _short(value)})


def _raised(found: list[_Problem]) -> PydanticCustomError | ValidationError:
    """The failures of one field's value: its own error, or each nested one at its location under the field
    (pydantic prefixes the field's own location)."""
    if len(found) == 1 and found[0][0] == ():
        return found[0][1]
    return ValidationError.from_exception_data("Schema", [{"type": error, "loc": at, "input": value}
                                                          for at, error, value in found])


# --- errors -----------------------------------------------------------------------------------------------

_MESSAGES: dict[str, Callable[[Any, dict], str]] = {
    "missing": lambda _v, _c: "is required",
    "extra_forbidden": lambda _v, _c: "is not an accepted field",
    "model_type": lambda v, _c: f"{_short(v)} is not of type 'object'",
    # pydantic-core's own validators (Schema._native), in jsonschema's words
    "string_type": lambda v, _c: f"{_short(v)} is not of type 'string'",
    "string_too_short": lambda v, c: f"{_short(v)} " + ("should be non-empty" if c.get("min_length") == 1
                                                         else "is too short"),
    "string_too_long": lambda v, c: f"{_short(v)} " + ("is expected to be empty" if c.get("max_length") == 0
                                                       else "is too long"),
    "float_type": lambda v, _c: f"{_short(v)} is not of type 'number'",
    "bool_type": lambda v, _c: f"{_short(v)} is not of type 'boolean'",
    "greater_than_equal": lambda v, c: f"{v!r} is less than the minimum of {c['ge']!r}",
    "less_than_equal": lambda v, c: f"{v!r} is greater than the maximum of {c['le']!r}",
    "greater_than": lambda v, c: f"{v!r} is less than or equal to the minimum of {c['gt']!r}",
    "less_than": lambda v, c: f"{v!r} is greater than or equal to the maximum of {c['lt']!r}",
    "enum_of": lambda v, c: f"{_short(v)} is not one of {c['values']}",
    "dict_type": lambda v, _c: f"{_short(v)} is not of type 'object'",
}


def _short(value: Any) -> str:
    """The start of `repr(value)`, as much of it as a message shows: `validation_failed` cuts a message at 300
    characters, as jsonschema's reading of the schema did, so the two word a long value alike. A long string's
    repr is made from its first characters only (a reference can be megabytes)."""
    if isinstance(value, str) and len(value) > _LONG:
        return repr(value[:_LONG])[:-1]
    return repr(value)[:_LONG]


_LONG = 1000


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
