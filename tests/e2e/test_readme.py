"""The README's "Try it" block, run as written against a started pod; README and docs/ cite only what
is in the repository.

The block (the ```bash block after "Try it" in README.md) runs under bash from the repository root with
three substitutions, so that it runs on free ports and under this interpreter:
- the line that starts `./infrastructure/startup.sh` in the background becomes `POD=<pid>` of a pod this
  test started the way startup.sh ends, `python -m orchestrator` (startup.sh's bootstrap would create or
  install into .venv, which a test must not do), with the key the block exports;
- the default ports in the block (`:7858`, `:7859`) become that pod's ports;
- `.venv/bin/python` becomes this interpreter (`sys.executable`), so the test runs from any environment.
Everything else runs unchanged, including the readiness wait and `kill $POD`, the graceful stop.
The answers are checked against the block's own `# -> ` comments.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from tests.support import REPO

pytestmark = pytest.mark.timeout(300)


def try_it_block() -> str:
    readme = (REPO / "README.md").read_text()
    match = re.search(r"^Try it.*?\n```bash\n(.*?)\n```", readme, re.S | re.M)
    assert match, "README.md has no ```bash block after 'Try it'"
    return match.group(1)


def test_readme_try_it_block_runs_as_written(start_pod):
    block = try_it_block()
    key = re.search(r"^export WORKER_API_KEY=(\S+)", block, re.M)
    assert key, "the block states the key it uses"
    pod = start_pod("readme", ready=False, WORKER_API_KEY=key.group(1))  # the block waits for readiness itself
    env, ports = pod.env, {"ORCHESTRATOR_PORT": pod.port, "SDXL_PORT": pod.ports["sdxl"]}
    try:
        script, starts = re.subn(r"^\./infrastructure/startup\.sh .*$", f"POD={pod.proc.pid}", block, flags=re.M)
        assert starts == 1, "the block starts the pod with ./infrastructure/startup.sh"
        for default, port in ((":7858", ports["ORCHESTRATOR_PORT"]), (":7859", ports["SDXL_PORT"])):
            assert default in script, f"the block no longer uses the default port {default}"
            script = script.replace(default, f":{port}")
        script = script.replace(".venv/bin/python", sys.executable)
        done = subprocess.run(["bash", "-c", script], cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
        assert done.returncode == 0, f"{done.stdout}\n{done.stderr}\n{pod.log()}"
        # the pod stopped gracefully on the block's `kill $POD`
        assert pod.proc.wait(120) == 0, pod.log()
    finally:
        pod.stop()

    records = {r["job_id"]: r for r in (json.loads(line) for line in done.stdout.splitlines() if line.startswith("{"))}
    assert set(records) == {"j1", "j2"}, done.stdout
    assert records["j1"]["status"] == "completed"
    assert records["j1"]["assets"][0]["url"] == "u1/j1/0.png"
    assert (pod.output_dir / "u1" / "j1" / "0.png").is_file()
    assert records["j2"]["status"] == "completed", records["j2"]
    assert records["j2"]["metadata"]["original_prompt"] == "a red fox"
    assert records["j2"]["metadata"]["enhanced_prompt"]
    assert re.search(r"^WORKER +STATE +PID +MODEL", done.stdout, re.M), done.stdout  # memory_cli status
    # every "key":"value" the block's `# -> ` comments promise is in the answers
    promised = re.findall(r'"\w+":"[^".]+"', "\n".join(line for line in block.splitlines() if "# -> " in line))
    assert len(promised) >= 4
    for fragment in promised:
        assert fragment in done.stdout, f"README promises {fragment}"


# `a/b.py`-like paths in backticks (optionally `path:Name`), and relative markdown links
_CITED = re.compile(r"`([\w.-]+(?:/[\w.-]+)+\.(?:py|md|json|sh|toml|yaml|txt|html))(?::\w+)?`|\]\(([^)#\s]+)")
# places outside the repository a page might point at (the design notes this project was built from)
# (a relative link's own `../`, as docs/ -> benchmarks/, is checked by tests/unit/test_doc_links.py: it must
# resolve inside the repository)
_OUTSIDE = re.compile(r"(?<![\w.-])(?<!\]\()(?:shared/(?:design|reference)/|/work/|\.\./)")


def test_docs_cite_only_files_in_the_repository():
    pages = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    wrong = []
    for page in pages:
        for number, line in enumerate(page.read_text().splitlines(), 1):
            where = f"{page.relative_to(REPO)}:{number}"
            wrong += [f"{where}: {m.group(0)} (outside the repository)" for m in _OUTSIDE.finditer(line)]
            for match in _CITED.finditer(line):
                cited = match.group(1) or match.group(2)
                if cited.startswith(("http://", "https://", "mailto:")):
                    continue
                if not ((page.parent / cited).exists() or (REPO / cited).exists()):
                    wrong.append(f"{where}: {cited} does not exist")
    assert not wrong, "\n".join(wrong)
