"""Configuration as data: model configs, worker configs, job-type presets, settings and schemas.

Everything else imports from here; nothing here imports from common/, workers/ or orchestrator/
(tests/unit/test_architecture.py).

The JSON files are read once into read-only structures (`FrozenDict`, `FrozenList`) that every caller
shares: no accessor copies them per call (normalising a request used to deep-copy presets.json every time).
A caller that needs to change one takes its own copy (`dict(x)`, `{**x, ...}`, `thaw(x)`).
"""
from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any, NoReturn

from configuration.settings import Settings, SettingsError

CONFIG_DIR = Path(__file__).resolve().parent


class ConfigurationError(RuntimeError):
    """The configuration asks for something that cannot be served (a missing model path, ...)."""


def _read_only(*_args: Any, **_kwargs: Any) -> NoReturn:
    raise TypeError("configuration data is shared and read-only: change a copy (dict(x), thaw(x))")


class FrozenDict(dict):
    """A dict that refuses changes (JSON-serialisable and equal to a dict like any other): configuration data,
    shared by every caller. `copy.deepcopy` of one gives a mutable copy, as a caller deep-copying wants."""
    __slots__ = ()
    __setitem__ = __delitem__ = __ior__ = _read_only
    clear = pop = popitem = setdefault = update = _read_only

    def __deepcopy__(self, memo: dict) -> dict:
        return thaw(self)

    def __reduce__(self) -> tuple:
        return FrozenDict, (dict(self),)


class FrozenList(list):
    """A list that refuses changes; see FrozenDict."""
    __slots__ = ()
    __setitem__ = __delitem__ = __iadd__ = __imul__ = _read_only
    append = clear = extend = insert = pop = remove = reverse = sort = _read_only

    def __deepcopy__(self, memo: dict) -> list:
        return thaw(self)

    def __reduce__(self) -> tuple:
        return FrozenList, (list(self),)


def freeze(value: Any) -> Any:
    """`value` (JSON data) as read-only structures, all the way down."""
    if isinstance(value, dict):
        return FrozenDict((k, freeze(v)) for k, v in value.items())
    if isinstance(value, list | tuple):
        return FrozenList(freeze(v) for v in value)
    return value


def thaw(value: Any) -> Any:
    """A mutable deep copy of (frozen) JSON data."""
    if isinstance(value, dict):
        return {k: thaw(v) for k, v in value.items()}
    if isinstance(value, list):
        return [thaw(v) for v in value]
    return value


@functools.cache
def _load(name: str) -> FrozenDict:
    with open(CONFIG_DIR / name, encoding="utf-8") as fh:
        data = json.load(fh)
    return freeze({k: v for k, v in data.items() if not k.startswith("_")})


def model_configs() -> FrozenDict:
    return _load("models.json")


def worker_configs() -> FrozenDict:
    return _load("workers.json")


def enabled_workers(settings: Settings) -> list[str]:
    """The workers ENABLED_WORKERS names, in order; an unknown name is a ConfigurationError."""
    names = [w.strip() for w in settings.enabled_workers.split(",") if w.strip()]
    known = _load("workers.json")
    unknown = [w for w in names if w not in known]
    if unknown:
        raise ConfigurationError(f"ENABLED_WORKERS names unknown workers {unknown}; known: {sorted(known)}")
    return names


def worker_config(worker: str) -> FrozenDict:
    configs = _load("workers.json")
    if worker not in configs:
        raise ConfigurationError(f"unknown worker {worker!r}; known: {sorted(configs)}")
    return configs[worker]


def worker_capabilities(worker: str) -> dict:
    """What a worker can do, as GET /health and the chat worker's registration show it: role, models and the
    `capabilities` of configuration/workers.json."""
    config = worker_config(worker)
    return {"role": config["role"], "models": config["models"], **config["capabilities"]}


# paths.production keys -> the resolved config keys they fill
_PRODUCTION_PATH_SETTINGS = {"path_setting": "path", "config_setting": "config_path",
                             "vae_fp16_fix_setting": "vae_fp16_fix_path"}


