"""The GPU suite: one command that measures what matters on a CUDA machine and writes one table.

    python3 benchmarks/gpu_suite.py --scale full --out DIR [--wheels DIR] [--budget-s 480]
    .venv/bin/python benchmarks/gpu_suite.py --scale tiny --out DIR      # CPU, placeholder models, seconds
    .venv/bin/python benchmarks/gpu_suite.py --fetch-wheels .whl         # here: the wheels a GPU image lacks

`--scale full` needs CUDA. It builds the synthetic full-size models it needs (MODEL_PROFILE=synthetic:
random weights, real sizes, dtypes and file formats; workers/placeholders/synthetic.py) one family at a
time, and measures, each beside a plain diffusers/transformers baseline run in the same process:

  sdxl   1024x1024, 30 steps, batch 1 and 6 (s/image) through the worker's job path; the plain
         StableDiffusionXLPipeline beside it; each GPU setting alone on the plain pipeline (SDPA,
         channels_last, torch.compile, VAE upcast vs the fp16-fix VAE); NaN check of an fp16 VAE decode
  wan    480x832, 81 frames at the video_fast preset (s/video) and one reference mode (VACE, first frame);
         the plain WanPipeline beside it; one umT5 encode on the CPU and on the GPU
  chat   Qwen2.5-7B single-stream tok/s and 8 concurrent clients through the worker's HTTP routes; a plain
         `generate` (one stream, then 8 one after another) beside it; NaN check of a padded batch
  stack  each worker's start-to-ready under gunicorn, and the HTTP overhead of one job (socket + gunicorn
         against the same job through the in-process app)
  every part: the dtype and device of every module after load, the peak device memory of each job against
         the broker's estimate for it (weights + working bytes), NVML's used memory against
         torch.cuda.mem_get_info (device identified by UUID), and memory reserved but not allocated after a
         job, before and after torch.cuda.empty_cache()

Each part is budgeted: a part whose estimate does not fit in what is left of `--budget-s` (default 480 s,
so the whole run ends within 8 minutes on one H100/H200) is skipped with a line saying so, and a part that
fails is reported with its error while the others run. CUDA-only measurements print a "skipped: CUDA
only" line on a machine without CUDA. The table is written as Markdown (suite.md) and JSON (suite.json)
in the folder `--out` names (printed at the end). docs/PERFORMANCE.md says what each figure means.

The script runs with the machine's own (CUDA) torch: with `--wheels DIR` it installs the wheels there that
are missing or differ from requirements.txt's pins into a private folder (never torch) and re-executes
itself with that folder first on the path. `--fetch-wheels DIR`, run where PyPI is reachable, downloads them.
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
SITE = Path(tempfile.gettempdir()) / "ourvidz-gpu-suite-site"
# Requirements never installed from wheels: the machine's own (CUDA) build is the point.
NOT_FROM_WHEELS = {"torch"}
# Too large to carry (the device tree travels in 64 MiB); without it MP4 encoding is not measured.
TOO_LARGE_TO_CARRY = {"imageio-ffmpeg"}

# ---- scales ------------------------------------------------------------------------------------------
SCALES: dict[str, dict[str, Any]] = {
    "tiny": {
        "profile": "placeholder", "budget_s": 120,
        "sdxl": {"width": 64, "height": 64, "steps": 2, "batches": (1, 3), "repeats": 1},
        "wan": {"type": "video_fast", "width": 32, "height": 32, "frames": 5, "steps": 1, "reference": "start"},
        "chat": {"max_tokens": 8, "prompt_words": 16, "clients": 4, "model": "qwen_instruct"},
        "stack": ("sdxl",),
        # seconds each part is expected to take here (budgeting)
        "estimates": {"sdxl": 25, "wan": 15, "chat": 15, "stack": 20},
    },
    "full": {
        "profile": "synthetic", "budget_s": 480,
        "sdxl": {"width": 1024, "height": 1024, "steps": 30, "batches": (1, 6), "repeats": 2},
        "wan": {"type": "video_fast", "width": 832, "height": 480, "frames": 81, "steps": None, "reference": "start"},
        "chat": {"max_tokens": 256, "prompt_words": 400, "clients": 8, "model": "qwen_instruct"},
        "stack": ("sdxl", "chat", "wan"),
        # one H100/H200, synthetic models built on the GPU (about 7, 29 and 15 GB written)
        "estimates": {"sdxl": 150, "wan": 200, "chat": 90, "stack": 60},
        "extra": {"sdxl_compile": 120, "wan_baseline": 90, "wan_reference": 90},
    },
}


# ---- bootstrap: the machine's torch, the pinned rest from wheels ------------------------------------

def pinned_requirements() -> dict[str, str]:
    pins = {}
    for line in (REPO / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            pins[name.strip().lower()] = version.strip()
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
    return dist.lower().replace("_", "-"), version


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
        subprocess.check_call([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                               "--no-cache-dir", "--upgrade", "--target", str(SITE), *files])
    env = dict(os.environ, OURVIDZ_GPU_SUITE_BOOTSTRAPPED="1",
               PYTHONPATH=os.pathsep.join([str(SITE), str(REPO), os.environ.get("PYTHONPATH", "")]))
    os.execve(sys.executable, [sys.executable, *sys.argv], env)
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
    installed here (the pinned environment), from the distributions' own metadata."""
    from packaging.requirements import Requirement

    skip = NOT_FROM_WHEELS | TOO_LARGE_TO_CARRY | {"triton", "setuptools"}
    found: dict[str, str] = {}
    stack = list(pinned_requirements())
    while stack:
        name = stack.pop().lower().replace("_", "-")
        if name in found or name in skip or name.startswith("nvidia-"):
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


