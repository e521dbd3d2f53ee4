"""Chat worker: continuous batching vs static batching vs no batching, side by side, in one run.

Starts the chat worker under gunicorn three times (CHAT_BATCHING=continuous and static with
CHAT_BATCH_SIZE=<batch>, then CHAT_BATCH_SIZE=1) and sends each the same seeded requests of mixed
lengths from N concurrent clients, each client sending its next request when the previous one
returned. Every client sends each length of --lengths --rounds times, in its own shuffled order, so
no client's chain of requests is much longer than another's.

Unbatched, every request runs alone (batch size 1): its texts are the baseline of the "texts that
differ" count (a seeded request's text can change when it is batched: docs/ENGINES.md). The short
requests (the smallest max_tokens) are also sent once more one at a time with nothing else running:
the baseline of the latency ratio.

The three workers run side by side (each on its own port, idle while another is measured), every mode is
measured `--repeats` times (default 3), interleaved (continuous, static, unbatched, continuous, ...), so a
slow spell of the shared machine falls on every mode alike; before the first measurement each worker
serves one warm-up round (every client's first requests at every length), so lazy initialisation, the
allocator's growth and the first batches' shapes are outside the figures.

Prints, per mode, the median tokens/s and its range over the repeats, its ratio to no batching (median of
the per-repeat ratios, each against the unbatched run of the same repeat, and their range), the median
latency of the short requests against the same requests alone, and how many texts differ from their text
alone.

    .venv/bin/python benchmarks/chat_batching.py                     # placeholder models, 3 repeats
    .venv/bin/python benchmarks/chat_batching.py --clients 8 --lengths 16,32,64,128,256 --rounds 2 --repeats 5

Model profile and paths come from the environment as for the pod (MODEL_PROFILE, QWEN_*_MODEL_PATH).
"""
from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.support import WorkerProcess  # noqa: E402


def _bodies(args) -> list[list[dict]]:
    """Per client, its requests in order: every length `rounds` times, shuffled, fixed seeds."""
    lengths = [int(n) for n in args.lengths.split(",")] * args.rounds
    rng = random.Random(7)  # noqa: S311 (a seeded workload generator, not a secret)
    clients = []
    for c in range(args.clients):
        order = rng.sample(lengths, len(lengths))
        clients.append([{"model": args.model, "max_tokens": n, "temperature": 0.8, "top_p": 0.95,
                         "seed": 1000 + c * 100 + i,
                         "messages": [{"role": "user", "content": f"Describe scene {c}-{i} in detail." * (1 + i % 3)}]}
                        for i, n in enumerate(order)])
    return clients


def _post(session: requests.Session, url: str, body: dict) -> tuple[dict, float]:
    started = time.perf_counter()
    reply = session.post(url + "/chat", json=body, timeout=900)
    reply.raise_for_status()
    return reply.json(), time.perf_counter() - started


def _concurrent(url: str, clients: list[list[dict]]) -> dict:
    def client(bodies: list[dict]) -> list[tuple[dict, dict, float]]:
        session = requests.Session()
        return [(body, *_post(session, url, body)) for body in bodies]

    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(len(clients)) as pool:
        results = [r for rs in pool.map(client, clients) for r in rs]
    return _summary(results, time.perf_counter() - started)


def _alone(url: str, bodies: list[dict]) -> dict:
    session = requests.Session()
    started = time.perf_counter()
    results = [(body, *_post(session, url, body)) for body in bodies]
    return _summary(results, time.perf_counter() - started)


def _summary(results: list[tuple[dict, dict, float]], elapsed: float) -> dict:
    tokens = sum(reply["tokens_generated"] for _, reply, _ in results)
    return {"seconds": elapsed, "requests": len(results), "tokens": tokens, "tps": tokens / elapsed,
            "mean_batch": statistics.mean(reply["model_info"]["batch_size"] for _, reply, _ in results),
            "texts": {body["seed"]: reply["response"] for body, reply, _ in results},
            "latency": {body["seed"]: t for body, _, t in results},
            "max_tokens": {body["seed"]: body["max_tokens"] for body, _, _ in results},
            "device": results[0][1]["model_info"]["device"]}


