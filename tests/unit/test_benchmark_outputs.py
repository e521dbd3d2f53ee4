"""Benchmarks write their raw output outside the tree or into folders git ignores, so `git status` stays
clean after a run: every repository path a benchmark script builds (`REPO / ...`) is one of the ignored
output or cache folders, or a file it only reads."""
from __future__ import annotations

import re
import subprocess

from tests.support import REPO

# The repository paths benchmarks may name: written (ignored by .gitignore) or read.
WRITTEN = {'REPO / ".cache"': ".cache/placeholder-models/x", 'REPO / "benchmarks" / "results"':
           "benchmarks/results/gpu-suite-tiny-20260101-000000/suite.json"}
READ = {'REPO / "requirements.txt"'}
_REPO_PATH = re.compile(r'REPO(?: / "[^"]+")+')


def ignored(path: str) -> bool:
    return subprocess.run(["git", "check-ignore", "-q", "--no-index", path], cwd=REPO, timeout=30).returncode == 0


def test_benchmark_output_folders_are_ignored():
    for path in [*WRITTEN.values(), ".whl/torch-2.13.0-cp311-none-any.whl"]:
        assert ignored(path), f"{path} is not ignored by .gitignore"
    assert not ignored("benchmarks/RESULTS.md")
    assert not ignored("benchmarks/gpu_suite.py")


def test_benchmarks_name_no_other_repository_path():
    scripts = sorted((REPO / "benchmarks").glob("*.py"))
    assert scripts
    for script in scripts:
        for found in _REPO_PATH.findall(script.read_text(encoding="utf-8")):
            assert any(found.startswith(allowed) for allowed in [*WRITTEN, *READ]), \
                f"{script.name} names {found}: write benchmark output to a temporary folder or benchmarks/results/"
