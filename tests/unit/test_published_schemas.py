"""The published request schemas (configuration/published/) are the central contract: current with the request
models they are generated from, valid under an ECMA-262 regex validator, and in agreement with the models on
every body (a property test: both accept and refuse the same generated bodies, cross-field rules aside)."""
from __future__ import annotations

import copy
import functools
import json
from typing import Any

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from configuration import publish, requests
from configuration.requests.common import ValidationFailed, validate
from configuration.settings import Settings
from tests.unit.test_schema_regex import ECMA_FORMATS, EcmaValidator

NAMES = sorted(requests.MODELS)
# A valid body of each request, the start of every generated one.
VALID = {"sdxl.generate": {"id": "j1", "type": "sdxl_image_fast", "prompt": "a red fox", "user_id": "u1",
                           "config": {"seed": 7}},
         "memory.action": {"which": "all", "wait_s": 5},
         "wan.generate": {"id": "w1", "type": "video_fast", "prompt": "a fox running", "user_id": "u1",
                          "config": {"seed": 3}},
         "chat.enhance": {"prompt": "a red fox", "max_tokens": 8, "temperature": 0.7, "top_k": 5, "seed": 4,
                          "stop": ["END"], "target_model": "sdxl", "content_tier": "sfw", "project_context": {"a": 1}},
         "chat.enhance_legacy": {"messages": [{"role": "system", "content": "be brief"},
                                              {"role": "user", "content": "a fox"}], "model": "qwen_instruct",
                                 "max_tokens": 8, "top_p": 0.9, "project_id": "p1"},
         "chat.chat": {"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
                       "model": "qwen_base", "sfw_mode": True, "stop": "END", "repetition_penalty": 1.1,
                       "conversation_id": "c1", "nsfw_reason": "none"},
         "chat.completions": {"model": "qwen_base", "messages": [{"role": "user", "content": "hi"}], "stream": True,
                              "stream_options": {"include_usage": True}, "n": 1, "logprobs": False,
                              "max_completion_tokens": 8, "frequency_penalty": 0.5, "reproducible": True},
         "orchestrator.jobs": {"id": "r1", "type": "sdxl_image_fast", "prompt": "a fox", "user_id": "u1",
                               "content_tier": "sfw", "target": "sdxl",
                               "enhance": {"model": "base", "seed": 3, "stop": ["END"], "max_tokens": 9},
                               "config": {"enhance_prompt": True, "seed": 7}, "metadata": {"a": 1}},
         "orchestrator.memory_action": {"worker": "sdxl", "which": "all", "wait_s": 5},
         "orchestrator.broker_hello": {"worker": "sdxl", "pid": 42},
         "orchestrator.broker_acquire": {"worker": "sdxl", "model": "sdxl", "estimate_bytes": 10, "working_bytes": 5},
         "orchestrator.broker_admit": {"worker": "wan", "need_bytes": 10},
         "orchestrator.broker_loaded": {"worker": "sdxl", "model": "sdxl", "resident_bytes": 10},
         "orchestrator.broker_release": {"worker": "sdxl", "model": "sdxl"},
         "orchestrator.broker_job_started": {"worker": "sdxl", "working_bytes": 5},
         "orchestrator.broker_working": {"worker": "sdxl", "working_bytes": 5},
         "orchestrator.broker_job_finished": {"worker": "sdxl"},
         "orchestrator.broker_touch": {"worker": "chat", "models": ["qwen_base", "qwen_instruct"]},
         "orchestrator.broker_turn": {"worker": "wan", "models": ["wan_t2v"]}}


@functools.cache
def published(name: str) -> dict:
    """The published file, read once per process (read-only: nothing here changes it)."""
    return json.loads((publish.PUBLISHED_DIR / f"{name}.json").read_text(encoding="utf-8"))


@functools.cache
def _validator(name: str) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(published(name))


@functools.cache
def _settings() -> Settings:
    return Settings()


def test_every_model_has_a_valid_body_here():
    assert set(VALID) == set(NAMES)


def test_the_published_files_are_current():
    assert publish.stale() == [], "run: python -m configuration.publish"


@pytest.mark.parametrize("name", NAMES)
def test_a_published_schema_is_valid_under_an_ecma_regex_validator(name):
    EcmaValidator.check_schema(published(name), format_checker=ECMA_FORMATS)


@pytest.mark.parametrize("name", NAMES)
def test_the_published_schema_describes_the_cross_field_rules(name):
    assert "Cross-field rules" in published(name)["description"]


# --- the models and the published schemas agree ------------------------------------------------------------

# Values every field meets: wrong JSON types, empty and white-space strings, a trailing newline (ECMA `$` vs
# Python's), reference URLs of each accepted and one refused form, sizes of several profiles.
_ANY = [None, True, False, 0, 1, -1, 1.5, 2.0, "", " ", "x", "x\n", "1", [], {}, [1], {"a": 1},
        "https://x/y.png", "data:image/png;base64,AA", "ftp://x/y.png", "64x64", "64x64\n", "100x64", "4096x4096",
        "j-1.a", "../etc", "sfw", "nsfw", "center_crop", "letterbox"]


def _near(fragment: dict) -> list[Any]:
    """Values at and just beyond the fragment's own bounds and choices."""
    values: list[Any] = list(fragment.get("enum", []))
    for key in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        if key in fragment:
            bound = fragment[key]
            values += [bound, bound - 1, bound + 1, float(bound), bound - 0.001, bound + 0.001]
    step = fragment.get("multipleOf")
    if step:
        base = fragment.get("minimum", 0)
        values += [base + step, base + step + 1, float(base + 2 * step)]
    for key in ("minLength", "maxLength"):
        if key in fragment and fragment[key] <= 20000:
            values += ["x" * fragment[key], "x" * (fragment[key] + 1)]
    return values


