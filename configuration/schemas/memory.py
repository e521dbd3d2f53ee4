"""Request schemas of the memory endpoints every worker serves."""
from __future__ import annotations

from configuration.schemas.common import DIALECT
from configuration.settings import Settings


def schemas(settings: Settings) -> dict[str, dict]:
    action = {
        "$schema": DIALECT,
        "title": "Memory load/unload",
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "which": {"type": "string", "minLength": 1, "maxLength": 64,
                      "description": "A model of this worker (see /memory/status) or `all` (default)."},
            "wait_s": {"type": "number", "minimum": 0, "maximum": 600,
                       "description": "Unload only: how long to wait for a running job before answering 409."},
        },
    }
    return {"action": action}
