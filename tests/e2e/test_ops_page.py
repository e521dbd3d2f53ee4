"""The ops page in a real headless Chromium (Debian's /usr/bin/chromium driven by Playwright) against a
running pod: it loads without console errors at phone width, asks for the key once, shows the three
workers, and a job submitted while it is open appears and reaches 100 %. A screenshot is saved under
the test's temporary directory. Also the operator command's live table (`memory_cli status --watch`)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from tests.support import API_KEY, REPO

pytestmark = pytest.mark.timeout(180)

CHROMIUM = Path("/usr/bin/chromium")
PHONE = {"width": 390, "height": 844}


@pytest.fixture(scope="module")
def pod(shared_pod):
    """The session's shared pod (tests/conftest.py): the page and the command only read it and submit a job."""
    return shared_pod


def test_the_page_shows_the_workers_and_a_job_reaching_100_percent(pod, tmp_path):
    assert CHROMIUM.exists(), ("the ops page test needs Debian's chromium at /usr/bin/chromium: "
                               "apt-get install chromium (infrastructure/test.sh installs it when run as root)")
    from playwright.sync_api import sync_playwright

    # The HTML is public, its data is not.
    assert requests.get(pod.url + "/", timeout=5).status_code == 200
    assert requests.get(pod.url + "/ops/state", timeout=5).status_code == 401

    problems: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), chromium_sandbox=False)
        try:
            page = browser.new_page(viewport=PHONE, device_scale_factor=1)
            page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            page.goto(pod.url + "/?refresh=0.5")
            page.fill("#key", API_KEY)
            page.click("#login button[type=submit]")
            for worker in ("sdxl", "wan", "chat"):
                page.wait_for_selector(f'.card[data-worker="{worker}"] .badge.s-ready', timeout=20_000)

            submitted = requests.post(pod.url + "/jobs", headers={"Authorization": f"Bearer {API_KEY}"}, timeout=30,
                                      json={"type": "sdxl_image_fast", "prompt": "a lighthouse at dusk",
                                            "user_id": "u-ops", "config": {"seed": 1, "steps": 4}})
            assert submitted.status_code == 202, submitted.text
            job_id = submitted.json()["job_id"]
            row = f'tr[data-job="{job_id}"]'
            page.wait_for_selector(row, timeout=20_000)
            page.wait_for_selector(f'{row}[data-status="completed"] td.pct[data-percent="100"]', timeout=60_000)
            assert page.inner_text(f"{row} td.pct").strip() == "100 %"
            assert page.locator('.bar[data-device="0"] > span').count() >= 2  # a lease and the budget marker
            overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
            assert overflow <= 0, f"the page is {overflow}px wider than a phone screen"
            shot = tmp_path / "ops-page.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000
            if os.environ.get("OPS_SCREENSHOT_TO"):  # how docs/ops-page.png is refreshed
                Path(os.environ["OPS_SCREENSHOT_TO"]).write_bytes(shot.read_bytes())
        finally:
            browser.close()
    assert not problems, problems


def test_the_operator_command_watches_memory_and_jobs(pod):
    """The table lists a completed job: one of its own, since the pod is shared and the order of the
    modules on it is not fixed (a parallel run hands them out as it goes)."""
    submitted = pod.client.post("/jobs", json={"type": "sdxl_image_fast", "prompt": "a lighthouse at noon",
                                               "user_id": "u-ops", "config": {"seed": 2, "steps": 2}})
    assert submitted.status_code == 202, submitted.text
    assert pod.client.wait_job(submitted.json()["job_id"])["status"] == "completed"
    env = dict(pod.env, ORCHESTRATOR_URL=pod.url)
    done = subprocess.run([sys.executable, "-m", "orchestrator.memory_cli", "status", "--watch", "0.2",
                           "--iterations", "2"], env=env, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    frames = [f for f in done.stdout.split(pod.url + "  ") if f.strip()]
    assert len(frames) == 2, done.stdout
    for frame in frames:
        assert "WORKER" in frame
        assert "sdxl" in frame
        assert "JOB" in frame
        assert "every 0.2s" in frame
    assert "completed" in frames[-1]
    assert "100.0%" in frames[-1]
    bad = subprocess.run([sys.executable, "-m", "orchestrator.memory_cli", "status", "--iterations", "2"],
                         env=env, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2
    assert "--iterations needs --watch" in bad.stderr
