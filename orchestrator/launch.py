"""`python -m orchestrator.launch <orchestrator pid> <command...>`: how the supervisor starts a worker.

It asks the kernel to SIGTERM this process when the orchestrator dies (PR_SET_PDEATHSIG survives the
exec), so a worker is never orphaned, even when the orchestrator is killed with SIGKILL; then it
replaces itself with the worker's command. A SIGTERM is a graceful stop for gunicorn.
"""
from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1


def set_parent_death_signal(sig: int = signal.SIGTERM) -> bool:
    """Linux only; returns False where the call is unavailable."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print("usage: python -m orchestrator.launch <parent pid> <command...>", file=sys.stderr)
        return 2
    parent, command = int(argv[0]), argv[1:]
    if not set_parent_death_signal():
        print("orchestrator.launch: PR_SET_PDEATHSIG unavailable; the worker is not tied to the orchestrator",
              file=sys.stderr)
    if os.getppid() != parent:
        return 1  # the orchestrator died before the signal was armed
    os.execv(command[0], command)  # noqa: S606 (exec of the argv the supervisor built, no shell)
    return 127  # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
