"""The OurVidz app's queued job payload -> a body of our own `POST /generate` API plus the caller's context.

The app (its `queue-job` function) sends fields our HTTP API does not have (`job_id`, `job_type`,
`quality`, `format`, `content_type`, top-level `negative_prompt`, `config.pipeline`,
`config.denoise_strength`, browser metadata) and an empty prompt for exact copies. Every field is
either used (mapped onto the body the worker validates with its own schema) or, when it is the
caller's own context, returned in `caller_context` for the job metadata; nothing is dropped.
Fields that must agree (`id`/`job_id`; `quality`, `format`, `config.pipeline` with the type and the
references) raise a validation error naming the app's field.

Sizes: the app sends `1024x1024`, `1024x576` and `576x1024`. The placeholder profile's tiny models
render them scaled down by SIZE_DIVISOR (aspect kept, both sizes reported); production renders them
as they are.
"""
from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field

from configuration import job_types
from configuration.schemas.app_payload import STORAGE_BUCKETS, schema
from configuration.schemas.common import ValidationFailed, field_error, validate
from configuration.settings import Settings

APP_SIZES = ("1024x1024", "1024x576", "576x1024")
# Placeholder models have small native sizes (configuration/models.json limits); 4 keeps every app
# size a whole multiple of 16 (WAN's VAE x patch stride) and of 8 (SDXL's VAE).
SIZE_DIVISOR = {"placeholder": 4, "production": 1}

# Metadata fields that are generation parameters for each worker (the rest is the caller's context).
_METADATA_PARAMETERS = {
    "sdxl": ("reference_image_url", "denoise_strength", "reference_strength", "exact_copy_mode", "resize_policy"),
    "wan": ("reference_image_url", "start_reference_url", "end_reference_url", "denoise_strength",
            "reference_strength", "resize_policy"),
}
# Reference fields (body pointer) per worker.
_REFERENCES = {
    "sdxl": ("/metadata/reference_image_url",),
    "wan": ("/metadata/reference_image_url", "/metadata/start_reference_url", "/metadata/end_reference_url",
            "/config/image", "/config/first_frame", "/config/last_frame"),
}
_STORAGE_PATH = re.compile("^(" + "|".join(map(re.escape, STORAGE_BUCKETS)) + ")/(.+)$")
_QUALITY = re.compile(r"_(fast|high)(?:_|$)")


@dataclass
class AppJob:
    job_id: str
    body: dict                                   # a POST /generate body for `worker`
    caller_context: dict                         # the app's own fields, carried in the job metadata
    size: dict | None = None                     # requested vs rendered size, when they differ
    storage_references: dict[str, tuple[str, str]] = field(default_factory=dict)  # body pointer -> (bucket, path)
    paths: dict[str, str] = field(default_factory=dict)  # body pointer -> the app's field, for error messages

    def app_error(self, error: ValidationFailed) -> ValidationFailed:
        """`error` (raised on the mapped body) with each path named as the app sent the field."""
        return ValidationFailed([dict(d, path=self.app_path(d["path"])) for d in error.details])

    def app_path(self, pointer: str) -> str:
        for prefix in sorted(self.paths, key=len, reverse=True):
            if pointer == prefix or pointer.startswith(prefix + "/"):
                return self.paths[prefix] + pointer[len(prefix):]
        return pointer


def from_app_payload(worker: str, payload, settings: Settings) -> AppJob:
    """Map one queued payload for `worker` ("sdxl" or "wan"). Raises ValidationFailed naming the app's fields."""
    validate(schema(), payload)
    job_id = payload.get("id") or payload["job_id"]
    if "id" in payload and "job_id" in payload and payload["id"] != payload["job_id"]:
        raise field_error("/job_id", f"must equal id ({payload['id']!r}): both name the one job")
    config = copy.deepcopy(payload.get("config", {}))
    metadata = copy.deepcopy(payload.get("metadata", {}))
    job = AppJob(job_id=job_id, body={"id": job_id, "type": payload["type"], "prompt": payload["prompt"]},
                 caller_context={})
    if "user_id" in payload:
        job.body["user_id"] = payload["user_id"]
    for name in ("job_type", "quality", "format", "content_type"):
        if name in payload:
            job.caller_context[name] = payload[name]
    if "content_type" in payload:  # the content tier (docs/POLICY.md), held at admission as /generate's is
        job.body["content_tier"] = payload["content_type"]
        job.paths["/content_tier"] = "/content_type"

    preset = job_types().get(payload["type"])
    output = str(preset.get("output", "image")) if preset else None
    if output:  # an unknown or other worker's type is refused by the worker's schema (/type)
        _check_type_agreement(payload, output)
    _top_level_prompt_fields(worker, payload, config, job)
    _config_fields(worker, config, metadata, job, settings.model_profile)
    _metadata_fields(worker, metadata, config, job)
    if config:
        job.body["config"] = config
    if metadata:
        job.body["metadata"] = metadata
    references = _references(worker, job)
    _check_pipeline(payload, output, references, job)
    _check_prompt(worker, payload, references, job)
    _storage_references(payload.get("user_id"), references, job)
    return job


