"""The app's queued payload mapped onto our own generation body (configuration/params/app_payload.py)."""
from __future__ import annotations

import pytest

from configuration.params.app_payload import APP_SIZES, SIZE_DIVISOR, from_app_payload
from configuration.schemas.common import ValidationFailed
from configuration.settings import Settings
from tests.app_client import APP_NEGATIVE_PROMPT, queue_job_payload

PLACEHOLDER = Settings(model_profile="placeholder")
PRODUCTION = Settings(model_profile="production")
SIGNED = "https://project.supabase.co/storage/v1/object/sign/user-library/u/x.png?token=t"


def failure(worker, payload, settings=PLACEHOLDER) -> list[dict]:
    with pytest.raises(ValidationFailed) as info:
        from_app_payload(worker, payload, settings)
    return info.value.details


def test_txt2img_16_9_every_field_used_or_carried():
    payload = queue_job_payload(aspect_ratio="16:9", num_images=3, seed=0, content_type="nsfw")
    job = from_app_payload("sdxl", payload, PLACEHOLDER)
    assert job.job_id == payload["id"]
    assert job.body == {
        "id": payload["id"], "type": "sdxl_image_fast", "prompt": payload["prompt"], "user_id": payload["user_id"],
        "compel_enabled": False, "compel_weights": "", "content_tier": "nsfw",
        "config": {"num_images": 3, "seed": 0, "width": 256, "height": 144, "negative_prompt": APP_NEGATIVE_PROMPT},
    }
    assert job.size == {"requested": "1024x576", "rendered": "256x144", "scale": 0.25,
                        "reason": "the placeholder profile renders the app's sizes scaled down by 4, aspect kept"}
    context = job.caller_context
    assert {k: context[k] for k in ("job_type", "quality", "format", "content_type")} == {
        "job_type": "sdxl_image_fast", "quality": "fast", "format": "image", "content_type": "nsfw"}
    assert context["config"] == {"pipeline": "txt2img"}
    # Every browser metadata field is carried, none is a parameter of a job without a reference.
    assert context["metadata"] == {k: v for k, v in payload["metadata"].items()}
    assert job.storage_references == {}


def test_every_app_field_lands_somewhere():
    """Nothing silently dropped: each field of the payload is in the body or the caller context, at the
    same place or under a recorded rename (job.paths, also used to name fields in errors)."""
    for payload, worker in ((queue_job_payload(reference_url=SIGNED), "sdxl"),
                            (queue_job_payload(reference_url=SIGNED, reference_mode="copy"), "sdxl"),
                            (queue_job_payload(fmt="video", start_url=SIGNED, end_url=SIGNED), "wan")):
        job = from_app_payload(worker, payload, PRODUCTION)
        found = _pointers(job.body) | _pointers(job.caller_context) | set(job.paths.values())
        found |= {"/" + p.split("/")[-1] for p in _pointers(job.caller_context)}  # context keeps names, not nesting
        found |= {"/metadata/" + p.split("/")[-1] for p in _pointers(job.caller_context)}
        missing = {p for p in _pointers(payload) if p not in found and p not in ("/id", "/job_id")}
        assert not missing, missing


def _pointers(value, prefix="") -> set:
    if isinstance(value, dict) and value:
        return set().union(*(_pointers(v, f"{prefix}/{k}") for k, v in value.items()))
    return {prefix}


def test_exact_copy_with_an_empty_prompt():
    payload = queue_job_payload(reference_url=SIGNED, reference_mode="copy")
    assert payload["prompt"] == "" and "negative_prompt" not in payload
    job = from_app_payload("sdxl", payload, PRODUCTION)
    assert job.body["prompt"] == ""
    assert job.body["metadata"] == {"reference_image_url": SIGNED, "denoise_strength": 0.05, "exact_copy_mode": True}
    assert job.body["config"] == {"num_images": 1, "resolution": "1024x1024", "num_inference_steps": 15,
                                  "guidance_scale": 1.0}
    assert job.caller_context["metadata"]["reference_mode"] == "copy"
    assert job.caller_context["metadata"]["reference_strength"] == 0.95
    assert job.paths["/metadata/denoise_strength"] == "/config/denoise_strength"


