"""The shared job runtime: executor order, cancellation, idempotency, journal recovery, model host,
callbacks, storage, media, fetching and device decisions. A small arithmetic engine stands in for
a model here so these tests are about the runtime; the real pipelines run in the worker tests."""
import base64
import io
import json
import threading
import time

import pytest
import torch
from PIL import Image

from common.callbacks import CallbackSender, sign
from common.errors import JobFailed, ModelBusy
from common.jobs import JobJournal
from configuration.settings import Settings
from tests.standin_engine import StandInEngine
from tests.support import CallbackReceiver, StaticServer, poll_until
from workers import devices
from workers.runtime import media
from workers.runtime.fetch import FetchFailed, FetchRefused, InvalidImage, address_allowed, fetch_image
from workers.runtime.jobs import GeneratedAsset, JobRunner
from workers.runtime.local_memory import LocalMemory
from workers.runtime.models import ModelHost
from workers.runtime.storage import LocalStorage, StorageError


class CountingEngine(StandInEngine):
    """Produces solid-colour images; each step waits on an optional gate so tests can hold a job."""

    def __init__(self):
        # nsfw: its solid-colour outputs skip the sfw output classifier (tests/app/test_policy_output.py covers it)
        super().__init__(Settings(content_tier_default="nsfw"))
        self.ran: list[str] = []
        self.gate = threading.Event()
        self.gate.set()
        self.started = threading.Event()

    def run(self, params, ctx):
        self.started.set()
        if params.get("fail"):
            raise JobFailed("asked to fail", code="test_failure")
        for step in range(params["steps"]):
            self.gate.wait(10)
            ctx.on_step(step + 1, params["steps"])
        self.ran.append(ctx.job_id)
        return [GeneratedAsset("image", [Image.new("RGB", (300, 150), (params["v"], 0, 0))], {"seed": params["v"]})]


def make_runner(tmp_path, engine=None, callback_url="", journal_dir=None, **changes):
    engine = engine or CountingEngine()
    settings = Settings(callback_url=callback_url, callback_backoff_s=0.05, output_dir=tmp_path / "out", **changes)
    host = ModelHost(engine, LocalMemory(settings, "cpu"))
    runner = JobRunner("test", engine, host, LocalStorage(tmp_path / "out"), CallbackSender(settings),
                       JobJournal(journal_dir or tmp_path / "journal"))
    return runner, engine, host


def wait_status(runner, job_id, statuses=("completed", "failed", "cancelled"), timeout=10):
    assert poll_until(lambda: runner.get(job_id).status in statuses, timeout, 0.01), runner.get(job_id).public()
    return runner.get(job_id)


def test_jobs_run_fifo_and_store_assets_with_thumbnails(tmp_path):
    runner, engine, _ = make_runner(tmp_path)
    for i in range(3):
        runner.submit(f"j{i}", "t", "u1", {"steps": 2, "v": i}, {})
    for i in range(3):
        record = wait_status(runner, f"j{i}")
        assert record.status == "completed"
        asset = record.assets[0]
        assert asset["url"] == f"u1/j{i}/0.png"
        assert asset["thumbnail_url"] == f"u1/j{i}/0.thumb.webp"
        png = Image.open(tmp_path / "out" / asset["url"])
        assert png.format == "PNG"
        assert png.size == (300, 150)
        thumb = Image.open(tmp_path / "out" / asset["thumbnail_url"])
        assert thumb.format == "WEBP"
        assert thumb.size == (256, 128)
        assert asset["metadata"]["file_size_bytes"] == (tmp_path / "out" / asset["url"]).stat().st_size
    assert engine.ran == ["j0", "j1", "j2"]


def test_provenance_sidecar_stored_unless_switched_off(tmp_path):
    runner, _, _ = make_runner(tmp_path)
    runner.submit("on", "t", "u1", {"steps": 1, "v": 1}, {})
    asset = wait_status(runner, "on").assets[0]
    assert asset["provenance_url"] == "u1/on/0.json"
    assert json.loads((tmp_path / "out" / "u1/on/0.json").read_text()) == asset["metadata"]["provenance"]

    engine = CountingEngine()
    engine.settings = Settings(content_tier_default="nsfw", provenance_sidecar=False)
    runner, _, _ = make_runner(tmp_path / "off", engine)
    runner.submit("off", "t", "u1", {"steps": 1, "v": 1}, {})
    record = wait_status(runner, "off")
    asset = record.assets[0]
    assert record.status == "completed"
    assert asset["provenance_url"] is None
    assert asset["metadata"]["provenance"]["asset_index"] == 0
    assert sorted(p.name for p in (tmp_path / "off" / "out" / "u1" / "off").iterdir()) == ["0.png", "0.thumb.webp"]