def _sites(schema: dict, where: tuple[str | int, ...] = ()) -> list[tuple[tuple[str | int, ...], dict]]:
    """(path, fragment) of every property, nested objects' own properties and an array's first item included."""
    found = []
    for name, fragment in schema.get("properties", {}).items():
        found.append(((*where, name), fragment))
        found += _sites(fragment, (*where, name))
    if isinstance(schema.get("items"), dict):
        found.append(((*where, 0), schema["items"]))
        found += _sites(schema["items"], (*where, 0))
    return found


_ABSENT = object()


def _child(node: Any, key: str | int, kind: type) -> Any:
    """node[key] (an object's field, or a list's item), made a `kind` where it is not one: a list where an index
    follows, an object where a name does."""
    if isinstance(node, list):
        while len(node) <= int(key):
            node.append({})
    elif key not in node:
        node[key] = None
    if not isinstance(node[key], kind):
        node[key] = [{}] if kind is list else {}
    return node[key]


def _mutated(valid: dict, changes: list[tuple[tuple[str | int, ...], Any]]) -> dict:
    """`valid` with `changes` applied, sharing nothing with `valid` or the changes' values: a later change of
    the same body writes into what an earlier one set (`config` made `{}`, then `config.bogus`), and a shared
    `{}` of _ANY would carry that key into every later test of the process."""
    body = json.loads(json.dumps(valid))
    for path, value in changes:
        value = value if value is _ABSENT else copy.deepcopy(value)
        node: Any = body
        for key, after in zip(path[:-1], path[1:], strict=True):
            node = _child(node, key, list if isinstance(after, int) else dict)
        last = path[-1]
        if value is _ABSENT:
            if isinstance(node, list):
                del node[int(last):int(last) + 1]
            else:
                node.pop(last, None)
        elif isinstance(node, list):
            _child(node, last, object)
            node[int(last)] = value
        else:
            node[last] = value
    return body


@functools.cache
def _body(name: str) -> st.SearchStrategy:
    """A valid body with up to three properties changed (removed, or set to a value at or beyond its bounds, of
    another type, ...), and unknown keys added; or not an object at all. Built once per request: a strategy
    built for every example is validated again each time, which cost most of this test's time."""
    change = st.one_of([st.tuples(st.just(path), st.one_of(st.sampled_from(_near(fragment) or [_ABSENT]),
                                                           st.sampled_from([_ABSENT, *_ANY])))
                        for path, fragment in _sites(published(name))])
    unknown = st.tuples(st.sampled_from([("bogus",), ("config", "bogus"), ("metadata", "credits")]), st.just(3))
    changes = st.lists(st.one_of(change, change, change, unknown), min_size=1, max_size=3)
    return st.one_of(st.builds(_mutated, st.just(VALID[name]), changes), st.sampled_from([[], "x", None, 1]))


def _agree(name: str, body: object) -> None:
    errors = list(_validator(name).iter_errors(body))
    outcome = _model_outcome(name, body)
    if outcome != "cross-field":
        assert (outcome == "accepted") == (not errors), (body, outcome, [e.message for e in errors])


def _same_words(name: str, body: object) -> None:
    """A body the model refuses for a field's own bound or type is answered with what jsonschema answered with
    the published file: each detail (JSON pointer and message) is one jsonschema's reading gives too."""
    if _model_outcome(name, body) != "refused":
        return
    with pytest.raises(ValidationFailed) as model:
        requests.check(name, body, _settings())
    with pytest.raises(ValidationFailed) as reading:
        validate(published(name), body)
    expected = [(d["path"], d["message"]) for d in reading.value.details]
    for detail in model.value.details:
        assert (detail["path"], detail["message"]) in expected, (body, model.value.details, expected)


def _model_outcome(name: str, body: object) -> str:
    """accepted, refused (a field's own bound or type) or cross-field (a rule between fields)."""
    try:
        requests.request_model(name, _settings()).model_validate(body, context={"settings": _settings()})
    except ValidationError:
        return "refused"
    except ValidationFailed:  # the model's cross-field rules raise the contract's error themselves
        return "cross-field"
    return "accepted"


@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=400, deadline=None)
@given(data=st.data())
def test_property_the_model_and_the_published_schema_accept_the_same_bodies(name, data):
    """Generated from the published schema (a valid body with properties removed, at or beyond their bounds, of
    another type; unknown keys; not an object), each body is accepted by the model exactly when jsonschema accepts it
    with the published file; a body only a cross-field rule refuses is left aside (the schema lists those
    rules in its description)."""
    _agree(name, data.draw(_body(name)))


@pytest.mark.parametrize("name", NAMES)
def test_every_single_change_of_a_valid_body_is_judged_alike(name):
    """Each property of the published schema, one at a time, removed or set to each candidate value: the model
    and the published schema agree on every one of those bodies (the exhaustive floor under the property test),
    and a refusal names the same fields in the same words."""
    sites = _sites(published(name))
    assert {path[0] for path, _fragment in sites} == set(published(name)["properties"])  # every property walked
    for path, fragment in sites:
        for value in [_ABSENT, *_ANY, *_near(fragment)]:
            body = _mutated(VALID[name], [(path, value)])
            _agree(name, body)
            _same_words(name, body)
