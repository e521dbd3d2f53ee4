"""WAN request normalisation and the engine's device/memory decisions: pure logic, no models."""
import pytest
import torch
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from PIL import Image

from configuration import model_config, requests
from configuration.requests.common import ValidationFailed
from configuration.requests.wan import SAMPLE_SOLVERS, max_requested_frames, normalise_frames
from configuration.settings import Settings
from workers.engines.wan_plan import (
    conditioning_frames,
    gpu_plan,
    make_scheduler,
    offload_decision,
    text_encoder_placement,
    vae_dtype,
    working_bytes_estimate,
)

A, B, C = "https://cdn.example/a.png", "https://cdn.example/b.png", "https://cdn.example/c.png"
GPU = model_config("wan_t2v", Settings(model_profile="production"))["gpu"]
GB = 1024**3


def body(type="video_fast", config=None, metadata=None):
    b = {"id": "w1", "type": type, "prompt": "a fox running", "user_id": "u1", "config": {"seed": 3, **(config or {})}}
    if metadata is not None:
        b["metadata"] = metadata
    return b


def normalise(b, settings=None):
    return dict(requests.normalise("wan.generate", b, settings or Settings()))


def error_paths(b, settings=None):
    with pytest.raises(ValidationFailed) as exc:
        normalise(b, settings)
    return [d["path"] for d in exc.value.details]


# ---- normalisation -------------------------------------------------------------------------------

def test_presets_fill_what_is_missing_and_placeholder_sizes_apply():
    p = normalise(body())
    assert (p["steps"], p["guidance_scale"], p["frames"], p["fps"], p["sample_solver"]) == (25, 6.5, 9, 16, "unipc")
    assert (p["width"], p["height"], p["output"], p["reference"]) == (32, 32, "video", None)
    image = normalise(body("image_high"))
    assert (image["steps"], image["guidance_scale"], image["frames"], image["fps"], image["output"]) == (50, 7.5, 1,
                                                                                                         None, "image")
    production = Settings(model_profile="production")
    assert normalise(body("video_high", {"width": 832, "height": 480, "frames": 81}), production)["frames"] == 81


def test_legacy_names_map_onto_canonical_ones():
    p = normalise(body(config={"frame_num": 13, "sample_steps": 7, "sample_guide_scale": 4.0, "content_type": "video",
                               "enhance_prompt": False, "resolution": "48x32", "fps": 24}))
    assert (p["frames"], p["steps"], p["guidance_scale"], p["width"], p["height"], p["fps"]) == (13, 7, 4.0, 48, 32, 24)


def test_frames_are_rounded_to_4k_plus_1_and_both_counts_kept():
    p = normalise(body(config={"frames": 12}))
    assert (p["frames_requested"], p["frames"]) == (12, 13)
    p = normalise(body(config={"frames": 11}))
    assert (p["frames_requested"], p["frames"]) == (11, 9)


@given(st.integers(1, 10_000))
def test_normalise_frames_is_the_nearest_4k_plus_1(n):
    f = normalise_frames(n)
    assert f % 4 == 1
    assert abs(f - n) <= 2
    assert normalise_frames(f) == f


def test_seed_zero_is_a_seed_and_absent_seed_is_random_and_reported():
    assert normalise(body(config={"seed": 0}))["seed"] == 0
    b = body()
    del b["config"]["seed"]
    p = normalise(b)
    assert p["seed_source"] == "random"
    assert 0 <= p["seed"] < 2**32


def test_guidance_off_uses_no_negative_prompt():
    p = normalise(body(config={"guidance_scale": 1.0}))
    assert p["negative_prompt"] is None
    assert "/config/negative_prompt" in error_paths(body(config={"guidance_scale": 1.0, "negative_prompt": "blur"}))


