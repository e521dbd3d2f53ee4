"""The app's real traffic, replayed: payloads built as its queue-job function builds them, pushed with
RPUSH onto a real Redis, consumed by real SDXL and WAN workers (gunicorn), outputs stored through
the real supabase client into a stand-in speaking Supabase's HTTP API, callbacks checked by a copy
of the app's job-callback signature check."""
from __future__ import annotations

import io
import json
import math
import time
import urllib.error
import urllib.request

import pytest
from PIL import Image

from common.queues import QueueKeys
from tests.app_client import entry_points, queue_job, queue_job_payload, rpush, workspace_request
from tests.supabase_standin import CALLBACK_SECRET, SERVICE_KEY
from tests.support import WorkerProcess, base_env, poll_until
from workers.runtime.media import decode_mp4

SDXL_QUEUE, WAN_QUEUE = "contract_sdxl_queue", "contract_wan_queue"


def queue_env(tmp_path, placeholder_dir, redis_server, standin, name: str, **extra) -> dict:
    return base_env(tmp_path / name, placeholder_dir, REDIS_URL=redis_server.url, SDXL_QUEUE=SDXL_QUEUE,
                    WAN_QUEUE=WAN_QUEUE, SUPABASE_URL=standin.url, SUPABASE_SERVICE_ROLE_KEY=SERVICE_KEY,
                    JOB_CALLBACK_SECRET=CALLBACK_SECRET, STORAGE_BACKEND="supabase", QUEUE_BLOCK_S="0.2",
                    QUEUE_HEARTBEAT_TTL_S="3", QUEUE_REAP_INTERVAL_S="1", **extra)


@pytest.fixture(scope="module")
def stack(tmp_path_factory, placeholder_dir, redis_server, standin):
    tmp = tmp_path_factory.mktemp("contract")
    workers = {name: WorkerProcess(name, queue_env(tmp, placeholder_dir, redis_server, standin, name)).start()
               for name in ("sdxl", "wan")}
    yield workers
    for worker in workers.values():
        worker.stop()


def reference_png(color=(200, 40, 40), size=(96, 64)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, "PNG")
    return buffer.getvalue()


def one_terminal_callback(standin, job_id: str, timeout_s: float = 120) -> dict:
    found = standin.wait_for(lambda: standin.terminal_callbacks(job_id), timeout_s)
    assert found, f"no terminal callback for {job_id}: {standin.callbacks(job_id)}"
    time.sleep(0.3)  # a duplicate would follow within moments (the sender is local)
    calls = standin.terminal_callbacks(job_id)
    assert len(calls) == 1, calls
    return calls[0]


def settled(redis_client, *queues, timeout_s: float = 10) -> bool:
    """Every queue and every consumer's processing list empty (acknowledgement follows the journal)."""
    def empty() -> bool:
        lists = [q for q in queues] + [k.decode() for q in queues for k in redis_client.keys(f"{q}:processing:*")]
        return all(redis_client.llen(name) == 0 for name in lists)
    return poll_until(empty, timeout_s)


NATIVE = {"1024x576": "112x64", "576x1024": "64x112", "1024x1024": "80x80"}  # placeholder WAN native_size class


