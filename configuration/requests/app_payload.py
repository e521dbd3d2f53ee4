"""The OurVidz app's queued job payload -> a body of our own `POST /generate` API plus the caller's context.

A tolerant reader: the pod runs whatever the app's `queue-job` function can send (docs/API.md).
- `null` means absent, for every field at the top level, in `config` and in `metadata`.
- What runs is derived from what is present, never from the app's labels: a reference (or, for
  video, a start/end frame) makes an image-to-image job or a conditioned video whatever
  `config.pipeline` says; `quality`, `format`, `video_reference_mode`, `reference_mode` are labels too.
- A field that does not apply to the job is context, not a refusal: it is returned in
  `caller_context` (the job metadata and every callback, where it came from) and, when it was not
  applied for a reason (a strength without a reference, a general reference next to different
  frames, a label that disagreed), the reason is in `notes` (`metadata.intake` of the record).
- Refused (ValidationFailed naming the app's field): an unknown type, a missing prompt where one is
  needed, numbers out of range or values of the wrong kind, `id` and `job_id` naming two jobs, a
  storage-path reference outside the job's own folder. A reference that cannot be fetched fails the
  job when it is fetched.

The payload's own JSON Schema (`schema()`, served as `components.schemas.app_payload` of the SDXL and WAN
workers' /openapi.json) checks the kind and range of the fields only the app sends (`job_id`, `job_type`,
`quality`, `format`, `content_type`, top-level `negative_prompt`, `config.pipeline`, `config.denoise_strength`,
the metadata flags); `null` fields are removed before (they mean absent) and fields it does not know are the
caller's context. It stays a schema dictionary, not a request model: the payload is the app's, translated here
into our own request (whose model then checks the generation parameters proper), not a request of ours.

Sizes: `config.resolution` (`1024x1024`, `1024x576`, `576x1024`) is the requested size. SDXL renders
it (the placeholder profile scaled down by SIZE_DIVISOR, aspect kept). For WAN it is an aspect
request: the video renders at the checkpoint's native size class (`native_size` in
configuration/models.json: landscape, its transpose, or a square of the same pixel budget), unless
APP_VIDEO_SIZE=requested. Both sizes are reported (`size`).

References: a raw storage path (`<bucket>/<user_id>/...`) or a signed URL of the project's own storage
(`<SUPABASE_URL>/storage/v1/object/sign/<bucket>/<user_id>/...?token=`, valid for an hour from enqueue) in
the job's own folder is read from its storage path with the service key (`storage_references`), so a
job that waited longer than its URL's hour still gets its reference.
"""
from __future__ import annotations

import copy
import functools
import math
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

import jsonschema

from configuration import job_types
from configuration.requests import schema_of
from configuration.requests.common import (
    DIALECT,
    END,
    NEGATIVE_PROMPT,
    SAFE_ID,
    STRENGTH,
    ValidationFailed,
    check,
    compiled_validator,
    field_error,
)
from configuration.requests.wan import limits as wan_limits
from configuration.settings import Settings

PIPELINES = ["txt2img", "img2img", "video"]
APP_REFERENCE_MODES = ["modify", "copy"]
VIDEO_REFERENCE_MODES = ["none", "single", "start", "end", "both"]
STORAGE_BUCKETS = ["workspace-temp", "user-library"]
# A reference is a URL (the app signs storage URLs for an hour) or, when signing failed, the raw
# storage path `<bucket>/<user_id>/...`, downloaded with the service key from the job's own folder.
APP_REFERENCE = {"type": "string", "minLength": 1, "maxLength": 14000000,
                 "pattern": "^(https?://|data:image/|(" + "|".join(STORAGE_BUCKETS) + ")/)",
                 "description": "http(s) URL (usually a signed storage URL), `data:image/...`, or a storage path "
                                "`workspace-temp/<user_id>/...` / `user-library/<user_id>/...`."}


@functools.cache
def _validator() -> jsonschema.Draft202012Validator:
    """The payload schema, compiled once: it is the same for every queued job."""
    return compiled_validator(schema())