def model_config(model: str, settings: Settings) -> FrozenDict:
    """A model's config resolved for the active profile: `path`, `config_path`, `vae_fp16_fix_path` (empty when
    the profile has none), `memory_bytes`, `limits`. The synthetic profile (full-size random weights) uses the
    production estimates and limits. Resolved once per model and the settings it reads (the profile and its
    paths; hashing a whole Settings per call would cost more than the lookup)."""
    models = _load("models.json")
    if model not in models:
        raise ConfigurationError(f"unknown model {model!r}; known: {sorted(models)}")
    profile = settings.model_profile
    paths = models[model]["paths"][profile]
    if profile == "production":
        where: tuple = tuple((resolved, getattr(settings, paths[key]))
                             for key, resolved in _PRODUCTION_PATH_SETTINGS.items() if key in paths)
    else:
        where = (settings.placeholder_models_dir if profile == "placeholder" else settings.synthetic_models_dir,)
    return _resolved_model(model, profile, where)


@functools.lru_cache(maxsize=256)
def _resolved_model(model: str, profile: str, where: tuple) -> FrozenDict:
    """`where`: (config key, path) of each production path setting, or (root,) of a built profile."""
    cfg = dict(_load("models.json")[model])
    sizes = "production" if profile == "synthetic" else profile
    cfg.update(path="", config_path="", vae_fp16_fix_path="")
    if profile == "production":
        cfg.update(where)
    else:
        cfg.update({key: str(Path(where[0]) / rel) for key, rel in cfg["paths"][profile].items()})
    cfg["memory_bytes"] = int(cfg["memory_mb"][sizes]) * 1024 * 1024
    if "offload_memory_mb" in cfg:  # the footprint under model CPU offload (WAN_OFFLOAD)
        cfg["offload_memory_bytes"] = int(cfg["offload_memory_mb"][sizes]) * 1024 * 1024
    cfg["limits"] = cfg["limits"][sizes]
    cfg["name"] = model
    return freeze(cfg)


SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt")


def single_file_config_dir(cfg: dict) -> str:
    """The local diffusers config directory a single-file checkpoint (`cfg["path"]`) is loaded with: the
    configured one (`config_path`), else a `config/` folder next to the file that holds model_index.json;
    "" when there is none (hub lookups are disabled, so such a checkpoint cannot be loaded)."""
    if cfg["config_path"]:
        return cfg["config_path"]
    sibling = Path(cfg["path"]).parent / "config"
    return str(sibling) if (sibling / "model_index.json").exists() else ""


def chat_config() -> FrozenDict:
    """The chat worker's configuration data (configuration/chat.json): rendering, defaults, cleaning."""
    return _load("chat.json")


@functools.cache
def job_types(worker: str | None = None) -> FrozenDict:
    """Job type -> resolved preset (aliases such as the legacy `*_enhanced` WAN types resolved)."""
    presets = _load("presets.json")
    resolved = {}
    for name, preset in presets.items():
        target = preset.get("alias_of", name)
        entry = {**presets[target], "enhance": bool(preset.get("enhance", False)), "base_type": target}
        if worker is None or entry["worker"] == worker:
            resolved[name] = entry
    return freeze(resolved)


@functools.cache
def _profile_defaults(job_type: str, profile: str) -> FrozenDict:
    preset = job_types()[job_type]
    return freeze({**preset["defaults"], **preset.get("profiles", {}).get(profile, {})})


def preset_defaults(job_type: str, settings: Settings) -> FrozenDict:
    """The defaults a job type fills in on the active profile."""
    return _profile_defaults(job_type, settings.model_profile)


__all__ = [
    "CONFIG_DIR", "SINGLE_FILE_SUFFIXES", "ConfigurationError", "FrozenDict", "FrozenList", "Settings",
    "SettingsError", "chat_config", "enabled_workers", "freeze", "job_types", "model_config", "model_configs",
    "preset_defaults", "single_file_config_dir", "thaw", "worker_config", "worker_configs",
]
