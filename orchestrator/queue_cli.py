"""`python -m orchestrator.queue_cli status`: the app's Redis queues as this pod sees them.

    python -m orchestrator.queue_cli status [--json]

Talks to the running orchestrator (ORCHESTRATOR_URL, else 127.0.0.1:ORCHESTRATOR_PORT) with
WORKER_API_KEY, like `python -m orchestrator.memory_cli`. Prints each queue's depth and dead
letters, and every consumer on it: alive or not, this pod's or another's, and the jobs it holds.
"""
from __future__ import annotations

import argparse
import json
import sys

from common.http import bearer_session
from configuration.settings import settings_for_command
from orchestrator.memory_cli import _base_url, _table, call_orchestrator, terminal_safe

PROBLEMS = {"unreachable": "UNREACHABLE", "password_refused": "REFUSES THE PASSWORD"}


def render_status(status: dict) -> str:
    """The table an operator reads. Everything in it may come from Redis: the caller prints it through
    terminal_safe (no escape sequence reaches the terminal)."""
    if status.get("redis") is None:
        return status.get("message", "no queues")
    redis_info = status["redis"]
    state = "connected" if redis_info["connected"] else \
        f"{PROBLEMS.get(redis_info.get('state', ''), 'UNREACHABLE')} ({redis_info['error']})"
    lines = [f"redis  {redis_info['url']}  {state}", ""]
    rows = [["QUEUE", "WORKER", "DEPTH", "DEAD", "CONSUMER", "ALIVE", "THIS POD", "IN FLIGHT"]]
    for queue in status["queues"]:
        consumers = queue["consumers"] or [None]
        for i, consumer in enumerate(consumers):
            head = [queue["queue"], queue["worker"], _count(queue["depth"]), _count(queue["dead_letters"])] \
                if i == 0 else ["", "", "", ""]
            if consumer is None:
                rows.append(head + ["-", "", "", ""])
                continue
            rows.append(head + [consumer["consumer_id"], "yes" if consumer["alive"] else "NO",
                                "yes" if consumer["this_pod"] else "no", ", ".join(consumer["in_flight"]) or "-"])
    errors = [f"{queue['queue']}: {error}" for queue in status["queues"] for error in queue.get("errors") or []]
    return "\n".join(lines + _table(rows) + (["", "errors", *(f"  {e}" for e in errors)] if errors else []))


def _count(value: int | None) -> str:
    return "?" if value is None else str(value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m orchestrator.queue_cli",
                                     description="The app's Redis queues as this pod sees them.")
    sub = parser.add_subparsers(dest="command", required=True)
    status_p = sub.add_parser("status", help="depth, dead letters, consumers and their in-flight jobs")
    status_p.add_argument("--json", action="store_true", help="print the raw GET /queues document")
    args = parser.parse_args(argv)
    settings = settings_for_command()
    if settings is None:
        return 2
    base = _base_url(settings)
    session = bearer_session(settings.api_key)
    payload = call_orchestrator(lambda: session.get(f"{base}/queues", timeout=10), base)
    if payload is None:
        return 1
    print(json.dumps(payload, indent=2) if args.json else terminal_safe(render_status(payload)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