def fetch_wheels(target: Path, python_version: str = "3.12") -> int:
    """Download (here, where PyPI is reachable) the wheels a GPU image without network needs: the pinned
    requirements and the dependencies the image does not ship, for its Python, x86-64 Linux."""
    target.mkdir(parents=True, exist_ok=True)
    pins = pinned_requirements()
    wanted = [f"{n}=={v}" for n, v in sorted(dependency_closure().items()) if n in pins or n not in GPU_IMAGE_PACKAGES]
    platforms = [a for p in ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")
                 for a in ("--platform", p)]
    return subprocess.call([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                            "--python-version", python_version, "--implementation", "cp", *platforms,
                            "-d", str(target), *wanted])


# ---- the table -------------------------------------------------------------------------------------

class Suite:
    def __init__(self, scale: str, out: Path, budget_s: float, device: str):
        self.scale, self.cfg, self.out, self.device = scale, SCALES[scale], out, device
        self.started = time.monotonic()
        self.deadline = self.started + budget_s
        self.budget_s = budget_s
        self.rows: list[dict] = []
        self.lines: list[str] = []   # skipped / failed parts, notes
        self.cuda = device == "cuda"

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

    def note(self, text: str) -> None:
        self.lines.append(text)
        print(f"  -- {text}", flush=True)

    def cuda_only(self, section: str, what: str) -> bool:
        """False (with a line) on a machine without CUDA."""
        if not self.cuda:
            self.note(f"{section}: {what}: skipped: CUDA only (this run is on {self.device})")
        return self.cuda

    def fits(self, what: str, estimate_s: float) -> bool:
        if estimate_s > self.left():
            self.note(f"{what}: skipped: needs about {estimate_s:.0f} s, {max(self.left(), 0):.0f} s left of the "
                      f"{self.budget_s:.0f} s budget")
            return False
        return True

    def part(self, name: str, fn) -> None:
        estimate = self.cfg["estimates"][name]
        if not self.fits(f"part {name}", estimate):
            return
        print(f"== {name} (about {estimate} s; {self.left():.0f} s left)", flush=True)
        started = time.monotonic()
        try:
            fn(self)
        except Exception as exc:  # one failing part must not lose the others' figures
            self.note(f"{name}: FAILED: {type(exc).__name__}: {exc}")
            traceback.print_exc()
        finally:
            self.add(name, "part wall time", time.monotonic() - started, "s")
            _free_device()

    def write(self, environment: dict) -> Path:
        self.out.mkdir(parents=True, exist_ok=True)
        data = {"scale": self.scale, "environment": environment, "rows": self.rows, "notes": self.lines,
                "seconds": round(time.monotonic() - self.started, 1)}
        (self.out / "suite.json").write_text(json.dumps(data, indent=2) + "\n")
        md = [f"# GPU suite ({self.scale})", "", "| key | value |", "|---|---|"]
        md += [f"| {k} | {v} |" for k, v in environment.items()]
        md += ["", "| section | measure | ours | unit | baseline | baseline / ours | note |",
               "|---|---|---|---|---|---|---|"]
        md += [f"| {r['section']} | {r['measure']} | {_fmt(r['value'])} | {r['unit']} | {_fmt(r['baseline'])} | "
               f"{_fmt(r['baseline_over_ours'])} | {r['note']} |" for r in self.rows]
        md += ["", "## Notes (skipped or failed parts, CUDA-only lines)", ""] + [f"- {line}" for line in self.lines]
        md += ["", f"Total: {data['seconds']} s.", ""]
        (self.out / "suite.md").write_text("\n".join(md))
        return self.out


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
    """NVML's view of this process's device, found by UUID (a numeric CUDA_VISIBLE_DEVICES is not an NVML
    index, and a MIG slice is not its parent GPU)."""
    import torch

    if not torch.cuda.is_available():
        return None
    try:
        import pynvml
    except ImportError:
        return {"error": "nvidia-ml-py not installed"}
    uuid = str(torch.cuda.get_device_properties(0).uuid)
    uuid = uuid if uuid.startswith(("GPU-", "MIG-")) else f"GPU-{uuid}"
    pynvml.nvmlInit()
    try:
        for i in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            found = pynvml.nvmlDeviceGetUUID(handle)
            found = found.decode() if isinstance(found, bytes) else found
            if found == uuid:
                info = pynvml.nvmlDeviceGetMemoryInfo(handle)
                return {"uuid": uuid, "nvml_index": i, "used": int(info.used), "total": int(info.total)}
        return {"error": f"no NVML device with UUID {uuid}"}
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
                  baseline=after["used"] / 2**20, note=f"NVML device {nvml['uuid']} (index {nvml['nvml_index']})")
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

    env = base_env(root, Path(os.environ.get("PLACEHOLDER_MODELS_DIR", REPO / ".cache" / "placeholder-models")),
                   WORKER_API_KEY=API_KEY, MODEL_PROFILE=suite.cfg["profile"], LOG_LEVEL="WARNING",
                   SYNTHETIC_MODELS_DIR=os.environ.get("SYNTHETIC_MODELS_DIR",
                                                       str(REPO / ".cache" / "synthetic-models")))
    return env