@pytest.mark.parametrize("change", [
    {},                                                              # text to image
    {"reference_url": SIGNED},                                       # modify, not a copy
])
def test_an_empty_prompt_anywhere_else_is_refused(change):
    payload = queue_job_payload(**change)
    payload["prompt"] = "  "
    assert failure("sdxl", payload)[0]["path"] == "/prompt"


def test_empty_prompt_for_wan_is_refused_even_in_copy_mode():
    payload = queue_job_payload(fmt="video", reference_url=SIGNED, reference_mode="copy")
    payload["prompt"] = ""
    assert failure("wan", payload)[0]["path"] == "/prompt"


def test_wan_video_with_a_first_frame():
    payload = queue_job_payload(fmt="video", quality="high", start_url=SIGNED, aspect_ratio="9:16")
    job = from_app_payload("wan", payload, PLACEHOLDER)
    assert job.body["type"] == "video_high"
    assert job.body["config"] == {"steps": 20, "guidance_scale": 6.0,
                                  "sample_solver": "dpm++", "first_frame": SIGNED, "width": 144, "height": 256,
                                  "negative_prompt": APP_NEGATIVE_PROMPT, "reference_mode": "start"}
    assert job.body["metadata"] == {"denoise_strength": 0.2, "start_reference_url": SIGNED}
    ctx = job.caller_context
    assert ctx["config"] == {"pipeline": "img2img", "num_images": 1}
    assert ctx["compel_enabled"] is False and ctx["compel_weights"] == ""
    assert ctx["metadata"]["exact_copy_mode"] is False and ctx["metadata"]["duration"] == 5
    assert job.paths["/config/reference_mode"] == "/metadata/video_reference_mode"
    assert job.paths["/config/steps"] == "/config/num_inference_steps"


@pytest.mark.parametrize("field,value,path", [
    ("job_id", "another-id", "/job_id"),
    ("quality", "high", "/quality"),
    ("format", "video", "/format"),
])
def test_contradicting_top_level_fields_name_the_field(field, value, path):
    payload = queue_job_payload()
    payload[field] = value
    details = failure("sdxl", payload)
    assert details[0]["path"] == path


@pytest.mark.parametrize("pipeline,reference,fmt", [
    ("txt2img", SIGNED, "image"), ("img2img", None, "image"), ("video", None, "image"),
    ("txt2img", None, "video"), ("video", SIGNED, "video"),
])
def test_pipeline_must_agree_with_type_and_references(pipeline, reference, fmt):
    payload = queue_job_payload(fmt=fmt, reference_url=reference)
    payload["config"]["pipeline"] = pipeline
    assert failure("wan" if fmt == "video" else "sdxl", payload)[0]["path"] == "/config/pipeline"


def test_reference_mode_must_agree_with_exact_copy_mode():
    payload = queue_job_payload(reference_url=SIGNED)
    payload["metadata"]["reference_mode"] = "copy"
    assert failure("sdxl", payload)[0]["path"] == "/metadata/reference_mode"


def test_schema_errors_use_the_apps_field_names():
    payload = queue_job_payload(fmt="video")
    payload["config"]["pipeline"] = 7
    assert failure("wan", payload)[0]["path"] == "/config/pipeline"
    payload = queue_job_payload()
    payload["content_type"] = "adult"
    assert failure("sdxl", payload)[0]["path"] == "/content_type"
    payload = queue_job_payload()
    payload["surprise"] = 1
    assert failure("sdxl", payload) == [{"path": "/surprise", "message": "is not an accepted field"}]


