"""What the Redis queue intake costs, side by side, in one run (placeholder SDXL, a real redis-server).

1. Per-job overhead: the same small job sent N times through HTTP `POST /generate` and N times through
   RPUSH onto the queue (the app's payload), interleaved, on one worker; each timed from submission to
   its terminal callback arriving. Median of each and the difference (ms).
2. Throughput: M jobs pushed at once, consumed by one worker process, then by two (same queue), timed
   until every terminal callback arrived (jobs/s). On a machine with few cores two processes compete
   for the same CPU: the ratio says what a second consumer adds there, not on a GPU pod.

    .venv/bin/python benchmarks/queue_intake.py                 # N=10, M=16
    .venv/bin/python benchmarks/queue_intake.py --jobs 20 --burst 30
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.app_client import queue_job_payload, rpush  # noqa: E402
from tests.redis_support import RedisServer  # noqa: E402
from tests.support import CallbackReceiver, WorkerProcess, base_env  # noqa: E402

QUEUE = "bench_sdxl_queue"


def app_job(i: int, steps: int) -> dict:
    payload = queue_job_payload(seed=i)
    del payload["config"]["resolution"]  # the placeholder's native size: the job itself stays small
    payload["config"]["num_inference_steps"] = steps
    return payload


def http_body(i: int, steps: int) -> dict:
    return {"id": f"http-{i}-{time.monotonic_ns()}", "type": "sdxl_image_fast", "prompt": "a red fox in the snow",
            "user_id": "bench", "config": {"seed": i, "steps": steps}}


def wait_terminal(receiver: CallbackReceiver, job_ids: list[str], timeout_s: float = 600) -> float:
    deadline = time.monotonic() + timeout_s
    pending = set(job_ids)
    while pending and time.monotonic() < deadline:
        for body in receiver.bodies():
            if body and body.get("job_id") in pending and body["status"] in ("completed", "failed", "cancelled"):
                assert body["status"] == "completed", body.get("error_message")
                pending.discard(body["job_id"])
        if pending:
            time.sleep(0.002)
    assert not pending, f"{len(pending)} jobs without a terminal callback"
    return time.monotonic()


def start_worker(tmp: Path, name: str, redis_url: str, receiver: CallbackReceiver) -> WorkerProcess:
    from workers.placeholders import ensure_placeholder_models
    placeholders = ensure_placeholder_models(REPO / ".cache" / "placeholder-models")
    env = base_env(tmp / name, placeholders, REDIS_URL=redis_url, SDXL_QUEUE=QUEUE, CALLBACK_URL=receiver.url,
                   LOG_LEVEL="WARNING", QUEUE_BLOCK_S="1.0")
    return WorkerProcess("sdxl", env).start(timeout_s=300)


def accepted(worker: WorkerProcess, job_id: str) -> float:
    """When the worker first shows the job (its record exists: journaled, in the executor's queue)."""
    while worker.client.get(f"/jobs/{job_id}").status_code != 200:
        time.sleep(0.001)
    return time.monotonic()


def overhead(worker: WorkerProcess, client, receiver, jobs: int, steps: int) -> dict[str, list[float]]:
    """Per path: submission -> accepted, and submission -> terminal callback (seconds)."""
    times: dict[str, list[float]] = {"http_accept": [], "http_end": [], "queue_accept": [], "queue_end": []}
    for i in range(jobs):  # interleaved, so drift in machine load hits both alike
        body = http_body(i, steps)
        started = time.monotonic()
        response = worker.client.post("/generate", json=body)
        assert response.status_code == 202, response.text
        times["http_accept"].append(time.monotonic() - started)
        times["http_end"].append(wait_terminal(receiver, [body["id"]]) - started)
        payload = app_job(i, steps)
        started = time.monotonic()
        rpush(client, payload, QUEUE)
        times["queue_accept"].append(accepted(worker, payload["id"]) - started)
        times["queue_end"].append(wait_terminal(receiver, [payload["id"]]) - started)
    return times


def throughput(client, receiver, burst: int, steps: int) -> float:
    payloads = [app_job(1000 + i, steps) for i in range(burst)]
    started = time.monotonic()
    for payload in payloads:
        rpush(client, payload, QUEUE)
    return burst / (wait_terminal(receiver, [p["id"] for p in payloads]) - started)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10, help="jobs per path for the overhead comparison")
    parser.add_argument("--burst", type=int, default=16, help="jobs pushed at once for the throughput comparison")
    parser.add_argument("--steps", type=int, default=2)
    args = parser.parse_args()

    with RedisServer() as redis, tempfile.TemporaryDirectory() as tmp_dir:
        tmp, receiver, client = Path(tmp_dir), CallbackReceiver(), redis.client()
        first = start_worker(tmp, "w1", redis.url, receiver)
        second = None
        try:
            overhead(first, client, receiver, 1, args.steps)  # warm: model loaded, both paths exercised once
            times = overhead(first, client, receiver, args.jobs, args.steps)
            one = throughput(client, receiver, args.burst, args.steps)
            second = start_worker(tmp, "w2", redis.url, receiver)
            throughput(client, receiver, 2, args.steps)  # warm the second worker
            two = throughput(client, receiver, args.burst, args.steps)
            # with the key: /ready without it shows only connected/redis (issue 19)
            ran_second = second.client.get("/ready", timeout=5).json()["queue"]["acknowledged"]
        finally:
            for worker in (first, second):
                if worker:
                    worker.stop()
            receiver.close()
    m = {k: statistics.median(v) * 1000 for k, v in times.items()}
    print(f"SDXL job ({args.steps} steps, placeholder), median of {args.jobs} per path (ms):")
    print("                                    accepted   terminal callback")
    print(f"  HTTP POST /generate:             {m['http_accept']:8.1f}   {m['http_end']:8.1f}")
    print(f"  queue RPUSH (the app's payload): {m['queue_accept']:8.1f}   {m['queue_end']:8.1f}")
    print(f"  queue - HTTP:                    {m['queue_accept'] - m['http_accept']:+8.1f}   "
          f"{m['queue_end'] - m['http_end']:+8.1f}")
    print(f"throughput, {args.burst} jobs pushed at once:")
    print(f"  one consumer:  {one:6.2f} jobs/s")
    print(f"  two consumers: {two:6.2f} jobs/s   ratio {two / one:4.2f}x   "
          f"(the second took {ran_second} of the jobs since it started)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
