"""The WAN worker end to end under gunicorn, as the pod runs it: HTTP in, MP4/PNG on disk, callbacks,
the model loaded once for consecutive jobs, reference images fetched over real HTTP."""
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.support import CallbackReceiver, StaticServer, WorkerProcess, base_env
from workers.runtime.media import decode_mp4

JOB = {"type": "video_fast", "prompt": "a fox running through snow", "user_id": "u1",
       "config": {"seed": 5, "steps": 3}}


@pytest.fixture(scope="module")
def stack(tmp_path_factory, placeholder_dir):
    tmp = tmp_path_factory.mktemp("wan")
    receiver = CallbackReceiver()
    env = base_env(tmp, placeholder_dir, CALLBACK_URL=receiver.url)
    worker = WorkerProcess("wan", env).start()
    yield worker, receiver, Path(env["OUTPUT_DIR"])
    worker.stop()
    receiver.close()


@pytest.fixture(scope="module")
def image_server():
    """A real HTTP server serving a reference PNG (the worker fetches it like a CDN URL)."""
    buf = io.BytesIO()
    ramp = np.linspace(0, 255, 64, dtype=np.uint8)
    Image.fromarray(np.stack([np.tile(ramp, (64, 1))] * 3, -1)).save(buf, format="PNG")
    png = buf.getvalue()

    server = StaticServer({"/ref.png": (200, "image/png", png)})
    yield server.url
    server.close()


def test_three_consecutive_jobs_load_the_model_once(stack):
    worker, receiver, out = stack
    jobs = [("v1", "video_fast", {"frames": 13, "fps": 24}), ("i1", "image_fast", {}), ("v2", "video_high", {})]
    for job_id, job_type, config in jobs:
        r = worker.client.post("/generate", json={**JOB, "id": job_id, "type": job_type,
                                                  "config": {**JOB["config"], **config}})
        assert r.status_code == 202, r.text
    records = {job_id: worker.client.wait_job(job_id) for job_id, _, _ in jobs}
    assert all(r["status"] == "completed" for r in records.values()), records
    models = worker.client.get("/memory/status").json()["models"]
    assert models["wan_t2v"]["load_count"] == 1
    assert models["wan_t2v"]["loaded"]
    assert models["wan_t2v"]["resident_bytes"] > 100_000
    assert models["wan_vace"]["load_count"] == 0
    assert not models["wan_vace"]["loaded"]

    video = records["v1"]["assets"][0]
    frames, info = decode_mp4((out / video["url"]).read_bytes())
    assert len(frames) == video["metadata"]["frames"] == 13
    assert info["fps"] == 24
    assert tuple(info["size"]) == (video["metadata"]["width"], video["metadata"]["height"]) == (32, 32)
    assert video["metadata"]["duration_seconds"] == 13 / 24
    image = records["i1"]["assets"][0]
    assert image["type"] == "image"
    assert image["url"] == "u1/i1/0.png"
    assert Image.open(out / image["url"]).format == "PNG"
    assert records["v2"]["assets"][0]["metadata"]["steps"] == 3  # the caller's steps, not video_high's 50
    for job_id, _, _ in jobs:
        [callback] = receiver.wait_for(1, job_id)
        assert callback["status"] == "completed"
        assert callback["assets"] == records[job_id]["assets"]


def test_reference_fetched_over_http_conditions_with_vace(stack, image_server):
    worker, _, out = stack
    config = {**JOB["config"], "image": f"{image_server}/ref.png"}
    r = worker.client.post("/generate?wait=120", json={**JOB, "id": "ref1", "config": config})
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "completed", r.text
    meta = r.json()["assets"][0]["metadata"]
    assert meta["pipeline"] == "WanVACEPipeline"
    assert meta["reference_mode"] == "single"
    assert meta["reference_sizes"] == {"first": [64, 64]}
    models = worker.client.get("/memory/status").json()["models"]
    assert models["wan_vace"]["load_count"] == 1
    assert models["wan_t2v"]["load_count"] == 1


@pytest.mark.parametrize(("job", "path"), [
    ({**JOB, "type": "video7b_fast_enhanced"}, "/type"),
    ({**JOB, "config": {"enhance_prompt": True}}, "/config/enhance_prompt"),
    ({**JOB, "config": {"content_type": "image"}}, "/config/content_type"),
    ({**JOB, "config": {"width": 40}}, "/config/width"),
    ({**JOB, "config": {"sample_solver": "euler"}}, "/config/sample_solver"),
    ({**JOB, "metadata": {"denoise_strength": 0.5}}, "/metadata/denoise_strength"),
])
def test_bad_input_is_400_with_the_field_path_and_nothing_is_queued(stack, job, path):
    worker, _, _ = stack
    job = {**job, "id": f"bad-{path.strip('/').replace('/', '-')}"}
    r = worker.client.post("/generate", json=job)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["code"] == "validation_error"
    assert path in [d["path"] for d in err["details"]]
    assert worker.client.get(f"/jobs/{job['id']}").status_code == 404


def test_openapi_describes_the_wan_request(stack):
    worker, _, _ = stack
    doc = worker.client.get("/openapi.json").json()
    config = doc["components"]["schemas"]["wan_generate"]["properties"]["config"]["properties"]
    assert config["reference_mode"]["enum"] == ["none", "single", "start", "end", "both"]
    assert config["frames"]["maximum"] == 33
    assert "frame_num" in config
    assert "sample_solver" in config