def schema() -> dict:
    return {
        "$schema": DIALECT,
        "title": "Queued job payload of the OurVidz app",
        "type": "object",
        "required": ["type"],
        "anyOf": [{"required": ["id"]}, {"required": ["job_id"]}],
        "properties": {
            "id": SAFE_ID,
            "job_id": {**SAFE_ID, "description": "Must equal `id` when both are sent."},
            "type": {"type": "string",
                     "description": "`sdxl_image_fast`, `sdxl_image_high`, `video_fast`, `video_high`."},
            "job_type": {"type": "string", "maxLength": 200,
                         "description": "The raw type the browser chose (e.g. `wan_video_fast`); caller context."},
            "prompt": {"type": "string", "maxLength": 20000,
                       "description": "The final prompt; empty (or absent) only for an exact copy of a reference "
                                      "image."},
            "user_id": SAFE_ID,
            "negative_prompt": NEGATIVE_PROMPT,
            "compel_enabled": {"type": "boolean"},
            "compel_weights": {"type": "string", "maxLength": 20000},
            "quality": {"enum": ["fast", "high"],
                        "description": "A label; the type decides (a disagreement is noted)."},
            "format": {"enum": ["image", "video"],
                       "description": "A label; the type decides (a disagreement is noted)."},
            "content_type": {"enum": ["sfw", "nsfw"],
                             "description": "Content tier: a policy input, carried as caller context."},
            "config": {
                "type": "object",
                "description": "Generation parameters; what is not listed here is checked by the worker's schema.",
                "properties": {
                    "pipeline": {"enum": PIPELINES, "description": "A label: what runs follows from the references "
                                                                   "present (recorded with whether it agreed)."},
                    "num_images": {"type": "integer"},
                    "denoise_strength": {**STRENGTH, "description": "How far img2img moves from the reference; "
                                                                          "context when there is no reference."},
                    "resolution": {"type": "string", "pattern": "^[0-9]{1,5}x[0-9]{1,5}" + END},
                    "image": APP_REFERENCE,
                    "first_frame": APP_REFERENCE,
                    "last_frame": APP_REFERENCE,
                },
            },
            "metadata": {
                "type": "object",
                "description": "Every field the browser sent plus the app's reference fields. Fields that are not "
                               "parameters are the caller's own and are carried in the job metadata.",
                "properties": {
                    "reference_image_url": APP_REFERENCE,
                    "start_reference_url": APP_REFERENCE,
                    "end_reference_url": APP_REFERENCE,
                    "denoise_strength": STRENGTH,
                    "reference_strength": STRENGTH,
                    "exact_copy_mode": {"type": "boolean"},
                    "reference_mode": {"enum": APP_REFERENCE_MODES},
                    "video_reference_mode": {"enum": VIDEO_REFERENCE_MODES},
                },
            },
        },
    }


APP_SIZES = ("1024x1024", "1024x576", "576x1024")
# Placeholder models have small native sizes (configuration/models.json limits); 4 keeps every app
# size a whole multiple of 16 (WAN's VAE x patch stride) and of 8 (SDXL's VAE).
SIZE_DIVISOR = {"placeholder": 4, "synthetic": 1, "production": 1}

# Metadata fields that are generation parameters for each worker (the rest is the caller's context).
_METADATA_PARAMETERS = {
    "sdxl": ("reference_image_url", "denoise_strength", "reference_strength", "exact_copy_mode", "resize_policy"),
    "wan": ("reference_image_url", "start_reference_url", "end_reference_url", "denoise_strength",
            "reference_strength", "resize_policy"),
}
# WAN reference roles: (metadata field, legacy config field).
_WAN_ROLES = {"image": ("reference_image_url", "image"), "start": ("start_reference_url", "first_frame"),
              "end": ("end_reference_url", "last_frame")}
