"""What the orchestrator costs, side by side, in one run.

1. A broker decision (`plan_lease`, pure) in microseconds.
2. The memory bookkeeping of one job: the worker's calls to the broker over HTTP (turn, acquire,
   loaded, job_started, job_finished, touch, release) against the same calls on LocalMemory in-process.
3. A generation job end to end: `POST /generate?wait=` on the SDXL worker directly against
   `POST /jobs?wait=` on the orchestrator (routing, one more hop, polling, the broker's calls), same
   bodies, same worker, in the same run.

    .venv/bin/python benchmarks/orchestrator_overhead.py                # placeholder models
    .venv/bin/python benchmarks/orchestrator_overhead.py --jobs 20 --steps 4
"""
from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import requests

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from configuration.settings import Settings  # noqa: E402
from orchestrator.broker_policy import Lease, Pool, Request, plan_lease  # noqa: E402

MB = 1024 * 1024


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bench_decisions(n: int = 20000) -> float:
    leases = tuple(Lease(w, m, (i + 1) * 700 * MB, last_used=float(i))
                   for i, (w, m) in enumerate([("sdxl", "sdxl"), ("chat", "qwen_base"), ("chat", "qwen_instruct"),
                                               ("wan", "wan_vace")]))
    pool = Pool(capacity=48 * 1024 * MB, reserve=2048 * MB, leases=leases, busy=frozenset({"chat"}))
    request = Request("wan", "wan_t2v", 40 * 1024 * MB, 2 * 1024 * MB)
    started = time.perf_counter()
    for _ in range(n):
        plan_lease(pool, request)
    return (time.perf_counter() - started) / n * 1e6


def job_bookkeeping(memory) -> None:
    memory.wait_turn(["sdxl"])
    memory.acquire("sdxl", 8 * MB, 0)
    memory.loaded("sdxl", 8 * MB)
    memory.job_started(0)
    memory.job_finished()
    memory.touch(["sdxl"])
    memory.release("sdxl")


def bench_bookkeeping(rounds: int) -> tuple[float, float]:
    from waitress.server import BaseWSGIServer, create_server

    from orchestrator.broker_api import create_broker_app
    from orchestrator.pod import Pod
    from workers.runtime.broker_client import BrokerMemory
    from workers.runtime.local_memory import LocalMemory

    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(orchestrator_port=port, enabled_workers="sdxl", vram_budget_mb=64, vram_reserve_mb=0,
                            output_dir=Path(tmp))
        pod = Pod(settings, environ={})
        server = create_server(create_broker_app(pod), sockets=[pod.broker_socket], threads=8)
        threading.Thread(target=server.run, daemon=True).start()
        broker = BrokerMemory("sdxl", settings.replace(orchestrator_url=pod.broker_url, broker_token=pod.broker_token),
                              "cpu")
        local = LocalMemory(settings, "cpu")
        results = []
        for memory in (local, broker):
            job_bookkeeping(memory)  # warm
            started = time.perf_counter()
            for _ in range(rounds):
                job_bookkeeping(memory)
            results.append((time.perf_counter() - started) / rounds * 1000)
        assert isinstance(server, BaseWSGIServer)  # one socket: one server
        trigger: Any = server.trigger  # runs a callable on the server's own thread (the stubs say int)
        trigger.pull_trigger(server.close)
    return results[0], results[1]


def bench_jobs(jobs: int, steps: int) -> tuple[list[float], list[float]]:
    with tempfile.TemporaryDirectory() as tmp:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SUPABASE", "CALLBACK", "WORKER_API"))}
        env.update(PYTHONPATH=str(REPO), ORCHESTRATOR_PORT=str(free_port()), SDXL_PORT=str(free_port()),
                   ENABLED_WORKERS="sdxl", OUTPUT_DIR=f"{tmp}/out", LOG_LEVEL="WARNING", VRAM_RESERVE_MB="0")
        settings = Settings.from_env(env)
        orchestrator = f"http://127.0.0.1:{settings.orchestrator_port}"
        worker = f"http://127.0.0.1:{settings.sdxl_port}"
        with open(f"{tmp}/pod.log", "wb") as log:
            proc = subprocess.Popen([sys.executable, "-m", "orchestrator"], env=env, cwd=REPO, stdout=log,
                                    stderr=subprocess.STDOUT)
            try:
                deadline = time.monotonic() + 300
                while time.monotonic() < deadline:
                    try:
                        if requests.get(orchestrator + "/ready", timeout=2).status_code == 200:
                            break
                    except requests.RequestException:
                        pass
                    time.sleep(0.1)
                else:
                    raise RuntimeError(f"the pod did not become ready; see {tmp}/pod.log")

                def body(i: int, tag: str) -> dict:
                    return {"id": f"{tag}-{i}", "type": "sdxl_image_fast", "prompt": "a red fox in the snow",
                            "user_id": "bench", "config": {"seed": i, "steps": steps}}

                def timed(url: str, payload: dict) -> float:
                    started = time.perf_counter()
                    response = requests.post(url, json=payload, timeout=300)
                    elapsed = time.perf_counter() - started
                    assert response.status_code == 200, response.text
                    assert response.json()["status"] == "completed", response.text
                    return elapsed

                timed(worker + "/generate?wait=300", body(0, "warm"))  # load the model once
                direct, routed = [], []
                for i in range(jobs):  # interleaved, so drift in machine load hits both alike
                    direct.append(timed(worker + "/generate?wait=300", body(i, "direct")))
                    routed.append(timed(orchestrator + "/jobs?wait=300", body(i, "routed")))
                return direct, routed
            finally:
                proc.send_signal(signal.SIGTERM)
                proc.wait(120)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=200)
    args = parser.parse_args()

    print(f"broker decision (plan_lease, 4 leases, evict):        {bench_decisions():8.1f} us")
    local_ms, broker_ms = bench_bookkeeping(args.rounds)
    print(f"memory bookkeeping of one job, LocalMemory in-process: {local_ms:8.3f} ms")
    print(f"memory bookkeeping of one job, broker over HTTP:       {broker_ms:8.3f} ms   ratio "
          f"{broker_ms / local_ms:8.1f}x")
    direct, routed = bench_jobs(args.jobs, args.steps)
    d, r = statistics.median(direct), statistics.median(routed)
    print(f"SDXL job ({args.steps} steps, placeholder), median of {args.jobs}:")
    print(f"  direct  POST /generate?wait= on the worker:   {d * 1000:8.1f} ms")
    print(f"  routed  POST /jobs?wait= on the orchestrator: {r * 1000:8.1f} ms   ratio {r / d:5.2f}x   "
          f"overhead {1000 * (r - d):+.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