@pytest.mark.parametrize(("b", "path"), [
    (body(config={"frames": 81}), "/config/frames"),                       # over the placeholder max (33)
    (body(config={"frames": 3}), "/config/frames"),                        # a video needs 5 frames
    (body("image_fast", {"frames": 9}), "/config/frames"),                 # an image is one frame
    (body("image_fast", {"frame_num": 5}), "/config/frame_num"),
    (body("image_fast", {"fps": 16}), "/config/fps"),                      # an image has no playback rate
    (body(config={"width": 40}), "/config/width"),                         # not a multiple of 16
    (body(config={"height": 272}), "/config/height"),                      # over the placeholder max (256)
    (body(config={"resolution": "40x32"}), "/config/resolution"),
    (body(config={"steps": 10, "sample_steps": 12}), "/config/sample_steps"),
    (body(config={"guidance_scale": 5, "sample_guide_scale": 6}), "/config/sample_guide_scale"),
    (body(config={"sample_solver": "euler"}), "/config/sample_solver"),
    (body(config={"content_type": "image"}), "/config/content_type"),
    (body("image_fast", {"content_type": "video"}), "/config/content_type"),
    (body(config={"enhance_prompt": True}), "/config/enhance_prompt"),
    (body("video7b_fast_enhanced"), "/type"),
    (body(config={"reference_mode": "sideways"}), "/config/reference_mode"),
    (body(config={"bogus": 1}), "/config/bogus"),
    (body(metadata={"reference_strength": 0.5}), "/metadata/reference_strength"),  # no reference given
    (body(metadata={"reference_image_url": A, "exact_copy_mode": True}), "/metadata/exact_copy_mode"),
    (body(metadata={"reference_image_url": "ftp://x/y.png"}), "/metadata/reference_image_url"),
    (body(metadata={"reference_image_url": A, "reference_strength": 0.0}), "/metadata/reference_strength"),
    (body(metadata={"reference_image_url": A, "reference_strength": 0.7, "denoise_strength": 0.5}),
     "/metadata/denoise_strength"),
    (body(config={"image": B}, metadata={"reference_image_url": A}), "/config/image"),
    # legacy alias conflicts
    (body(config={"reference_mode": "none"}, metadata={"reference_image_url": A}), "/metadata/reference_image_url"),
    (body(config={"reference_mode": "start"}, metadata={"end_reference_url": B, "start_reference_url": A}),
     "/metadata/end_reference_url"),
    (body(config={"reference_mode": "both"}, metadata={"start_reference_url": A}), "/metadata/end_reference_url"),
    (body(config={"reference_mode": "single"}), "/metadata/reference_image_url"),
    (body(metadata={"reference_image_url": C, "start_reference_url": A}), "/metadata/reference_image_url"),
    (body("image_fast", {"reference_mode": "both"}, {"start_reference_url": A, "end_reference_url": B}),
     "/config/reference_mode"),
])
def test_bad_requests_name_the_field(b, path):
    assert path in error_paths(b)


@pytest.mark.parametrize(("config", "metadata", "mode", "first", "last"), [
    ({}, {"reference_image_url": A}, "single", A, None),
    ({"image": A}, {}, "single", A, None),
    ({}, {"start_reference_url": A}, "start", A, None),
    ({"first_frame": A}, {}, "start", A, None),
    ({}, {"end_reference_url": B}, "end", None, B),
    ({"last_frame": B}, {}, "end", None, B),
    ({}, {"start_reference_url": A, "end_reference_url": B}, "both", A, B),
    ({"first_frame": A, "last_frame": B}, {}, "both", A, B),
    ({}, {"reference_image_url": A, "start_reference_url": A}, "start", A, None),
    ({"reference_mode": "end"}, {"reference_image_url": B}, "end", None, B),
    ({"reference_mode": "start"}, {"reference_image_url": A}, "start", A, None),
])
def test_reference_mode_is_derived_or_taken_and_picks_the_frames(config, metadata, mode, first, last):
    ref = normalise(body(config=config, metadata=metadata))["reference"]
    assert (ref["mode"], ref["first_url"], ref["last_url"]) == (mode, first, last)
    assert (ref["conditioning_scale"], ref["strength_source"], ref["resize_policy"]) == (1.0, "preset", "center_crop")