# Reference fields (body pointer) per worker.
_REFERENCES = {
    "sdxl": ("/metadata/reference_image_url",),
    "wan": ("/metadata/reference_image_url", "/metadata/start_reference_url", "/metadata/end_reference_url",
            "/config/image", "/config/first_frame", "/config/last_frame"),
}
_STORAGE_PATH = re.compile("^(" + "|".join(map(re.escape, STORAGE_BUCKETS)) + ")/(.+)$")
_SIGNED_PATH = re.compile("^/storage/v1/object/sign/(" + "|".join(map(re.escape, STORAGE_BUCKETS)) + ")/(.+)$")
_QUALITY = re.compile(r"_(fast|high)(?:_|$)")
_TOP_LEVEL = ("id", "job_id", "type", "job_type", "prompt", "user_id", "negative_prompt", "compel_enabled",
              "compel_weights", "quality", "format", "content_type", "config", "metadata")
_SECTIONS = ("config", "metadata")


@dataclass
class AppJob:
    job_id: str
    body: dict                                   # a POST /generate body for `worker`
    caller_context: dict                         # the app's own fields, carried in the job metadata
    size: dict | None = None                     # requested vs rendered size (jobs with config.resolution)
    notes: dict = field(default_factory=dict)    # how the payload was read: pipeline, fields not applied and why
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

    def context(self, app_field: str, value: Any, reason: str | None = None) -> None:
        """Keep the app's field `app_field` (a JSON pointer) as context, with why it was not applied."""
        parts = app_field.strip("/").split("/")
        target = self.caller_context
        for part in parts[:-1]:
            target = target.setdefault(part, {})
        target[parts[-1]] = value
        if reason:
            self.notes.setdefault("not_applied", {})[app_field] = reason


def without_nulls(payload: dict) -> dict:
    """A copy of `payload` without the `null` fields at the top level and in `config` / `metadata`: the app
    writes `null` for an absent value (`start_reference_url: null`, `project_id: null`)."""
    result = {k: copy.deepcopy(v) for k, v in payload.items() if v is not None}
    for section in _SECTIONS:
        if isinstance(result.get(section), dict):
            result[section] = {k: v for k, v in result[section].items() if v is not None}
    return result


def from_app_payload(worker: str, payload: Any, settings: Settings) -> AppJob:
    """Map one queued payload for `worker` ("sdxl" or "wan"): any decoded JSON value, which the app payload
    schema checks first. Raises ValidationFailed naming the app's fields."""
    if isinstance(payload, dict):
        payload = without_nulls(payload)
    check(_validator(), payload)
    job_id = payload.get("id") or payload["job_id"]
    if "id" in payload and "job_id" in payload and payload["id"] != payload["job_id"]:
        raise field_error("/job_id", f"must equal id ({payload['id']!r}): both name the one job")
    config = dict(payload.get("config", {}))
    metadata = dict(payload.get("metadata", {}))
    job = AppJob(job_id=job_id, body={"id": job_id, "type": payload["type"], "prompt": payload.get("prompt", "")},
                 caller_context={})
    if "user_id" in payload:
        job.body["user_id"] = payload["user_id"]
    for name in [k for k in payload if k not in _TOP_LEVEL]:
        job.context(f"/{name}", payload[name], "not a field of the app's queued payload this pod knows")
    preset = job_types().get(payload["type"])
    output = str(preset.get("output", "image")) if preset else None
    _labels(payload, output, job)
    if "content_type" in payload:  # the content tier (docs/POLICY.md), held at admission as /generate's is
        job.body["content_tier"] = payload["content_type"]
        job.paths["/content_tier"] = "/content_type"

    _top_level_prompt_fields(worker, payload, config, job)
    if worker == "wan":
        _wan_frames_win(config, metadata, job)
    has_reference = _has_reference(worker, config, metadata)
    _pipeline(payload, worker, output, has_reference, job)
    _strengths(config, metadata, has_reference, job)
    _config_fields(worker, config, job, settings)
    _metadata_fields(worker, metadata, has_reference, job)
    _unknown_config_fields(worker, config, job, settings)
    if config:
        job.body["config"] = config
    if metadata:
        job.body["metadata"] = metadata
    references = _references(worker, job)
    _check_prompt(worker, references, job)
    _storage_references(payload.get("user_id"), references, job, settings)
    return job