def ensure_models(suite: Suite, families: tuple[str, ...]) -> None:
    """Placeholder models (tiny) or the synthetic families a part needs (full), with the build time."""
    if suite.cfg["profile"] == "placeholder":
        from workers.placeholders import ensure_placeholder_models

        seconds, _ = timed(ensure_placeholder_models, Path(os.environ.get(
            "PLACEHOLDER_MODELS_DIR", REPO / ".cache" / "placeholder-models")))
        suite.add("build", "placeholder models ready", seconds, "s")
        return
    from workers.placeholders import synthetic

    root = Path(os.environ.get("SYNTHETIC_MODELS_DIR", REPO / ".cache" / "synthetic-models"))
    for family in families:
        if synthetic.is_built(root, family):
            continue
        seconds, manifest = timed(synthetic.build, root, [family], "cuda" if suite.cuda else "cpu")
        suite.add("build", f"synthetic {family} written", seconds, "s",
                  note=f"{manifest['families'][family]['bytes'] / 1e9:.1f} GB")


def release_models(suite: Suite, families: tuple[str, ...]) -> None:
    """Full scale: free the disk a family took unless the next ones fit beside it (64 GB machines)."""
    if suite.cfg["profile"] != "synthetic" or os.environ.get("GPU_SUITE_KEEP_MODELS"):
        return
    from workers.placeholders import synthetic

    root = Path(os.environ.get("SYNTHETIC_MODELS_DIR", REPO / ".cache" / "synthetic-models"))
    import shutil

    if shutil.disk_usage(root).free < 40e9:
        for family in families:
            synthetic.remove_family(root, family)
        suite.note(f"build: removed synthetic {', '.join(families)} after use (disk short)")


def _base_body(job_id: str, job_type: str, config: dict, metadata: dict | None = None) -> dict:
    body = {"id": job_id, "type": job_type, "prompt": PROMPT, "user_id": "gpu-suite", "config": config}
    if metadata:
        body["metadata"] = metadata
    return body


# ---- sdxl ----------------------------------------------------------------------------------------------

