"""`python -m configuration.check`: validate settings and model paths before anything starts.

ENABLED_WORKERS must name known workers. Production requires every model of every enabled worker to
exist on disk (WAN's VACE model is optional: without it, reference-frame modes are refused at
validation), and a single-file checkpoint needs a local diffusers config directory."""
from __future__ import annotations

import sys
from pathlib import Path

from configuration import (
    SINGLE_FILE_SUFFIXES,
    ConfigurationError,
    enabled_workers,
    model_config,
    single_file_config_dir,
    worker_config,
)
from configuration.settings import Settings, settings_for_command

OPTIONAL_MODELS = {"wan_vace"}


def problems(settings: Settings) -> list[str]:
    found: list[str] = []
    try:
        workers = enabled_workers(settings)
    except ConfigurationError as exc:
        return [str(exc)]
    if settings.model_profile != "production":
        return found
    for worker in workers:
        for model in worker_config(worker)["models"]:
            cfg = model_config(model, settings)
            if not cfg["path"]:
                if model not in OPTIONAL_MODELS:
                    found.append(f"{model}: no path configured ({cfg['paths']['production']['path_setting'].upper()})")
                continue
            if not Path(cfg["path"]).exists():
                found.append(f"{model}: {cfg['path']} does not exist")
            if cfg["path"].endswith(SINGLE_FILE_SUFFIXES):
                config_dir = single_file_config_dir(cfg)
                setting = cfg["paths"]["production"].get("config_setting", "config_setting").upper()
                if not config_dir:
                    found.append(f"{model}: {cfg['path']} is a single-file checkpoint and needs {setting}, a local "
                                 "diffusers config directory (or one in a config/ folder next to the file)")
                elif not Path(config_dir, "model_index.json").exists():
                    found.append(f"{model}: config directory {config_dir} has no model_index.json")
    return found


def main() -> int:
    settings = settings_for_command()
    if settings is None:
        return 2
    issues = problems(settings)
    for issue in issues:
        print(f"configuration error: {issue}", file=sys.stderr)
    if not issues:
        print(f"configuration ok: profile={settings.model_profile} bind={settings.bind_host} "
              f"auth={'on' if settings.api_key else 'off (loopback only)'}")
    return 1 if issues else 0


if __name__ == "__main__":
    sys.exit(main())