def test_completed_record_keeps_the_steps_it_ran(tmp_path):
    runner, _, _ = make_runner(tmp_path)
    runner.submit("s1", "t", "u1", {"steps": 3, "v": 1}, {})
    record = wait_status(runner, "s1")
    assert record.status == "completed"
    assert record.progress == {"stage": "storing", "step": 3, "total_steps": 3, "percent": 100.0}


def test_repeated_job_id_returns_first_job_and_runs_once(tmp_path):
    runner, engine, _ = make_runner(tmp_path)
    first, created = runner.submit("same", "t", "u", {"steps": 1, "v": 1}, {})
    again, created_again = runner.submit("same", "t", "u", {"steps": 1, "v": 2}, {})
    assert created
    assert not created_again
    assert again is first
    wait_status(runner, "same")
    time.sleep(0.1)
    assert engine.ran == ["same"]


def test_cancel_queued_never_starts_and_running_stops_at_step(tmp_path, receiver):
    runner, engine, _ = make_runner(tmp_path, callback_url=receiver.url)
    engine.gate.clear()
    runner.submit("running", "t", "u", {"steps": 50, "v": 1}, {})
    runner.submit("queued", "t", "u", {"steps": 1, "v": 2}, {})
    assert engine.started.wait(5)
    assert runner.cancel("queued").status == "cancelled"
    runner.cancel("running")
    engine.gate.set()
    assert wait_status(runner, "running").status == "cancelled"
    assert runner.get("running").assets == []
    assert engine.ran == []
    with pytest.raises(ValueError, match="job running already cancelled"):
        runner.cancel("running")
    bodies = receiver.wait_for(2)
    assert sorted((b["job_id"], b["status"]) for b in bodies) == [("queued", "cancelled"), ("running", "cancelled")]


def test_failure_has_reason_and_worker_keeps_serving(tmp_path, receiver):
    runner, engine, _ = make_runner(tmp_path, callback_url=receiver.url)
    runner.submit("bad", "t", "u", {"steps": 1, "v": 1, "fail": True}, {})
    runner.submit("good", "t", "u", {"steps": 1, "v": 1}, {})
    bad = wait_status(runner, "bad")
    assert bad.status == "failed"
    assert bad.error == {"code": "test_failure", "message": "asked to fail"}
    assert bad.assets == []
    assert wait_status(runner, "good").status == "completed"
    cb = receiver.wait_for(1, "bad")[0]
    assert cb["status"] == "failed"
    assert cb["error_message"] == "asked to fail"
    assert cb["assets"] == []


def test_journal_recovery_fails_unfinished_jobs_and_tells_the_caller(tmp_path, receiver):
    # 3 attempts: the first runner's own callback for "lost", once the gate opens, finds the receiver closed.
    runner, engine, _ = make_runner(tmp_path, callback_url=receiver.url, journal_dir=tmp_path / "j",
                                    callback_max_attempts=3)
    engine.gate.clear()
    runner.submit("lost", "t", "u", {"steps": 5, "v": 1}, {})
    assert engine.started.wait(5)
    # A new process reading the same journal (the old one "died" mid-job).
    runner2, _, _ = make_runner(tmp_path, callback_url=receiver.url, journal_dir=tmp_path / "j")
    record = runner2.get("lost")
    assert record.status == "failed"
    assert record.error["code"] == "worker_restarted"
    assert [b["status"] for b in receiver.wait_for(1, "lost")] == ["failed"]
    # and the id stays taken: resubmitting returns the failed record, runs nothing
    assert runner2.submit("lost", "t", "u", {"steps": 1, "v": 1}, {})[1] is False
    engine.gate.set()


def test_model_host_never_unloads_a_model_in_use(tmp_path):
    engine = CountingEngine()
    host = ModelHost(engine, LocalMemory(Settings(), "cpu"))
    entered, release = threading.Event(), threading.Event()

    def job():
        with host.use(["m"]):
            entered.set()
            release.wait(5)

    t = threading.Thread(target=job)
    t.start()
    assert entered.wait(5)
    assert engine.loaded
    with pytest.raises(ModelBusy):
        host.unload("m", wait_s=0.2)
    assert engine.loaded
    assert host.status()["m"]["busy"]
    threading.Timer(0.2, release.set).start()
    assert host.unload("m", wait_s=5) == ["m"]
    assert not engine.loaded
    t.join()
    assert host.load_counts["m"] == 1