def part_sdxl(suite: Suite) -> None:

    cfg = suite.cfg["sdxl"]
    ensure_models(suite, ("sdxl",))
    tmp = Path(tempfile.mkdtemp(prefix="gpu-suite-sdxl-"))
    worker = InProcessWorker("sdxl", worker_env(suite, tmp))
    try:
        suite.add("sdxl", "load (weights to device, settings applied, warm-up on CUDA)", worker.load("sdxl"), "s")
        engine = worker.engine
        module_table(suite, "sdxl", {f"txt2img.{k}": v for k, v in engine.txt2img.components.items()})
        module_table(suite, "sdxl", {f"img2img.{k}": v for k, v in engine.img2img.components.items()
                                     if k in ("unet", "vae", "text_encoder", "text_encoder_2")})
        shared = all(engine.img2img.components[k] is engine.txt2img.components[k] for k in ("unet", "vae"))
        suite.add("sdxl", "img2img shares txt2img's modules", "yes" if shared else "NO")

        config = {"width": cfg["width"], "height": cfg["height"], "steps": cfg["steps"], "seed": 7}
        warm = _base_body("sdxl-warm", "sdxl_image_fast", dict(config, num_images=1))
        worker.job(warm)  # first call: cuDNN/cuBLAS autotuning and lazy init outside the figures
        ours = {}
        for batch in cfg["batches"]:
            body = _base_body(f"sdxl-b{batch}", "sdxl_image_fast", dict(config, num_images=batch))
            params = worker.params(body)
            estimate = engine.working_bytes(params)
            runs = []
            for r in range(cfg["repeats"]):
                body_r = dict(body, id=f"sdxl-b{batch}-{r}")
                if r == 0:
                    what = f"a batch-{batch} job"
                    seconds, record = timed(record_memory, suite, "sdxl", what, estimate,
                                            lambda b=body_r: worker.job(b))
                else:
                    seconds, record = timed(worker.job, body_r)
                runs.append(seconds)
            ours[batch] = statistics.median(runs) / batch
            suite.add("sdxl", f"ours: {cfg['width']}x{cfg['height']} {cfg['steps']} steps batch {batch} (job path)",
                      ours[batch], "s/image",
                      note=f"gpu settings {record['assets'][0]['metadata'].get('gpu_settings')}")
        baseline_sdxl(suite, worker, cfg, ours)
        nan_check_vae(suite, engine)
    finally:
        worker.close()
        release_models(suite, ("sdxl",))


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


