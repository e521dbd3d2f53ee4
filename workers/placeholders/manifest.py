"""The placeholder tree's layout and its manifest: where each model lives under the root, which builder
and library versions wrote it, and whether a tree on disk is current. Read by the package (checking a
cached tree) and by build.py (writing one); it imports nothing heavy."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

# Bump when anything a builder writes changes (shapes, tokenizer recipe, layout).
BUILDER_VERSION = 3
VERSIONED_PACKAGES = ("torch", "diffusers", "transformers", "tokenizers", "sentencepiece")
MANIFEST = "manifest.json"
LOCK_FILE = ".lock"

_LAYOUT = {
    "sdxl": "sdxl",
    "sdxl_single_file": "sdxl-single/placeholder_sdxl.safetensors",
    "sdxl_single_file_config": "sdxl-single/config",
    "wan_t2v": "wan2.1-t2v",
    "wan_vace": "wan2.1-vace",
    "qwen_base": "qwen2.5-base",
    "qwen_instruct": "qwen2.5-instruct",
    "safety_classifier": "safety-classifier",
    "text_safety_classifier": "text-safety-classifier",
}

_versions_cache: dict[str, str] | None = None


def placeholder_paths(root: str | os.PathLike) -> dict[str, Path]:
    """Where each placeholder model lives under `root` (whether built or not).

    sdxl: diffusers folder; sdxl_single_file: original-format .safetensors (load with
    `from_single_file(path, config=<sdxl folder or sdxl_single_file_config>, local_files_only=True)`);
    sdxl_single_file_config: configs/tokenizers only, next to the file as `config/`; wan_t2v, wan_vace,
    qwen_base, qwen_instruct: folders."""
    root = Path(root)
    return {key: root / rel for key, rel in _LAYOUT.items()}


def installed_versions() -> dict[str, str]:
    """Versions of the libraries that define the on-disk formats, read from the installed
    distributions' metadata folder names (no import of torch & co.)."""
    global _versions_cache
    if _versions_cache is None:
        wanted: dict[str, str | None] = {p: None for p in VERSIONED_PACKAGES}
        for entry in sys.path:
            if not entry or not os.path.isdir(entry) or all(wanted.values()):
                continue
            try:
                names = os.listdir(entry)
            except OSError:
                continue
            for name in names:
                if not name.endswith(".dist-info"):
                    continue
                dist, _, version = name[: -len(".dist-info")].partition("-")
                dist = dist.lower().replace("-", "_").replace(".", "_")
                if dist in wanted and wanted[dist] is None:
                    wanted[dist] = version
        for package, found in wanted.items():
            if found is None:
                from importlib import metadata

                try:
                    wanted[package] = metadata.version(package)
                except metadata.PackageNotFoundError:
                    wanted[package] = "not-installed"
        _versions_cache = {package: found for package, found in wanted.items() if found is not None}
    return dict(_versions_cache)


def expected_stamp() -> dict:
    return {"builder_version": BUILDER_VERSION, "versions": installed_versions()}


def read_manifest(root: str | os.PathLike) -> dict | None:
    try:
        with open(Path(root) / MANIFEST, encoding="utf-8") as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return None


def is_current(root: str | os.PathLike) -> bool:
    """True when `root` holds a complete tree written by this builder with the installed library versions."""
    manifest = read_manifest(root)
    if not manifest:
        return False
    stamp = expected_stamp()
    if manifest.get("builder_version") != stamp["builder_version"] or manifest.get("versions") != stamp["versions"]:
        return False
    return all(path.exists() for path in placeholder_paths(root).values())
