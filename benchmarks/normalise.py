"""What normalising one request costs, the old way against the new, side by side in one run.

Normalisation (configuration/params: legacy names, presets, sizes, seeds) runs for every request after
schema validation. It used to deep-copy the configuration it read on every call: `job_types()` copied all
of presets.json (twice per SDXL or WAN request: once directly, once inside `preset_defaults`), and the
chat normaliser copied chat.json three times and a model config once. The configuration is now read once
into read-only structures (configuration/__init__.py `FrozenDict`) and shared.

The old accessors are reimplemented below as they were (the files read once, a deep copy per call); the
same normaliser code runs with them and with the current ones, interleaved, so the load of the machine
falls on both alike. Each figure is the median of the repeats' per-request means.

    .venv/bin/python benchmarks/normalise.py
    .venv/bin/python benchmarks/normalise.py --requests 5000 --repeats 9

Writes nothing (no bytecode either): it only reads the configuration files.
"""
from __future__ import annotations

import sys

sys.dont_write_bytecode = True

import argparse  # noqa: E402
import contextlib  # noqa: E402
import copy  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import configuration  # noqa: E402
from configuration.params import chat as chat_params  # noqa: E402
from configuration.params import normalise_generation  # noqa: E402
from configuration.params import sdxl as sdxl_params  # noqa: E402
from configuration.params import wan as wan_params  # noqa: E402
from configuration.settings import Settings  # noqa: E402


class OldAccessors:
    """The accessors as they were before the configuration was frozen: every call deep-copies."""

    def __init__(self) -> None:
        self._files: dict[str, dict] = {}

    def _load(self, name: str) -> dict:
        if name not in self._files:  # the old `_load` was cached too: one read, a copy per call
            with open(configuration.CONFIG_DIR / name, encoding="utf-8") as fh:
                self._files[name] = {k: v for k, v in json.load(fh).items() if not k.startswith("_")}
        return self._files[name]

    def job_types(self, worker: str | None = None) -> dict[str, dict]:
        presets = self._load("presets.json")
        resolved = {}
        for name, preset in presets.items():
            target = preset.get("alias_of", name)
            entry = copy.deepcopy(presets[target])
            entry["enhance"] = bool(preset.get("enhance", False))
            entry["base_type"] = target
            if worker is None or entry["worker"] == worker:
                resolved[name] = entry
        return resolved

    def preset_defaults(self, job_type: str, settings: Settings) -> dict:
        preset = self.job_types()[job_type]
        defaults = dict(preset["defaults"])
        defaults.update(preset.get("profiles", {}).get(settings.model_profile, {}))
        return defaults

    def chat_config(self) -> dict:
        return copy.deepcopy(self._load("chat.json"))

    def model_config(self, model: str, settings: Settings) -> dict:
        # The old resolution of the placeholder profile (the one measured), on a deep copy.
        cfg = copy.deepcopy(self._load("models.json")[model])
        profile = settings.model_profile
        sizes = "production" if profile == "synthetic" else profile
        paths = cfg["paths"][profile]
        cfg.update(path="", config_path="", vae_fp16_fix_path="")
        root = settings.placeholder_models_dir if profile == "placeholder" else settings.synthetic_models_dir
        cfg.update({key: str(Path(root) / rel) for key, rel in paths.items()})
        cfg["memory_bytes"] = int(cfg["memory_mb"][sizes]) * 1024 * 1024
        if "offload_memory_mb" in cfg:
            cfg["offload_memory_bytes"] = int(cfg["offload_memory_mb"][sizes]) * 1024 * 1024
        cfg["limits"] = cfg["limits"][sizes]
        cfg["name"] = model
        return cfg


@contextlib.contextmanager
def old_accessors(old: OldAccessors) -> Iterator[None]:
    """The normaliser modules reading configuration through the old accessors (they import them by name)."""
    bindings = {sdxl_params: ("job_types", "preset_defaults"), wan_params: ("job_types", "preset_defaults"),
                chat_params: ("chat_config", "model_config")}
    saved = {(module, name): getattr(module, name) for module, names in bindings.items() for name in names}
    try:
        for module, name in saved:
            setattr(module, name, getattr(old, name))
        yield
    finally:
        for (module, name), value in saved.items():
            setattr(module, name, value)


def cases(settings: Settings) -> dict[str, Callable[[], Any]]:
    sdxl = {"id": "j1", "type": "sdxl_image_fast", "prompt": "a red fox", "user_id": "u1",
            "config": {"seed": 7, "num_images": 3}, "metadata": {"reference_image_url": "https://example.com/r.png",
                                                                 "denoise_strength": 0.5}}
    wan = {"id": "j2", "type": "video_fast", "prompt": "a red fox running", "user_id": "u1", "config": {"seed": 7}}
    enhance = {"prompt": "a red fox", "target_model": "sdxl", "seed": 7}
    return {
        "sdxl.generate": lambda: normalise_generation("sdxl", sdxl, settings),
        "wan.generate": lambda: normalise_generation("wan", wan, settings),
        "chat.enhance": lambda: chat_params.enhance(enhance, "qwen_instruct", settings),
    }


def per_request_us(call: Callable[[], Any], requests: int) -> float:
    start = time.perf_counter()
    for _ in range(requests):
        call()
    return (time.perf_counter() - start) / requests * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000, help="normalisations per measurement")
    parser.add_argument("--repeats", type=int, default=7, help="interleaved old/new measurements per case")
    args = parser.parse_args()
    settings = Settings()
    old = OldAccessors()
    work = cases(settings)
    with old_accessors(old):  # the old way gives the same parameters (seeds are the caller's: deterministic)
        before = {name: call() for name, call in work.items()}
    after = {name: call() for name, call in work.items()}
    for name in work:
        if json.dumps(before[name], sort_keys=True) != json.dumps(after[name], sort_keys=True):
            raise SystemExit(f"{name}: the old and new accessors give different parameters")
    print(f"normalising one request, profile {settings.model_profile}: {args.requests} requests x {args.repeats} "
          "repeats, old and new interleaved; median of the repeats' means")
    print(f"{'request':16s} {'old us':>9s} {'new us':>9s} {'old/new':>8s}  {'new range us':>14s}")
    for name, call in work.items():
        olds, news = [], []
        for _ in range(args.repeats):
            with old_accessors(old):
                olds.append(per_request_us(call, args.requests))
            news.append(per_request_us(call, args.requests))
        o, n = statistics.median(olds), statistics.median(news)
        print(f"{name:16s} {o:9.1f} {n:9.1f} {o / n:8.1f}  {min(news):6.1f}-{max(news):6.1f}")


if __name__ == "__main__":
    main()