def baseline_sdxl(suite: Suite, worker: InProcessWorker, cfg: dict, ours: dict) -> None:
    import torch

    dtype = torch.float16 if suite.cuda else torch.float32
    pipe = _plain_sdxl(worker, dtype)

    def call(batch=1, steps=cfg["steps"]):
        return pipe(PROMPT, num_inference_steps=steps, width=cfg["width"], height=cfg["height"],
                    num_images_per_prompt=batch, generator=torch.Generator().manual_seed(7), output_type="pil").images

    call(1, 2)  # warm-up
    for batch in cfg["batches"]:
        seconds, _ = timed(call, batch)
        suite.add("sdxl", f"plain diffusers: batch {batch}", seconds / batch, "s/image",
                  baseline=ours.get(batch), note="baseline column: ours (job path)")
    plain, _ = timed(call)

    def effect(name: str, apply, undo) -> None:
        apply()
        try:
            call(1, 2)
            seconds, _ = timed(call)
            suite.add("sdxl", f"setting alone on the plain pipeline: {name}", seconds, "s/image", baseline=plain,
                      note="baseline column: the plain pipeline")
        finally:
            undo()

    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    effect("attention without SDPA (AttnProcessor)", lambda: pipe.unet.set_attn_processor(AttnProcessor()),
           lambda: pipe.unet.set_attn_processor(AttnProcessor2_0()))
    effect("channels_last UNet", lambda: pipe.unet.to(memory_format=torch.channels_last),
           lambda: pipe.unet.to(memory_format=torch.contiguous_format))
    if suite.cuda:
        effect("VAE upcast to fp32 for the decode", lambda: pipe.vae.register_to_config(force_upcast=True),
               lambda: pipe.vae.register_to_config(force_upcast=False))
        fix = fp16_fix_vae_path(worker)
        if fix:
            from diffusers import AutoencoderKL

            original = pipe.vae
            fixed = AutoencoderKL.from_pretrained(fix, dtype=dtype, local_files_only=True).to(worker.engine.device)
            effect("fp16-fix VAE (no upcast)", lambda: setattr(pipe, "vae", fixed),
                   lambda: setattr(pipe, "vae", original))
        else:
            suite.note("sdxl: fp16-fix VAE: skipped: no fp16-fix VAE folder configured")
    else:
        suite.note("sdxl: VAE upcast vs fp16-fix VAE: skipped: CUDA only (fp32 on CPU)")
    compile_estimate = suite.cfg.get("extra", {}).get("sdxl_compile", 120)
    if suite.cuda and suite.fits("sdxl torch.compile (dynamic=False)", compile_estimate):
        original = pipe.unet
        compile_started = time.perf_counter()
        pipe.unet = torch.compile(original, dynamic=False)
        call(1, 2)  # compilation happens here
        suite.add("sdxl", "torch.compile(unet, dynamic=False): compile + first call",
                  time.perf_counter() - compile_started, "s")
        seconds, _ = timed(call)
        suite.add("sdxl", "setting alone on the plain pipeline: torch.compile(dynamic=False)", seconds, "s/image",
                  baseline=plain, note="baseline column: the plain pipeline")
        pipe.unet = original
    elif not suite.cuda:
        suite.note("sdxl: torch.compile: skipped: CUDA only")
    pipe = None  # dropped before the device's cache is freed
    _free_device()


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
    families = ("wan", "wan_vace") if suite.cfg["profile"] == "synthetic" else ("wan",)
    ensure_models(suite, families)
    tmp = Path(tempfile.mkdtemp(prefix="gpu-suite-wan-"))
    worker = InProcessWorker("wan", worker_env(suite, tmp))
    try:
        suite.add("wan", "load wan_t2v", worker.load("wan_t2v"), "s")
        loaded = worker.engine.loaded("wan_t2v")
        module_table(suite, "wan", {"transformer": loaded.pipe.transformer, "vae": loaded.pipe.vae,
                                    "text_encoder": loaded.prompts.text_encoder})
        config = {"width": cfg["width"], "height": cfg["height"], "frames": cfg["frames"], "seed": 7}
        if cfg["steps"]:
            config["steps"] = cfg["steps"]
        body = _base_body("wan-t2v", cfg["type"], config)
        params = worker.params(body)
        estimate = worker.engine.working_bytes(params)
        seconds, assets = timed(lambda: record_memory(suite, "wan", f"a {cfg['type']} job", estimate,
                                                      lambda: worker.run_engine(params)))
        shape = f"{params['width']}x{params['height']} {params['frames']} frames {params['steps']} steps"
        suite.add("wan", f"ours: {shape} ({cfg['type']})", seconds, "s/video",
                  note=f"text encoder on {assets[0].metadata.get('text_encoder_device')}, "
                       f"gpu settings {assets[0].metadata.get('gpu_settings')}")
        encode_mp4(suite, assets[0])
        umt5_cpu_vs_gpu(suite, loaded)
        if suite.fits("wan plain WanPipeline baseline", suite.cfg.get("extra", {}).get("wan_baseline", 10)):
            baseline_wan(suite, worker, params, seconds)
        if suite.fits("wan reference mode", suite.cfg.get("extra", {}).get("wan_reference", 10)):
            reference_mode(suite, worker, config, tmp)
    finally:
        worker.close()
        release_models(suite, families)


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


def reference_mode(suite: Suite, worker: InProcessWorker, config: dict, tmp: Path) -> None:
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
        suite.add("wan", "load wan_vace", worker.load("wan_vace"), "s")
        estimate = worker.engine.working_bytes(params)
        seconds, _ = timed(record_memory, suite, "wan", "a reference-mode job", estimate,
                           lambda: worker.run_engine(params))
        suite.add("wan", f"ours: reference mode {params['reference']['mode']} (VACE)", seconds, "s/video")
    finally:
        server.close()


# ---- chat ----------------------------------------------------------------------------------------------

