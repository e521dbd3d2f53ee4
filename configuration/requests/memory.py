"""The memory endpoints every worker serves (`memory.action`: POST /memory/load and /memory/unload).

No engine runs on it, so there is no `to_params`: the route reads the validated, frozen model itself. The
body may also come from the query string (`?which=...&wait_s=...`), merged before validation by the route.
"""
from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict

from configuration.requests.fields import STRICT_OBJECT, Schema
from configuration.settings import Settings


class MemoryAction(BaseModel):
    """Load or unload a worker's models."""
    model_config = ConfigDict(**STRICT_OBJECT, title="Memory load/unload", json_schema_extra={
        "description": "Cross-field rules: none between fields; `wait_s` is refused by /memory/load (400 at "
                       "/wait_s), `which` must name a model of the worker or `all` (400 at /which)."})

    which: Annotated[str | None, Schema({"type": "string", "minLength": 1, "maxLength": 64, "description":
                                         "A model of this worker (see /memory/status) or `all` (default)."})] = None
    wait_s: Annotated[float | None, Schema({"type": "number", "minimum": 0, "maximum": 600, "description":
                                            "Unload only: how long to wait for a running job before answering "
                                            "409."})] = None


def memory_action(_settings: Settings) -> type[MemoryAction]:
    """The same on every profile (no bound depends on one)."""
    return MemoryAction
