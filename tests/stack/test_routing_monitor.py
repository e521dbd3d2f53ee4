"""200 routed jobs in flight at once on a real orchestrator (placeholder profile, SDXL and chat workers):
the orchestrator follows them from one monitor loop and runs enhancements on a bounded pool, so its
thread count stays bounded while they are in flight, and every job ends with its status.

The bound: the threads the orchestrator runs with no job at all (waitress's ORCHESTRATOR_THREADS, the
broker's, supervisors, callbacks, retention sweeper, ...), measured before the first submission, plus
the routing's own: one monitor thread and at most CHAT_BATCH_SIZE enhancement threads
(orchestrator/routing.py), plus a margin of 4 for what a request may start in passing (ops-page probes).
A thread per routed job would exceed it by far (200 jobs, the bound allows 1 + 2 + 4 more).
"""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.support import wait_until

pytestmark = pytest.mark.timeout(600)

JOBS = 200
ENHANCED = 20          # every tenth job asks the chat worker first
ENHANCE_THREADS = 2    # CHAT_BATCH_SIZE: the routing's enhancement threads
MARGIN = 4


def threads_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    raise AssertionError(f"no Threads line for process {pid}")


@pytest.fixture(scope="module")
def pod(start_pod):
    return start_pod("monitor", workers=("sdxl", "chat"), callbacks=True, CHAT_BATCH_SIZE=ENHANCE_THREADS)


def body(n: int) -> dict:
    job = {"id": f"m{n:03d}", "type": "sdxl_image_fast", "prompt": f"a red fox number {n}", "user_id": "u1",
           "config": {"seed": n, "steps": 1, "width": 32, "height": 32}}  # the smallest the placeholder takes
    if n % (JOBS // ENHANCED) == 0:
        job["enhance"] = {"model": "instruct", "max_tokens": 4, "seed": 1}
    return job


def test_200_routed_jobs_run_on_a_bounded_number_of_threads(pod):
    pid = pod.started().pid
    idle = threads_of(pid)
    bound = idle + 1 + ENHANCE_THREADS + MARGIN
    peak = idle
    for n in range(JOBS):
        response = pod.client.post("/jobs", json=body(n))
        assert response.status_code == 202, response.text
        peak = max(peak, threads_of(pid))
    in_flight = 0
    unfinished = {body(n)["id"] for n in range(JOBS)}

    def all_ended() -> bool:
        """One look: the threads, then the jobs not seen ended yet (an ended job stays ended)."""
        nonlocal peak, in_flight
        peak = max(peak, threads_of(pid))
        statuses = {job_id: pod.client.get(f"/jobs/{job_id}").json()["status"] for job_id in unfinished}
        unfinished.difference_update(j for j, s in statuses.items() if s in ("completed", "failed", "cancelled"))
        in_flight = max(in_flight, len(unfinished))
        return not unfinished

    wait_until(all_ended, 480, f"{JOBS} routed jobs to end", interval_s=0.5)
    print(f"orchestrator threads: idle {idle}, peak {peak} under {JOBS} routed jobs "
          f"(at most {in_flight} unfinished at one look), bound {bound}")
    assert in_flight >= JOBS // 2, "the jobs must be in flight together for the count to mean anything"
    assert peak <= bound, f"{peak} threads under {JOBS} routed jobs; the bound is {bound} (idle {idle})"
    statuses = {n: pod.client.get(f"/jobs/{body(n)['id']}").json()["status"] for n in range(JOBS)}
    assert set(statuses.values()) == {"completed"}, {n: s for n, s in statuses.items() if s != "completed"}
    receiver = pod.receiver
    assert receiver is not None
    for n in range(JOBS):
        assert receiver.wait_terminal(body(n)["id"], 60)["status"] == "completed"
    assert all(len(receiver.terminal(body(n)["id"])) == 1 for n in range(JOBS)), "one terminal callback per job"