def test_storage_path_references_must_lie_in_the_users_folder():
    payload = queue_job_payload(reference_url="x")
    payload["metadata"]["reference_image_url"] = f"user-library/{payload['user_id']}/ref.png"
    job = from_app_payload("sdxl", payload, PRODUCTION)
    expected = ("user-library", f"{payload['user_id']}/ref.png")
    assert job.storage_references == {"/metadata/reference_image_url": expected}
    for bad in ("user-library/someone-else/ref.png", f"workspace-temp/{payload['user_id']}/../other/x.png"):
        payload["metadata"]["reference_image_url"] = bad
        assert failure("sdxl", payload)[0]["path"] == "/metadata/reference_image_url"


def test_wan_rejects_what_it_cannot_do_by_name():
    payload = queue_job_payload(fmt="video")
    payload["compel_enabled"] = True
    assert failure("wan", payload)[0]["path"] == "/compel_enabled"
    payload = queue_job_payload(fmt="video")
    payload["config"]["num_images"] = 3
    assert failure("wan", payload)[0]["path"] == "/config/num_images"


@pytest.mark.parametrize("size", APP_SIZES)
def test_app_sizes_fit_every_profile(size):
    """The scaled sizes satisfy each generation model's limits (configuration/models.json) on both profiles."""
    from configuration import model_config

    width, height = (int(v) for v in size.split("x"))
    for settings in (PLACEHOLDER, PRODUCTION):
        divisor = SIZE_DIVISOR[settings.model_profile]
        scaled = (width // divisor, height // divisor)
        assert scaled[0] * height == scaled[1] * width  # aspect kept exactly
        for model in ("sdxl", "wan_t2v", "wan_vace"):
            limits = model_config(model, settings)["limits"]
            for value in scaled:
                assert limits["min_size"] <= value <= limits["max_size"] and value % limits["multiple"] == 0, \
                    (model, settings.model_profile, scaled, limits)


@pytest.mark.parametrize("worker,change", [
    ("sdxl", {"aspect_ratio": "16:9"}),
    ("sdxl", {"reference_url": SIGNED, "reference_mode": "copy"}),
    ("sdxl", {"reference_url": SIGNED, "num_images": 6, "aspect_ratio": "9:16"}),
    ("wan", {"fmt": "video", "aspect_ratio": "16:9"}),
    ("wan", {"fmt": "video", "start_url": SIGNED, "end_url": SIGNED, "quality": "high"}),
    ("wan", {"fmt": "video", "reference_url": SIGNED, "aspect_ratio": "9:16"}),
])
@pytest.mark.parametrize("settings", [PLACEHOLDER, PRODUCTION], ids=["placeholder", "production"])
def test_mapped_bodies_pass_the_workers_own_schema_and_normalisation(worker, change, settings):
    from configuration.params import normalise_generation
    from configuration.schemas import validate_request

    job = from_app_payload(worker, queue_job_payload(**change), settings)
    validate_request(f"{worker}.generate", job.body, settings)
    params = normalise_generation(worker, job.body, settings)
    width, height = (int(v) for v in {"16:9": "1024x576", "9:16": "576x1024"}.get(
        change.get("aspect_ratio", "1:1"), "1024x1024").split("x"))
    divisor = SIZE_DIVISOR[settings.model_profile]
    assert (params["width"], params["height"]) == (width // divisor, height // divisor)


def test_our_own_api_takes_an_empty_prompt_only_for_an_exact_copy():
    from configuration.schemas import validate_request

    copy = {"type": "sdxl_image_fast", "prompt": "",
            "metadata": {"exact_copy_mode": True, "reference_image_url": SIGNED}}
    validate_request("sdxl.generate", copy, PLACEHOLDER)
    for body in ({"type": "sdxl_image_fast", "prompt": ""},
                 {**copy, "metadata": {"exact_copy_mode": False, "reference_image_url": SIGNED}},
                 {**copy, "metadata": {"exact_copy_mode": True}}):
        with pytest.raises(ValidationFailed) as info:
            validate_request("sdxl.generate", body, PLACEHOLDER)
        assert {d["path"] for d in info.value.details} == {"/prompt"}
