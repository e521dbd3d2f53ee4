"""Every regex the pod publishes is ECMA-262 and means there what it means here.

JSON Schema specifies ECMA-262 regular expressions; the app's TypeScript and most validators use them, while
`jsonschema` (our validator) runs Python's `re.search`. Each `pattern` of the published documents (every
request schema of every profile, the app's queue payload, each process's `/openapi.json`) is compiled by
regress, a spec-conforming ECMA-262 engine, with the `u` flag as spec-following validators (ajv) compile them,
and both engines must accept and refuse the same strings. A Python-only construct fails here: `\\Z` is an
error under `u` (and, without it, a literal `Z`).
"""
from __future__ import annotations

import re
from collections.abc import Iterator

import jsonschema
import pytest
import regress
from hypothesis import given, settings
from hypothesis import strategies as st

from common import metrics
from configuration import worker_configs
from configuration.openapi import openapi_document
from configuration.requests import schemas
from configuration.requests.app_payload import schema as app_payload_schema
from configuration.requests.common import END
from configuration.settings import Settings
from orchestrator import api as orchestrator_api
from workers.http import chat, generation, ops
from workers.http import common as worker_common

PROFILES = ("placeholder", "synthetic", "production")


def ecma(pattern: str) -> regress.Regex:
    return regress.Regex(pattern, "u")


def published_documents() -> Iterator[tuple[str, dict]]:
    """(name, document) of everything the pod publishes that holds a regex."""
    yield "app_payload", app_payload_schema()
    worker_tables = [worker_common.ROUTES, metrics.ROUTES, ops.ROUTES, chat.ROUTES, *generation.ROUTES.values()]
    for profile in PROFILES:
        settings_ = Settings(model_profile=profile)
        for name, body in schemas(settings_).items():
            yield f"{profile}:{name}", body
        for worker in worker_configs():
            yield f"{profile}:openapi:{worker}", openapi_document(worker, settings_, *worker_tables)
        yield f"{profile}:openapi:orchestrator", openapi_document("orchestrator", settings_, orchestrator_api.ROUTES)