def test_local_memory_refuses_what_cannot_fit():
    from common.errors import MemoryUnavailable
    memory = LocalMemory(Settings(vram_budget_mb=100, vram_reserve_mb=10), "cpu")
    memory.acquire("a", 50 * 2**20, 0)
    with pytest.raises(MemoryUnavailable) as exc:
        memory.acquire("b", 50 * 2**20, 0)
    assert not exc.value.too_big
    assert exc.value.details["need_bytes"] == 60 * 2**20
    with pytest.raises(MemoryUnavailable) as exc:
        memory.acquire("c", 200 * 2**20, 0)
    assert exc.value.too_big


def test_callbacks_retry_with_idempotency_key_signature_and_bearer(tmp_path):
    receiver = CallbackReceiver(fail_first=2)
    try:
        sender = CallbackSender(Settings(callback_url=receiver.url, callback_backoff_s=0.05,
                                         supabase_service_key="svc", callback_secret="shh"))
        results = []
        sender.send({"job_id": "j9", "status": "completed", "assets": []}, on_result=lambda ok, n: results.append((ok,
                                                                                                                   n)))
        deadline = time.monotonic() + 10
        while not results and time.monotonic() < deadline:
            time.sleep(0.02)
        assert results == [(True, 3)]
        assert len(receiver.requests) == 3
        for r in receiver.requests:
            assert r["headers"]["Idempotency-Key"] == "j9:completed"
            assert r["headers"]["Authorization"] == "Bearer svc"
            assert r["headers"]["X-Callback-Signature"] == sign(r["raw"], "shh")
    finally:
        receiver.close()


def test_callbacks_to_a_dead_receiver_never_block_jobs(tmp_path):
    # Three attempts each, not the default horizon: the sender's thread would go on retrying (and logging)
    # through the rest of the session.
    runner, engine, _ = make_runner(tmp_path, callback_url="http://127.0.0.1:9/unreachable", callback_max_attempts=3)
    started = time.monotonic()
    for i in range(3):
        runner.submit(f"d{i}", "t", "u", {"steps": 1, "v": i}, {})
    for i in range(3):
        assert wait_status(runner, f"d{i}").status == "completed"
    assert runner.get("d0").callback["status"] in ("pending", "failed")
    assert time.monotonic() - started < 10


def test_local_storage_refuses_escaping_paths(tmp_path):
    storage = LocalStorage(tmp_path)
    with pytest.raises(StorageError):
        storage.put("../evil.png", b"x", "image/png")


def test_thumbnail_never_upscales_and_keeps_aspect():
    small = Image.open(io.BytesIO(media.encode_thumbnail(Image.new("RGB", (64, 32)))))
    assert small.size == (64, 32)
    assert small.format == "WEBP"
    tall = Image.open(io.BytesIO(media.encode_thumbnail(Image.new("RGB", (500, 1000)))))
    assert tall.size == (128, 256)


def test_mp4_is_h264_yuv420p_with_every_frame():
    frames = [Image.new("RGB", (32, 48), (i * 20, 255 - i * 20, 0)) for i in range(9)]
    data = media.encode_mp4(frames, 16)
    decoded, info = media.decode_mp4(data)
    assert len(decoded) == 9
    assert decoded[0].shape == (48, 32, 3)
    assert info["fps"] == 16
    assert "h264" in info["codec"]
    assert "yuv420p" in info["pix_fmt"]
    assert data.find(b"moov") < data.find(b"mdat")  # faststart: index before the media data


def test_pixel_identical_pngs_are_byte_identical():
    img = Image.new("RGB", (16, 16), (1, 2, 3))
    assert media.encode_png(img) == media.encode_png(img.copy())


# ---- fetching ------------------------------------------------------------------------------------

