"""What turning one request body into the engine's parameters costs: validation and normalisation.

Every request is a model (configuration/requests/: bounds, cross-field rules and `to_params()`), admitted in
one step, measured per request next to what jsonschema alone costs on the same body against the same published
schema (the check the models replaced, which the normalisers then followed). Bodies: the SDXL and WAN jobs,
the chat worker's as the app's callers send them (real-client.md section 3: an enhancement with `null`s, a
roleplay chat of ten turns, an OpenAI stream), a routed job with an enhancement, and a broker call. Each figure
is the median of the repeats' per-request means; the columns of one row are interleaved, so the machine's load
falls on them alike. Target (issue 21): under 50 us per request.

    .venv/bin/python benchmarks/normalise.py
    .venv/bin/python benchmarks/normalise.py --requests 5000 --repeats 9

Writes nothing (no bytecode either): it only reads the configuration files.
"""
from __future__ import annotations

import sys

sys.dont_write_bytecode = True

import argparse  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from configuration import requests  # noqa: E402
from configuration.requests.common import check, compiled_validator  # noqa: E402
from configuration.settings import Settings  # noqa: E402

TARGET_US = 50.0


SYSTEM = {"role": "system", "content": "You are Mira, a friendly guide. Stay in character; answer briefly."}
TURNS = [{"role": "user" if i % 2 == 0 else "assistant", "content": f"turn {i}: tell me more about the harbour"}
         for i in range(8)]
BODIES: dict[str, dict] = {
    "sdxl.generate": {"id": "j1", "type": "sdxl_image_fast", "prompt": "a red fox", "user_id": "u1",
                      "config": {"seed": 7, "num_images": 3},
                      "metadata": {"reference_image_url": "https://example.com/r.png", "denoise_strength": 0.5}},
    "wan.generate": {"id": "j2", "type": "video_fast", "prompt": "a red fox running", "user_id": "u1",
                     "config": {"seed": 7}},
    "chat.enhance": {"prompt": "a red fox", "target_model": "sdxl", "seed": 7},
    "chat.enhance_legacy": {"messages": [{"role": "system", "content": "Rewrite the prompt for an image model."},
                                         {"role": "user", "content": "a red fox in the snow"}],
                            "max_tokens": 500, "temperature": 0.7, "top_p": 0.9, "model": None,
                            "project_context": None},
    "chat.chat": {"messages": [SYSTEM, *TURNS, {"role": "user", "content": "and the lighthouse?"}],
                  "model": "qwen_instruct", "sfw_mode": True, "content_tier": "sfw", "temperature": 0.8,
                  "top_p": 0.9, "max_tokens": 200, "frequency_penalty": 0.2, "presence_penalty": 0.1},
    "chat.completions": {"model": "qwen_instruct", "messages": [SYSTEM, {"role": "user", "content": [
                             {"type": "text", "text": "hello "}, {"type": "text", "text": "there"}]}],
                         "max_tokens": 64, "temperature": 0.5, "stop": ["\n\n"], "stream": True,
                         "stream_options": {"include_usage": True}, "seed": 4},
    "orchestrator.jobs": {"id": "r1", "type": "sdxl_image_fast", "prompt": "a red fox", "user_id": "u1",
                          "enhance": {"model": "instruct", "max_tokens": 100, "temperature": 0.7},
                          "config": {"seed": 7, "num_images": 1}, "metadata": {"source": "bench"}},
    "orchestrator.broker_acquire": {"worker": "sdxl", "model": "sdxl", "estimate_bytes": 1000000,
                                    "working_bytes": 5000},
}


def admission(name: str, body: dict, settings: Settings) -> Callable[[], Any]:
    """What the route runs for `body` (the content policy aside): the model, then what its consumer reads."""
    if name == "chat.enhance":  # the model is the route's (/enhance/instruct)
        return lambda: requests.check(name, body, settings).to_params(settings, "qwen_instruct")
    if name == "orchestrator.jobs":  # the route plan (the Router)
        return lambda: requests.check(name, body, settings).to_params()
    if name.startswith("orchestrator.broker_"):  # the broker reads the model's fields
        return lambda: requests.check(name, body, settings)
    return lambda: requests.normalise(name, body, settings)


def cases(settings: Settings) -> dict[str, tuple[Callable[[], Any], Callable[[], Any]]]:
    """name -> (the admission of the body, jsonschema alone on it against the published schema)."""
    return {name: (admission(name, body, settings), jsonschema_alone(name, body, settings))
            for name, body in BODIES.items()}


def jsonschema_alone(name: str, body: dict, settings: Settings) -> Callable[[], None]:
    validator = compiled_validator(requests.schema_of(name, settings))
    return lambda: check(validator, body)


def per_request_us(call: Callable[[], Any], requests_: int) -> float:
    start = time.perf_counter()
    for _ in range(requests_):
        call()
    return (time.perf_counter() - start) / requests_ * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000, help="requests per measurement")
    parser.add_argument("--repeats", type=int, default=7, help="interleaved measurements per column")
    args = parser.parse_args()
    settings = Settings()
    work = cases(settings)
    print(f"admitting one request, profile {settings.model_profile}: {args.requests} requests x {args.repeats} "
          "repeats, interleaved; median of the repeats' means")
    print(f"{'request':28s} {'admit us':>9s} {'jsonschema us':>14s}  {'admit range us':>15s}")
    for name, (admit, jsonschema_only) in work.items():
        admit(), jsonschema_only()  # warm: models and validators are built once per profile
        admits, checks = [], []
        for _ in range(args.repeats):
            admits.append(per_request_us(admit, args.requests))
            checks.append(per_request_us(jsonschema_only, args.requests))
        a, c = statistics.median(admits), statistics.median(checks)
        flag = "" if a < TARGET_US else f"  over {TARGET_US:.0f} us"
        print(f"{name:28s} {a:9.1f} {c:14.1f}  {min(admits):6.1f}-{max(admits):6.1f}{flag}")


if __name__ == "__main__":
    main()