def test_strength_fields_set_the_vace_conditioning_scale():
    ref = normalise(body(metadata={"reference_image_url": A, "reference_strength": 0.4}))["reference"]
    assert (ref["conditioning_scale"], ref["strength_source"]) == (0.4, "reference_strength")
    ref = normalise(body(metadata={"reference_image_url": A, "denoise_strength": 0.25}))["reference"]
    assert (ref["conditioning_scale"], ref["strength_source"]) == (0.75, "denoise_strength")
    ref = normalise(body(metadata={"reference_image_url": A, "denoise_strength": 0.25, "reference_strength": 0.75,
                                   "resize_policy": "letterbox"}))["reference"]
    assert ref["conditioning_scale"] == 0.75
    assert ref["resize_policy"] == "letterbox"


def test_caller_metadata_is_kept_apart():
    p = normalise(body(metadata={"reference_image_url": A, "project": "p1"}))
    assert p["caller_metadata"] == {"project": "p1"}


def test_the_frames_bound_is_the_largest_count_that_rounds_within_the_limit():
    assert max_requested_frames(33) == 33
    assert max_requested_frames(121) == 121
    for max_frames in (32, 33, 34, 121):
        top = max_requested_frames(max_frames)
        assert top <= max_frames
        assert normalise_frames(top) <= max_frames
        assert top == max_frames or normalise_frames(top + 1) > max_frames


def test_schema_solvers_are_the_engines():
    config = {"num_train_timesteps": 1000, "flow_shift": 3.0, "prediction_type": "flow_prediction",
              "use_flow_sigmas": True}
    assert [type(make_scheduler(s, config)).__name__ for s in SAMPLE_SOLVERS] == \
        ["UniPCMultistepScheduler", "DPMSolverMultistepScheduler"]
    with pytest.raises(ValueError, match="unknown sample_solver 'euler'"):
        make_scheduler("euler", config)


# ---- device and memory decisions -----------------------------------------------------------------

def test_text_encoder_placement():
    assert text_encoder_placement(GPU, "cpu", torch.float32) == ("cpu", torch.float32)
    assert GPU["text_encoder_on_cpu"] is False  # production: umT5 on the GPU, inside the lease
    on_cpu = {**GPU, "text_encoder_on_cpu": True}
    assert text_encoder_placement(on_cpu, "cuda", torch.bfloat16) == ("cpu", torch.bfloat16)
    assert text_encoder_placement(on_cpu, "cuda", torch.float16) == ("cpu", torch.bfloat16)
    on_gpu = GPU
    assert text_encoder_placement(on_gpu, "cuda", torch.bfloat16) == ("cuda", torch.bfloat16)
    assert text_encoder_placement(on_gpu, "cuda", torch.float16) == ("cuda", torch.float32)  # UMT5 overflows in fp16
    assert text_encoder_placement(on_gpu, "cuda", torch.bfloat16, offload=True) == ("cpu", torch.bfloat16)
    assert text_encoder_placement(on_gpu, "cpu", torch.float32, offload=True) == ("cpu", torch.float32)


def test_vae_dtype():
    assert vae_dtype(GPU, "cpu", torch.float32) == torch.float32
    assert vae_dtype(GPU, "cuda", torch.bfloat16) == torch.float32
    assert vae_dtype({k: v for k, v in GPU.items() if k != "vae_dtype"}, "cuda", torch.bfloat16) == torch.bfloat16


def test_offload_is_the_operators_choice_and_needs_cuda():
    assert offload_decision("cuda", False) is False
    assert offload_decision("cuda", True) is True
    assert offload_decision("cpu", False) is False
    with pytest.raises(ValueError, match="WAN_OFFLOAD needs a CUDA device"):
        offload_decision("cpu", True)


def test_gpu_plan():
    assert not any(gpu_plan(GPU, "cpu", 1280 * 720, True, False).values())
    assert gpu_plan(GPU, "cuda", 832 * 480, False, False) == {
        "text_encoder_on_cpu": False, "model_cpu_offload": False, "vae_tiling": False, "torch_compile": False}
    assert gpu_plan(GPU, "cuda", 1280 * 720, False, False)["vae_tiling"] is True
    assert gpu_plan(GPU, "cuda", 1, True, False)["torch_compile"] is True
    offloaded = gpu_plan(GPU, "cuda", 1, True, True)
    assert offloaded["model_cpu_offload"] is True
    assert offloaded["torch_compile"] is False
    assert gpu_plan({**GPU, "text_encoder_on_cpu": False}, "cuda", 1, False, True)["text_encoder_on_cpu"] is True