def patterns_in(node: object, where: str) -> Iterator[tuple[str, str]]:
    """(JSON pointer, regex) of every `pattern` keyword under `node` (a property named "pattern" holds a
    schema, not a string, so it is walked into rather than taken)."""
    if isinstance(node, dict):
        if isinstance(node.get("pattern"), str):
            yield f"{where}/pattern", node["pattern"]
        for key, value in node.items():
            yield from patterns_in(value, f"{where}/{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from patterns_in(value, f"{where}/{index}")


def published_patterns() -> dict[str, list[str]]:
    """regex -> where it is published."""
    found: dict[str, list[str]] = {}
    for name, document in published_documents():
        for where, pattern in patterns_in(document, name + "#"):
            found.setdefault(pattern, []).append(where)
    return found


PATTERNS = published_patterns()


def ecma_refusals(patterns: dict[str, list[str]]) -> list[str]:
    problems = []
    for pattern, places in sorted(patterns.items()):
        try:
            ecma(pattern)
        except regress.RegressError as exc:
            problems.append(f"{pattern!r} ({exc}) at {places[0]} and {len(places) - 1} more")
    return problems


def test_the_published_documents_hold_the_patterns_this_test_is_about():
    where = [place for places in PATTERNS.values() for place in places]
    assert any(place.endswith("/properties/id/pattern") for place in where)
    assert any("/resolution/pattern" in place for place in where)
    assert any(":openapi:" in place for place in where)
    assert any(":orchestrator." in place for place in where)
    assert sum(1 for pattern in PATTERNS if pattern.endswith(END)) >= 4


def test_every_published_pattern_compiles_under_ecma262():
    assert ecma_refusals(PATTERNS) == []


def test_a_python_only_end_anchor_is_refused():
    assert ecma_refusals({"^[a-z]{1,64}\\Z": ["orchestrator.x#/properties/worker/pattern"]}) == [
        "'^[a-z]{1,64}\\\\Z' (Invalid character escape) at orchestrator.x#/properties/worker/pattern and 0 more"]


def _strings(pattern: str) -> st.SearchStrategy[str]:
    """Strings around the pattern's language: its matches, those with a trailing newline or other text after
    or before them, and any text."""
    matching = st.from_regex(pattern)
    return st.one_of(matching, matching.map(lambda s: s + "\n"),
                     st.tuples(st.text(max_size=3), matching, st.text(max_size=3)).map("".join), st.text())


@settings(max_examples=400, deadline=None)
@given(data=st.data())
def test_both_dialects_accept_and_refuse_the_same_strings(data):
    pattern = data.draw(st.sampled_from(sorted(PATTERNS)))
    text = data.draw(_strings(pattern))
    assert bool(re.search(pattern, text)) == (ecma(pattern).find(text) is not None), (pattern, text)


@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_an_end_anchored_pattern_refuses_a_trailing_newline_in_both_dialects(data):
    pattern = data.draw(st.sampled_from(sorted(p for p in PATTERNS if p.endswith(END))))
    example = data.draw(st.from_regex(pattern))
    for text in (example + "\n", example + "\r\n", example + "\u2028"):
        assert re.search(pattern, text) is None, repr(text)
        assert ecma(pattern).find(text) is None, repr(text)
    assert re.search(pattern, example) is not None
    assert ecma(pattern).find(example) is not None


def _ecma_pattern(validator, pattern, instance, schema):
    if validator.is_type(instance, "string") and ecma(pattern).find(instance) is None:
        yield jsonschema.ValidationError(f"{instance!r} does not match {pattern!r}")


# Draft 2020-12 with ECMA-262 regexes: `pattern` runs in regress, and check_schema's `format: regex`
# (the meta-schema's type of `pattern`) compiles there too.
EcmaValidator = jsonschema.validators.extend(jsonschema.Draft202012Validator, {"pattern": _ecma_pattern})
ECMA_FORMATS = jsonschema.FormatChecker(formats=())
ECMA_FORMATS.checks("regex", raises=regress.RegressError)(lambda value: not isinstance(value, str) or bool(ecma(value)))


@pytest.mark.parametrize(("name", "document"), [(n, d) for n, d in published_documents() if ":openapi:" not in n],
                         ids=lambda v: v if isinstance(v, str) else "")
def test_each_published_schema_is_valid_under_an_ecma_regex_validator(name, document):
    EcmaValidator.check_schema(document, format_checker=ECMA_FORMATS)


def test_the_ecma_validator_refuses_a_python_only_schema():
    with pytest.raises(jsonschema.SchemaError, match="regex"):
        EcmaValidator.check_schema({"type": "string", "pattern": "^a\\Z"}, format_checker=ECMA_FORMATS)


SDXL_BODY = {"id": "j1", "type": "sdxl_image_fast", "prompt": "a red fox", "user_id": "u1"}


@pytest.mark.parametrize(("schema_name", "body", "pointer"), [
    ("sdxl.generate", SDXL_BODY, ("id",)),
    ("sdxl.generate", {**SDXL_BODY, "config": {"resolution": "64x64"}}, ("config", "resolution")),
    ("orchestrator.jobs", SDXL_BODY, ("id",)),
    ("orchestrator.broker_job_started", {"worker": "sdxl"}, ("worker",)),
    ("app_payload", {"id": "j1", "type": "sdxl_image_fast", "config": {"resolution": "512x512"}},
     ("config", "resolution")),
])
def test_a_trailing_newline_is_refused_by_both_validators(schema_name, body, pointer):
    document = app_payload_schema() if schema_name == "app_payload" else schemas(Settings())[schema_name]
    bad = _with(body, pointer)
    for validator in (jsonschema.Draft202012Validator(document), EcmaValidator(document)):
        assert not [e for e in validator.iter_errors(body) if tuple(e.absolute_path) == pointer]
        assert [e for e in validator.iter_errors(bad) if tuple(e.absolute_path) == pointer]


def _with(body: dict, pointer: tuple[str, ...]) -> dict:
    """`body` with a newline appended to the string at `pointer`."""
    copy = dict(body)
    node = copy
    for key in pointer[:-1]:
        node[key] = dict(node[key])
        node = node[key]
    node[pointer[-1]] = node[pointer[-1]] + "\n"
    return copy