def test_replay_of_every_entry_point_of_the_app(stack, standin, redis_server):
    """Each row of real-client.md's entry-point table, built as the app's queue-job builds it (nulls, denoise
    without a reference, `pipeline: video` with frames, reference_profile objects, an exact copy without a
    prompt or negative prompt), pushed with RPUSH: one signed callback each, the right assets, video at the
    model's native size class."""
    client = redis_server.client()
    user = "6f1c2a52-8f1e-4d7e-9a57-0c6c1b0f1a11"
    standin.put_object("user-library", f"{user}/ref.png", reference_png(), "image/png")
    standin.put_object("workspace-temp", f"{user}/frame.png", reference_png((20, 160, 40), (64, 96)), "image/png")
    reference = standin.signed_url("user-library", f"{user}/ref.png")
    other = standin.signed_url("workspace-temp", f"{user}/frame.png")
    payloads = entry_points(user, reference, other, steps=3)
    # Another origin than SUPABASE_URL: fetched as a URL, with its token (the project's own are read by path).
    payloads["workspace modify a reference"] = queue_job(workspace_request(
        reference_url=standin.signed_url("user-library", f"{user}/ref.png").replace("127.0.0.1", "localhost"),
        steps=3), user_id=user)
    copy_row = payloads["workspace exact copy"]
    assert copy_row["prompt"] == ""
    assert "negative_prompt" not in copy_row
    assert payloads["workspace text to image"]["config"]["denoise_strength"] == 0.2
    assert payloads["workspace text to video"]["metadata"]["start_reference_url"] is None
    assert payloads["workspace start and end keyframes"]["config"]["pipeline"] == "video"
    assert isinstance(payloads["workspace modify a reference"]["metadata"]["reference_profile"], dict)
    for payload in payloads.values():
        rpush(client, payload, SDXL_QUEUE if payload["format"] == "image" else WAN_QUEUE)

    for name, payload in payloads.items():
        call = one_terminal_callback(standin, payload["id"], timeout_s=300)
        body, headers = call["body"], call["headers"]
        assert body["status"] == "completed", (name, body.get("error_message"))
        assert headers["Authorization"] == f"Bearer {SERVICE_KEY}"
        metadata = body["metadata"]
        params = metadata["parameters"]
        assert metadata["steps"] == metadata["num_inference_steps"] == params["steps"]
        assert metadata["guidance_scale"] == params["guidance_scale"]
        assert metadata["caller_context"]["job_type"] == payload["job_type"]
        assert metadata["caller_context"]["content_type"] == payload["content_type"]
        video = payload["format"] == "video"
        requested = payload["config"]["resolution"]
        expected = NATIVE[requested] if video else "x".join(str(int(v) // 4) for v in requested.split("x"))
        assert metadata["size"]["requested"] == requested, name
        assert metadata["size"]["rendered"] == expected, name
        w, h = (int(v) for v in expected.split("x"))
        pipeline = metadata["intake"]["pipeline"]
        assert pipeline["label"] == payload["config"]["pipeline"]
        assert pipeline["ran"] == ("img2img" if params.get("reference") else "video" if video else "txt2img"), name
        assert len(body["assets"]) == payload["config"]["num_images"]
        for index, asset in enumerate(body["assets"]):
            main = f"{payload['user_id']}/{payload['id']}/{index}.{'mp4' if video else 'png'}"
            assert asset["url"] == main
            assert asset["type"] == ("video" if video else "image")
            assert asset["thumbnail_url"] == f"{payload['user_id']}/{payload['id']}/{index}.thumb.webp"
            data, mime = standin.objects[("workspace-temp", main)]
            assert mime == ("video/mp4" if video else "image/png")
            assert standin.objects[("workspace-temp", asset["thumbnail_url"])][1] == "image/webp"
            assert isinstance(asset["metadata"]["seed"], int)
            assert 0 <= asset["metadata"]["seed"] < 2**32
            assert (asset["metadata"]["width"], asset["metadata"]["height"]) == (w, h)
            if video:
                frames, info = decode_mp4(data)
                assert metadata["frame_num"] == len(frames) == asset["metadata"]["frames"]
                assert info["size"] == (w, h)
            else:
                assert Image.open(io.BytesIO(data)).size == (w, h)
        if "seed" in payload["config"]:
            assert body["assets"][0]["metadata"]["seed"] == payload["config"]["seed"] % 2**32
        if params.get("reference"):
            assert metadata["denoise_strength"] == pytest.approx(payload["config"]["denoise_strength"])

    def meta(row: str) -> dict:
        return standin.terminal_callbacks(payloads[row]["id"])[0]["body"]["metadata"]

    copy_meta = meta("workspace exact copy")
    assert copy_meta["exact_copy_mode"] is True
    assert copy_meta["reference_mode"] == "copy"
    assert copy_meta["original_prompt"] == ""
    assert copy_meta["parameters"]["negative_prompt"] == ""
    assert copy_meta["references_from_storage"] == {"/metadata/reference_image_url": f"user-library/{user}/ref.png"}
    modify_meta = meta("workspace modify a reference")
    assert modify_meta["exact_copy_mode"] is False
    assert modify_meta["reference_mode"] == "modify"
    assert "references_from_storage" not in modify_meta  # another origin: fetched as the URL it is
    assert modify_meta["caller_context"]["metadata"]["reference_profile"]["type"] == "character"
    txt_meta = meta("workspace text to image")
    assert txt_meta["caller_context"]["config"]["denoise_strength"] == 0.2
    assert txt_meta["intake"]["not_applied"]["/config/denoise_strength"] == "no reference image to apply it to"
    keyframes = meta("workspace start and end keyframes")
    assert keyframes["intake"]["pipeline"] == {"label": "video", "ran": "img2img", "label_agrees": False,
                                               "what": "video conditioned on reference frames"}
    assert keyframes["parameters"]["reference"]["mode"] == "both"
    both = meta("workspace reference plus a different start frame")
    assert both["parameters"]["reference"]["mode"] == "start"
    assert both["caller_context"]["metadata"]["reference_image_url"] == reference
    assert "/metadata/reference_image_url" in both["intake"]["not_applied"]
    assert meta("generation service video from one image")["parameters"]["reference"]["mode"] == "single"
    seeded = meta("generation service image")
    assert seeded["parameters"]["seed"] == (2**53 - 1) % 2**32
    assert seeded["parameters"]["seed_requested"] == 2**53 - 1
    for row in ("workspace text to video", "workspace video from a start frame"):
        assert "native size class" in meta(row)["size"]["reason"]
    video_meta = meta("workspace text to video")
    assert math.ceil(video_meta["frame_num"] / 16) >= 1
    assert settled(client, SDXL_QUEUE, WAN_QUEUE)


def test_a_reference_url_that_expired_in_the_queue_is_read_from_its_storage_path(stack, standin, redis_server):
    client = redis_server.client()
    user = "0b7e8d7e-3f55-4a55-9d59-3f2f5d7b8a01"
    standin.put_object("user-library", f"{user}/old.png", reference_png((10, 10, 200)), "image/png")
    expired = standin.signed_url("user-library", f"{user}/old.png", expires_in=-10)
    with pytest.raises(urllib.error.HTTPError) as refused:  # the URL itself no longer works
        urllib.request.urlopen(expired, timeout=10)
    assert refused.value.code == 400
    payload = queue_job(workspace_request(reference_url=expired, steps=2), user_id=user)
    rpush(client, payload, SDXL_QUEUE)
    body = one_terminal_callback(standin, payload["id"])["body"]
    assert body["status"] == "completed", body.get("error_message")
    assert body["metadata"]["references_from_storage"] == {
        "/metadata/reference_image_url": f"user-library/{user}/old.png"}
    assert settled(client, SDXL_QUEUE)


def test_push_order_and_nothing_blocks_the_queue(stack, standin, redis_server):
    client = redis_server.client()
    jobs = [queue_job_payload(seed=i) for i in range(3)]
    invalid = queue_job_payload()
    invalid["type"] = "sdxl_image_ultra"  # no such type: cannot run (a contradicting label would only be noted)
    other_user = queue_job_payload(reference_url="user-library/someone-else/ref.png")
    client.rpush(SDXL_QUEUE, b"{this is not json")
    rpush(client, jobs[0], SDXL_QUEUE)
    rpush(client, invalid, SDXL_QUEUE)
    client.rpush(SDXL_QUEUE, json.dumps({"prompt": "no id"}))
    rpush(client, jobs[1], SDXL_QUEUE)
    rpush(client, other_user, SDXL_QUEUE)
    rpush(client, jobs[2], SDXL_QUEUE)

    finished = [one_terminal_callback(standin, job["id"])["body"] for job in jobs]
    assert [b["status"] for b in finished] == ["completed"] * 3
    records = [stack["sdxl"].client.get(f"/jobs/{job['id']}").json() for job in jobs]
    starts = [r["started_at"] for r in records]
    assert starts == sorted(starts), starts

    refused = one_terminal_callback(standin, invalid["id"])["body"]
    assert refused["status"] == "failed"
    assert refused["assets"] == []
    assert "/type" in refused["error_message"]
    assert refused["metadata"]["error_type"] == "validation_error"
    outside = one_terminal_callback(standin, other_user["id"])["body"]
    assert outside["status"] == "failed"
    assert "/metadata/reference_image_url" in outside["error_message"]

    dead = [json.loads(d) for d in client.lrange(QueueKeys(SDXL_QUEUE).dead, 0, -1)]
    assert [d["reason"].split(":")[0] for d in dead[-2:]] == ["not valid JSON", "no job id (`id` or `job_id`)"]
    assert settled(client, SDXL_QUEUE)
