"""Configuration as data: model configs, worker configs, job-type presets, settings and schemas.

Everything else imports from here; nothing here imports from common/, workers/ or orchestrator/
(tests/unit/test_architecture.py).
"""
from __future__ import annotations

import copy
import functools
import json
from pathlib import Path

from configuration.settings import Settings, SettingsError

CONFIG_DIR = Path(__file__).resolve().parent


class ConfigurationError(RuntimeError):
    """The configuration asks for something that cannot be served (a missing model path, ...)."""


@functools.cache
def _load(name: str) -> dict:
    with open(CONFIG_DIR / name, encoding="utf-8") as fh:
        data = json.load(fh)
    return {k: v for k, v in data.items() if not k.startswith("_")}


def model_configs() -> dict[str, dict]:
    return copy.deepcopy(_load("models.json"))


def worker_configs() -> dict[str, dict]:
    return copy.deepcopy(_load("workers.json"))


def enabled_workers(settings: Settings) -> list[str]:
    """The workers ENABLED_WORKERS names, in order; an unknown name is a ConfigurationError."""
    names = [w.strip() for w in settings.enabled_workers.split(",") if w.strip()]
    known = _load("workers.json")
    unknown = [w for w in names if w not in known]
    if unknown:
        raise ConfigurationError(f"ENABLED_WORKERS names unknown workers {unknown}; known: {sorted(known)}")
    return names


def worker_config(worker: str) -> dict:
    configs = _load("workers.json")
    if worker not in configs:
        raise ConfigurationError(f"unknown worker {worker!r}; known: {sorted(configs)}")
    return copy.deepcopy(configs[worker])


def worker_capabilities(worker: str) -> dict:
    """What a worker can do, as GET /health and the chat worker's registration show it: role, models and the
    `capabilities` of configuration/workers.json."""
    config = worker_config(worker)
    return {"role": config["role"], "models": config["models"], **config["capabilities"]}


# paths.production keys -> the resolved config keys they fill
_PRODUCTION_PATH_SETTINGS = {"path_setting": "path", "config_setting": "config_path",
                             "vae_fp16_fix_setting": "vae_fp16_fix_path"}


def model_config(model: str, settings: Settings) -> dict:
    """A model's config resolved for the active profile: `path`, `config_path`, `vae_fp16_fix_path` (empty when
    the profile has none), `memory_bytes`, `limits`. The synthetic profile (full-size random weights) uses the
    production estimates and limits."""
    models = _load("models.json")
    if model not in models:
        raise ConfigurationError(f"unknown model {model!r}; known: {sorted(models)}")
    cfg = copy.deepcopy(models[model])
    profile = settings.model_profile
    sizes = "production" if profile == "synthetic" else profile
    paths = cfg["paths"][profile]
    cfg.update(path="", config_path="", vae_fp16_fix_path="")
    if profile == "production":
        for key, resolved in _PRODUCTION_PATH_SETTINGS.items():
            if key in paths:
                cfg[resolved] = getattr(settings, paths[key])
    else:
        root = settings.placeholder_models_dir if profile == "placeholder" else settings.synthetic_models_dir
        cfg.update({key: str(Path(root) / rel) for key, rel in paths.items()})
    cfg["memory_bytes"] = int(cfg["memory_mb"][sizes]) * 1024 * 1024
    if "offload_memory_mb" in cfg:  # the footprint under model CPU offload (WAN_OFFLOAD)
        cfg["offload_memory_bytes"] = int(cfg["offload_memory_mb"][sizes]) * 1024 * 1024
    cfg["limits"] = cfg["limits"][sizes]
    cfg["name"] = model
    return cfg


SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt")


def single_file_config_dir(cfg: dict) -> str:
    """The local diffusers config directory a single-file checkpoint (`cfg["path"]`) is loaded with: the
    configured one (`config_path`), else a `config/` folder next to the file that holds model_index.json;
    "" when there is none (hub lookups are disabled, so such a checkpoint cannot be loaded)."""
    if cfg["config_path"]:
        return cfg["config_path"]
    sibling = Path(cfg["path"]).parent / "config"
    return str(sibling) if (sibling / "model_index.json").exists() else ""


def chat_config() -> dict:
    """The chat worker's configuration data (configuration/chat.json): rendering, defaults, cleaning."""
    return copy.deepcopy(_load("chat.json"))


def job_types(worker: str | None = None) -> dict[str, dict]:
    """Job type -> resolved preset (aliases such as the legacy `*_enhanced` WAN types resolved)."""
    presets = _load("presets.json")
    resolved = {}
    for name, preset in presets.items():
        target = preset.get("alias_of", name)
        entry = copy.deepcopy(presets[target])
        entry["enhance"] = bool(preset.get("enhance", False))
        entry["base_type"] = target
        if worker is None or entry["worker"] == worker:
            resolved[name] = entry
    return resolved


def preset_defaults(job_type: str, settings: Settings) -> dict:
    """The defaults a job type fills in on the active profile."""
    preset = job_types()[job_type]
    defaults = dict(preset["defaults"])
    defaults.update(preset.get("profiles", {}).get(settings.model_profile, {}))
    return defaults


__all__ = [
    "CONFIG_DIR", "SINGLE_FILE_SUFFIXES", "ConfigurationError", "Settings", "SettingsError", "chat_config",
    "enabled_workers", "job_types", "model_config", "model_configs", "preset_defaults", "single_file_config_dir",
    "worker_config", "worker_configs",
]
