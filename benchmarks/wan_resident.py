"""WAN: N jobs on the resident worker against N jobs that each load the pipeline from disk in a fresh
process (what the previous pod did), side by side, in one run.

The resident side is the real WAN worker under gunicorn (started once, as the pod starts it; its start is
not counted): N text-to-video jobs, one after the other, through POST /generate?wait=. The first job
includes the lazy model load. The reload side runs the same N jobs as the previous pod did: a new Python
process per job that imports torch and diffusers, loads WanPipeline from disk, generates and writes the
MP4. Both use the same parameters and seeds; the script checks that both produce the same frames.

    .venv/bin/python benchmarks/wan_resident.py                     # placeholder models, 3 jobs
    .venv/bin/python benchmarks/wan_resident.py --jobs 5 --steps 10 --frames 17

Model profile and paths come from the environment as for the pod (MODEL_PROFILE, WAN_T2V_MODEL_PATH).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from configuration.settings import Settings  # noqa: E402
from tests.support import WorkerProcess  # noqa: E402

API_KEY = "bench-key"
PROMPT = "a red fox running through deep snow at dawn"


def one_shot(spec: dict) -> dict:
    """One job the previous pod's way, in this (fresh) process: import, load from disk, generate, encode."""
    started = time.monotonic()
    import torch
    from diffusers import WanPipeline

    from configuration import model_config
    from workers import devices
    from workers.runtime.media import encode_mp4
    imported = time.monotonic()
    settings = Settings.from_env()
    device = devices.pick_device()
    dtype = devices.pick_dtype(model_config("wan_t2v", settings)["dtype"], device)
    pipe = WanPipeline.from_pretrained(model_config("wan_t2v", settings)["path"], dtype=dtype, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    if device != "cpu":
        pipe.to(device)
    loaded = time.monotonic()
    frames = pipe(prompt=spec["prompt"], negative_prompt=spec["negative_prompt"], height=spec["height"],
                  width=spec["width"], num_frames=spec["frames"], num_inference_steps=spec["steps"],
                  guidance_scale=spec["guidance_scale"], generator=torch.Generator().manual_seed(spec["seed"]),
                  output_type="pil").frames[0]
    generated = time.monotonic()
    Path(spec["output"]).write_bytes(encode_mp4(frames, spec["fps"]))
    return {"import_s": imported - started, "load_s": loaded - imported, "generate_s": generated - loaded,
            "encode_s": time.monotonic() - generated}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=None, help="default: the video_fast preset's")
    parser.add_argument("--frames", type=int, default=None, help="default: the video_fast preset's (profile)")
    parser.add_argument("--one-shot", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one_shot:
        print(json.dumps(one_shot(json.loads(args.one_shot))))
        return 0

    from configuration import preset_defaults
    from workers.runtime.media import decode_mp4

    tmp = Path(tempfile.mkdtemp(prefix="wan-bench-"))
    env = {**os.environ, "PYTHONPATH": str(REPO), "WORKER_API_KEY": API_KEY, "BIND_HOST": "127.0.0.1",
           "OUTPUT_DIR": str(tmp / "outputs"), "CALLBACK_URL": "", "SUPABASE_URL": "", "LOG_LEVEL": "WARNING"}
    env.pop("ORCHESTRATOR_URL", None)
    settings = Settings.from_env(env)
    defaults = preset_defaults("video_fast", settings)
    steps = args.steps or defaults["steps"]
    frames = args.frames or defaults["frames"]
    spec = {"prompt": PROMPT, "negative_prompt": defaults["negative_prompt"], "width": defaults["width"],
            "height": defaults["height"], "frames": frames, "steps": steps,
            "guidance_scale": defaults["guidance_scale"],
            "fps": defaults["fps"]}
    print(f"profile={settings.model_profile} jobs={args.jobs} video_fast {spec['width']}x{spec['height']} "
          f"frames={frames} steps={steps}")

    resident, resident_files = [], []
    with WorkerProcess("wan", env) as worker:
        for i in range(args.jobs):
            body = {"id": f"bench-{i}", "type": "video_fast", "prompt": PROMPT, "user_id": "bench",
                    "config": {"seed": 100 + i, "steps": steps, "frames": frames}}
            started = time.monotonic()
            record = worker.client.session.post(worker.url + "/generate?wait=600", json=body, timeout=660).json()
            resident.append(time.monotonic() - started)
            if record.get("status") != "completed":
                raise RuntimeError(f"resident job failed: {record}")
            resident_files.append(Path(env["OUTPUT_DIR"]) / record["assets"][0]["url"])
        load_count = worker.client.session.get(worker.url + "/memory/status",
                                               timeout=30).json()["models"]["wan_t2v"]["load_count"]

    reload, breakdown, same = [], [], []
    for i in range(args.jobs):
        output = tmp / f"reload-{i}.mp4"
        started = time.monotonic()
        done = subprocess.run([sys.executable, __file__, "--one-shot", json.dumps({**spec, "seed": 100 + i,  # noqa: S603 (this script, no shell)
                                                                                   "output": str(output)})],
                              env=env, cwd=REPO, capture_output=True, text=True, check=True)
        reload.append(time.monotonic() - started)
        breakdown.append(json.loads(done.stdout.strip().splitlines()[-1]))
        same.append(all((a == b).all() for a, b in zip(decode_mp4(output.read_bytes())[0],
                                                       decode_mp4(resident_files[i].read_bytes())[0], strict=False)))

    def row(name, times):
        later = statistics.mean(times[1:]) if len(times) > 1 else float("nan")
        return f"{name:<34} total {sum(times):7.2f} s   per job {statistics.mean(times):6.2f} s   " \
               f"first {times[0]:6.2f} s   later {later:6.2f} s"

    print(row("resident worker (loads once)", resident))
    print(row("reload from disk per job (old)", reload))
    mean = {k: statistics.mean(b[k] for b in breakdown) for k in breakdown[0]}
    print("  old per-job breakdown: " + ", ".join(f"{k[:-2]} {v:.2f} s" for k, v in mean.items())
          + "  (+ interpreter start)")
    print(f"resident model loads: {load_count}; reload model loads: {args.jobs}")
    print(f"same frames both ways: {all(same)}")
    print(f"ratio reload/resident, all {args.jobs} jobs: {sum(reload) / sum(resident):.1f}x")
    if len(resident) > 1:
        print(f"ratio reload/resident, jobs after the first: "
              f"{statistics.mean(reload[1:]) / statistics.mean(resident[1:]):.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
