"""SDXL feature set on the placeholder model, in-process through the real Flask app and pipelines."""
import base64
import io

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from tests.support import API_KEY, StaticServer, in_process_worker
from workers.engines.images import resize_reference
from workers.engines.sdxl import batch_seeds, compel_prompt, gpu_plan, img2img_steps
from workers.http.app import create_app

AUTH = {"Authorization": f"Bearer {API_KEY}"}


def data_url(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


REFERENCE = Image.fromarray(np.tile(np.linspace(0, 255, 96, dtype=np.uint8), (80, 1))[..., None].repeat(3, 2))


@pytest.fixture(scope="module")
def worker(tmp_path_factory, placeholder_dir):
    with in_process_worker("sdxl", tmp_path_factory.mktemp("sdxl-engine"), placeholder_dir) as parts:
        yield parts


def run(client, job_id, prompt="a red fox", config=None, metadata=None, **top):
    body = {"id": job_id, "type": "sdxl_image_fast", "prompt": prompt, "user_id": "u",
            "config": {"seed": 11, "steps": 4, **(config or {})}, **top}
    if metadata:
        body["metadata"] = metadata
    r = client.post("/generate?wait=120", json=body, headers=AUTH)
    assert r.status_code == 200, r.get_json()
    return r.get_json()


def pixels(out, record, i=0):
    return np.asarray(Image.open(out / record["assets"][i]["url"]), dtype=np.int16)


def test_batches_are_one_pipeline_call_with_per_image_seeds(worker):
    client, state, _, out = worker
    run(client, "warm")  # load the model
    batches = []
    hook = state.engine.txt2img.unet.register_forward_hook(lambda m, args, output: batches.append(args[0].shape[0]))
    try:
        for n in (3, 6):
            batches.clear()
            record = run(client, f"batch{n}", config={"num_images": n})
            assert record["status"] == "completed"
            assert len(record["assets"]) == n
            # one batched call: every UNet forward carries all n images (x2 for classifier-free guidance)
            assert batches == [2 * n] * 4
            seeds = [a["metadata"]["seed"] for a in record["assets"]]
            assert seeds == [11 + i for i in range(n)]
            images = [pixels(out, record, i).tobytes() for i in range(n)]
            assert len(set(images)) == n
            assert [a["url"] for a in record["assets"]] == [f"u/batch{n}/{i}.png" for i in range(n)]
    finally:
        hook.remove()


def test_negative_prompt_is_used_and_reported(worker):
    client, _, _, out = worker
    preset = run(client, "neg-preset")
    custom = run(client, "neg-custom", config={"negative_prompt": "cartoon, painting"})
    assert preset["assets"][0]["metadata"]["negative_prompt_used"].startswith("blurry")
    assert custom["assets"][0]["metadata"]["negative_prompt_used"] == "cartoon, painting"
    assert (pixels(out, preset) != pixels(out, custom)).any()


def test_every_legacy_field_is_honoured_and_reported(worker):
    client, _, _, out = worker
    record = run(client, "legacy", config={"num_inference_steps": 3, "resolution": "96x64", "steps": 3},
                 metadata={"reference_image_url": data_url(REFERENCE), "reference_strength": 0.6})
    meta = record["assets"][0]["metadata"]
    assert record["status"] == "completed"
    assert (meta["width"], meta["height"]) == (96, 64)
    assert Image.open(out / record["assets"][0]["url"]).size == (96, 64)
    assert meta["denoise_strength"] == pytest.approx(0.4)
    assert meta["strength_source"] == "reference_strength"
    assert meta["steps_requested"] == 3


def test_img2img_modify_differs_from_text_and_from_reference(worker):
    client, _, _, out = worker
    ref = REFERENCE.resize((64, 64))
    txt = run(client, "t2i", config={"steps": 10})
    i2i = run(client, "i2i", config={"steps": 10}, metadata={"reference_image_url": data_url(ref),
                                                             "denoise_strength": 0.3})
    meta = i2i["assets"][0]["metadata"]
    assert meta["pipeline"] == "StableDiffusionXLImg2ImgPipeline"
    assert meta["effective_steps"] == 3
    assert meta["resize_policy"] == "center_crop"
    assert meta["reference_size"] == [64, 64]
    assert np.abs(pixels(out, i2i) - pixels(out, txt)).mean() > 1
    assert np.abs(pixels(out, i2i) - np.asarray(ref, dtype=np.int16)).mean() > 1


def test_exact_copy_runs_at_least_one_step_and_reports_both_counts(worker):
    client, _, _, _ = worker
    record = run(client, "exact", config={"steps": 15},
                 metadata={"reference_image_url": data_url(REFERENCE), "exact_copy_mode": True})
    meta = record["assets"][0]["metadata"]
    assert record["status"] == "completed"
    assert meta["reference_mode"] == "exact_copy"
    assert meta["denoise_strength"] == 0.05
    assert meta["steps_requested"] == 15
    assert meta["steps"] == 20
    assert meta["effective_steps"] == 1
    assert meta["guidance_scale"] == 1.0


def test_letterbox_policy_is_reported(worker):
    client, _, _, _ = worker
    record = run(client, "letterbox", metadata={"reference_image_url": data_url(REFERENCE),
                                                "resize_policy": "letterbox"})
    assert record["assets"][0]["metadata"]["resize_policy"] == "letterbox"


@pytest.mark.parametrize("with_reference", [False, True])
def test_compel_weighting_with_and_without_reference(worker, with_reference):
    client, _, _, out = worker
    metadata = {"reference_image_url": data_url(REFERENCE), "denoise_strength": 0.5} if with_reference else None
    plain = run(client, f"plain-{with_reference}", prompt="a fox in a garden", metadata=metadata)
    weighted = run(client, f"compel-{with_reference}", prompt="a fox in a garden", metadata=metadata,
                   compel_enabled=True, compel_weights="(beautiful:1.3), (garden:1.1)")
    meta = weighted["assets"][0]["metadata"]
    assert weighted["status"] == "completed"
    assert meta["compel"] is True
    assert meta["compel_prompt"] == "a fox in a garden, (beautiful)1.3, (garden)1.1"
    assert (pixels(out, plain) != pixels(out, weighted)).any()


def test_long_prompts_are_encoded_whole_with_compel_and_reported_without(worker):
    client, _, _, _ = worker
    long_prompt = " ".join(["a very detailed painting of a red fox in deep snow at dawn"] * 12)
    plain = run(client, "long-plain", prompt=long_prompt)
    assert plain["assets"][0]["metadata"]["prompt_truncated"] is True
    assert plain["assets"][0]["metadata"]["prompt_tokens"] > 77
    weighted = run(client, "long-compel", prompt=long_prompt, compel_enabled=True)
    assert weighted["status"] == "completed"
    assert weighted["assets"][0]["metadata"]["prompt_truncated"] is False


def test_unreachable_reference_fails_the_job_and_the_callback_says_so(worker):
    client, _, receiver, _ = worker
    record = run(client, "unreachable", metadata={"reference_image_url": "http://127.0.0.1:9/ref.png"})
    assert record["status"] == "failed"
    assert record["assets"] == []
    assert record["error"]["code"] == "reference_fetch_failed"
    assert "could not fetch" in record["error"]["message"]
    [callback] = receiver.wait_for(1, "unreachable")
    assert callback["status"] == "failed"
    assert "could not fetch" in callback["error_message"]


def test_loopback_reference_refused_when_setting_off(worker, tmp_path):
    _, state, _, _ = worker
    server = StaticServer({"/x.png": (200, "image/png", b"")})
    try:
        from configuration.settings import Settings
        strict = Settings(placeholder_models_dir=state.settings.placeholder_models_dir, output_dir=tmp_path,
                          api_key=API_KEY, fetch_allow_private=False)
        client = create_app("sdxl", strict).test_client()
        record = run(client, "loopback", metadata={"reference_image_url": f"{server.url}/x.png"})
        assert record["status"] == "failed"
        assert record["error"]["code"] == "reference_refused"
        assert server.requested == []  # refused before any request left the worker
    finally:
        server.close()


def test_single_file_checkpoint_matches_directory(worker, placeholder_dir):
    """A production-style single .safetensors checkpoint loads offline (local config) to the same weights
    and the same image as the diffusers directory."""
    from configuration.settings import Settings
    from workers.engines.sdxl import SDXLEngine
    from workers.placeholders import placeholder_paths

    _, state, _, _ = worker
    state.host.load("sdxl")
    directory = state.engine
    paths = placeholder_paths(placeholder_dir)
    production = Settings(model_profile="production", sdxl_model_path=str(paths["sdxl_single_file"]),
                          sdxl_config_dir=str(paths["sdxl"]))
    single = SDXLEngine(production)
    single.load("sdxl")
    assert single.load_source == "single_file"
    assert directory.load_source == "directory"
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        a, b = getattr(directory.txt2img, name).state_dict(), getattr(single.txt2img, name).state_dict()
        assert a.keys() == b.keys(), name
        assert all(torch.equal(a[k], b[k]) for k in a), name
    images = [engine.txt2img("a red fox", width=64, height=64, num_inference_steps=2, output_type="np",
                             generator=torch.Generator().manual_seed(3)).images for engine in (directory, single)]
    assert np.array_equal(images[0], images[1])


def test_single_file_without_local_config_fails_loudly(tmp_path):
    from common.errors import JobFailed
    from configuration.settings import Settings
    from workers.engines.sdxl import SDXLEngine

    lonely = tmp_path / "model.safetensors"
    lonely.write_bytes(b"")
    engine = SDXLEngine(Settings(model_profile="production", sdxl_model_path=str(lonely)))
    with pytest.raises(JobFailed, match="SDXL_CONFIG_DIR"):
        engine.load("sdxl")


def test_img2img_shares_the_txt2img_weights(worker):
    _, state, _, _ = worker
    engine = state.engine
    state.host.load("sdxl")
    assert engine.img2img.unet is engine.txt2img.unet
    assert engine.img2img.vae is engine.txt2img.vae
    assert engine.img2img.text_encoder_2 is engine.txt2img.text_encoder_2
    from workers import devices
    assert engine.resident_bytes("sdxl") == devices.module_bytes(*engine.txt2img.components.values())


# ---- pure logic ------------------------------------------------------------------------------------

@given(steps=st.integers(1, 100), strength=st.floats(0.001, 1.0))
def test_img2img_steps_always_run_at_least_one_step(steps, strength):
    passed, effective = img2img_steps(steps, strength)
    assert effective >= 1
    assert effective == int(passed * strength)
    assert passed >= steps
    if int(steps * strength) >= 1:
        assert passed == steps


def test_batch_seeds_wrap_at_32_bits():
    assert batch_seeds(2**32 - 1, 3) == [2**32 - 1, 0, 1]


def test_compel_prompt_rewrites_a1111_weights():
    assert compel_prompt("cat", None) == "cat"
    assert compel_prompt("cat", "(fluffy:1.2), (red hat:0.8)") == "cat, (fluffy)1.2, (red hat)0.8"


def test_resize_policies():
    src = Image.new("RGB", (200, 100), (255, 0, 0))
    assert resize_reference(src, 64, 64, "center_crop").size == (64, 64)
    boxed = resize_reference(src, 64, 64, "letterbox")
    assert boxed.size == (64, 64)
    assert boxed.getpixel((32, 2)) == (0, 0, 0)
    assert boxed.getpixel((32, 32))[0] > 200
    with pytest.raises(ValueError, match="unknown resize policy 'stretch'"):
        resize_reference(src, 64, 64, "stretch")


def test_gpu_plan_is_inert_on_cpu_and_follows_config_on_cuda():
    gpu = {"attention": "sdpa", "channels_last": True, "torch_compile": False, "vae_upcast": True,
           "vae_slicing_min_batch": 3, "vae_tiling_min_pixels": 4194304}
    assert not any(gpu_plan(gpu, "cpu", 6, 2048 * 2048, True).values())
    plan = gpu_plan(gpu, "cuda", 1, 1024 * 1024, False)
    assert plan == {"sdpa": True, "channels_last": True, "torch_compile": False, "vae_fp16_fix": False,
                    "vae_upcast": True, "vae_slicing": False, "vae_tiling": False}
    assert gpu_plan(gpu, "cuda", 6, 2048 * 2048, True)["vae_slicing"] is True
    assert gpu_plan(gpu, "cuda", 6, 2048 * 2048, True)["vae_tiling"] is True
    assert gpu_plan(gpu, "cuda", 1, 1, True)["torch_compile"] is True
    fixed = gpu_plan(gpu, "cuda", 1, 1, False, fp16_fix_path="/m/vae")
    assert fixed["vae_fp16_fix"]
    assert not fixed["vae_upcast"]


def test_data_url_references_are_summarised_in_the_record(worker):
    client, _, _, _ = worker
    url = data_url(REFERENCE)
    record = run(client, "summarised", metadata={"reference_image_url": url})
    assert record["status"] == "completed"
    reported = record["metadata"]["parameters"]["reference"]["url"]
    assert reported.startswith("data:image/png;base64,<")
    assert "sha256" in reported
    assert len(reported) < 100
    assert url not in str(record)