def _labels(payload: dict, output: str | None, job: AppJob) -> None:
    """`job_type`, `quality`, `format`, `content_type`: the caller's labels, kept as context; the type decides."""
    for name in ("job_type", "quality", "format", "content_type"):
        if name in payload:
            job.caller_context[name] = payload[name]
    if output is None:  # an unknown or other worker's type is refused by the worker's schema (/type)
        return
    quality = _QUALITY.search(payload["type"])
    if "quality" in payload and quality and quality.group(1) != payload["quality"]:
        job.notes.setdefault("not_applied", {})["/quality"] = (
            f"contradicts type {payload['type']!r}: the type decides (a {quality.group(1)} job)")
    if "format" in payload and payload["format"] != output:
        produces = "a video" if output == "video" else "an image"
        job.notes.setdefault("not_applied", {})["/format"] = (
            f"contradicts type {payload['type']!r}: the type decides (it produces {produces})")


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
        else:
            job.context(f"/{name}", payload[name],
                        "prompt weighting (compel) is an SDXL option; WAN does not use it" if payload[name] else None)


def _wan_frames_win(config: dict, metadata: dict, job: AppJob) -> None:
    """A general reference next to different start/end frames: the frames condition the video, the general
    reference is kept as context (the app sends both when a user gives a reference and another start frame)."""
    frames = {metadata.get(m) or config.get(c) for m, c in (_WAN_ROLES["start"], _WAN_ROLES["end"])} - {None}
    if not frames:
        return
    for section, name in (("metadata", "reference_image_url"), ("config", "image")):
        source = metadata if section == "metadata" else config
        if name in source and source[name] not in frames:
            job.context(f"/{section}/{name}", source.pop(name),
                        "start/end frames are given: the frames condition the video, this reference is context")


def _has_reference(worker: str, config: dict, metadata: dict) -> bool:
    if worker == "sdxl":
        return bool(metadata.get("reference_image_url"))
    return any(metadata.get(m) or config.get(c) for m, c in _WAN_ROLES.values())


def _pipeline(payload: dict, worker: str, output: str | None, has_reference: bool, job: AppJob) -> None:
    """`config.pipeline` is a label: what runs follows from the references. Recorded, with whether it agreed."""
    label = payload.get("config", {}).get("pipeline")
    if output == "video" or (worker == "wan" and output is None):
        ran = "img2img" if has_reference else "video"
        what = "video conditioned on reference frames" if has_reference else "text to video"
    else:
        ran = "img2img" if has_reference else "txt2img"
        what = "image to image" if has_reference else "text to image"
    job.notes["pipeline"] = {"label": label, "ran": ran, "what": what, "label_agrees": label in (None, ran)}
    if label is not None:
        job.caller_context.setdefault("config", {})["pipeline"] = label


def _strengths(config: dict, metadata: dict, has_reference: bool, job: AppJob) -> None:
    """`denoise_strength` / `reference_strength` apply only with a reference; without one they are context."""
    if "denoise_strength" in config:
        value = config.pop("denoise_strength")
        if not has_reference:
            job.context("/config/denoise_strength", value, "no reference image to apply it to")
        else:
            if "denoise_strength" in metadata and metadata["denoise_strength"] != value:
                job.context("/metadata/denoise_strength", metadata["denoise_strength"],
                            "differs from config.denoise_strength, which the app resolved and the pod applies")
            metadata["denoise_strength"] = value
            job.paths["/metadata/denoise_strength"] = "/config/denoise_strength"
    for name in ("denoise_strength", "reference_strength"):
        if name in metadata and not has_reference:
            job.context(f"/metadata/{name}", metadata.pop(name), "no reference image to apply it to")
    if "reference_strength" in metadata and "denoise_strength" in metadata:
        # The app computes denoise_strength (its copy/modify defaults, user overrides) and sends the
        # browser's reference_strength beside it: denoise_strength is the parameter.
        job.context("/metadata/reference_strength", metadata.pop("reference_strength"))


