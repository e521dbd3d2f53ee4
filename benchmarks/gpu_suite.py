"""The GPU suite: what matters on a CUDA machine, measured in parts that each fit one short command.

    python3 benchmarks/gpu_suite.py --scale full --only sdxl --only stack --budget-s 230 --out DIR [--wheels DIR]
    .venv/bin/python benchmarks/gpu_suite.py --scale tiny --out DIR      # CPU, placeholder models, every part
    .venv/bin/python benchmarks/gpu_suite.py --fetch-wheels .whl         # here: the wheels a GPU image lacks
    .venv/bin/python benchmarks/gpu_suite.py --merge DIR1 DIR2 ... --out DIR   # one table from several calls

`--scale full` needs CUDA. It builds the synthetic full-size models a part needs (MODEL_PROFILE=synthetic:
random weights, real sizes, dtypes and file formats; workers/placeholders/synthetic.py), checking the disk
first, and deletes each family when the parts of this call that need it are done. Parts (`--only`,
repeatable; default sdxl, chat, wan, stack):

  sdxl     1024x1024, 30 steps, batch 1 and 6 (s/image) through the worker's job path; the plain
           StableDiffusionXLPipeline beside it; each GPU setting alone, every one applied to the same plain
           pipeline (attention without SDPA, channels_last, the fp16-fix VAE against the stock VAE's fp32
           upcast); NaN check of an fp16 VAE decode
  chat     Qwen2.5-7B single-stream tok/s and 8 concurrent clients through the worker's HTTP routes; a plain
           `generate` (one stream, then two one after another) beside it; NaN check of a padded batch
  wan      480x832, 81 frames at the video_fast preset (s/video); the plain WanPipeline beside it; one umT5
           encode on the GPU and on the CPU
  stack    start-to-ready under gunicorn of each worker whose models are on disk in this call, and the HTTP
           overhead of one job (with the SDXL worker)
  compile  torch.compile of the plain SDXL UNet (60-150 s cold): not in the default parts
  vace     one reference-mode (VACE first frame) job: not in the default parts; needs about 9 GB more disk
  every part: the dtype and device of every module after load, the peak device memory of each job against
           the broker's estimate for it, NVML's used memory against torch.cuda.mem_get_info (device found
           by UUID, also when CUDA_VISIBLE_DEVICES names one), reserved-but-unallocated memory after a job

The budget (`--budget-s`) is enforced inside the parts: before each measurement its estimate is compared
with what is left, and one that would not finish is skipped with a line saying so. Every row and note is
written to suite.json and suite.md in `--out` at once (atomically: a temporary file renamed over the old),
so a call killed by its time limit still returns what it measured; SIGTERM adds a line saying where it was
stopped. A folder that already holds a suite.json is appended to. docs/PERFORMANCE.md says what each figure
means and holds the plan for one short GPU rental (which calls, budgets, minutes per part).

The script runs with the machine's own (CUDA) torch: with `--wheels DIR` it installs the wheels there that
are missing or differ from requirements.txt's pins into a private folder (never torch) and re-executes
itself with that folder first on the path; the workers it starts keep that folder on their PYTHONPATH.
`--fetch-wheels DIR`, run where PyPI is reachable, downloads every pin and the dependencies the GPU image
lacks (names compared after PEP 503 normalisation).
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import importlib.metadata
import importlib.util
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

API_KEY = "gpu-suite-key"
PROMPT = "a red fox running through deep snow at dawn, cinematic light"
# Where the carried wheels are installed (kept between calls on a machine that stays up).
SITE = Path(os.environ.get("OURVIDZ_GPU_SUITE_SITE", Path(tempfile.gettempdir()) / "ourvidz-gpu-suite-site"))
# Requirements never installed from wheels: the machine's own (CUDA) build is the point.
NOT_FROM_WHEELS = {"torch"}
# Too large to carry (the device tree travels in 64 MiB); without it MP4 encoding is not measured.
TOO_LARGE_TO_CARRY = {"imageio-ffmpeg"}
# Free disk kept beside a family being built.
DISK_HEADROOM_GB = 3.0

# ---- scales ------------------------------------------------------------------------------------------
# Estimates: seconds each measurement is expected to take (full: one H100/H200, from the review of the
# libraries' costs in issue 20 until a GPU run replaces them: parts of SDXL 185-355 s, chat 125-195 s,
# WAN 260-480 s, stack 30-200 s). The budget check before each measurement reads them.
SCALES: dict[str, dict[str, Any]] = {
    "tiny": {
        "profile": "placeholder", "budget_s": 600,
        "sdxl": {"width": 64, "height": 64, "steps": 2, "batches": (1, 3), "repeats": 1},
        "wan": {"type": "video_fast", "width": 32, "height": 32, "frames": 5, "steps": 1, "reference": "start"},
        "chat": {"max_tokens": 8, "prompt_words": 16, "clients": 4, "model": "qwen_instruct"},
        "stack": ("sdxl",),
        "estimates": {
            "build": 5, "sdxl.load": 5, "sdxl.job": 3, "sdxl.plain": 5, "sdxl.setting": 3, "sdxl.nan": 1,
            "compile": 5,
            "chat.load": 3, "chat.single": 3, "chat.clients": 3, "chat.plain": 5, "chat.nan": 1,
            "wan.load": 5, "wan.job": 5, "wan.mp4": 1, "wan.umt5": 2, "wan.plain": 5,
            "vace.load": 5, "vace.job": 5,
            "stack.start": 10, "stack.http": 10,
        },
    },
    "full": {
        "profile": "synthetic", "budget_s": 240,
        "sdxl": {"width": 1024, "height": 1024, "steps": 30, "batches": (1, 6), "repeats": 2},
        "wan": {"type": "video_fast", "width": 832, "height": 480, "frames": 81, "steps": None, "reference": "start"},
        "chat": {"max_tokens": 256, "prompt_words": 400, "clients": 8, "model": "qwen_instruct"},
        "stack": ("sdxl", "chat", "wan"),
        "estimates": {
            # building a family: seconds per GB written (initialised on the GPU, written shard by shard)
            "build": 4,
            "sdxl.load": 40, "sdxl.job": 30, "sdxl.plain": 60, "sdxl.setting": 15, "sdxl.nan": 5,
            "compile": 150,
            "chat.load": 30, "chat.single": 20, "chat.clients": 20, "chat.plain": 60, "chat.nan": 5,
            "wan.load": 60, "wan.job": 70, "wan.mp4": 5, "wan.umt5": 30, "wan.plain": 110,
            "vace.load": 40, "vace.job": 70,
            "stack.start": 40, "stack.http": 30,
        },
    },
}
# The worker each family serves, for the stack part.
STACK_FAMILIES = {"sdxl": ("sdxl",), "chat": ("qwen",), "wan": ("wan",)}


# ---- bootstrap: the machine's torch, the pinned rest from wheels ------------------------------------

def normalise(name: str) -> str:
    """A distribution name as PEP 503 compares them (prometheus_client == prometheus-client)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def pinned_requirements() -> dict[str, str]:
    pins = {}
    for line in (REPO / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            pins[normalise(name.split("[", 1)[0].strip())] = version.strip()
    return pins


def _installed(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def needed_from_wheels() -> dict[str, tuple[str | None, str]]:
    """name -> (installed version or None, pinned version) for every pin the environment does not meet."""
    return {name: (_installed(name), version) for name, version in pinned_requirements().items()
            if name not in NOT_FROM_WHEELS and _installed(name) != version}


def _wheel_name_version(path: Path) -> tuple[str, str]:
    dist, version = path.name.split("-")[:2]
    return normalise(dist), version


def suite_pythonpath(*first: str) -> str:
    """`first`, then the PYTHONPATH this process was started with (after the bootstrap: the carried
    packages' folder), without repeats: what every process the suite starts needs."""
    entries = [*first, *os.environ.get("PYTHONPATH", "").split(os.pathsep)]
    return os.pathsep.join(dict.fromkeys(e for e in entries if e))


def bootstrap(wheels: Path | None) -> list[str]:
    """Install the carried wheels this interpreter lacks or has at another version (the pinned requirements
    and their dependencies) into a private folder, and re-execute with it first on sys.path. Returns notes
    for the table."""
    if os.environ.get("OURVIDZ_GPU_SUITE_BOOTSTRAPPED"):
        return [f"{n}: {have or 'missing'} (pinned {want}; no wheel carried)"
                for n, (have, want) in needed_from_wheels().items()]
    needed = needed_from_wheels()
    if wheels is None:
        missing = [n for n, (have, _) in needed.items() if have is None and n not in TOO_LARGE_TO_CARRY]
        if missing:
            raise SystemExit(f"gpu_suite: missing packages {missing}: carry them as wheels (--wheels DIR; "
                             "make them with --fetch-wheels DIR where PyPI is reachable)")
        return [f"{n}: {have or 'missing'} (pinned {want})" for n, (have, want) in needed.items()]
    files = [str(path) for path in sorted(wheels.glob("*.whl"))
             if _installed(_wheel_name_version(path)[0]) != _wheel_name_version(path)[1]]
    if files:
        subprocess.check_call([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",  # noqa: S603 (fixed argv, no shell)
                               "--no-cache-dir", "--upgrade", "--target", str(SITE), *files])
    env = dict(os.environ, OURVIDZ_GPU_SUITE_BOOTSTRAPPED="1", PYTHONPATH=suite_pythonpath(str(SITE), str(REPO)))
    os.execve(sys.executable, [sys.executable, *sys.argv], env)  # noqa: S606 (re-executes this script with its own argv)
    return []  # not reached


# Python packages this workplace's GPU image ships (the device documentation's list, 2026-11): their
# unpinned use as dependencies is not carried; a pinned requirement always is, at its pin.
GPU_IMAGE_PACKAGES = set("""
accelerate aiohttp annotated-doc anyio attrs certifi charset-normalizer click filelock fsspec h11 hf-xet httpcore
httpx huggingface-hub idna jinja2 markdown-it-py markupsafe mdurl multidict numpy packaging pillow prometheus-client
propcache psutil pygments pyyaml regex requests rich safetensors sentencepiece shellingham tokenizers tqdm typer
typing-extensions urllib3 werkzeug yarl zipp""".split())


def dependency_closure() -> dict[str, str]:
    """The pinned requirements (torch and the too-large left out) and everything they need, at the versions
    installed here (the pinned environment), from the distributions' own metadata; PEP 503 names."""
    from packaging.requirements import Requirement

    skip = NOT_FROM_WHEELS | TOO_LARGE_TO_CARRY | {"triton", "setuptools"}
    pins = pinned_requirements()
    found: dict[str, str] = {}
    stack = list(pins)
    while stack:
        name = normalise(stack.pop())
        # nvidia-* are CUDA's libraries, torch's to bring; a pinned one (nvidia-ml-py, NVML) is ours
        if name in found or name in skip or (name.startswith("nvidia-") and name not in pins):
            continue
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            raise SystemExit(f"gpu_suite: {name} is needed but not installed here; run --fetch-wheels from the "
                             "project's bootstrapped environment") from None
        found[name] = dist.version
        for text in dist.requires or []:
            requirement = Requirement(text)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                stack.append(requirement.name)
    return found


def carried_requirements() -> dict[str, str]:
    """name -> version of every wheel carried to the GPU machine: each pin (whatever the image ships) and
    each dependency the image does not ship."""
    pins = pinned_requirements()
    return {n: v for n, v in sorted(dependency_closure().items()) if n in pins or n not in GPU_IMAGE_PACKAGES}


def fetch_wheels(target: Path, python_version: str = "3.12") -> int:
    """Download (here, where PyPI is reachable) the wheels a GPU image without network needs: the pinned
    requirements and the dependencies the image does not ship, for its Python, x86-64 Linux."""
    target.mkdir(parents=True, exist_ok=True)
    wanted = [f"{n}=={v}" for n, v in carried_requirements().items()]
    platforms = [a for p in ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")
                 for a in ("--platform", p)]
    return subprocess.call([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",  # noqa: S603 (fixed argv, no shell)
                            "--python-version", python_version, "--implementation", "cp", *platforms,
                            "-d", str(target), *wanted])


# ---- the table ---------------------------------------------------------------------------------------

class SkipPart(Exception):
    """A part cannot run here (not enough disk for its models): skipped with the reason, not failed."""


def write_atomically(path: Path, text: str) -> None:
    """The whole new text or the old file, never half of one (a call killed while writing)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class Suite:
    def __init__(self, scale: str, out: Path, budget_s: float, device: str, environment: dict | None = None,
                 parts: list[str] | None = None):
        self.scale, self.cfg, self.out, self.device = scale, SCALES[scale], out, device
        self.started = time.monotonic()
        self.deadline = self.started + budget_s
        self.budget_s = budget_s
        self.cuda = device == "cuda"
        self.parts = list(parts or [])        # the parts of this call, in order
        self.current: str | None = None       # the part running now
        self.environment = environment or {}
        self.rows: list[dict] = []
        self.lines: list[str] = []   # skipped / failed measurements, notes
        self.calls: list[dict] = []
        previous = out / "suite.json"
        if previous.exists():  # an earlier call into the same folder: its rows stay, this call's follow
            data = json.loads(previous.read_text())
            self.rows, self.lines, self.calls = data["rows"], data["notes"], data.get("calls", [])
        self.call = {"parts": self.parts, "budget_s": budget_s, "scale": scale, "seconds": 0.0, "finished": False,
                     "started": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
        self.calls.append(self.call)
        self.write()

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def add(self, section: str, measure: str, value, unit: str = "", baseline=None, note: str = "") -> None:
        ratio = None
        if isinstance(value, (int, float)) and isinstance(baseline, (int, float)) and value:
            ratio = round(baseline / value, 3)
        row = {"section": section, "measure": measure, "value": _round(value), "unit": unit,
               "baseline": _round(baseline), "baseline_over_ours": ratio, "note": note}
        self.rows.append(row)
        print(f"  {section:6s} {measure:58s} {_fmt(row['value'])} {unit} "
              f"{'(baseline ' + _fmt(row['baseline']) + ')' if baseline is not None else ''} {note}", flush=True)
        self.write()

    def note(self, text: str) -> None:
        self.lines.append(text)
        print(f"  -- {text}", flush=True)
        self.write()

    def cuda_only(self, section: str, what: str) -> bool:
        """False (with a line) on a machine without CUDA."""
        if not self.cuda:
            self.note(f"{section}: {what}: skipped: CUDA only (this run is on {self.device})")
        return self.cuda

    def estimate(self, key: str) -> float:
        return float(self.cfg["estimates"][key])

    def fits(self, what: str, key_or_seconds: str | float) -> bool:
        """Whether a measurement expected to take `key_or_seconds` (an estimates key, or seconds) fits in
        what is left of the budget; if not, a line says it was skipped and why."""
        seconds = self.estimate(key_or_seconds) if isinstance(key_or_seconds, str) else float(key_or_seconds)
        if seconds > self.left():
            self.note(f"{what}: skipped: needs about {seconds:.0f} s, {max(self.left(), 0):.0f} s left of the "
                      f"{self.budget_s:.0f} s budget")
            return False
        return True

    def part(self, name: str, fn) -> None:
        print(f"== {name} ({self.left():.0f} s left of the budget)", flush=True)
        self.current = name
        started = time.monotonic()
        try:
            fn(self)
        except SkipPart as exc:
            self.note(f"{name}: skipped: {exc}")
        except Exception as exc:  # one failing part must not lose the others' figures
            self.note(f"{name}: FAILED: {type(exc).__name__}: {exc}")
            traceback.print_exc()
        finally:
            self.add(name, "part wall time", time.monotonic() - started, "s")
            self.current = None
            _free_device()

    def later_parts(self) -> list[str]:
        """The parts of this call still to run after the current one."""
        if self.current not in self.parts:
            return []
        return self.parts[self.parts.index(self.current) + 1:]

    def finish(self, how: str = "") -> None:
        self.call["seconds"] = round(time.monotonic() - self.started, 1)
        self.call["finished"] = not how
        if how:
            self.lines.append(how)
        self.write()

    def write(self) -> Path:
        self.out.mkdir(parents=True, exist_ok=True)
        self.call["seconds"] = round(time.monotonic() - self.started, 1)
        data = {"scale": self.scale, "environment": self.environment, "rows": self.rows, "notes": self.lines,
                "calls": self.calls, "seconds": round(sum(c["seconds"] for c in self.calls), 1)}
        write_atomically(self.out / "suite.json", json.dumps(data, indent=2) + "\n")
        write_atomically(self.out / "suite.md", render_markdown(data))
        return self.out


def render_markdown(data: dict) -> str:
    md = [f"# GPU suite ({data['scale']})", "", "| key | value |", "|---|---|"]
    md += [f"| {k} | {v} |" for k, v in data["environment"].items()]
    md += ["", "| call | parts | budget s | seconds | finished |", "|---|---|---|---|---|"]
    md += [f"| {i + 1} | {' '.join(c['parts'])} | {c['budget_s']:.0f} | {c['seconds']} | "
           f"{'yes' if c['finished'] else 'no'} |" for i, c in enumerate(data.get("calls", []))]
    md += ["", "| section | measure | ours | unit | baseline | baseline / ours | note |",
           "|---|---|---|---|---|---|---|"]
    md += [f"| {r['section']} | {r['measure']} | {_fmt(r['value'])} | {r['unit']} | {_fmt(r['baseline'])} | "
           f"{_fmt(r['baseline_over_ours'])} | {r['note']} |" for r in data["rows"]]
    md += ["", "## Notes (skipped or failed measurements, CUDA-only lines)", ""]
    md += [f"- {line}" for line in data["notes"]]
    md += ["", f"Total: {data['seconds']} s.", ""]
    return "\n".join(md)


def merge(folders: list[Path], out: Path) -> Path:
    """One table from the suite.json of several calls (each call's rows in order)."""
    merged: dict[str, Any] = {"scale": None, "environment": {}, "rows": [], "notes": [], "calls": []}
    for folder in folders:
        data = json.loads((folder / "suite.json").read_text())
        merged["scale"] = merged["scale"] or data["scale"]
        merged["environment"] = merged["environment"] or data["environment"]
        for key in ("rows", "notes", "calls"):
            merged[key] += data.get(key, [])
    merged["seconds"] = round(sum(c["seconds"] for c in merged["calls"]), 1)
    out.mkdir(parents=True, exist_ok=True)
    write_atomically(out / "suite.json", json.dumps(merged, indent=2) + "\n")
    write_atomically(out / "suite.md", render_markdown(merged))
    return out


def _round(value):
    if isinstance(value, float):
        return round(value, 4 if abs(value) < 10 else 2)
    return value


def _fmt(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _free_device() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn, *args, **kwargs):
    _sync()
    started = time.perf_counter()
    result = fn(*args, **kwargs)
    _sync()
    return time.perf_counter() - started, result


# ---- device memory helpers (CUDA-only branches, each small) ------------------------------------------

def nvml_reading() -> dict | None:
    """NVML's view of this process's device, found as the broker finds it (orchestrator/device_memory.py:
    a UUID in CUDA_VISIBLE_DEVICES, full or a prefix, a MIG slice; a numeric entry by PCI bus order)."""
    import torch

    if not torch.cuda.is_available():
        return None
    try:
        import pynvml
    except ImportError:
        return {"error": "nvidia-ml-py not installed"}
    from orchestrator.device_memory import read_nvml, resolve_device_uuid

    pynvml.nvmlInit()
    try:
        uuid = resolve_device_uuid(pynvml, os.environ.get("CUDA_VISIBLE_DEVICES"))
        total, used = read_nvml(pynvml, uuid)
        return {"uuid": uuid, "used": used, "total": total}
    except Exception as exc:  # pynvml's NVMLError subclasses, an ambiguous UUID prefix
        return {"error": f"{type(exc).__name__}: {exc}"}
    finally:
        pynvml.nvmlShutdown()


def memory_snapshot() -> dict:
    import torch

    free, total = torch.cuda.mem_get_info()
    return {"allocated": torch.cuda.memory_allocated(), "reserved": torch.cuda.memory_reserved(),
            "peak": torch.cuda.max_memory_allocated(), "used": total - free, "total": total}


def record_memory(suite: Suite, section: str, what: str, estimate_bytes: int, run) -> object:
    """Run `run()`; on CUDA add its peak (over what was allocated before) against the estimate, and the
    memory reserved but not allocated after it, before and after empty_cache()."""
    import torch

    if not suite.cuda:
        suite.note(f"{section}: peak device memory of {what}: skipped: CUDA only (broker estimate "
                   f"{estimate_bytes / 2**20:.0f} MiB)")
        return run()
    _sync()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    result = run()
    _sync()
    snap = memory_snapshot()
    suite.add(section, f"peak device memory of {what} (over resident weights)", (snap["peak"] - before) / 2**20, "MiB",
              baseline=estimate_bytes / 2**20, note="baseline column: the broker's estimate")
    suite.add(section, f"reserved but unallocated after {what}", (snap["reserved"] - snap["allocated"]) / 2**20, "MiB")
    torch.cuda.empty_cache()
    after = memory_snapshot()
    suite.add(section, f"reserved but unallocated after {what}, after empty_cache",
              (after["reserved"] - after["allocated"]) / 2**20, "MiB")
    nvml = nvml_reading()
    if nvml and "used" in nvml:
        suite.add(section, "NVML used vs torch.cuda.mem_get_info used", nvml["used"] / 2**20, "MiB",
                  baseline=after["used"] / 2**20, note=f"NVML device {nvml['uuid']}")
    elif nvml:
        suite.note(f"{section}: NVML: {nvml['error']}")
    return result


def module_table(suite: Suite, section: str, modules: dict) -> None:
    """The dtype(s) and device(s) of every module after load."""
    for name, module in modules.items():
        if module is None or not hasattr(module, "parameters"):
            continue
        dtypes = sorted({str(p.dtype).replace("torch.", "") for p in module.parameters()})
        devices = sorted({p.device.type for p in module.parameters()})
        suite.add(section, f"after load: {name}", "/".join(dtypes), note=f"on {'/'.join(devices)}")


# ---- the worker in-process ---------------------------------------------------------------------------

class InProcessWorker:
    """A worker's Flask app in this process (the real routes, job runtime and engine), and the job path
    without HTTP: the same steps as the job runner (references fetched, models leased, engine.run)."""

    def __init__(self, worker: str, env: dict):
        from configuration.settings import Settings
        from workers.http.app import create_app

        self.settings = Settings.from_env(env)
        self.app = create_app(worker, self.settings)
        self.state = self.app.extensions["worker_state"]
        self.engine = self.state.engine
        self.headers = {"Authorization": f"Bearer {API_KEY}", "X-Callback-Mode": "none"}

    def client(self):
        return self.app.test_client()

    def post(self, path: str, body: dict, client=None):
        response = (client or self.client()).post(path, json=body, headers=self.headers)
        data = response.get_json()
        if response.status_code >= 400:
            raise RuntimeError(f"{path} answered {response.status_code}: {data}")
        return data

    def load(self, model: str | None = None) -> float:
        seconds, _ = timed(self.state.host.load, model)
        return seconds

    def job(self, body: dict, wait_s: float = 600) -> dict:
        record = self.post(f"/generate?wait={wait_s:.0f}", body)
        if record.get("status") != "completed":
            raise RuntimeError(f"job {body.get('id')} ended {record.get('status')}: {record.get('error')}")
        return record

    def params(self, body: dict) -> dict:
        """The normalised parameters of a job (what the runner hands the engine), via ?dry_run=1."""
        return self.post("/generate?dry_run=1", body)["parameters"]

    def run_engine(self, params: dict):
        """engine.run on normalised params, as JobRunner runs it but without storage: returns the assets."""
        from workers.runtime.fetch import fetch_image

        engine = self.engine

        class Context:
            references = {role: fetch_image(url, self.settings) for role, url in engine.reference_urls(params).items()}
            memory_saving = False  # no retry after an out-of-memory error here: the suite measures the first run
            steps = 0

            def stage(self, name, total_steps=None):
                pass

            def on_step(self, step, total_steps):
                Context.steps = step

            def check_cancelled(self):
                pass

        with self.state.host.use(engine.required_models(params), working_bytes=engine.working_bytes(params)):
            return engine.run(params, Context())

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.state.host.unload(None, wait_s=5)
        del self.app, self.state, self.engine  # the references that keep the models alive
        _free_device()


def worker_env(suite: Suite, root: Path) -> dict:
    from tests.support import base_env

    env = base_env(root, placeholder_root(), WORKER_API_KEY=API_KEY, MODEL_PROFILE=suite.cfg["profile"],
                   LOG_LEVEL="WARNING", SYNTHETIC_MODELS_DIR=str(synthetic_root()))
    # base_env sets PYTHONPATH to the repository alone; on a GPU machine the carried packages (gunicorn, flask,
    # diffusers, ...) are importable only through the folder the bootstrap put on this process's PYTHONPATH.
    env["PYTHONPATH"] = suite_pythonpath(env["PYTHONPATH"])
    return env


def placeholder_root() -> Path:
    return Path(os.environ.get("PLACEHOLDER_MODELS_DIR", REPO / ".cache" / "placeholder-models"))


def synthetic_root() -> Path:
    return Path(os.environ.get("SYNTHETIC_MODELS_DIR", REPO / ".cache" / "synthetic-models"))


def family_on_disk(suite: Suite, family: str) -> bool:
    if suite.cfg["profile"] == "placeholder":
        return True
    from workers.placeholders import synthetic

    return synthetic.is_built(synthetic_root(), family)


def ensure_models(suite: Suite, families: tuple[str, ...]) -> None:
    """Placeholder models (tiny) or the synthetic families a part needs (full), with the build time. Before
    each family is built: the disk must hold it with headroom, and the build must fit in the budget;
    otherwise the part is skipped (SkipPart) saying which."""
    if suite.cfg["profile"] == "placeholder":
        from workers.placeholders import ensure_placeholder_models

        seconds, _ = timed(ensure_placeholder_models, placeholder_root())
        suite.add("build", "placeholder models ready", seconds, "s")
        return
    from workers.placeholders import synthetic

    root = synthetic_root()
    root.mkdir(parents=True, exist_ok=True)
    sizes = synthetic.family_bytes()
    for family in families:
        if synthetic.is_built(root, family):
            continue
        gb = sizes[family] / 1e9
        free = shutil.disk_usage(root).free / 1e9
        if free < gb + DISK_HEADROOM_GB:
            raise SkipPart(f"synthetic {family} needs {gb:.1f} GB (+{DISK_HEADROOM_GB:.0f} GB headroom), {root} has "
                           f"{free:.1f} GB free")
        if not suite.fits(f"build synthetic {family} ({gb:.1f} GB)", suite.estimate("build") * gb):
            raise SkipPart(f"synthetic {family} cannot be built in what is left of the budget")
        seconds, manifest = timed(synthetic.build, root, [family], "cuda" if suite.cuda else "cpu")
        suite.add("build", f"synthetic {family} written", seconds, "s",
                  note=f"{manifest['families'][family]['bytes'] / 1e9:.1f} GB, {free:.0f} GB free before")


def release_models(suite: Suite, families: tuple[str, ...]) -> None:
    """Full scale: delete a family's files as soon as no later part of this call needs them (the stack part
    uses every family on disk); GPU_SUITE_KEEP_MODELS=1 keeps them."""
    if suite.cfg["profile"] != "synthetic" or os.environ.get("GPU_SUITE_KEEP_MODELS"):
        return
    if "stack" in suite.later_parts():
        return
    from workers.placeholders import synthetic

    removed = [f for f in families if synthetic.is_built(synthetic_root(), f)]
    for family in removed:
        synthetic.remove_family(synthetic_root(), family)
    if removed:
        suite.note(f"build: removed synthetic {', '.join(removed)} after use "
                   f"({shutil.disk_usage(synthetic_root()).free / 1e9:.0f} GB free now)")


def _base_body(job_id: str, job_type: str, config: dict, metadata: dict | None = None) -> dict:
    body = {"id": job_id, "type": job_type, "prompt": PROMPT, "user_id": "gpu-suite", "config": config}
    if metadata:
        body["metadata"] = metadata
    return body


# ---- sdxl ----------------------------------------------------------------------------------------------

def part_sdxl(suite: Suite) -> None:
    cfg = suite.cfg["sdxl"]
    ensure_models(suite, ("sdxl",))
    try:
        if not suite.fits("sdxl load", "sdxl.load"):
            return
        tmp = Path(tempfile.mkdtemp(prefix="gpu-suite-sdxl-"))
        worker = InProcessWorker("sdxl", worker_env(suite, tmp))
        try:
            ours = sdxl_ours(suite, worker, cfg)
            if suite.fits("sdxl plain diffusers pipeline", "sdxl.plain"):
                baseline_sdxl(suite, worker, cfg, ours)
            if suite.fits("sdxl NaN check of an fp16 VAE decode", "sdxl.nan"):
                nan_check_vae(suite, worker.engine)
        finally:
            worker.close()
    finally:
        release_models(suite, ("sdxl",))


def sdxl_ours(suite: Suite, worker: InProcessWorker, cfg: dict) -> dict:
    suite.add("sdxl", "load (weights to device, settings applied, warm-up on CUDA)", worker.load("sdxl"), "s")
    engine = worker.engine
    module_table(suite, "sdxl", {f"txt2img.{k}": v for k, v in engine.txt2img.components.items()})
    module_table(suite, "sdxl", {f"img2img.{k}": v for k, v in engine.img2img.components.items()
                                 if k in ("unet", "vae", "text_encoder", "text_encoder_2")})
    shared = all(engine.img2img.components[k] is engine.txt2img.components[k] for k in ("unet", "vae"))
    suite.add("sdxl", "img2img shares txt2img's modules", "yes" if shared else "NO")

    config = {"width": cfg["width"], "height": cfg["height"], "steps": cfg["steps"], "seed": 7}
    ours: dict[int, float] = {}
    if not suite.fits("sdxl first job (outside the figures)", "sdxl.job"):
        return ours
    worker.job(_base_body("sdxl-warm", "sdxl_image_fast", dict(config, num_images=1)))  # lazy init, autotuning
    for batch in cfg["batches"]:
        body = _base_body(f"sdxl-b{batch}", "sdxl_image_fast", dict(config, num_images=batch))
        params = worker.params(body)
        estimate = engine.working_bytes(params)
        runs = []
        record: dict = {}
        for r in range(cfg["repeats"]):
            if not suite.fits(f"sdxl ours batch {batch} repeat {r + 1}", suite.estimate("sdxl.job") * batch / 2):
                break
            body_r = dict(body, id=f"sdxl-b{batch}-{r}")
            if r == 0:
                seconds, record = timed(record_memory, suite, "sdxl", f"a batch-{batch} job", estimate,
                                        lambda b=body_r: worker.job(b))
            else:
                seconds, record = timed(worker.job, body_r)
            runs.append(seconds)
        if not runs:
            continue
        ours[batch] = statistics.median(runs) / batch
        suite.add("sdxl", f"ours: {cfg['width']}x{cfg['height']} {cfg['steps']} steps batch {batch} (job path)",
                  ours[batch], "s/image",
                  note=f"median of {len(runs)}; gpu settings {record['assets'][0]['metadata'].get('gpu_settings')}")
    return ours


def _plain_sdxl(worker: InProcessWorker, dtype):
    """The plain diffusers pipeline from the same files, as its documentation loads it."""
    from diffusers import StableDiffusionXLPipeline

    cfg = worker.engine.configs["sdxl"]
    path = cfg["path"]
    if path.endswith(".safetensors"):
        pipe = StableDiffusionXLPipeline.from_single_file(path, config=cfg["config_path"], local_files_only=True,
                                                          dtype=dtype)
    else:
        pipe = StableDiffusionXLPipeline.from_pretrained(path, local_files_only=True, dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(worker.engine.device)


class PlainState:
    """What the settings rows change on the plain pipeline, recorded once, so each row starts from exactly
    the plain pipeline (and the restore is checked, not assumed)."""

    def __init__(self, pipe):
        import torch

        self.pipe = pipe
        self.unet, self.vae = pipe.unet, pipe.vae
        self.processors = dict(pipe.unet.attn_processors)
        self.force_upcast = pipe.vae.config.force_upcast
        self.contiguous = torch.contiguous_format

    def restore(self) -> None:
        pipe = self.pipe
        pipe.unet, pipe.vae = self.unet, self.vae
        pipe.unet.set_attn_processor(dict(self.processors))
        pipe.unet.to(memory_format=self.contiguous)
        pipe.vae.register_to_config(force_upcast=self.force_upcast)
        assert self.is_plain(), "the plain SDXL pipeline could not be restored"

    def is_plain(self) -> bool:
        pipe = self.pipe
        weight = next(p for p in pipe.unet.parameters() if p.dim() == 4)
        return (pipe.unet is self.unet and pipe.vae is self.vae and pipe.vae.config.force_upcast == self.force_upcast
                and {k: type(v) for k, v in pipe.unet.attn_processors.items()}
                == {k: type(v) for k, v in self.processors.items()}
                and weight.is_contiguous(memory_format=self.contiguous))


def baseline_sdxl(suite: Suite, worker: InProcessWorker, cfg: dict, ours: dict) -> None:
    import torch

    dtype = torch.float16 if suite.cuda else torch.float32
    pipe = _plain_sdxl(worker, dtype)
    plain = PlainState(pipe)

    def call(batch=1, steps=cfg["steps"]):
        return pipe(PROMPT, num_inference_steps=steps, width=cfg["width"], height=cfg["height"],
                    num_images_per_prompt=batch, generator=torch.Generator().manual_seed(7), output_type="pil").images

    call(1, 2)  # warm-up
    for batch in cfg["batches"]:
        if not suite.fits(f"sdxl plain diffusers batch {batch}", suite.estimate("sdxl.job") * batch / 4):
            continue
        seconds, _ = timed(call, batch)
        suite.add("sdxl", f"plain diffusers: batch {batch}", seconds / batch, "s/image",
                  baseline=ours.get(batch), note="baseline column: ours (job path)")
    plain_s, _ = timed(call)
    upcast = "fp32 upcast" if plain.force_upcast else "no upcast"

    def effect(name: str, apply) -> None:
        if not suite.fits(f"sdxl setting alone: {name}", "sdxl.setting"):
            return
        try:
            apply()
            call(1, 2)
            seconds, _ = timed(call)
            suite.add("sdxl", f"setting alone on the plain pipeline: {name}", seconds, "s/image", baseline=plain_s,
                      note=f"baseline column: the plain pipeline (stock VAE config: {upcast} for the decode)")
        finally:
            plain.restore()

    from diffusers.models.attention_processor import AttnProcessor

    effect("attention without SDPA (AttnProcessor)", lambda: pipe.unet.set_attn_processor(AttnProcessor()))
    effect("channels_last UNet", lambda: pipe.unet.to(memory_format=torch.channels_last))
    if suite.cuda:
        fix = fp16_fix_vae_path(worker)
        if fix:
            from diffusers import AutoencoderKL

            fixed = AutoencoderKL.from_pretrained(fix, dtype=dtype, local_files_only=True).to(worker.engine.device)

            def fp16_fix():
                pipe.vae = fixed
                pipe.vae.register_to_config(force_upcast=False)

            # The stock SDXL VAE config upcasts to fp32 for the decode: the plain pipeline is the upcast side.
            effect(f"fp16-fix VAE without upcast (vs the stock VAE, {upcast})", fp16_fix)
            fixed = None
        else:
            suite.note("sdxl: fp16-fix VAE: skipped: no fp16-fix VAE folder configured")
    else:
        suite.note("sdxl: fp16-fix VAE vs the stock VAE's upcast: skipped: CUDA only (fp32 on CPU)")
    plain.pipe = pipe = None  # dropped before the device's cache is freed
    _free_device()


def part_compile(suite: Suite) -> None:
    """torch.compile(unet, dynamic=False) on the plain pipeline: compile + first call, then one image."""
    import torch

    if not suite.cuda_only("compile", "torch.compile of the SDXL UNet"):
        return
    cfg = suite.cfg["sdxl"]
    ensure_models(suite, ("sdxl",))
    try:
        if not suite.fits("sdxl torch.compile (dynamic=False)", "compile"):
            return
        tmp = Path(tempfile.mkdtemp(prefix="gpu-suite-compile-"))
        worker = InProcessWorker("sdxl", worker_env(suite, tmp))
        try:
            pipe = _plain_sdxl(worker, torch.float16)

            def call(steps=cfg["steps"]):
                return pipe(PROMPT, num_inference_steps=steps, width=cfg["width"], height=cfg["height"],
                            generator=torch.Generator().manual_seed(7), output_type="pil").images

            call(2)
            plain_s, _ = timed(call)
            started = time.perf_counter()
            pipe.unet = torch.compile(pipe.unet, dynamic=False)
            call(2)  # compilation happens here
            suite.add("compile", "torch.compile(unet, dynamic=False): compile + first call",
                      time.perf_counter() - started, "s")
            seconds, _ = timed(call)
            suite.add("compile", "setting alone on the plain pipeline: torch.compile(dynamic=False)", seconds,
                      "s/image", baseline=plain_s, note="baseline column: the plain pipeline")
            pipe = None
        finally:
            worker.close()
    finally:
        release_models(suite, ("sdxl",))


def fp16_fix_vae_path(worker: InProcessWorker) -> str:
    """The profile's fp16-fix VAE folder (synthetic: SYNTHETIC_MODELS_DIR/sdxl-vae-fp16-fix; production:
    SDXL_VAE_FP16_FIX_PATH), or "" when there is none."""
    path = worker.engine.configs["sdxl"]["vae_fp16_fix_path"]
    return path if path and (Path(path) / "config.json").exists() else ""


def nan_check_vae(suite: Suite, engine) -> None:
    """An fp16 decode without upcast of latents at the scale SDXL produces: NaN or inf anywhere?"""
    import torch

    if not suite.cuda_only("sdxl", "NaN check of an fp16 VAE decode"):
        return
    vae = engine.txt2img.vae
    latents = torch.randn(1, 4, 128, 128, device="cuda", dtype=torch.float16) / vae.config.scaling_factor
    with torch.no_grad():
        image = vae.to(torch.float16).decode(latents).sample
    suite.add("sdxl", "fp16 VAE decode without upcast: non-finite values", int((~torch.isfinite(image)).sum()),
              note="synthetic weights test the code path; real weights' overflow shows only with them")


# ---- wan -----------------------------------------------------------------------------------------------

def part_wan(suite: Suite) -> None:
    cfg = suite.cfg["wan"]
    ensure_models(suite, ("wan",))
    try:
        if not suite.fits("wan load wan_t2v", "wan.load"):
            return
        tmp = Path(tempfile.mkdtemp(prefix="gpu-suite-wan-"))
        worker = InProcessWorker("wan", worker_env(suite, tmp))
        try:
            suite.add("wan", "load wan_t2v (warm-up with the VAE decode on CUDA)", worker.load("wan_t2v"), "s")
            loaded = worker.engine.loaded("wan_t2v")
            module_table(suite, "wan", {"transformer": loaded.pipe.transformer, "vae": loaded.pipe.vae,
                                        "text_encoder": loaded.prompts.text_encoder})
            params = worker.params(_base_body("wan-t2v", cfg["type"], wan_config(cfg)))
            if not suite.fits(f"wan ours {cfg['type']}", "wan.job"):
                return
            estimate = worker.engine.working_bytes(params)
            seconds, assets = timed(lambda: record_memory(suite, "wan", f"a {cfg['type']} job", estimate,
                                                          lambda: worker.run_engine(params)))
            shape = f"{params['width']}x{params['height']} {params['frames']} frames {params['steps']} steps"
            suite.add("wan", f"ours: {shape} ({cfg['type']})", seconds, "s/video",
                      note=f"text encoder on {assets[0].metadata.get('text_encoder_device')}, "
                           f"gpu settings {assets[0].metadata.get('gpu_settings')}")
            if suite.fits("wan MP4 encode", "wan.mp4"):
                encode_mp4(suite, assets[0])
            if suite.fits("wan plain WanPipeline baseline", "wan.plain"):
                baseline_wan(suite, worker, params, seconds)
            if suite.fits("wan umT5 encode on both devices", "wan.umt5"):
                umt5_cpu_vs_gpu(suite, loaded)
        finally:
            worker.close()
    finally:
        release_models(suite, ("wan",))


def wan_config(cfg: dict) -> dict:
    config = {"width": cfg["width"], "height": cfg["height"], "frames": cfg["frames"], "seed": 7}
    if cfg["steps"]:
        config["steps"] = cfg["steps"]
    return config


def part_vace(suite: Suite) -> None:
    """One reference-mode job on the VACE model (optional: its own part, about 9 GB more disk)."""
    cfg = suite.cfg["wan"]
    ensure_models(suite, ("wan", "wan_vace"))
    try:
        if not suite.fits("vace load wan_vace", "vace.load"):
            return
        tmp = Path(tempfile.mkdtemp(prefix="gpu-suite-vace-"))
        worker = InProcessWorker("wan", worker_env(suite, tmp))
        try:
            reference_mode(suite, worker, wan_config(cfg))
        finally:
            worker.close()
    finally:
        release_models(suite, ("wan_vace", "wan"))


def encode_mp4(suite: Suite, asset) -> None:
    if importlib.util.find_spec("imageio_ffmpeg") is None:
        suite.note("wan: MP4 encoding: skipped: imageio-ffmpeg is not installed here (68 MB wheel, too large to carry)")
        return
    from workers.runtime.media import encode_mp4 as encode

    seconds, data = timed(encode, asset.frames, asset.fps or 16)
    suite.add("wan", "MP4 encode of the frames", seconds, "s", note=f"{len(data) / 1e6:.2f} MB")


def umt5_cpu_vs_gpu(suite: Suite, loaded) -> None:
    """One 512-token umT5 encode where the engine keeps the encoder, then on the other device."""

    prompts = loaded.prompts
    target = str(loaded.pipe._execution_device)
    prompts.encode(PROMPT, target)
    seconds, _ = timed(prompts.encode, PROMPT, target)
    dtype = str(prompts.dtype).replace("torch.", "")
    suite.add("wan", f"umT5 encode, encoder on {prompts.device} ({dtype})", seconds, "s")
    if not suite.cuda_only("wan", "umT5 encode on the other device"):
        return
    encoder = prompts.text_encoder
    other = "cuda" if prompts.device == "cpu" else "cpu"
    original = prompts.device
    encoder.to(other)
    prompts.device = other
    try:
        prompts.encode(PROMPT, target)
        seconds, _ = timed(prompts.encode, PROMPT, target)
        suite.add("wan", f"umT5 encode, encoder on {other}", seconds, "s")
    finally:
        encoder.to(original)
        prompts.device = original


def baseline_wan(suite: Suite, worker: InProcessWorker, params: dict, ours_s: float) -> None:
    """The plain WanPipeline as diffusers documents it (VAE fp32, the rest bf16, all on the device)."""
    import torch
    from diffusers import AutoencoderKLWan, WanPipeline

    path = worker.engine.configs["wan_t2v"]["path"]
    dtype = torch.bfloat16 if suite.cuda else torch.float32
    vae = AutoencoderKLWan.from_pretrained(path, subfolder="vae", dtype=torch.float32, local_files_only=True)
    pipe = WanPipeline.from_pretrained(path, vae=vae, dtype=dtype, local_files_only=True).to(worker.engine.device)
    pipe.set_progress_bar_config(disable=True)
    seconds, _ = timed(lambda: pipe(prompt=PROMPT, negative_prompt=params["negative_prompt"], height=params["height"],
                                    width=params["width"], num_frames=params["frames"],
                                    num_inference_steps=params["steps"], guidance_scale=params["guidance_scale"],
                                    generator=torch.Generator().manual_seed(7), output_type="pil"))
    suite.add("wan", "plain diffusers WanPipeline, same job", seconds, "s/video", baseline=ours_s,
              note="baseline column: ours")
    pipe = vae = None
    _free_device()


def reference_mode(suite: Suite, worker: InProcessWorker, config: dict) -> None:
    import io

    import numpy as np
    from PIL import Image

    from tests.support import StaticServer

    ramp = np.tile(np.linspace(0, 255, config["width"], dtype=np.uint8), (config["height"], 1))
    image = Image.fromarray(ramp[..., None].repeat(3, 2))
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    server = StaticServer({"/first.png": (200, "image/png", buf.getvalue())})
    try:
        body = _base_body("wan-ref", suite.cfg["wan"]["type"], config,
                          metadata={"start_reference_url": f"{server.url}/first.png"})
        params = worker.params(body)
        suite.add("vace", "load wan_vace", worker.load("wan_vace"), "s")
        if not suite.fits("vace reference-mode job", "vace.job"):
            return
        estimate = worker.engine.working_bytes(params)
        seconds, _ = timed(record_memory, suite, "vace", "a reference-mode job", estimate,
                           lambda: worker.run_engine(params))
        suite.add("vace", f"ours: reference mode {params['reference']['mode']} (VACE)", seconds, "s/video")
    finally:
        server.close()


# ---- chat ----------------------------------------------------------------------------------------------

def part_chat(suite: Suite) -> None:
    cfg = suite.cfg["chat"]
    ensure_models(suite, ("qwen",))
    try:
        if not suite.fits("chat load", "chat.load"):
            return
        tmp = Path(tempfile.mkdtemp(prefix="gpu-suite-chat-"))
        worker = InProcessWorker("chat", worker_env(suite, tmp))
        try:
            chat_ours_and_baseline(suite, worker, cfg)
        finally:
            worker.close()
    finally:
        release_models(suite, ("qwen",))


def chat_ours_and_baseline(suite: Suite, worker: InProcessWorker, cfg: dict) -> None:
    model = cfg["model"]
    suite.add("chat", f"load {model}", worker.load(model), "s")
    module_table(suite, "chat", {model: worker.engine.modules(model)[0]})
    prompt = " ".join(["describe the snowy forest at dawn"] * max(1, cfg["prompt_words"] // 6))

    def ask(client=None, seed=1):
        body = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": cfg["max_tokens"],
                "temperature": 0.7, "seed": seed}
        return worker.post("/v1/chat/completions", body, client)

    if not suite.fits("chat ours single stream", "chat.single"):
        return
    ask()  # warm-up
    seconds, answer = timed(ask)
    single = answer["usage"]["completion_tokens"] / seconds
    suite.add("chat", f"ours: single stream ({answer['usage']['prompt_tokens']} prompt tokens)", single, "tok/s")

    aggregate = None
    if suite.fits(f"chat ours {cfg['clients']} concurrent clients", "chat.clients"):
        results, errors = [], []

        def client_loop(i):
            try:
                results.append(ask(worker.client(), seed=100 + i)["usage"]["completion_tokens"])
            except Exception as exc:
                errors.append(exc)

        engine = worker.engine
        prompt_tokens = answer["usage"]["prompt_tokens"]
        estimate = engine.batch_working_bytes(model, [(prompt_tokens, cfg["max_tokens"])] * cfg["clients"])

        def clients():
            threads = [threading.Thread(target=client_loop, args=(i,)) for i in range(cfg["clients"])]
            for t in threads:
                t.start()
            for t in threads:
                t.join()

        wall, _ = timed(record_memory, suite, "chat", f"{cfg['clients']} concurrent requests", estimate, clients)
        if errors:
            raise errors[0]
        aggregate = sum(results) / wall
        suite.add("chat", f"ours: {cfg['clients']} concurrent clients, aggregate", aggregate, "tok/s")
    if suite.fits("chat plain transformers generate", "chat.plain"):
        baseline_chat(suite, worker, model, prompt, cfg, single, aggregate)


def baseline_chat(suite: Suite, worker: InProcessWorker, model: str, prompt: str, cfg: dict, single: float,
                  aggregate: float | None) -> None:
    """Plain transformers `generate` on the same folder: one stream, then two one after another (what N
    clients served in turn get, at the rate of two); and a NaN check of a left-padded batch's logits."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = worker.engine.configs[model]["path"]
    dtype = torch.bfloat16 if suite.cuda else torch.float32
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    lm = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, local_files_only=True).to(worker.engine.device).eval()
    text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                         add_generation_prompt=True)
    inputs = tokenizer(text, return_tensors="pt").to(worker.engine.device)

    def generate():
        with torch.no_grad():
            return lm.generate(**inputs, max_new_tokens=cfg["max_tokens"], min_new_tokens=cfg["max_tokens"],
                               do_sample=True, temperature=0.7, pad_token_id=tokenizer.pad_token_id)

    generate()
    seconds, out = timed(generate)
    plain = (out.shape[1] - inputs["input_ids"].shape[1]) / seconds
    suite.add("chat", "plain transformers generate: single stream", plain, "tok/s", baseline=single,
              note="baseline column: ours")
    seconds, _ = timed(lambda: [generate() for _ in range(2)])
    suite.add("chat", "plain generate: 2 requests one after another", 2 * cfg["max_tokens"] / seconds, "tok/s",
              baseline=aggregate, note=f"baseline column: ours, {cfg['clients']} concurrent clients")
    if suite.fits("chat NaN check of a padded batch", "chat.nan"):
        tokenizer.padding_side = "left"
        texts = [text] + [tokenizer.apply_chat_template([{"role": "user", "content": "hi " * (i + 1)}], tokenize=False,
                                                        add_generation_prompt=True) for i in range(cfg["clients"] - 1)]
        batch = tokenizer(texts, return_tensors="pt", padding=True).to(worker.engine.device)
        with torch.no_grad():
            logits = lm(**batch).logits
        suite.add("chat", f"padded batch of {len(texts)}: non-finite logits", int((~torch.isfinite(logits)).sum()))
    lm = None
    _free_device()


# ---- stack ---------------------------------------------------------------------------------------------

def part_stack(suite: Suite) -> None:
    """Each worker under gunicorn as the orchestrator starts it (with the environment the suite gives its
    workers: the carried packages on PYTHONPATH): start-to-ready, and one small SDXL job over HTTP against the
    same job through the in-process app (the difference is what HTTP + gunicorn cost). At full scale only the
    workers whose models are on disk in this call are started; their families are deleted afterwards."""
    from tests.support import WorkerProcess

    measured = []
    for name in suite.cfg["stack"]:
        families = STACK_FAMILIES[name]
        if not all(family_on_disk(suite, f) for f in families):
            suite.note(f"stack {name}: not in this call (its models are not on disk: run --only {name} --only stack)")
            continue
        if not suite.fits(f"stack {name} start to ready", "stack.start"):
            continue
        ensure_models(suite, families)
        tmp = Path(tempfile.mkdtemp(prefix=f"gpu-suite-stack-{name}-"))
        env = worker_env(suite, tmp)
        process = WorkerProcess(name, env)
        try:
            seconds, _ = timed(process.start, 600)
            suite.add("stack", f"{name}: start to /ready under gunicorn", seconds, "s")
            if name == "sdxl" and suite.fits("stack HTTP overhead per job", "stack.http"):
                http_overhead(suite, process, env)
        finally:
            process.stop()
        measured.append(name)
    for name in measured:
        release_models(suite, STACK_FAMILIES[name])


def _iso_seconds(value: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(value).timestamp()


def http_overhead(suite: Suite, process, env: dict) -> None:
    """Round trip of one small job over HTTP minus the job's own run time in the worker (started_at ->
    finished_at in its record): what the socket, gunicorn, validation, queueing and the wait cost. The same
    job through the in-process app is shown beside it."""
    import requests

    size = 512 if suite.scale == "full" else 64
    body = _base_body("http-warm", "sdxl_image_fast", {"width": size, "height": size, "steps": 2, "seed": 1})
    headers = {"Authorization": f"Bearer {API_KEY}", "X-Callback-Mode": "none"}

    def over_http(job_id):
        r = requests.post(f"{process.url}/generate?wait=600", json=dict(body, id=job_id), headers=headers, timeout=900)
        r.raise_for_status()
        return r.json()

    over_http("http-warm")  # includes the load
    repeats = 3 if suite.scale == "full" else 1
    walls, overheads = [], []
    for i in range(repeats):
        wall, record = timed(over_http, f"http-{i}")
        walls.append(wall)
        overheads.append(wall - (_iso_seconds(record["finished_at"]) - _iso_seconds(record["started_at"])))
    worker = InProcessWorker("sdxl", dict(env, OUTPUT_DIR=str(Path(env["OUTPUT_DIR"]) / "inproc")))
    try:
        worker.job(dict(body, id="inproc-warm"))
        inproc = statistics.median(timed(worker.job, dict(body, id=f"inproc-{i}"))[0] for i in range(repeats))
    finally:
        worker.close()
    suite.add("stack", f"sdxl {size}x{size} 2-step job over HTTP (gunicorn), wall", statistics.median(walls), "s",
              baseline=inproc, note="baseline column: the same job through the in-process app")
    suite.add("stack", "HTTP overhead per job (wall minus the job's run time in its record)",
              1000 * statistics.median(overheads), "ms")


# ---- environment ---------------------------------------------------------------------------------------

def environment(device: str, bootstrap_notes: list[str]) -> dict:
    import torch

    env: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "python": platform.python_version(),
           "torch": torch.__version__, "device": device}
    for name in ("diffusers", "transformers", "accelerate", "huggingface_hub"):
        env[name] = _installed(name) or "missing"
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        env.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1), cuda=torch.version.cuda,
                   capability=".".join(map(str, torch.cuda.get_device_capability(0))),
                   bf16=torch.cuda.is_bf16_supported(),
                   alloc_conf=os.environ.get("PYTORCH_CUDA_ALLOC_CONF", ""))
        nvml = nvml_reading()
        env["nvml"] = json.dumps(nvml) if nvml else "n/a"
    if bootstrap_notes:
        env["packages not at their pins"] = "; ".join(bootstrap_notes)
    return env


# The default parts, in order; `compile` and `vace` run only when asked for (--only).
PARTS = {"sdxl": part_sdxl, "chat": part_chat, "wan": part_wan, "stack": part_stack, "compile": part_compile,
         "vace": part_vace}
DEFAULT_PARTS = ["sdxl", "chat", "wan", "stack"]


def on_sigterm(suite: Suite):
    """A call stopped by its time limit (SIGTERM first): the table says where, then the process ends."""
    def handler(signum, frame):
        suite.finish(f"call stopped by SIGTERM during part {suite.current or '(between parts)'} after "
                     f"{time.monotonic() - suite.started:.0f} s; the rows above were measured before it")
        print("gpu suite: stopped by SIGTERM; table written", flush=True)
        os._exit(143)
    return handler


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", choices=sorted(SCALES), default="full")
    parser.add_argument("--out", type=Path, default=None, help="folder for suite.md and suite.json, appended to "
                        "when it holds one (default: benchmarks/results/gpu-suite-<scale>-<time>, "
                        "ignored by git)")
    parser.add_argument("--budget-s", type=float, default=None, help="default: 240 (full), 600 (tiny)")
    parser.add_argument("--only", action="append", choices=sorted(PARTS),
                        help="repeatable, run in the order given; default: " + " ".join(DEFAULT_PARTS))
    parser.add_argument("--wheels", type=Path, default=None,
                        help="wheels to install for missing/other-version packages")
    parser.add_argument("--fetch-wheels", type=Path, default=None, help="download the wheels into this folder and exit")
    parser.add_argument("--merge", type=Path, nargs="+", default=None,
                        help="folders of earlier calls: write one table of all their rows into --out and exit")
    args = parser.parse_args(argv)
    if args.fetch_wheels:
        return fetch_wheels(args.fetch_wheels)
    if args.merge:
        if args.out is None:
            parser.error("--merge needs --out")
        folder = merge(args.merge, args.out)
        print(f"gpu suite: {len(args.merge)} tables merged into {folder / 'suite.md'}")
        return 0
    notes = bootstrap(args.wheels)

    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.scale == "full" and device != "cuda":
        print("gpu_suite: --scale full needs a CUDA device (torch.cuda.is_available() is False); "
              "use --scale tiny on a CPU", file=sys.stderr)
        return 2
    out = args.out or REPO / "benchmarks" / "results" / f"gpu-suite-{args.scale}-{time.strftime('%Y%m%d-%H%M%S')}"
    parts = list(dict.fromkeys(args.only or DEFAULT_PARTS))
    suite = Suite(args.scale, out, args.budget_s or SCALES[args.scale]["budget_s"], device,
                  environment=environment(device, notes), parts=parts)
    signal.signal(signal.SIGTERM, on_sigterm(suite))
    print(f"gpu suite: scale {args.scale} on {device}, parts {' '.join(parts)}, budget {suite.budget_s:.0f} s, "
          f"writing to {out}", flush=True)
    for name in parts:
        suite.part(name, PARTS[name])
    suite.finish()
    print(f"gpu suite: table written to {out / 'suite.md'} and {out / 'suite.json'} "
          f"({time.monotonic() - suite.started:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
