"""Which code serves each worker of configuration/workers.json: its engine class and the routes of its own.

configuration/ holds the data (role, models, request schema, capabilities) and imports nothing of the
project, so the wiring to code lives here, as ordinary imports that the import checks
(tests/unit/test_architecture.py, test_import_cycles.py) and mypy read. The app factory
(workers/http/app.py) builds a worker from its entry; tests/unit/test_registry.py keeps this table and
workers.json naming the same workers.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flask import Blueprint

from configuration import ConfigurationError
from configuration.openapi import RouteTable
from workers.engines.base import Engine
from workers.engines.chat import ChatEngine
from workers.engines.sdxl import SDXLEngine
from workers.engines.wan import WanEngine
from workers.http import chat


@dataclass(frozen=True)
class WorkerRoutes:
    """A worker's own HTTP routes: the blueprint, and its ROUTES table for /openapi.json."""
    blueprint: Blueprint
    table: RouteTable


@dataclass(frozen=True)
class WorkerCode:
    """A worker's engine class (a job engine, `JobEngineBase`, for a worker with a request schema, whose
    /generate and /jobs routes the app factory adds) and the routes of its own, if any."""
    engine: type[Engine[Any]]
    routes: WorkerRoutes | None = None


WORKERS: dict[str, WorkerCode] = {
    "sdxl": WorkerCode(SDXLEngine),
    "wan": WorkerCode(WanEngine),
    "chat": WorkerCode(ChatEngine, WorkerRoutes(chat.bp, chat.ROUTES)),
}


def worker_code(worker: str) -> WorkerCode:
    if worker not in WORKERS:
        raise ConfigurationError(f"no engine is registered for worker {worker!r} (workers/registry.py); "
                                 f"registered: {sorted(WORKERS)}")
    return WORKERS[worker]
