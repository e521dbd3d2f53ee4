"""python -m workers.placeholders [--root DIR] [--force]: build (if needed) and print the model paths."""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

from . import ensure_placeholder_models, placeholder_paths, read_manifest


def default_root() -> Path:
    env = os.environ.get("PLACEHOLDER_MODELS_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[2] / ".cache" / "placeholder-models"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workers.placeholders", description=__doc__)
    parser.add_argument("--root", type=Path, default=None,
                        help="where to build (default: $PLACEHOLDER_MODELS_DIR or <repo>/.cache/placeholder-models)")
    parser.add_argument("--force", action="store_true", help="rebuild even if a current build exists")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    started = time.monotonic()
    root = ensure_placeholder_models(args.root or default_root(), force=args.force)
    manifest = read_manifest(root) or {}
    print(json.dumps({"root": str(root), "seconds": round(time.monotonic() - started, 2),
                      "build_id": manifest.get("build_id"), "disk_bytes": manifest.get("disk_bytes"),
                      "paths": {k: str(v) for k, v in placeholder_paths(root).items()}}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
