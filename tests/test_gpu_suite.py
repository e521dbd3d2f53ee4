"""benchmarks/gpu_suite.py --scale tiny runs on CPU with the placeholder models, end to end, so the script
that a GPU session will run cannot rot: every part runs (none skipped for budget, none failed), the table
is written as Markdown and JSON, and each CUDA-only measurement says it was skipped."""
from __future__ import annotations

import json
import subprocess
import sys

from tests.support import REPO


def test_tiny_suite_runs_every_part_and_writes_its_table(tmp_path, placeholder_dir):
    out = tmp_path / "suite"
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PLACEHOLDER_MODELS_DIR": str(placeholder_dir),
           "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "benchmarks/gpu_suite.py", "--scale", "tiny", "--out", str(out),
                           "--budget-s", "600"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    data = json.loads((out / "suite.json").read_text())
    markdown = (out / "suite.md").read_text()
    assert data["scale"] == "tiny" and data["environment"]["device"] == "cpu"
    failed = [n for n in data["notes"] if "FAILED" in n or "needs about" in n]
    assert not failed, failed
    measures = {(r["section"], r["measure"]): r for r in data["rows"]}
    sections = {r["section"] for r in data["rows"]}
    assert {"sdxl", "wan", "chat", "stack"} <= sections
    # ours beside the plain library baseline, in the same run
    assert any(s == "sdxl" and m.startswith("plain diffusers: batch 1") for s, m in measures)
    assert any(s == "wan" and m.startswith("plain diffusers WanPipeline") for s, m in measures)
    assert any(s == "chat" and m.startswith("plain transformers generate") for s, m in measures)
    assert measures[("sdxl", "img2img shares txt2img's modules")]["value"] == "yes"
    assert any(m.startswith("after load: txt2img.unet") for _, m in measures)
    assert any(s == "stack" and m.startswith("HTTP overhead per job") for s, m in measures)
    assert measures[("chat", "padded batch of 4: non-finite logits")]["value"] == 0
    # CUDA-only figures are not silently absent
    assert any("peak device memory" in n and "CUDA only" in n for n in data["notes"])
    assert any("torch.compile" in n and "CUDA only" in n for n in data["notes"])
    assert "| sdxl | ours: 64x64 2 steps batch 1 (job path) |" in markdown