def test_working_bytes_scale_with_pixels_and_frames():
    one = working_bytes_estimate(GPU, 832, 480, 81)
    assert 4 * GB < one < 10 * GB
    assert working_bytes_estimate(GPU, 832, 480, 41) < one < working_bytes_estimate(GPU, 1280, 720, 81)


def test_conditioning_frames_mark_known_frames_black():
    red, blue = Image.new("RGB", (16, 16), (255, 0, 0)), Image.new("RGB", (16, 16), (0, 0, 255))
    video, mask = conditioning_frames(red, blue, 5, 16, 16)
    assert video[0] is red
    assert video[-1] is blue
    assert video[2].getpixel((0, 0)) == (128, 128, 128)
    assert [m.getpixel((0, 0)) for m in mask] == [0, 255, 255, 255, 0]
    video, mask = conditioning_frames(None, blue, 5, 16, 16)
    assert [m.getpixel((0, 0)) for m in mask] == [255, 255, 255, 255, 0]
    video, mask = conditioning_frames(red, None, 1, 16, 16)
    assert video == [red]
    assert [m.getpixel((0, 0)) for m in mask] == [0]


def _expected_wan_errors(config: dict, job_type: str, limits: dict) -> set[str]:
    """The fields a config must be refused for, from the documented rules alone (an oracle independent of
    the schema and the normaliser): frames 1 for an image, at least 5 for a video, 4k+1-rounded within
    max_frames; sizes in range and a multiple of 16; steps in [1, 100]; fps in [1, 60], and none for an image."""
    image = job_type.startswith("image")

    def bad(name, ok):
        return {f"/config/{name}"} if name in config and not ok(config[name]) else set()

    return (bad("frames", lambda f: (f == 1 if image else 5 <= f) and 1 <= f <= limits["max_frames"]
                and normalise_frames(f) <= limits["max_frames"])
            | bad("width", lambda w: limits["min_size"] <= w <= limits["max_size"] and w % 16 == 0)
            | bad("steps", lambda n: 1 <= n <= 100)
            | bad("fps", lambda r: not image and 1 <= r <= 60))


@hsettings(max_examples=100, deadline=None)
@given(frames=st.one_of(st.integers(-2, 40), st.none()), width=st.one_of(st.integers(0, 160), st.none()),
       steps=st.one_of(st.integers(-1, 120), st.none()), fps=st.one_of(st.floats(-1, 90, allow_nan=False), st.none()),
       job_type=st.sampled_from(["image_fast", "video_fast", "video_high"]))
def test_property_accepted_bodies_normalise_within_bounds(frames, width, steps, fps, job_type):
    """A body is accepted exactly when every field follows the documented rules, and then normalises
    within them; a refused body names only fields that break a rule."""
    limits = model_config("wan_t2v", Settings())["limits"]
    config = {k: v for k, v in {"frames": frames, "width": width, "steps": steps, "fps": fps}.items() if v is not None}
    expected = _expected_wan_errors(config, job_type, limits)
    try:
        p = normalise(body(job_type, config))
    except ValidationFailed as exc:
        paths = {d["path"] for d in exc.details}
        assert expected, f"{job_type} {config} refused though valid: {exc.details}"  # noqa: PT017 (the oracle says refused or accepted)
        assert paths, f"{job_type} {config}: refused at {paths}, invalid: {expected}"
        assert paths <= expected, f"{job_type} {config}: refused at {paths}, invalid: {expected}"
        return
    assert not expected, f"{job_type} {config} accepted; invalid: {expected}"
    assert p["frames"] % 4 == 1
    assert p["frames"] <= limits["max_frames"]
    assert (p["frames"] == 1) == (p["output"] == "image")
    assert limits["min_size"] <= p["width"] <= limits["max_size"]
    assert p["width"] % 16 == 0
    assert 1 <= p["steps"] <= 100
    assert p["fps"] is None if p["output"] == "image" else 1 <= p["fps"] <= 60
