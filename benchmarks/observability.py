"""What metrics and structured logging cost per job, with and without, side by side in one run.

1. The instrumentation of one job alone: the metric updates the runtime makes for a job (submitted,
   started, finished with five stage timings, callbacks) and the job's log lines (acceptance, end),
   formatted as JSON lines into a file, against the same code path with metrics switched off and
   logging disabled.
2. Jobs end to end through the real JobRunner (journal writes, PNG and thumbnail encoding, storage,
   provenance sidecar) with a stand-in engine that returns a 64x64 image at once, so the job's own
   work is as small as it gets and the observability share as large as it gets: with metrics and JSON
   logs against metrics off and logging disabled, in alternating rounds (medians).

Costs are CPU time of this process (`time.process_time`, every thread), which a machine shared with
other work inflates far less than wall time; wall time is printed beside it. The budget is 1 ms of
observability per job; the run says whether it holds.

    .venv/bin/python benchmarks/observability.py
    .venv/bin/python benchmarks/observability.py --jobs 200 --rounds 7
"""
from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from PIL import Image  # noqa: E402

from common import metrics as metrics_module  # noqa: E402
from common.callbacks import CallbackSender  # noqa: E402
from common.jobs import JobJournal  # noqa: E402
from common.logging import configure_logging, describe_text, log_context, set_stage  # noqa: E402
from common.metrics import StageTimer, configure_metrics  # noqa: E402
from configuration.settings import Settings  # noqa: E402
from workers.engines.base import GeneratedAsset  # noqa: E402
from workers.runtime.jobs import JobRunner  # noqa: E402
from workers.runtime.local_memory import LocalMemory  # noqa: E402
from workers.runtime.models import ModelHost  # noqa: E402
from workers.runtime.storage import LocalStorage  # noqa: E402

BUDGET_MS = 1.0
PROMPT = "a lighthouse on a cliff at dusk, waves below, volumetric light"
log = logging.getLogger("benchmarks.observability")


class Off:
    """Metrics switched off: every attribute, label and call is a no-op that returns itself."""

    def __getattr__(self, _name):
        return self

    def __call__(self, *args, **kwargs):
        return self


@contextmanager
def observability(on: bool, log_file: Path):
    """On: this process's Prometheus metrics and JSON log lines (INFO) into `log_file`. Off: no-op
    metrics and logging disabled."""
    saved = metrics_module._PROCESS
    if on:
        configure_logging("benchmark", "INFO", "json", stream=open(log_file, "a", encoding="utf-8"))
        metrics_module._PROCESS = None
        configure_metrics("benchmark", "placeholder")
        logging.disable(logging.NOTSET)
    else:
        metrics_module._PROCESS = Off()  # type: ignore[assignment]
        logging.disable(logging.CRITICAL)
    try:
        yield
    finally:
        metrics_module._PROCESS = saved
        logging.disable(logging.NOTSET)


# ---- 1. the instrumentation of one job ---------------------------------------------------------------------

def instrumentation_of_one_job(i: int) -> None:
    """What the runtime does for observability during one job (workers/runtime/jobs.py, common/callbacks.py)."""
    m = metrics_module.process_metrics()
    timer = StageTimer()
    m.job_submitted("sdxl", "sdxl_image_fast")
    with log_context(job_id=f"job-{i}", request_id=f"req-{i}", worker="sdxl", stage="queued"):
        log.info("job accepted: %s, prompt %s", "sdxl_image_fast", describe_text(PROMPT),
                 extra={"job_type": "sdxl_image_fast", "queue_depth": 0})
    m.job_started("sdxl", "sdxl_image_fast")
    with log_context(job_id=f"job-{i}", request_id=f"req-{i}", worker="sdxl"):
        timer.add("queue_wait", 0.001)
        for stage in ("loading", "generating", "encoding", "storing"):
            timer.enter(stage)
            set_stage(stage)
        stages = timer.stop()
        m.job_finished("sdxl", "sdxl_image_fast", "completed", 1.5, None, stages)
        log.info("job %s%s in %s", "completed", "", "1.500s",
                 extra={"job_type": "sdxl_image_fast", "status": "completed", "error_code": None,
                        "duration_s": 1.5, "stages_s": stages})
        m.callback_attempts.labels("delivered").inc()
        m.callbacks_delivered.inc()


def bench_instrumentation(on: bool, log_file: Path, n: int) -> tuple[float, float]:
    """(CPU, wall) microseconds per job of the instrumentation alone."""
    with observability(on, log_file):
        for i in range(200):  # warm caches, create the labelled series
            instrumentation_of_one_job(i)
        cpu, wall = time.process_time(), time.perf_counter()
        for i in range(n):
            instrumentation_of_one_job(i)
        return (time.process_time() - cpu) / n * 1e6, (time.perf_counter() - wall) / n * 1e6


# ---- 2. jobs through the real runtime ------------------------------------------------------------------------

