"""benchmarks/gpu_suite.py --scale tiny runs on CPU with the placeholder models, end to end, so the script
that a GPU session will run cannot rot: every part runs (none skipped for budget, none failed), and the
table is written as Markdown and JSON after every measurement, so a call killed by its time limit (SIGTERM,
then SIGKILL) still leaves a valid suite.json with the rows measured so far. The budget holds inside a part;
every pin is carried to the GPU machine (names compared after PEP 503 normalisation)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from tests.support import REPO


def _env(tmp_path, placeholder_dir):
    return {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PLACEHOLDER_MODELS_DIR": str(placeholder_dir),
            "PYTHONPATH": str(REPO)}


def _suite(tmp_path, placeholder_dir, *args, timeout=600):
    return subprocess.run([sys.executable, "benchmarks/gpu_suite.py", "--scale", "tiny", *args], cwd=REPO,
                          env=_env(tmp_path, placeholder_dir), capture_output=True, text=True, timeout=timeout)


def test_tiny_suite_runs_every_part_and_writes_its_table(tmp_path, placeholder_dir):
    out = tmp_path / "suite"
    done = _suite(tmp_path, placeholder_dir, "--out", str(out), "--budget-s", "600")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    data = json.loads((out / "suite.json").read_text())
    markdown = (out / "suite.md").read_text()
    assert data["scale"] == "tiny"
    assert data["environment"]["device"] == "cpu"
    assert data["calls"][0]["parts"] == ["sdxl", "chat", "wan", "stack"]
    assert data["calls"][0]["finished"]
    failed = [n for n in data["notes"] if "FAILED" in n or "needs about" in n]
    assert not failed, failed
    measures = {(r["section"], r["measure"]): r for r in data["rows"]}
    sections = {r["section"] for r in data["rows"]}
    assert {"sdxl", "wan", "chat", "stack"} <= sections
    # ours beside the plain library baseline, in the same run
    assert any(s == "sdxl" and m.startswith("plain diffusers: batch 1") for s, m in measures)
    assert any(s == "wan" and m.startswith("plain diffusers WanPipeline") for s, m in measures)
    assert any(s == "chat" and m.startswith("plain transformers generate") for s, m in measures)
    assert ("chat", "plain generate: 2 requests one after another") in measures  # two, not ten
    assert measures[("sdxl", "img2img shares txt2img's modules")]["value"] == "yes"
    assert any(m.startswith("after load: txt2img.unet") for _, m in measures)
    assert any(s == "stack" and m.startswith("HTTP overhead per job") for s, m in measures)
    assert measures[("chat", "padded batch of 4: non-finite logits")]["value"] == 0
    # each setting row against the same plain pipeline
    settings = [r for (s, m), r in measures.items() if m.startswith("setting alone on the plain pipeline")]
    assert len(settings) == 2
    assert len({r["baseline"] for r in settings}) == 1
    # CUDA-only figures are not silently absent; compile is not a default part
    assert any("peak device memory" in n and "CUDA only" in n for n in data["notes"])
    assert any("fp16-fix VAE" in n and "CUDA only" in n for n in data["notes"])
    assert not any(s == "compile" for s, _ in measures)
    assert "| sdxl | ours: 64x64 2 steps batch 1 (job path) |" in markdown


def test_the_optional_parts_run_when_asked_and_calls_append_to_one_table(tmp_path, placeholder_dir):
    out = tmp_path / "suite"
    done = _suite(tmp_path, placeholder_dir, "--out", str(out), "--only", "compile", "--only", "vace")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    done = _suite(tmp_path, placeholder_dir, "--out", str(out), "--only", "chat")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    data = json.loads((out / "suite.json").read_text())
    assert [c["parts"] for c in data["calls"]] == [["compile", "vace"], ["chat"]]
    assert any("torch.compile" in n and "CUDA only" in n for n in data["notes"])
    measures = {(r["section"], r["measure"]) for r in data["rows"]}
    assert ("vace", "ours: reference mode start (VACE)") in measures
    assert ("chat", "load qwen_instruct") in measures
    # one table from folders of separate calls
    merged = tmp_path / "merged"
    done = subprocess.run([sys.executable, "benchmarks/gpu_suite.py", "--merge", str(out), str(out), "--out",
                           str(merged)], cwd=REPO, env=_env(tmp_path, placeholder_dir), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert len(json.loads((merged / "suite.json").read_text())["rows"]) == 2 * len(data["rows"])


def test_the_budget_holds_inside_a_part(tmp_path, placeholder_dir):
    out = tmp_path / "suite"
    done = _suite(tmp_path, placeholder_dir, "--out", str(out), "--only", "sdxl", "--budget-s", "6")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    data = json.loads((out / "suite.json").read_text())
    measures = [r["measure"] for r in data["rows"]]
    skipped = [n for n in data["notes"] if "skipped: needs about" in n]
    # the part started and measured, then skipped what no longer fit (the plain pipeline alone is estimated at
    # 5 s, more than is left after a load), each saying so; it did not fail
    assert any(m.startswith("load (weights") for m in measures), measures
    assert skipped, data["notes"]
    assert not any("FAILED" in n for n in data["notes"]), data["notes"]


def _wait_for_rows(path, proc, section, timeout=300):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the suite ended before it was killed"
        if path.exists():
            rows = json.loads(path.read_text())["rows"]  # every read is a whole, valid file
            if any(r["section"] == section for r in rows):
                return rows
        time.sleep(0.2)
    raise AssertionError(f"no {section} rows within {timeout} s")


def test_a_call_killed_halfway_leaves_a_valid_table_with_the_rows_so_far(tmp_path, placeholder_dir):
    for sig in (signal.SIGTERM, signal.SIGKILL):
        out = tmp_path / f"suite-{sig.name}"
        proc = subprocess.Popen([sys.executable, "benchmarks/gpu_suite.py", "--scale", "tiny", "--out", str(out)],
                                cwd=REPO, env=_env(tmp_path, placeholder_dir), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        try:
            seen = _wait_for_rows(out / "suite.json", proc, "sdxl")
            os.kill(proc.pid, sig)
            proc.wait(60)
        finally:
            if proc.poll() is None:
                proc.kill()
        data = json.loads((out / "suite.json").read_text())
        assert len(data["rows"]) >= len(seen)
        assert data["rows"][:len(seen)] == seen
        assert not data["calls"][-1]["finished"]
        assert "| sdxl |" in (out / "suite.md").read_text()
        if sig == signal.SIGTERM:
            assert proc.returncode == 143
            assert any("stopped by SIGTERM during part" in n for n in data["notes"]), data["notes"]


def test_every_pin_is_carried_to_the_gpu_machine():
    sys.path.insert(0, str(REPO / "benchmarks"))
    import gpu_suite

    pins = gpu_suite.pinned_requirements()
    assert "prometheus-client" in pins
    assert "nvidia-ml-py" in pins
    carried = gpu_suite.carried_requirements()
    assert set(pins) - gpu_suite.NOT_FROM_WHEELS - gpu_suite.TOO_LARGE_TO_CARRY <= set(carried)
    assert all(carried[name] == version for name, version in pins.items() if name in carried)
    assert gpu_suite.normalise("Prometheus_Client") == gpu_suite.normalise("prometheus.client") == "prometheus-client"
