"""The GPU machine's Python environment as it will be, on this CPU machine: a fresh interpreter (`python3 -I`,
not the development venv) whose site-packages holds only what the GPU image ships (torch and its
dependencies, the image's unpinned packages), and a folder of the carried packages (what `--wheels` installs
into the suite's private folder: every pin and the dependencies the image lacks, as
`carried_requirements()` lists them). The suite bootstraps itself in it exactly as on the GPU machine
(re-executes with the carried folder on PYTHONPATH) and starts a worker under gunicorn: a package missing
from the carried set, or a worker environment that resets PYTHONPATH to the repository (issue 20: the stack
part's workers could not import gunicorn, flask or diffusers), fails here.

The packages are the development venv's own files, linked (not copied) into the two folders."""
from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from tests.support import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
import gpu_suite


def _closure(names) -> set[str]:
    found: set[str] = set()
    stack = list(names)
    while stack:
        name = gpu_suite.normalise(stack.pop())
        if name in found:
            continue
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue  # the image ships it; this machine does not have it (an optional extra of another)
        found.add(name)
        for text in dist.requires or []:
            requirement = Requirement(text)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                stack.append(requirement.name)
    return found


def _link(names, target: Path) -> None:
    """Link every top-level file and folder of these installed distributions into `target`."""
    target.mkdir(parents=True, exist_ok=True)
    for name in names:
        dist = importlib.metadata.distribution(name)
        site = Path(str(dist.locate_file("")))
        for top in {Path(str(f)).parts[0] for f in dist.files or [] if not str(f).startswith("..")}:
            source, link = site / top, target / top
            if source.exists() and not link.exists():
                link.symlink_to(source)


@pytest.fixture(scope="module")
def gpu_machine(tmp_path_factory):
    """(interpreter, carried folder): a venv of the base interpreter without pip whose site-packages holds the
    image's packages, and the carried packages in a folder of their own."""
    root = tmp_path_factory.mktemp("gpu-machine")
    image = root / "image"
    subprocess.run([sys._base_executable, "-m", "venv", "--without-pip", str(image)], check=True)  # type: ignore[attr-defined]
    python = image / "bin" / "python3"
    site = Path(subprocess.run([str(python), "-I", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    pins = gpu_suite.pinned_requirements()
    shipped = _closure(["torch"]) | (_closure(gpu_suite.GPU_IMAGE_PACKAGES - set(pins)) - set(pins))
    _link(shipped, site)
    carried = root / "carried"
    _link(gpu_suite.carried_requirements(), carried)
    return python, carried


def test_the_image_alone_lacks_what_is_carried_and_a_reset_pythonpath_loses_it(gpu_machine):
    python, carried = gpu_machine
    probe = "import torch, gunicorn, flask, diffusers, transformers, prometheus_client, pynvml"
    alone = subprocess.run([str(python), "-I", "-c", probe], capture_output=True, text=True)
    assert alone.returncode != 0
    assert "ModuleNotFoundError" in alone.stderr
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)}  # what tests/support.py base_env leaves
    assert subprocess.run([str(python), "-c", probe], env=env, capture_output=True).returncode != 0
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(carried)])
    with_carried = subprocess.run([str(python), "-c", probe], env=env, capture_output=True, text=True)
    assert with_carried.returncode == 0, with_carried.stderr


def test_the_suite_bootstraps_and_starts_its_workers_as_on_the_gpu_machine(gpu_machine, tmp_path, placeholder_dir):
    python, carried = gpu_machine
    out, wheels = tmp_path / "suite", tmp_path / "wheels"
    wheels.mkdir()  # the carried wheels are already installed in the private folder (a machine still up)
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PLACEHOLDER_MODELS_DIR": str(placeholder_dir),
           "OURVIDZ_GPU_SUITE_SITE": str(carried)}
    done = subprocess.run([str(python), "-I", "benchmarks/gpu_suite.py", "--scale", "tiny", "--only", "chat",
                           "--only", "stack", "--wheels", str(wheels), "--out", str(out)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    data = json.loads((out / "suite.json").read_text())
    assert not [n for n in data["notes"] if "FAILED" in n], data["notes"]
    measures = {(r["section"], r["measure"]) for r in data["rows"]}
    assert ("stack", "sdxl: start to /ready under gunicorn") in measures, data["notes"]
    assert ("chat", "load qwen_instruct") in measures
    # every pin met but the one too large to carry (MP4 encoding is reported as skipped without it)
    pin = gpu_suite.pinned_requirements()["imageio-ffmpeg"]
    expected = f"imageio-ffmpeg: missing (pinned {pin}; no wheel carried)"
    assert data["environment"]["packages not at their pins"] == expected
