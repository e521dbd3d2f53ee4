"""WAN feature set on the placeholder models, in-process through the real Flask app and diffusers pipelines."""
import base64
import io
import shutil
import time

import numpy as np
import pytest
import torch
from PIL import Image

from tests.support import API_KEY, in_process_worker
from workers.http.app import create_app
from workers.runtime.media import decode_mp4

AUTH = {"Authorization": f"Bearer {API_KEY}"}
STEPS = 4


def data_url(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


_ramp = np.linspace(0, 255, 48, dtype=np.uint8)
FIRST = Image.fromarray(np.stack([np.tile(_ramp, (48, 1)), np.tile(_ramp[:, None], (1, 48)), np.full((48, 48), 40,
                                                                                                     np.uint8)], -1))
LAST = Image.fromarray(((np.indices((48, 48)).sum(0) // 8) % 2 * 255).astype(np.uint8)).convert("RGB")


@pytest.fixture(scope="module")
def worker(tmp_path_factory, placeholder_dir):
    with in_process_worker("wan", tmp_path_factory.mktemp("wan-engine"), placeholder_dir) as parts:
        yield parts


def submit(client, job_id, type="video_fast", config=None, metadata=None):
    body = {"id": job_id, "type": type, "prompt": "a fox running through snow", "user_id": "u",
            "config": {"seed": 11, "steps": STEPS, **(config or {})}}
    if metadata is not None:
        body["metadata"] = metadata
    r = client.post("/generate?wait=120", json=body, headers=AUTH)
    assert r.status_code == 200, r.get_json()
    return r.get_json()


def frames_of(out, record) -> np.ndarray:
    asset = record["assets"][0]
    data = (out / asset["url"]).read_bytes()
    if asset["type"] == "image":
        return np.asarray(Image.open(io.BytesIO(data)), dtype=np.int16)[None]
    frames, _ = decode_mp4(data)
    return np.stack(frames).astype(np.int16)


def differs(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).mean())


@pytest.fixture(scope="module")
def modes(worker):
    """One text-only video and one video per reference mode, all with the same seed and prompt."""
    client, _, _, out = worker
    refs = {"start_reference_url": data_url(FIRST), "end_reference_url": data_url(LAST)}
    jobs = {
        "text": {},
        "single": {"reference_image_url": refs["start_reference_url"]},
        "start": {"start_reference_url": refs["start_reference_url"]},
        "end": {"end_reference_url": refs["start_reference_url"]},
        "both": refs,
    }
    results = {}
    for mode, metadata in jobs.items():
        record = submit(client, f"mode-{mode}", metadata=metadata or None)
        assert record["status"] == "completed", record
        results[mode] = (record, frames_of(out, record))
    return results


def test_video_job_is_an_mp4_with_the_reported_frames_size_fps_and_step_progress(worker):
    client, state, receiver, out = worker
    state.host.load("wan_t2v")
    seen = []
    hook = state.engine.pipeline("wan_t2v").transformer.register_forward_hook(
        lambda *a: seen.append(state.runner.get("video").progress["step"]))
    try:
        record = submit(client, "video", config={"frames": 10, "fps": 8, "width": 48, "height": 32})
    finally:
        hook.remove()
    assert record["status"] == "completed", record
    [asset] = record["assets"]
    meta = asset["metadata"]
    assert (asset["type"], asset["url"], asset["thumbnail_url"]) == ("video", "u/video/0.mp4", "u/video/0.thumb.webp")
    assert (meta["frames_requested"], meta["frames"], meta["fps"]) == (10, 9, 8)
    assert meta["duration_seconds"] == 9 / 8
    assert (meta["width"], meta["height"], meta["seed"], meta["steps"]) == (48, 32, 11, STEPS)
    assert meta["pipeline"] == "WanPipeline"
    assert meta["reference_mode"] == "none"
    assert meta["sample_solver"] == "unipc"
    data = (out / "u/video/0.mp4").read_bytes()
    frames, info = decode_mp4(data)
    assert len(frames) == 9
    assert tuple(info["size"]) == (48, 32)
    assert info["fps"] == 8
    assert frames[0].shape == (32, 48, 3)
    assert data[4:8] == b"ftyp"
    assert data.find(b"moov") < data.find(b"mdat")
    thumb = Image.open(out / "u/video/0.thumb.webp")
    assert thumb.format == "WEBP"
    assert thumb.size == (48, 32)
    # progress advances once per denoising step (two transformer calls per step with guidance)
    assert seen == [0, 0, 1, 1, 2, 2, 3, 3]
    [callback] = receiver.wait_for(1, "video")
    assert callback["status"] == "completed"
    assert callback["assets"] == record["assets"]


def test_image_job_is_one_png_of_type_image(worker):
    client, _, _, out = worker
    record = submit(client, "image", type="image_fast", config={"width": 48, "height": 64})
    [asset] = record["assets"]
    assert (asset["type"], asset["url"], asset["thumbnail_url"]) == ("image", "u/image/0.png", "u/image/0.thumb.webp")
    png = Image.open(out / "u/image/0.png")
    assert png.format == "PNG"
    assert png.size == (48, 64)
    meta = asset["metadata"]
    assert (meta["frames"], meta["format"], meta["seed"]) == (1, "png", 11)
    assert "fps" not in meta
    assert "duration_seconds" not in meta
    assert not (out / "u/image/0.mp4").exists()


def test_same_seed_same_frames_and_another_seed_differs(worker, modes):
    client, _, _, out = worker
    again = frames_of(out, submit(client, "seed-again"))
    assert np.array_equal(again, modes["text"][1])
    other = frames_of(out, submit(client, "seed-other", config={"seed": 12}))
    assert differs(other, modes["text"][1]) > 1


@pytest.mark.parametrize("mode", ["single", "start", "end", "both"])
def test_each_reference_mode_conditions_the_output(modes, mode):
    record, frames = modes[mode]
    meta = record["assets"][0]["metadata"]
    assert meta["pipeline"] == "WanVACEPipeline"
    assert meta["model"] == "wan_vace"
    assert meta["reference_mode"] == mode
    assert meta["seed"] == 11
    assert meta["conditioning_scale"] == 1.0
    assert meta["strength_source"] == "preset"
    assert meta["conditioned_frames"] == {"single": [0], "start": [0], "end": [8], "both": [0, 8]}[mode]
    assert differs(frames, modes["text"][1]) > 2


def test_the_modes_differ_from_one_another(modes):
    assert differs(modes["start"][1], modes["end"][1]) > 2      # same image, first vs last frame
    assert differs(modes["start"][1], modes["both"][1]) > 2     # adding a last frame changes the video
    assert np.array_equal(modes["single"][1], modes["start"][1])  # single is a first-frame reference


def test_legacy_reference_fields_are_the_same_references(worker, modes):
    client, _, _, out = worker
    record = submit(client, "legacy-both", config={"first_frame": data_url(FIRST), "last_frame": data_url(LAST),
                                                   "frame_num": 9, "sample_steps": STEPS, "content_type": "video"})
    assert record["assets"][0]["metadata"]["reference_mode"] == "both"
    assert np.array_equal(frames_of(out, record), modes["both"][1])


def test_reference_strength_is_the_conditioning_scale(worker, modes):
    client, _, _, out = worker
    record = submit(client, "weak", metadata={"reference_image_url": data_url(FIRST), "denoise_strength": 0.7})
    meta = record["assets"][0]["metadata"]
    assert meta["conditioning_scale"] == pytest.approx(0.3)
    assert meta["strength_source"] == "denoise_strength"
    assert differs(frames_of(out, record), modes["single"][1]) > 1


def test_sample_solver_changes_the_scheduler(worker, modes):
    client, _, _, out = worker
    record = submit(client, "dpm", config={"sample_solver": "dpm++"})
    meta = record["assets"][0]["metadata"]
    assert (meta["sample_solver"], meta["scheduler"]) == ("dpm++", "DPMSolverMultistepScheduler")
    assert modes["text"][0]["assets"][0]["metadata"]["scheduler"] == "UniPCMultistepScheduler"
    assert differs(frames_of(out, record), modes["text"][1]) > 0.5


def test_steps_and_guidance_are_honoured(worker):
    client, state, _, _ = worker
    state.host.load("wan_t2v")
    calls = []
    hook = state.engine.pipeline("wan_t2v").transformer.register_forward_hook(lambda m, args, kw, out: calls.append(1),
                                                                               with_kwargs=True)
    try:
        for job_id, config, expected in (("g-off", {"steps": 3, "guidance_scale": 1.0}, 3),
                                         ("g-on", {"steps": 5, "guidance_scale": 5.0}, 10)):
            calls.clear()
            record = submit(client, job_id, type="image_fast", config=config)
            meta = record["assets"][0]["metadata"]
            assert len(calls) == expected
            assert meta["steps"] == config["steps"]
            assert meta["classifier_free_guidance"] is (expected == 10)
            assert (meta["negative_prompt_used"] is None) is (expected == 3)
    finally:
        hook.remove()


def test_cancel_stops_between_steps_and_the_next_job_runs(worker):
    client, state, receiver, _ = worker
    body = {"id": "long", "type": "video_high", "prompt": "a long one", "user_id": "u",
            "config": {"steps": 100, "frames": 33, "width": 64, "height": 64, "seed": 1}}
    assert client.post("/generate", json=body, headers=AUTH).status_code == 202
    deadline = time.monotonic() + 60
    while state.runner.get("long").progress.get("step", 0) < 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    client.post("/jobs/long/cancel", headers=AUTH)
    assert state.runner.wait("long", 60)
    record = state.runner.get("long")
    assert record.status == "cancelled"
    assert record.assets == []
    assert record.progress["step"] < 100
    assert [b["status"] for b in receiver.wait_for(1, "long")] == ["cancelled"]
    assert submit(client, "after-cancel", type="image_fast")["status"] == "completed"


def test_unreachable_reference_fails_the_job_and_the_next_job_runs(worker):
    client, _, receiver, _ = worker
    record = submit(client, "unreachable", metadata={"start_reference_url": "http://127.0.0.1:9/first.png"})
    assert record["status"] == "failed"
    assert record["assets"] == []
    assert record["error"]["code"] == "reference_fetch_failed"
    [callback] = receiver.wait_for(1, "unreachable")
    assert callback["status"] == "failed"
    assert "could not fetch" in callback["error_message"]
    assert submit(client, "after-failure", type="image_fast")["status"] == "completed"


def test_pipelines_share_vae_and_text_encoder_and_bytes_are_counted_once(worker):
    from workers import devices

    _, state, _, _ = worker
    engine, host = state.engine, state.host
    host.load("all")
    t2v, vace = engine.loaded("wan_t2v"), engine.loaded("wan_vace")
    assert vace.pipe.vae is t2v.pipe.vae
    assert vace.prompts is t2v.prompts
    assert vace.pipe.transformer is not t2v.pipe.transformer
    assert sorted(vace.shared) == ["text_encoder", "tokenizer", "vae"]
    full_t2v = devices.module_bytes(t2v.pipe.transformer, t2v.pipe.vae, t2v.prompts.text_encoder)
    assert engine.resident_bytes("wan_t2v") == full_t2v
    assert engine.resident_bytes("wan_vace") == devices.module_bytes(vace.pipe.transformer)
    # Unloading one leaves the shared weights with the other, which now counts them.
    host.unload("wan_t2v")
    assert engine.resident_bytes("wan_vace") == devices.module_bytes(vace.pipe.transformer, vace.pipe.vae,
                                                                     vace.prompts.text_encoder)
    status = host.status()
    assert status["wan_t2v"]["resident_bytes"] == 0
    assert not status["wan_t2v"]["loaded"]
    host.load("wan_t2v")
    assert engine.loaded("wan_t2v").pipe.vae is vace.pipe.vae


def test_prompt_encoder_matches_the_pipelines_own_encoding(placeholder_dir):
    from diffusers import WanPipeline
    from transformers import UMT5EncoderModel

    from workers.engines.wan import PromptEncoder

    full = WanPipeline.from_pretrained(placeholder_dir / "wan2.1-t2v", dtype=torch.float32, local_files_only=True)
    encoder = UMT5EncoderModel.from_pretrained(placeholder_dir / "wan2.1-t2v", subfolder="text_encoder",
                                               dtype=torch.float32, local_files_only=True)
    ours = PromptEncoder(full.tokenizer, encoder, "cpu")
    text = "a fox   running through <b>snow</b>"
    with torch.no_grad():  # as inside the pipeline's __call__
        expected, _ = full.encode_prompt(text, do_classifier_free_guidance=False, max_sequence_length=512, device="cpu")
    assert torch.equal(ours.encode(text, "cpu"), expected)
    assert ours.token_count(text) == len(full.tokenizer("a fox running through <b>snow</b>").input_ids)


def test_same_files_compares_contents(tmp_path, placeholder_dir):
    from workers.engines.files import same_files

    t2v, vace = placeholder_dir / "wan2.1-t2v", placeholder_dir / "wan2.1-vace"
    assert same_files(t2v / "vae", vace / "vae")
    assert not same_files(t2v / "transformer", vace / "transformer")
    copy = tmp_path / "vae"
    shutil.copytree(t2v / "vae", copy)  # a real copy, not a link: compared byte for byte
    assert same_files(t2v / "vae", copy)
    weights = copy / "diffusion_pytorch_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    assert not same_files(t2v / "vae", copy)


def test_reference_mode_without_a_vace_model_is_a_400(tmp_path, placeholder_dir):
    from configuration.settings import Settings

    production = Settings(model_profile="production", wan_t2v_model_path=str(placeholder_dir / "wan2.1-t2v"),
                          wan_vace_model_path="", output_dir=tmp_path, api_key=API_KEY)
    client = create_app("wan", production).test_client()
    body = {"id": "no-vace", "type": "video_fast", "prompt": "a fox", "config": {"frames": 17},
            "metadata": {"reference_image_url": "https://cdn.example/a.png"}}
    r = client.post("/generate", json=body, headers=AUTH)
    assert r.status_code == 400
    [detail] = r.get_json()["error"]["details"]
    assert detail["path"] == "/metadata/reference_image_url"
    assert "WAN_VACE_MODEL_PATH" in detail["message"]
    r = client.post("/generate", json={**body, "id": "no-vace-2", "config": {"reference_mode": "both", "frames": 17},
                                       "metadata": {"start_reference_url": "https://cdn.example/a.png",
                                                    "end_reference_url": "https://cdn.example/b.png"}}, headers=AUTH)
    assert r.status_code == 400
    assert r.get_json()["error"]["details"][0]["path"] == "/config/reference_mode"
    assert client.get("/jobs/no-vace", headers=AUTH).status_code == 404