class InstantEngine:
    """Returns a 64x64 image at once: the runtime's own work is all that is left to measure (in the nsfw
    tier, so no output classifier runs: its cost is the content policy's, benchmarks/policy.py)."""
    device = "cpu"
    worker = "benchmark"
    settings = Settings(content_tier_default="nsfw")

    def model_names(self): return ["m"]
    def is_loaded(self, model): return True
    def load(self, model): pass
    def unload(self, model): pass
    def memory_estimate(self, model): return 1000
    def resident_bytes(self, model): return 1000
    def required_models(self, params): return ["m"]
    def working_bytes(self, params): return 0
    def reference_urls(self, params): return {}
    def weight_paths(self, model): return []
    warm_up_at_load = False
    def warm_up(self, model): pass                       # never called: no warm_up_at_load
    def warm_up_working_bytes(self, model): return 0
    def pipeline_of(self, params): return None
    def check_request(self, params): pass

    def run(self, params, ctx):
        ctx.stage("generating", total_steps=1)
        ctx.on_step(1, 1)
        return [GeneratedAsset("image", [Image.new("RGB", (64, 64), (params["v"] % 256, 0, 0))], {"seed": params["v"]})]


def bench_jobs(on: bool, root: Path, log_file: Path, jobs: int) -> tuple[float, float]:
    """(CPU, wall) milliseconds per job, submission of `jobs` jobs to the last one done."""
    with observability(on, log_file):
        settings = Settings(output_dir=root / "out")
        engine = InstantEngine()
        runner = JobRunner("benchmark", engine, ModelHost(engine, LocalMemory(settings, "cpu")),
                           LocalStorage(root / "out"), CallbackSender(settings), JobJournal(root / "journal"))
        runner.submit(None, "sdxl_image_fast", "u", {"prompt": PROMPT, "v": 0}, {})  # warm up
        while not runner.idle():
            time.sleep(0.001)
        cpu, wall = time.process_time(), time.perf_counter()
        ids = [runner.submit(None, "sdxl_image_fast", "u", {"prompt": PROMPT, "v": i}, {})[0].job_id
               for i in range(jobs)]
        for job_id in ids:
            assert runner.wait(job_id, 60), "a benchmark job did not finish"
        return (time.process_time() - cpu) / jobs * 1e3, (time.perf_counter() - wall) / jobs * 1e3


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=5000, help="jobs' instrumentation measured alone")
    parser.add_argument("--jobs", type=int, default=100, help="jobs per round through the runtime")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds with and without")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        log_file = tmp_path / "log.jsonl"
        alone: dict[bool, list[tuple[float, float]]] = {True: [], False: []}
        for r in range(3):
            for on in ((True, False) if r % 2 == 0 else (False, True)):
                alone[on].append(bench_instrumentation(on, log_file, args.calls))
        per_job: dict[bool, list[tuple[float, float]]] = {True: [], False: []}
        for r in range(args.rounds):
            for on in ((True, False) if r % 2 == 0 else (False, True)):
                per_job[on].append(bench_jobs(on, tmp_path / f"r{r}-{on}", log_file, args.jobs))
        with open(log_file, encoding="utf-8") as fh:
            lines = sum(1 for _ in fh)

    def med(runs: list[tuple[float, float]], i: int) -> float:
        return statistics.median(run[i] for run in runs)

    a_cpu = {on: med(alone[on], 0) for on in alone}
    a_wall = {on: med(alone[on], 1) for on in alone}
    j_cpu = {on: med(per_job[on], 0) for on in per_job}
    j_wall = {on: med(per_job[on], 1) for on in per_job}
    extra_alone = (a_cpu[True] - a_cpu[False]) / 1000
    extra_jobs = j_cpu[True] - j_cpu[False]
    print("observability per job (Prometheus metrics + JSON log lines), with vs without, one run; medians")
    print(f"  instrumentation alone ({args.calls} jobs, 3 runs each)   CPU us/job      wall us/job")
    print(f"    with                                      {a_cpu[True]:10.1f}   {a_wall[True]:14.1f}")
    print(f"    without                                   {a_cpu[False]:10.1f}   {a_wall[False]:14.1f}")
    print(f"    cost                                      {extra_alone * 1000:10.1f}   "
          f"{a_wall[True] - a_wall[False]:14.1f}")
    print(f"  jobs through JobRunner ({args.jobs} jobs, {args.rounds} rounds each)   CPU ms/job      wall ms/job")
    print(f"    with                                      {j_cpu[True]:10.3f}   {j_wall[True]:14.3f}")
    print(f"    without                                   {j_cpu[False]:10.3f}   {j_wall[False]:14.3f}")
    print(f"    cost                                      {extra_jobs:+10.3f}   {j_wall[True] - j_wall[False]:+14.3f}"
          f"   ({j_cpu[True] / j_cpu[False]:.3f}x the CPU of a job that does nothing)")
    print(f"  JSON log lines written: {lines}")
    worst = max(extra_alone, extra_jobs)
    print(f"  budget {BUDGET_MS:.1f} ms of CPU per job: {'within' if worst < BUDGET_MS else 'OVER'} "
          f"(largest measured cost {worst:.3f} ms)")
    return 0 if worst < BUDGET_MS else 1


if __name__ == "__main__":
    sys.exit(main())
