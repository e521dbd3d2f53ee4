"""JSON as RFC 8259 and I-JSON (RFC 7493) define it, for everything the pod reads from outside and
everything it sends out: request bodies, queue payloads, callbacks, the job journal.

Python's `json` module accepts more than JSON: `NaN`, `Infinity`, integers of any length (up to the
interpreter's 4300-digit limit, past which it raises a plain ValueError), nesting until the interpreter's
recursion limit, lone surrogates in `\\u` escapes, and bytes in UTF-16 or UTF-32. Each of those reached a
worker as a 500 or a job that "completed" with guidance NaN. `loads` refuses them all with the reason;
`dumps` never writes a non-finite number.
"""
from __future__ import annotations

import json
import math
from typing import Any

MAX_DEPTH = 64            # arrays and objects nested in one another
MAX_NUMBER_CHARS = 64     # characters of one number literal (a 2**64 seed has 20 digits)


class InvalidJson(ValueError):
    """`reason` says what is wrong, in words a caller can act on."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def _constant(name: str) -> Any:
    raise InvalidJson(f"{name} is not a JSON value (numbers must be finite)")


def _integer(literal: str) -> int:
    if len(literal) > MAX_NUMBER_CHARS:
        raise InvalidJson(f"a number has {len(literal)} characters; at most {MAX_NUMBER_CHARS} are accepted")
    return int(literal)


def _float(literal: str) -> float:
    if len(literal) > MAX_NUMBER_CHARS:
        raise InvalidJson(f"a number has {len(literal)} characters; at most {MAX_NUMBER_CHARS} are accepted")
    value = float(literal)
    if not math.isfinite(value):
        raise InvalidJson(f"the number {literal[:20]} is out of range")
    return value


def _check_tree(value: Any) -> None:
    """Depth and Unicode of a parsed value (iterative: a hostile depth cannot recurse here)."""
    stack: list[tuple[Any, int, str]] = [(value, 0, "")]
    while stack:
        item, depth, path = stack.pop()
        if isinstance(item, str):
            _check_text(item, path)
        elif isinstance(item, dict):
            if depth >= MAX_DEPTH:
                raise InvalidJson(f"objects and arrays are nested more than {MAX_DEPTH} deep")
            for key, child in item.items():
                child_path = f"{path}/{key}"
                _check_text(key, child_path)
                stack.append((child, depth + 1, child_path))
        elif isinstance(item, list):
            if depth >= MAX_DEPTH:
                raise InvalidJson(f"objects and arrays are nested more than {MAX_DEPTH} deep")
            stack.extend((child, depth + 1, f"{path}/{i}") for i, child in enumerate(item))


def _check_text(text: str, path: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidJson(f"the string at {path or '/'} contains a lone surrogate (\\u{ord(text[exc.start]):04x}), "
                          "which is not Unicode text") from None


def loads(raw: bytes | str) -> Any:
    """The value of a JSON text; InvalidJson (a ValueError) saying why when it is not strict JSON."""
    if isinstance(raw, bytes):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidJson(f"the body is not UTF-8 text (byte {exc.start}: 0x{raw[exc.start]:02x})") from None
    else:
        text = raw
    try:
        value = json.loads(text, parse_constant=_constant, parse_int=_integer, parse_float=_float)
    except InvalidJson:
        raise
    except RecursionError:
        raise InvalidJson(f"objects and arrays are nested more than {MAX_DEPTH} deep") from None
    except json.JSONDecodeError as exc:
        raise InvalidJson(f"{exc.msg} (line {exc.lineno}, column {exc.colno})") from None
    except ValueError as exc:  # anything else the parser raises is still the text's fault
        raise InvalidJson(str(exc)[:200]) from None
    _check_tree(value)
    return value


def finite(value: Any) -> Any:
    """A copy of `value` with non-finite floats replaced by None (what goes out must parse as JSON)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def dumps(value: Any, **kwargs: Any) -> str:
    """`json.dumps` that never writes NaN or Infinity (they become null)."""
    try:
        return json.dumps(value, allow_nan=False, **kwargs)
    except ValueError:
        return json.dumps(finite(value), allow_nan=False, **kwargs)
