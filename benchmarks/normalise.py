"""What turning one request body into the engine's parameters costs: validation and normalisation.

A worker admits a body in one step where its request is a model (configuration/requests/: bounds, cross-field
rules and `to_params()`), and in two where it is not yet (jsonschema against the published schema, then the
family's normaliser in configuration/params/). Both are measured per request, next to what jsonschema alone
costs on the same body against the same published schema (the check the model replaces). Each figure is the
median of the repeats' per-request means; the columns of one row are interleaved, so the machine's load falls
on them alike. Target (issue 21): under 50 us per request.

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
from configuration.params import chat as chat_params  # noqa: E402
from configuration.params import normalise_generation  # noqa: E402
from configuration.schemas import validate_request  # noqa: E402
from configuration.settings import Settings  # noqa: E402

TARGET_US = 50.0


def admission(schema: str, body: dict, settings: Settings) -> Callable[[], Any]:
    """What workers/runtime/admission.py runs for `body` (the content policy aside)."""
    if schema in requests.MODELS:
        return lambda: requests.normalise(schema, body, settings)
    worker = schema.split(".", 1)[0]

    def two_steps() -> dict:
        validate_request(schema, body, settings)
        return normalise_generation(worker, body, settings)

    return two_steps


def cases(settings: Settings) -> dict[str, tuple[Callable[[], Any], Callable[[], Any]]]:
    """name -> (the admission of the body, jsonschema alone on it)."""
    sdxl = {"id": "j1", "type": "sdxl_image_fast", "prompt": "a red fox", "user_id": "u1",
            "config": {"seed": 7, "num_images": 3}, "metadata": {"reference_image_url": "https://example.com/r.png",
                                                                 "denoise_strength": 0.5}}
    wan = {"id": "j2", "type": "video_fast", "prompt": "a red fox running", "user_id": "u1", "config": {"seed": 7}}
    enhance = {"prompt": "a red fox", "target_model": "sdxl", "seed": 7}

    def chat_enhance() -> dict:
        validate_request("chat.enhance", enhance, settings)
        return dict(chat_params.enhance(enhance, "qwen_instruct", settings))

    return {
        "sdxl.generate": (admission("sdxl.generate", sdxl, settings),
                          lambda: validate_request("sdxl.generate", sdxl, settings)),
        "wan.generate": (admission("wan.generate", wan, settings),
                         lambda: validate_request("wan.generate", wan, settings)),
        "chat.enhance": (chat_enhance, lambda: validate_request("chat.enhance", enhance, settings)),
    }


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
    print(f"{'request':16s} {'path':28s} {'admit us':>9s} {'jsonschema us':>14s}  {'admit range us':>15s}")
    for name, (admit, jsonschema_only) in work.items():
        admit(), jsonschema_only()  # warm: models and validators are built once per profile
        admits, checks = [], []
        for _ in range(args.repeats):
            admits.append(per_request_us(admit, args.requests))
            checks.append(per_request_us(jsonschema_only, args.requests))
        path = "model" if name in requests.MODELS else "jsonschema + normaliser"
        a, c = statistics.median(admits), statistics.median(checks)
        flag = "" if a < TARGET_US else f"  over {TARGET_US:.0f} us"
        print(f"{name:16s} {path:28s} {a:9.1f} {c:14.1f}  {min(admits):6.1f}-{max(admits):6.1f}{flag}")


if __name__ == "__main__":
    main()
