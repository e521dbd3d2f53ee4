"""The app's real traffic, replayed: payloads built as its queue-job function builds them, pushed with
RPUSH onto a real Redis, consumed by real SDXL and WAN workers (gunicorn), outputs stored through
the real supabase client into a stand-in speaking Supabase's HTTP API, callbacks checked by a copy
of the app's job-callback signature check."""
from __future__ import annotations

import io
import json
import math
import time

import pytest
from PIL import Image

from common.queues import QueueKeys
from tests.app_client import queue_job_payload, rpush
from tests.supabase_standin import CALLBACK_SECRET, SERVICE_KEY, SupabaseStandIn
from tests.support import WorkerProcess, base_env
from workers.runtime.media import decode_mp4

SDXL_QUEUE, WAN_QUEUE = "contract_sdxl_queue", "contract_wan_queue"


def queue_env(tmp_path, placeholder_dir, redis_server, standin, name: str, **extra) -> dict:
    return base_env(tmp_path / name, placeholder_dir, REDIS_URL=redis_server.url, SDXL_QUEUE=SDXL_QUEUE,
                    WAN_QUEUE=WAN_QUEUE, SUPABASE_URL=standin.url, SUPABASE_SERVICE_ROLE_KEY=SERVICE_KEY,
                    JOB_CALLBACK_SECRET=CALLBACK_SECRET, STORAGE_BACKEND="supabase", QUEUE_BLOCK_S="0.2",
                    QUEUE_HEARTBEAT_TTL_S="3", QUEUE_REAP_INTERVAL_S="1", **extra)


@pytest.fixture(scope="module")
def standin():
    with SupabaseStandIn() as server:
        yield server


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
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        lists = [q for q in queues] + [k.decode() for q in queues for k in redis_client.keys(f"{q}:processing:*")]
        if all(redis_client.llen(name) == 0 for name in lists):
            return True
        time.sleep(0.05)
    return False


def test_replay_of_the_apps_payloads(stack, standin, redis_server):
    client = redis_server.client()
    user = "6f1c2a52-8f1e-4d7e-9a57-0c6c1b0f1a11"
    standin.put_object("user-library", f"{user}/ref.png", reference_png(), "image/png")
    signed = standin.signed_url("user-library", f"{user}/ref.png")
    payloads = {
        "txt2img_16_9": queue_job_payload(user_id=user, aspect_ratio="16:9", seed=0),
        "exact_copy": queue_job_payload(user_id=user, reference_url=f"user-library/{user}/ref.png",
                                        reference_mode="copy", seed=7),
        "img2img_modify": queue_job_payload(user_id=user, reference_url=signed, num_images=3),
        "wan_video": queue_job_payload(user_id=user, fmt="video", aspect_ratio="16:9", seed=11),
        "wan_first_frame": queue_job_payload(user_id=user, fmt="video", start_url=signed, aspect_ratio="9:16"),
    }
    assert payloads["exact_copy"]["prompt"] == ""
    for payload in payloads.values():
        rpush(client, payload, SDXL_QUEUE if payload["format"] == "image" else WAN_QUEUE)

    for name, payload in payloads.items():
        call = one_terminal_callback(standin, payload["id"])
        body, headers = call["body"], call["headers"]
        assert body["status"] == "completed", (name, body.get("error_message"))
        assert headers["Authorization"] == f"Bearer {SERVICE_KEY}"
        metadata = body["metadata"]
        params = metadata["parameters"]
        assert metadata["steps"] == metadata["num_inference_steps"] == params["steps"]
        assert metadata["guidance_scale"] == params["guidance_scale"]
        assert metadata["caller_context"]["job_type"] == payload["job_type"]
        assert metadata["caller_context"]["content_type"] == payload["content_type"]
        requested = payload["config"]["resolution"]
        w, h = (int(v) // 4 for v in requested.split("x"))
        assert metadata["size"] == {"requested": requested, "rendered": f"{w}x{h}", "scale": 0.25,
                                    "reason": "the placeholder profile renders the app's sizes scaled down by 4, "
                                              "aspect kept"}
        video = payload["format"] == "video"
        assert len(body["assets"]) == payload["config"]["num_images"]
        for index, asset in enumerate(body["assets"]):
            main = f"{payload['user_id']}/{payload['id']}/{index}.{'mp4' if video else 'png'}"
            assert asset["url"] == main and asset["type"] == ("video" if video else "image")
            assert asset["thumbnail_url"] == f"{payload['user_id']}/{payload['id']}/{index}.thumb.webp"
            data, mime = standin.objects[("workspace-temp", main)]
            assert mime == ("video/mp4" if video else "image/png")
            assert standin.objects[("workspace-temp", asset["thumbnail_url"])][1] == "image/webp"
            assert isinstance(asset["metadata"]["seed"], int)
            assert (asset["metadata"]["width"], asset["metadata"]["height"]) == (w, h)
            if video:
                frames, info = decode_mp4(data)
                assert metadata["frame_num"] == len(frames) == asset["metadata"]["frames"]
                assert info["size"] == (w, h)
            else:
                assert Image.open(io.BytesIO(data)).size == (w, h)
        if "seed" in payload["config"]:
            assert body["assets"][0]["metadata"]["seed"] == payload["config"]["seed"]
        if payload["config"]["pipeline"] == "img2img":
            assert metadata["denoise_strength"] == pytest.approx(payload["config"]["denoise_strength"])
    copy_meta = standin.terminal_callbacks(payloads["exact_copy"]["id"])[0]["body"]["metadata"]
    assert copy_meta["exact_copy_mode"] is True and copy_meta["reference_mode"] == "copy"
    assert copy_meta["original_prompt"] == ""
    assert copy_meta["references_from_storage"] == {"/metadata/reference_image_url": f"user-library/{user}/ref.png"}
    modify_meta = standin.terminal_callbacks(payloads["img2img_modify"]["id"])[0]["body"]["metadata"]
    assert modify_meta["exact_copy_mode"] is False and modify_meta["reference_mode"] == "modify"
    video_meta = standin.terminal_callbacks(payloads["wan_video"]["id"])[0]["body"]["metadata"]
    assert math.ceil(video_meta["frame_num"] / 16) >= 1
    assert settled(client, SDXL_QUEUE, WAN_QUEUE)


def test_push_order_and_nothing_blocks_the_queue(stack, standin, redis_server):
    client = redis_server.client()
    jobs = [queue_job_payload(seed=i) for i in range(3)]
    invalid = queue_job_payload()
    invalid["quality"] = "high"  # contradicts sdxl_image_fast
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
    assert refused["status"] == "failed" and refused["assets"] == []
    assert "/quality" in refused["error_message"] and refused["metadata"]["error_type"] == "validation_error"
    outside = one_terminal_callback(standin, other_user["id"])["body"]
    assert outside["status"] == "failed" and "/metadata/reference_image_url" in outside["error_message"]

    dead = [json.loads(d) for d in client.lrange(QueueKeys(SDXL_QUEUE).dead, 0, -1)]
    assert [d["reason"].split(":")[0] for d in dead[-2:]] == ["not valid JSON", "no job id (`id` or `job_id`)"]
    assert settled(client, SDXL_QUEUE)