def _check_type_agreement(payload: dict, output: str) -> None:
    quality = _QUALITY.search(payload["type"])
    if "quality" in payload and quality and quality.group(1) != payload["quality"]:
        raise field_error("/quality", f"{payload['quality']!r} contradicts type {payload['type']!r} "
                                      f"(a {quality.group(1)} job)")
    if "format" in payload and payload["format"] != output:
        raise field_error("/format", f"{payload['format']!r} contradicts type {payload['type']!r}, which "
                                     f"produces {'a video' if output == 'video' else 'an image'}")


def _top_level_prompt_fields(worker: str, payload: dict, config: dict, job: AppJob) -> None:
    if "negative_prompt" in payload:
        if "negative_prompt" in config and config["negative_prompt"] != payload["negative_prompt"]:
            raise field_error("/negative_prompt", "conflicts with config.negative_prompt")
        config["negative_prompt"] = payload["negative_prompt"]
        job.paths["/config/negative_prompt"] = "/negative_prompt"
    for name in ("compel_enabled", "compel_weights"):
        if name not in payload:
            continue
        if worker == "sdxl":
            job.body[name] = payload[name]
        elif payload[name]:  # true / a non-empty string would ask WAN for something it cannot do
            raise field_error(f"/{name}", "prompt weighting (compel) is an SDXL option; WAN does not use it")
        else:
            job.caller_context[name] = payload[name]


def _config_fields(worker: str, config: dict, metadata: dict, job: AppJob, profile: str) -> None:
    if "pipeline" in config:
        job.caller_context.setdefault("config", {})["pipeline"] = config.pop("pipeline")
    if "denoise_strength" in config:
        value = config.pop("denoise_strength")
        if "denoise_strength" in metadata and metadata["denoise_strength"] != value:
            raise field_error("/config/denoise_strength", f"conflicts with metadata.denoise_strength "
                                                          f"({metadata['denoise_strength']!r})")
        metadata["denoise_strength"] = value
        job.paths["/metadata/denoise_strength"] = "/config/denoise_strength"
    if worker == "wan":
        if "num_images" in config:
            if config["num_images"] != 1:
                raise field_error("/config/num_images", "a WAN job produces one output; send 1")
            job.caller_context.setdefault("config", {})["num_images"] = config.pop("num_images")
        if "num_inference_steps" in config:
            steps = config.pop("num_inference_steps")
            for other in ("steps", "sample_steps"):
                if other in config and config[other] != steps:
                    raise field_error("/config/num_inference_steps", f"conflicts with config.{other}")
            config.setdefault("steps", steps)
            job.paths["/config/steps"] = "/config/num_inference_steps"
    if "resolution" in config and SIZE_DIVISOR[profile] != 1:
        _scale_resolution(config, job, SIZE_DIVISOR[profile])


def _scale_resolution(config: dict, job: AppJob, divisor: int) -> None:
    requested = config.pop("resolution")
    width, height = (int(v) for v in requested.split("x"))
    if width % divisor or height % divisor:
        raise field_error("/config/resolution", f"{requested} cannot be scaled by 1/{divisor} on the placeholder "
                                                f"profile (sizes the app sends: {', '.join(APP_SIZES)})")
    for name in ("width", "height"):
        if name in config:
            raise field_error(f"/config/{name}", "is given together with config.resolution")
    config["width"], config["height"] = width // divisor, height // divisor
    job.paths["/config/width"] = job.paths["/config/height"] = "/config/resolution"
    job.size = {"requested": requested, "rendered": f"{width // divisor}x{height // divisor}",
                "scale": 1 / divisor,
                "reason": f"the placeholder profile renders the app's sizes scaled down by {divisor}, aspect kept"}