def png_bytes(size=(20, 10)):
    buf = io.BytesIO()
    Image.new("RGB", size, (10, 200, 30)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def image_server():
    server = StaticServer({"/ok.png": (200, "image/png", png_bytes()), "/text": (200, "text/html", b"<html>"),
                           "/garbage.png": (200, "image/png", b"not an image"),
                           "/big.png": (200, "image/png", b"x" * 3 * 2**20),
                           "/missing.png": (404, "text/plain", b"nope"), "/redirect": (302, "text/plain", "/ok.png")})
    yield server.url
    server.close()


ALLOW = Settings(fetch_allow_private=True, fetch_max_mb=1)


def test_fetch_ok_redirect_and_data_url(image_server):
    assert fetch_image(image_server + "/ok.png", ALLOW).size == (20, 10)
    assert fetch_image(image_server + "/redirect", ALLOW).size == (20, 10)
    data_url = "data:image/png;base64," + base64.b64encode(png_bytes((7, 7))).decode()
    assert fetch_image(data_url, ALLOW).size == (7, 7)


@pytest.mark.parametrize(("path", "error"), [("/text", InvalidImage), ("/garbage.png", InvalidImage),
                                         ("/big.png", FetchRefused), ("/missing.png", FetchFailed)])
def test_fetch_failures_say_why(image_server, path, error):
    with pytest.raises(error) as exc:
        fetch_image(image_server + path, ALLOW)
    assert exc.value.message


def test_fetch_refuses_loopback_unless_allowed_and_other_schemes(image_server):
    with pytest.raises(FetchRefused, match="non-public"):
        fetch_image(image_server + "/ok.png", Settings())
    with pytest.raises(FetchRefused, match="scheme"):
        fetch_image("file:///etc/passwd", ALLOW)
    with pytest.raises(FetchFailed):
        fetch_image("http://127.0.0.1:9/x.png", ALLOW)


@pytest.mark.parametrize(("address", "allowed"), [("8.8.8.8", True), ("127.0.0.1", False), ("10.1.2.3", False),
                                              ("169.254.169.254", False), ("::1", False), ("0.0.0.0", False),
                                              ("::ffff:127.0.0.1", False), ("224.0.0.1", False)])
def test_address_policy(address, allowed):
    assert address_allowed(address, allow_private=False) is allowed


# ---- device decisions (the CUDA branches, as logic) ----------------------------------------------

def test_dtype_and_device_choice():
    assert devices.pick_device(cuda_available=False) == "cpu"
    assert devices.pick_device(cuda_available=True) == "cuda"
    assert devices.pick_dtype("float16", "cpu") == torch.float32
    assert devices.pick_dtype("float16", "cuda") == torch.float16
    assert devices.pick_dtype("bfloat16", "cuda", bf16_supported=True) == torch.bfloat16
    assert devices.pick_dtype("bfloat16", "cuda", bf16_supported=False) == torch.float16
    with pytest.raises(ValueError, match="unknown dtype 'float8'"):
        devices.pick_dtype("float8", "cuda")
    assert devices.device_memory("cpu") is None


def test_module_bytes_counts_shared_tensors_once():
    a = torch.nn.Linear(10, 10)
    b = torch.nn.Linear(10, 10)
    b.weight = a.weight
    assert devices.module_bytes(a) == (100 + 10) * 4
    assert devices.module_bytes(a, b) == (100 + 10 + 10) * 4


def test_supabase_storage_uploads_with_exact_content_type_and_upsert():
    """The supabase client against a server speaking Supabase Storage's HTTP API (tests/supabase_standin.py)."""
    from tests.supabase_standin import SupabaseStandIn
    from workers.runtime.storage import SupabaseStorage

    with SupabaseStandIn() as standin:
        storage = SupabaseStorage(standin.url, standin.service_key, "workspace-temp", backoff_s=0.01)
        assert storage.put("u1/j1/0.png", b"\x89PNG", "image/png") == "u1/j1/0.png"
        assert storage.put("u1/j1/0.png", b"\x89PNG2", "image/png") == "u1/j1/0.png"  # upsert
        assert standin.objects[("workspace-temp", "u1/j1/0.png")] == (b"\x89PNG2", "image/png")
        with pytest.raises(StorageError, match="HTTP 415"):
            storage.put("u1/j1/1.png", b"x", "application/octet-stream")
        storage.delete("u1/j1/0.png")
        assert ("workspace-temp", "u1/j1/0.png") not in standin.objects
        wrong_key = SupabaseStorage(standin.url, "not-the-service-key", "workspace-temp", backoff_s=0.01)
        with pytest.raises(StorageError, match="HTTP 403"):
            wrong_key.put("u1/j1/2.png", b"x", "image/png")
