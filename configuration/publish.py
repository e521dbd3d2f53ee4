"""Writes the published JSON Schemas of the request models, for the default profile, into
configuration/published/<worker>.<endpoint>.json: the contract as a file the app and other validators can read
without running the pod (each profile's own bounds are served in its /openapi.json).

    python -m configuration.publish            # rewrite the files
    python -m configuration.publish --check    # exit 1, naming the stale files, when one differs

tests/unit/test_published_schemas.py fails when a file is stale.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from configuration import requests
from configuration.settings import Settings

PUBLISHED_DIR = Path(__file__).resolve().parent / "published"


def rendered() -> dict[str, str]:
    """file name -> content, for every request model on the default profile."""
    settings = Settings()
    return {f"{name}.json": json.dumps(requests.schema_of(name, settings), indent=2, ensure_ascii=False) + "\n"
            for name in sorted(requests.MODELS)}


def stale() -> list[str]:
    """The files that are missing, differ from the models, or name no model any more."""
    wanted = rendered()
    present = {p.name for p in PUBLISHED_DIR.glob("*.json")}
    differ = [name for name, text in wanted.items()
              if name not in present or (PUBLISHED_DIR / name).read_text(encoding="utf-8") != text]
    return sorted(differ + sorted(present - set(wanted)))


def write() -> list[str]:
    PUBLISHED_DIR.mkdir(exist_ok=True)
    wanted = rendered()
    for name in {p.name for p in PUBLISHED_DIR.glob("*.json")} - set(wanted):
        (PUBLISHED_DIR / name).unlink()
    for name, text in wanted.items():
        (PUBLISHED_DIR / name).write_text(text, encoding="utf-8")
    return sorted(wanted)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only report stale files (exit 1 if any)")
    args = parser.parse_args(argv)
    if args.check:
        names = stale()
        for name in names:
            print(f"stale: configuration/published/{name} (run python -m configuration.publish)")
        return 1 if names else 0
    for name in write():
        print(f"wrote configuration/published/{name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