def _config_fields(worker: str, config: dict, job: AppJob, settings: Settings) -> None:
    config.pop("pipeline", None)  # a label (see _pipeline)
    if worker == "wan":
        if "num_images" in config:
            value = config.pop("num_images")
            job.context("/config/num_images", value, None if value == 1 else "a WAN job produces one video")
        if "num_inference_steps" in config:
            steps = config.pop("num_inference_steps")
            for other in ("steps", "sample_steps"):
                if other in config and config[other] != steps:
                    raise field_error("/config/num_inference_steps", f"conflicts with config.{other}")
            config.setdefault("steps", steps)
            job.paths["/config/steps"] = "/config/num_inference_steps"
    if "resolution" in config:
        _size(worker, config, job, settings)


def _size(worker: str, config: dict, job: AppJob, settings: Settings) -> None:
    requested = config.pop("resolution")
    width, height = (int(v) for v in requested.split("x"))
    for name in ("width", "height"):
        if name in config:
            raise field_error(f"/config/{name}", "is given together with config.resolution")
    if width < 1 or height < 1:
        raise field_error("/config/resolution", f"{requested} is not a size")
    if worker == "wan" and settings.app_video_size == "native":
        bounds = wan_limits(settings)
        rendered = native_size_class(width, height, bounds["native_size"], bounds["multiple"])
        native = "x".join(map(str, bounds["native_size"]))
        reason = (f"the app's resolution is an aspect request: rendered at the model's native size class "
                  f"({native} landscape, its transpose, or a square of the same pixel budget; APP_VIDEO_SIZE=native)")
        job.size = {"requested": requested, "rendered": "x".join(map(str, rendered)), "reason": reason}
    else:
        divisor = SIZE_DIVISOR[settings.model_profile]
        if width % divisor or height % divisor:
            raise field_error("/config/resolution", f"{requested} cannot be scaled by 1/{divisor} on the placeholder "
                                                    f"profile (sizes the app sends: {', '.join(APP_SIZES)})")
        rendered = (width // divisor, height // divisor)
        job.size = {"requested": requested, "rendered": f"{rendered[0]}x{rendered[1]}"}
        if divisor != 1:
            job.size.update(scale=1 / divisor, reason=f"the placeholder profile renders the app's sizes scaled down "
                                                      f"by {divisor}, aspect kept")
        else:
            job.size["reason"] = "rendered as requested"
    config["width"], config["height"] = rendered
    job.paths["/config/width"] = job.paths["/config/height"] = "/config/resolution"


def native_size_class(width: int, height: int, native: list[int] | tuple[int, int], multiple: int) -> tuple[int, int]:
    """The member of the model's native size class with the requested orientation: the native size
    (landscape) for a landscape request, its transpose for a portrait one, and for a square the square of
    the same pixel budget (the side, a multiple of `multiple`, whose area is nearest; ties go down)."""
    long_side, short_side = max(native), min(native)
    if width > height:
        return long_side, short_side
    if width < height:
        return short_side, long_side
    budget = long_side * short_side
    low = max(multiple, math.isqrt(budget) // multiple * multiple)
    side = min((low, low + multiple), key=lambda s: (abs(s * s - budget), s))
    return side, side


def _metadata_fields(worker: str, metadata: dict, has_reference: bool, job: AppJob) -> None:
    exact_copy = metadata.get("exact_copy_mode")
    mode = metadata.get("reference_mode")
    if mode is not None:
        job.context("/metadata/reference_mode", metadata.pop("reference_mode"))
        if exact_copy is not None and (mode == "copy") != exact_copy:
            job.notes.setdefault("not_applied", {})["/metadata/reference_mode"] = (
                f"{mode!r} contradicts exact_copy_mode={exact_copy!r}: exact_copy_mode decides")
        elif exact_copy is None and worker == "sdxl" and has_reference:
            metadata["exact_copy_mode"] = mode == "copy"
            job.paths["/metadata/exact_copy_mode"] = "/metadata/reference_mode"
    if "exact_copy_mode" in metadata and (worker == "wan" or not has_reference):
        # Without a reference there is nothing to copy; WAN has no exact-copy pipeline (the app expresses copy
        # mode through the parameters it sets: denoise_strength -> conditioning scale, guidance_scale).
        value = metadata.pop("exact_copy_mode")
        reason = None
        if value:
            reason = "WAN has no exact-copy mode" if worker == "wan" else "no reference image to copy"
        job.context("/metadata/exact_copy_mode", value, reason)
    if "video_reference_mode" in metadata:
        # A label: WAN derives the mode from the frames present (start + end -> both, start, end, a general
        # reference alone -> single).
        job.context("/metadata/video_reference_mode", metadata.pop("video_reference_mode"))
    parameters = _METADATA_PARAMETERS[worker]
    for name in [k for k in metadata if k not in parameters]:
        job.context(f"/metadata/{name}", metadata.pop(name))


def _unknown_config_fields(worker: str, config: dict, job: AppJob, settings: Settings) -> None:
    known = schema_of(f"{worker}.generate", settings)["properties"]["config"]["properties"]
    for name in [k for k in config if k not in known]:
        job.context(f"/config/{name}", config.pop(name), f"not a parameter of the {worker.upper()} worker")


def _references(worker: str, job: AppJob) -> dict[str, str]:
    """body pointer -> reference value, for every reference the mapped body carries."""
    found = {}
    for pointer in _REFERENCES[worker]:
        _, section, name = pointer.split("/")
        value = job.body.get(section, {}).get(name)
        if value:
            found[pointer] = value
    return found


def _check_prompt(worker: str, references: dict, job: AppJob) -> None:
    if job.body["prompt"].strip():
        return
    exact_copy = worker == "sdxl" and job.body.get("metadata", {}).get("exact_copy_mode") is True
    if not (exact_copy and references):
        raise field_error("/prompt", "is empty or missing; only an exact copy (exact_copy_mode with a reference "
                                     "image) runs without a prompt")
    job.body["prompt"] = ""


def _storage_references(user_id: str | None, references: dict, job: AppJob, settings: Settings) -> None:
    for pointer, value in references.items():
        app_field = job.app_path(pointer)
        match = _STORAGE_PATH.match(value)
        if not match:
            signed = _signed_storage_path(value, settings.supabase_url)
            if signed and user_id and signed[1].startswith(f"{user_id}/") and not _dot_segments(signed[1]):
                # A signed URL of the project's own storage expires an hour after enqueue: read the object from
                # its storage path with the service key (the job's own folder only), whenever the job runs.
                job.storage_references[pointer] = signed
            continue
        bucket, path = match.groups()
        if not user_id:
            raise field_error(app_field, "a storage path reference needs the job's user_id")
        if not path.startswith(f"{user_id}/") or _dot_segments(path):
            raise field_error(app_field, f"storage path must lie in the job's own folder ({bucket}/{user_id}/...)")
        job.storage_references[pointer] = (bucket, path)


def _dot_segments(path: str) -> bool:
    """`.` or `..` segments, also percent-encoded (`%2e%2e`): the storage client refuses such keys (a
    ValueError, which was an internal error), and they could leave the job's own folder."""
    return any(segment in (".", "..") for segment in unquote(unquote(path)).split("/"))


def _signed_storage_path(url: str, supabase_url: str) -> tuple[str, str] | None:
    """(bucket, object path) of a signed URL of the project at `supabase_url`, else None."""
    if not supabase_url or not url.startswith(("http://", "https://")):
        return None
    project, parts = urlsplit(supabase_url.rstrip("/")), urlsplit(url)
    if (parts.scheme, parts.netloc.lower()) != (project.scheme, project.netloc.lower()):
        return None
    prefix = project.path.rstrip("/")
    if not parts.path.startswith(prefix + "/"):
        return None
    match = _SIGNED_PATH.match(parts.path[len(prefix):])
    if not match or "token=" not in parts.query:
        return None
    return match.group(1), unquote(match.group(2))