def part_chat(suite: Suite) -> None:
    cfg = suite.cfg["chat"]
    ensure_models(suite, ("qwen",))
    tmp = Path(tempfile.mkdtemp(prefix="gpu-suite-chat-"))
    worker = InProcessWorker("chat", worker_env(suite, tmp))
    model = cfg["model"]
    try:
        suite.add("chat", f"load {model}", worker.load(model), "s")
        module_table(suite, "chat", {model: worker.engine.modules(model)[0]})
        prompt = " ".join(["describe the snowy forest at dawn"] * max(1, cfg["prompt_words"] // 6))

        def ask(client=None, seed=1):
            body = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": cfg["max_tokens"],
                    "temperature": 0.7, "seed": seed}
            return worker.post("/v1/chat/completions", body, client)

        ask()  # warm-up
        seconds, answer = timed(ask)
        single = answer["usage"]["completion_tokens"] / seconds
        suite.add("chat", f"ours: single stream ({answer['usage']['prompt_tokens']} prompt tokens)", single, "tok/s")

        results, errors = [], []

        def client_loop(i):
            try:
                results.append(ask(worker.client(), seed=100 + i)["usage"]["completion_tokens"])
            except Exception as exc:
                errors.append(exc)

        from configuration.params import chat as chat_params

        one = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": cfg["max_tokens"]}
        estimate = worker.engine.batch_working_bytes([chat_params.chat(one, worker.settings)] * cfg["clients"])

        def clients():
            threads = [threading.Thread(target=client_loop, args=(i,)) for i in range(cfg["clients"])]
            for t in threads:
                t.start()
            for t in threads:
                t.join()

        wall, _ = timed(record_memory, suite, "chat", f"{cfg['clients']} concurrent requests", estimate, clients)
        if errors:
            raise errors[0]
        suite.add("chat", f"ours: {cfg['clients']} concurrent clients, aggregate", sum(results) / wall, "tok/s")
        baseline_chat(suite, worker, model, prompt, cfg, single, sum(results) / wall)
    finally:
        worker.close()
        release_models(suite, ("qwen",))


def baseline_chat(suite: Suite, worker: InProcessWorker, model: str, prompt: str, cfg: dict, single: float,
                  aggregate: float) -> None:
    """Plain transformers `generate` on the same folder: one stream, then the clients one after another;
    and a NaN check of a left-padded batch's logits."""
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
    seconds, _ = timed(lambda: [generate() for _ in range(cfg["clients"])])
    suite.add("chat", f"plain generate: {cfg['clients']} clients one after another",
              cfg["clients"] * cfg["max_tokens"] / seconds, "tok/s", baseline=aggregate, note="baseline column: ours")
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
    """Each worker under gunicorn as the orchestrator starts it: start-to-ready, and one small job over
    HTTP against the same job through the in-process app (the difference is what HTTP + gunicorn cost)."""
    from tests.support import WorkerProcess

    for name in suite.cfg["stack"]:
        families = {"sdxl": ("sdxl",), "chat": ("qwen",), "wan": ("wan",)}[name]
        if not suite.fits(f"stack {name}", 20 if suite.scale == "full" else 5):
            continue
        ensure_models(suite, families)
        tmp = Path(tempfile.mkdtemp(prefix=f"gpu-suite-stack-{name}-"))
        env = worker_env(suite, tmp)
        process = WorkerProcess(name, env)
        seconds, _ = timed(process.start, 600)
        try:
            suite.add("stack", f"{name}: start to /ready under gunicorn", seconds, "s")
            if name == "sdxl":
                http_overhead(suite, process, env)
        finally:
            process.stop()
        release_models(suite, families)


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


# Cheapest and most asked-about first: a budget that runs short skips the stack figures, then WAN.
PARTS = {"sdxl": part_sdxl, "chat": part_chat, "wan": part_wan, "stack": part_stack}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", choices=sorted(SCALES), default="full")
    parser.add_argument("--out", type=Path, default=None, help="folder for suite.md and suite.json "
                        "(default: benchmarks/results/gpu-suite-<scale>-<time>)")
    parser.add_argument("--budget-s", type=float, default=None, help="default: 480 (full), 120 (tiny)")
    parser.add_argument("--only", action="append", choices=sorted(PARTS), help="repeatable; default: all parts")
    parser.add_argument("--wheels", type=Path, default=None,
                        help="wheels to install for missing/other-version packages")
    parser.add_argument("--fetch-wheels", type=Path, default=None, help="download the wheels into this folder and exit")
    args = parser.parse_args(argv)
    if args.fetch_wheels:
        return fetch_wheels(args.fetch_wheels)
    notes = bootstrap(args.wheels)

    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.scale == "full" and device != "cuda":
        print("gpu_suite: --scale full needs a CUDA device (torch.cuda.is_available() is False); "
              "use --scale tiny on a CPU", file=sys.stderr)
        return 2
    out = args.out or REPO / "benchmarks" / "results" / f"gpu-suite-{args.scale}-{time.strftime('%Y%m%d-%H%M%S')}"
    suite = Suite(args.scale, out, args.budget_s or SCALES[args.scale]["budget_s"], device)
    print(f"gpu suite: scale {args.scale} on {device}, budget {suite.budget_s:.0f} s, writing to {out}", flush=True)
    env = environment(device, notes)
    for name, fn in PARTS.items():
        if not args.only or name in args.only:
            suite.part(name, fn)
    folder = suite.write(env)
    print(f"gpu suite: table written to {folder / 'suite.md'} and {folder / 'suite.json'} "
          f"({time.monotonic() - suite.started:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