MODES = (("continuous", "continuous", None), ("static", "static", None), ("unbatched", "continuous", 1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--lengths", default="16,32,64,128,256", help="max_tokens of the requests")
    parser.add_argument("--rounds", type=int, default=2, help="how often each client sends each length")
    parser.add_argument("--repeats", type=int, default=3, help="measurements of each mode, interleaved")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--window-ms", type=int, default=10)
    parser.add_argument("--model", default="qwen_instruct", choices=["qwen_instruct", "qwen_base"])
    parser.add_argument("--threads", type=int, default=1,
                        help="OMP_NUM_THREADS of the worker (CPU): on a machine shared with other work, more than one "
                             "intra-op thread makes every small matrix product wait for a descheduled thread")
    args = parser.parse_args()

    clients = _bodies(args)
    lengths = sorted({int(n) for n in args.lengths.split(",")})
    # one request of every length from every client, with seeds of their own: the warm-up round
    warmup = [[{**bodies[0], "seed": 1 + c * 10 + i, "max_tokens": n} for i, n in enumerate(lengths)]
              for c, bodies in enumerate(clients)]
    shortest = lengths[0]
    runs: dict[str, list[dict]] = {label: [] for label, _, _ in MODES}
    runs["alone"] = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        workers = {}
        for label, mode, batch in MODES:
            env = {**os.environ, "PYTHONPATH": str(REPO), "BIND_HOST": "127.0.0.1", "WORKER_API_KEY": "",
                   "OUTPUT_DIR": str(Path(tmp) / label / "outputs"), "CHAT_BATCH_SIZE": str(batch or args.batch_size),
                   "CHAT_BATCHING": mode, "CHAT_BATCH_WINDOW_MS": str(args.window_ms),
                   "GUNICORN_THREADS": str(max(16, args.clients * 2)), "LOG_LEVEL": "WARNING",
                   "OMP_NUM_THREADS": str(args.threads)}
            workers[label] = stack.enter_context(WorkerProcess("chat", env))
        for worker in workers.values():
            _concurrent(worker.url, warmup)  # loads the model, then a round outside the figures
        for _ in range(args.repeats):
            for label, _mode, batch in MODES:
                run = _concurrent(workers[label].url, clients)
                run["batch_size"] = batch or args.batch_size
                runs[label].append(run)
            runs["alone"].append(_alone(workers["unbatched"].url, [b for bodies in clients for b in bodies
                                                                   if b["max_tokens"] == shortest]))
    elapsed = time.perf_counter() - started

    unbatched = runs["unbatched"]
    short = list(runs["alone"][0]["latency"])
    alone_short = statistics.median(t for r in runs["alone"] for t in r["latency"].values())
    total = len(unbatched[0]["texts"])
    print(f"chat worker, {args.model}, device {unbatched[0]['device']}: {args.clients} concurrent clients x "
          f"{total // args.clients} requests (max_tokens {args.lengths}, each {args.rounds}x per client), "
          f"window {args.window_ms} ms, OMP_NUM_THREADS {args.threads}; {args.repeats} runs of each mode, "
          f"interleaved, after a warm-up round ({elapsed:.0f} s in all)")
    print(f"{'mode':<12}{'batch':>6}{'tokens':>8}{'tok/s median':>14}{'tok/s range':>15}{'x unbatched':>13}"
          f"{'x range':>13}{'mean batch':>12}{f'short p50 s (max_tokens {shortest})':>32}{'x alone':>9}"
          f"{'texts differing from alone':>28}")
    for label in ("continuous", "static", "unbatched", "alone"):
        rs = runs[label]
        tps = [r["tps"] for r in rs]
        ratios = [r["tps"] / u["tps"] for r, u in zip(rs, unbatched, strict=True)]
        p50 = statistics.median(r["latency"][seed] for r in rs for seed in short)
        differ = [sum(r["texts"][seed] != unbatched[0]["texts"][seed] for seed in r["texts"]) for r in rs]
        differing = f"{min(differ)}-{max(differ)} of {len(rs[0]['texts'])}"
        print(f"{label:<12}{rs[0].get('batch_size', 1):>6}{rs[0]['tokens']:>8}{statistics.median(tps):>14.1f}"
              f"{f'{min(tps):.1f}-{max(tps):.1f}':>15}{statistics.median(ratios):>13.2f}"
              f"{f'{min(ratios):.2f}-{max(ratios):.2f}':>13}{statistics.mean(r['mean_batch'] for r in rs):>12.2f}"
              f"{p50:>32.3f}{p50 / alone_short:>9.2f}"
              f"{differing:>28}")
    print("unbatched: every request alone in its batch (the texts' baseline: its first run); alone: the short "
          "requests one at a time with nothing else running (the latency baseline). x unbatched: median and range "
          "of each repeat's ratio to the unbatched run of the same repeat.")


if __name__ == "__main__":
    main()