def _metadata_fields(worker: str, metadata: dict, config: dict, job: AppJob) -> None:
    context = {}
    exact_copy = metadata.get("exact_copy_mode")
    mode = metadata.get("reference_mode")
    if mode is not None and exact_copy is not None and (mode == "copy") != exact_copy:
        raise field_error("/metadata/reference_mode", f"{mode!r} contradicts exact_copy_mode={exact_copy!r}")
    if mode is not None:
        context["reference_mode"] = metadata.pop("reference_mode")
        if exact_copy is None and worker == "sdxl" and metadata.get("reference_image_url"):
            metadata["exact_copy_mode"] = mode == "copy"
            job.paths["/metadata/exact_copy_mode"] = "/metadata/reference_mode"
    if "video_reference_mode" in metadata:
        value = metadata.pop("video_reference_mode")
        if worker == "wan":
            if "reference_mode" in config and config["reference_mode"] != value:
                raise field_error("/metadata/video_reference_mode", "conflicts with config.reference_mode")
            config["reference_mode"] = value
            job.paths["/config/reference_mode"] = "/metadata/video_reference_mode"
        else:
            context["video_reference_mode"] = value
    if "reference_strength" in metadata and "denoise_strength" in metadata:
        # The app computes denoise_strength (its copy/modify defaults, user overrides) and sends the
        # browser's reference_strength beside it: denoise_strength is the parameter.
        context["reference_strength"] = metadata.pop("reference_strength")
    if worker == "sdxl" and metadata.get("exact_copy_mode") is False and not metadata.get("reference_image_url"):
        # The app states exact_copy_mode: false on every job; without a reference it asks for nothing.
        context["exact_copy_mode"] = metadata.pop("exact_copy_mode")
    if worker == "wan" and "exact_copy_mode" in metadata:
        # WAN has no exact-copy pipeline: the app expresses copy mode through the parameters it sets
        # (denoise_strength -> conditioning scale, guidance_scale); the flag is the caller's record.
        context["exact_copy_mode"] = metadata.pop("exact_copy_mode")
    parameters = _METADATA_PARAMETERS[worker]
    for name in [k for k in metadata if k not in parameters]:
        context[name] = metadata.pop(name)
    if context:
        job.caller_context["metadata"] = context


def _references(worker: str, job: AppJob) -> dict[str, str]:
    """body pointer -> reference value, for every reference the mapped body carries."""
    found = {}
    for pointer in _REFERENCES[worker]:
        _, section, name = pointer.split("/")
        value = job.body.get(section, {}).get(name)
        if value:
            found[pointer] = value
    return found


def _check_pipeline(payload: dict, output: str | None, references: dict, job: AppJob) -> None:
    pipeline = payload.get("config", {}).get("pipeline")
    if pipeline is None or output is None:
        return
    if references:
        if pipeline != "img2img":
            first = job.app_path(next(iter(references)))
            raise field_error("/config/pipeline", f"{pipeline!r} contradicts the reference in {first}: "
                                                  "a job with a reference is img2img")
        return
    expected = "video" if output == "video" else "txt2img"
    if pipeline != expected:
        what = ("needs a reference image (none given)" if pipeline == "img2img"
                else f"contradicts type {payload['type']!r}")
        raise field_error("/config/pipeline", f"{pipeline!r} {what}; expected {expected!r}")


def _check_prompt(worker: str, payload: dict, references: dict, job: AppJob) -> None:
    if payload["prompt"].strip():
        return
    exact_copy = worker == "sdxl" and job.body.get("metadata", {}).get("exact_copy_mode") is True
    if not (exact_copy and references):
        raise field_error("/prompt", "is empty; an empty prompt is only valid for an exact copy "
                                     "(exact_copy_mode with a reference image)")
    job.body["prompt"] = ""


def _storage_references(user_id: str | None, references: dict, job: AppJob) -> None:
    for pointer, value in references.items():
        match = _STORAGE_PATH.match(value)
        if not match:
            continue
        bucket, path = match.groups()
        app_field = job.app_path(pointer)
        if not user_id:
            raise field_error(app_field, "a storage path reference needs the job's user_id")
        if not path.startswith(f"{user_id}/") or ".." in path.split("/"):
            raise field_error(app_field, f"storage path must lie in the job's own folder ({bucket}/{user_id}/...)")
        job.storage_references[pointer] = (bucket, path)

