"""Chat worker throughput with batching on and off, side by side, in one run.

Starts the chat worker under gunicorn twice (CHAT_BATCH_SIZE=<batch> then CHAT_BATCH_SIZE=1), sends
the same requests from N concurrent clients to each, and prints requests/s and tokens/s of both and
their ratio. The requests carry fixed seeds, so both runs generate exactly the same tokens (which the
script checks): the difference is scheduling only.

    .venv/bin/python benchmarks/chat_batching.py                     # placeholder models
    .venv/bin/python benchmarks/chat_batching.py --clients 8 --requests-per-client 8 --max-tokens 64

Model profile and paths come from the environment as for the pod (MODEL_PROFILE, QWEN_*_MODEL_PATH).
"""
from __future__ import annotations

import argparse
import concurrent.futures
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.support import WorkerProcess  # noqa: E402


def _bodies(args) -> list[dict]:
    return [{"model": args.model, "messages": [{"role": "user", "content": f"Describe scene number {i} in detail."}],
             "max_tokens": args.max_tokens, "temperature": 0.8, "top_p": 0.95, "seed": 1000 + i}
            for i in range(args.clients * args.requests_per_client)]


def _measure(url: str, bodies: list[dict], clients: int) -> dict:
    session = requests.Session()
    session.post(url + "/chat", json={**bodies[0], "seed": 1}, timeout=600).raise_for_status()  # loads the model

    def one(body):
        started = time.perf_counter()
        reply = requests.post(url + "/chat", json=body, timeout=600)
        reply.raise_for_status()
        return reply.json(), time.perf_counter() - started

    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(one, bodies))
    elapsed = time.perf_counter() - started
    replies = [r for r, _ in results]
    latencies = sorted(t for _, t in results)
    tokens = sum(r["tokens_generated"] for r in replies)
    return {"seconds": elapsed, "requests": len(replies), "tokens": tokens,
            "rps": len(replies) / elapsed, "tps": tokens / elapsed,
            "mean_batch": statistics.mean(r["model_info"]["batch_size"] for r in replies),
            "p50": latencies[len(latencies) // 2], "p95": latencies[int(len(latencies) * 0.95) - 1],
            "texts": [r["response"] for r in replies], "device": replies[0]["model_info"]["device"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests-per-client", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--window-ms", type=int, default=10)
    parser.add_argument("--model", default="qwen_instruct", choices=["qwen_instruct", "qwen_base"])
    args = parser.parse_args()

    bodies = _bodies(args)
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, batch in (("batching on", args.batch_size), ("batching off", 1)):
            env = {**os.environ, "PYTHONPATH": str(REPO), "BIND_HOST": "127.0.0.1", "WORKER_API_KEY": "",
                   "OUTPUT_DIR": str(Path(tmp) / "outputs"), "CHAT_BATCH_SIZE": str(batch),
                   "CHAT_BATCH_WINDOW_MS": str(args.window_ms), "GUNICORN_THREADS": str(max(16, args.clients * 2)),
                   "LOG_LEVEL": "WARNING"}
            with WorkerProcess("chat", env) as worker:
                runs[label] = _measure(worker.url, bodies, args.clients)
                runs[label]["batch_size"] = batch

    on, off = runs["batching on"], runs["batching off"]
    print(f"chat worker, {args.model}, device {on['device']}: {args.clients} concurrent clients x "
          f"{args.requests_per_client} requests, max_tokens {args.max_tokens}, window {args.window_ms} ms")
    print(f"{'mode':<14}{'CHAT_BATCH_SIZE':>16}{'requests':>10}{'tokens':>8}{'seconds':>9}{'req/s':>8}"
          f"{'tok/s':>9}{'mean batch':>12}{'p50 s':>8}{'p95 s':>8}")
    for label, r in runs.items():
        print(f"{label:<14}{r['batch_size']:>16}{r['requests']:>10}{r['tokens']:>8}{r['seconds']:>9.2f}"
              f"{r['rps']:>8.2f}{r['tps']:>9.1f}{r['mean_batch']:>12.2f}{r['p50']:>8.2f}{r['p95']:>8.2f}")
    print(f"on/off: requests/s x{on['rps'] / off['rps']:.2f}, tokens/s x{on['tps'] / off['tps']:.2f}; "
          f"identical texts in both runs: {'yes' if on['texts'] == off['texts'] else 'NO'}")


if __name__ == "__main__":
    main()
