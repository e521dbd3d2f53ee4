"""`python -m orchestrator.memory_cli status|load|unload`: the operator's view of the pod's memory.

    python -m orchestrator.memory_cli status [--history N] [--json] [--watch [SECONDS]]
    python -m orchestrator.memory_cli load WORKER [MODEL]
    python -m orchestrator.memory_cli unload WORKER [MODEL] [--wait SECONDS]

Talks to the running orchestrator (ORCHESTRATOR_URL, else 127.0.0.1:ORCHESTRATOR_PORT) with
WORKER_API_KEY. `status` prints the device totals, the budget, pressure, each worker's models with
bytes, busy flag and last use, and the recent broker decisions. `--watch` redraws it every SECONDS
(default 2) with the running and latest jobs and their progress (from GET /ops/state), until Ctrl-C.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TextIO

import requests

from common.http import bearer_session, local_url
from common.job_status import ACTIVE, JobStatus
from configuration.settings import Settings, settings_for_command


def human_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def ago(iso: str | None, now: datetime | None = None) -> str:
    if not iso:
        return "never"
    seconds = ((now or datetime.now(UTC)) - datetime.fromisoformat(iso)).total_seconds()
    if seconds < 120:
        return f"{seconds:.0f}s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m ago"
    return f"{seconds / 3600:.1f}h ago"


# C0 and C1 controls but the newline, DEL, and the bidirectional overrides that reorder what follows them.
_UNSAFE = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def terminal_safe(text: str) -> str:
    """`text` with every character that a terminal would act on (escape sequences, carriage returns,
    bidirectional overrides) written as an escape: job types, consumer names and reasons come from queue
    entries and Redis, which anyone who can push to the queue controls."""
    return _UNSAFE.sub(lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 0x100 else f"\\u{ord(m.group()):04x}",
                       text)


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]


def render_status(status: dict, now: datetime | None = None) -> str:
    budget = status["budget"]
    lines = [f"device   {d['kind']} ({d['source']})  total {human_bytes(d['total_bytes'])}  "
             f"used {human_bytes(d['used_bytes'])}  free {human_bytes(d['free_bytes'])}" for d in status["devices"]]
    lines += [
        f"budget   capacity {human_bytes(budget['capacity_bytes'])}  reserve {human_bytes(budget['reserve_bytes'])}  "
        f"leased {human_bytes(budget['leased_bytes'])}  working {human_bytes(budget['working_bytes'])}  "
        f"other {human_bytes(budget['external_bytes'])}  available {human_bytes(budget['available_bytes'])}",
        f"pressure {status['pressure']}"
        + (f"  ({len(status['waiting'])} request(s) waiting)" if status["waiting"] else ""),
        "",
    ]
    rows = [["WORKER", "STATE", "PID", "MODEL", "LOADED", "BYTES", "BUSY", "LAST USE"]]
    for name, worker in status["workers"].items():
        first = True
        for model, info in worker["models"].items():
            rows.append([name if first else "", worker["state"] if first else "",
                         str(worker["pid"] or "-") if first else "",
                         model, info["state"], human_bytes(info["bytes"]), "yes" if info["busy"] else "no",
                         ago(info["last_used"], now)])
            first = False
    lines += _table(rows)
    counters = status.get("counters", {})
    lines += ["", "decisions  " + "  ".join(f"{k} {counters.get(k, 0)}" for k in
                                            ("grant", "evicted", "wait", "timeout", "too_big", "worker_gone"))]
    history = [e for e in status.get("history", []) if e["event"] not in ("touch",)]
    if history:
        lines += ["", "recent"]
        for event in history[-15:]:
            extra = {k: v for k, v in event.items() if k not in ("at", "event", "worker", "model")}
            detail = " ".join(f"{k}={human_bytes(v) if k.endswith('bytes') and isinstance(v, int) else v}"
                              for k, v in extra.items())
            lines.append(f"  {event['at'][11:23]}  {event['event']:<16} {event['worker']}/{event['model'] or '-'}  "
                         f"{detail}".rstrip())
    return "\n".join(lines)


def render_jobs(jobs: list[dict], latest: int = 5) -> str:
    """The running jobs with a progress bar, then the `latest` finished ones."""
    active = [j for j in jobs if j["status"] in ACTIVE]
    shown = active + [j for j in jobs if j not in active][:latest]
    if not shown:
        return "jobs     none yet"
    rows = [["JOB", "TYPE", "WORKER", "STATUS", "STAGE", "PROGRESS", "ERROR"]]
    for job in shown:
        percent = 100.0 if job["status"] == JobStatus.COMPLETED else float(job.get("percent") or 0.0)
        filled = int(round(percent / 10))
        rows.append([job["job_id"][:12], job["type"], job.get("worker") or "-", job["status"], job.get("stage") or "-",
                     f"[{'#' * filled}{'.' * (10 - filled)}] {percent:5.1f}%", job.get("error_code") or ""])
    return "\n".join(_table(rows))


def watch(session: requests.Session, base: str, history: int, interval_s: float, iterations: int | None,
          out: TextIO = sys.stdout) -> int:
    """Redraw the memory table and the jobs every `interval_s` (a terminal's screen is cleared each time)."""
    drawn = 0
    try:
        while iterations is None or drawn < iterations:
            try:
                memory = session.get(f"{base}/memory/status", params={"history": history}, timeout=10)
                state = session.get(f"{base}/ops/state", timeout=10)
            except requests.RequestException as exc:
                frame = f"cannot reach the orchestrator at {base}: {type(exc).__name__}; retrying"
            else:
                if memory.status_code != 200 or state.status_code != 200:
                    bad = memory if memory.status_code != 200 else state
                    frame = f"the orchestrator answered HTTP {bad.status_code}: {bad.text[:200]}"
                else:
                    frame = render_status(memory.json()) + "\n\n" + render_jobs(state.json()["jobs"])
            if out.isatty():
                out.write("\x1b[H\x1b[2J")
            stamp = datetime.now(UTC).strftime("%H:%M:%S")
            out.write(f"{base}  {stamp}  every {interval_s:g}s (Ctrl-C stops)\n\n{terminal_safe(frame)}\n\n")
            out.flush()
            drawn += 1
            if iterations is None or drawn < iterations:
                time.sleep(interval_s)
    except KeyboardInterrupt:
        pass
    return 0


def _base_url(settings: Settings) -> str:
    if settings.orchestrator_url:
        return settings.orchestrator_url.rstrip("/")
    return local_url(settings, settings.orchestrator_port)


def call_orchestrator(send: Callable[[], requests.Response], base: str) -> dict | None:
    """One request of an operator command: its JSON answer, or None after printing why there is none."""
    try:
        response = send()
    except requests.RequestException as exc:
        print(f"cannot reach the orchestrator at {base}: {type(exc).__name__}", file=sys.stderr)
        return None
    try:
        payload = response.json()
    except ValueError:
        print(f"the orchestrator answered HTTP {response.status_code} without JSON", file=sys.stderr)
        return None
    if response.status_code != 200:
        error = payload.get("error", {}) if isinstance(payload, dict) else {}
        print(terminal_safe(f"error {response.status_code} {error.get('code')}: {error.get('message')}"),
              file=sys.stderr)
        return None
    return payload


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m orchestrator.memory_cli", description="The pod's memory, as the "
                                                                                           "broker sees it.")
    sub = parser.add_subparsers(dest="command", required=True)
    status_p = sub.add_parser("status", help="device totals, each worker's models, pressure, recent decisions")
    status_p.add_argument("--history", type=int, default=15)
    status_p.add_argument("--json", action="store_true", help="print the raw GET /memory/status document")
    status_p.add_argument("--watch", type=float, nargs="?", const=2.0, metavar="SECONDS",
                          help="redraw every SECONDS (default 2) with the running jobs' progress, until Ctrl-C")
    status_p.add_argument("--iterations", type=int, default=None, help="with --watch: stop after this many frames")
    for action in ("load", "unload"):
        p = sub.add_parser(action, help=f"{action} a worker's models (default: all of them)")
        p.add_argument("worker")
        p.add_argument("model", nargs="?", default="all")
        if action == "unload":
            p.add_argument("--wait", type=float, default=0.0, help="seconds to wait for a running job (else 409)")
    args = parser.parse_args(argv)
    settings = settings_for_command()
    if settings is None:
        return 2
    session = bearer_session(settings.api_key)
    base = _base_url(settings)
    if args.command == "status" and args.iterations is not None and (args.watch is None or args.iterations < 1):
        parser.error("--iterations needs --watch and is at least 1")
    if args.command == "status" and args.watch is not None:
        if args.watch <= 0 or args.json:
            parser.error("--watch takes a positive number of seconds and does not combine with --json")
        return watch(session, base, max(0, args.history), args.watch, args.iterations)
    if args.command == "status":
        payload = call_orchestrator(lambda: session.get(f"{base}/memory/status",
                                                        params={"history": max(0, args.history)}, timeout=10), base)
    else:
        body = {"worker": args.worker, "which": args.model}
        if args.command == "unload":
            body["wait_s"] = args.wait
        payload = call_orchestrator(lambda: session.post(f"{base}/memory/{args.command}", json=body,
                                                         timeout=settings.lease_timeout_s + 90), base)
    if payload is None:
        return 1
    if args.command == "status":
        print(json.dumps(payload, indent=2) if args.json else terminal_safe(render_status(payload)))
    else:
        done = payload.get("loaded", payload.get("unloaded", []))
        print(f"{args.worker}: {args.command}ed {', '.join(done) or 'nothing'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
