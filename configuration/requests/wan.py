"""The WAN worker's request (`wan.generate`: text-to-video, image jobs, reference-frame modes): bounds,
cross-field rules and the conversion to the engine's parameters in one model.

Legacy names (`frame_num`, `sample_steps`, `sample_guide_scale`, `config.image`, `config.first_frame`,
`config.last_frame`) map onto the canonical ones; two different values for one parameter is a 400. Frames are
rounded to 4k+1 (the Wan VAE's temporal stride) and both counts are kept. Several rules depend on the job type's
preset (its output, whether it asks for enhancement) and on the profile's defaults (guidance decides whether a
negative prompt means anything), so the model validates with the settings in its validation context
(`configuration.requests.check`).
"""
from __future__ import annotations

import functools
import math
from typing import Annotated, Any, NotRequired, TypedDict

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationInfo, create_model, model_validator

from configuration import ConfigurationError, job_types, model_config, preset_defaults
from configuration.requests.common import (
    CONTENT_TIER,
    GENERATION_SEED,
    NEGATIVE_PROMPT,
    PROMPT,
    REFERENCE_URL,
    SAFE_ID,
    STRENGTH,
    field_error,
    reduce_seed,
    resolve_seed,
    size_schemas,
)
from configuration.requests.fields import OPEN_OBJECT, STRICT_OBJECT, Schema
from configuration.settings import Settings

REFERENCE_MODES = ["none", "single", "start", "end", "both"]
# Wan's own two solvers (`--sample_solver` of the Wan repository); the engine maps each to a scheduler.
SAMPLE_SOLVERS = ["unipc", "dpm++"]
MIN_VIDEO_FRAMES = 5
_REFERENCE_FIELDS = {"reference_image_url", "start_reference_url", "end_reference_url", "reference_strength",
                     "denoise_strength", "resize_policy", "exact_copy_mode"}
# role -> (canonical metadata field, legacy config field)
_URL_FIELDS = {"image": ("reference_image_url", "image"),
               "start": ("start_reference_url", "first_frame"),
               "end": ("end_reference_url", "last_frame")}


class WanReference(TypedDict):
    mode: str                   # single | start | end | both
    first_url: str | None
    last_url: str | None
    conditioning_scale: float
    strength_source: str        # reference_strength | denoise_strength | preset
    resize_policy: str          # center_crop | letterbox
    source_field: str           # the request field that chose the mode (error paths)


class WanParams(TypedDict):
    """What the WAN engine runs with: every value within the schema's bounds, defaults applied."""
    job_type: str
    output: str                 # image | video
    prompt: str
    negative_prompt: str | None  # None when guidance is off
    steps: int
    guidance_scale: float
    width: int
    height: int
    frames_requested: int
    frames: int                 # 4k+1
    fps: float | None           # None for an image
    sample_solver: str
    seed: int
    seed_source: str
    seed_requested: NotRequired[int]   # the caller's seed when it was reduced to the generators' range
    reference: WanReference | None
    caller_metadata: dict


def limits(settings: Settings) -> dict:
    """What every WAN model of this profile accepts: a job may run on wan_t2v or wan_vace."""
    each = [model_config(m, settings)["limits"] for m in ("wan_t2v", "wan_vace")]
    multiple = math.lcm(*(lim["multiple"] for lim in each))
    native = {tuple(lim["native_size"]) for lim in each}
    if len(native) != 1:  # one family, trained at one size: the app's sizes must not depend on the model picked
        raise ConfigurationError(f"wan_t2v and wan_vace disagree on native_size in configuration/models.json: {native}")
    return {"min_size": max(lim["min_size"] for lim in each), "max_size": min(lim["max_size"] for lim in each),
            "multiple": multiple, "max_frames": min(lim["max_frames"] for lim in each),
            "native_size": list(native.pop())}


def max_requested_frames(max_frames: int) -> int:
    """The largest frame count up to max_frames whose 4k+1 rounding (`normalise_frames`) stays within
    max_frames (max_frames itself when it is of the form 4k+1)."""
    return min(max_frames, (max_frames - 1) // 4 * 4 + 3)


def normalise_frames(requested: int) -> int:
    """The frame count Wan can produce: 4k+1, the nearest to `requested` (ties go down, as diffusers rounds)."""
    return max(1, requested // 4 * 4 + 1)


STEPS = {"type": "integer", "minimum": 1, "maximum": 100}
GUIDANCE = {"type": "number", "minimum": 0.0, "maximum": 20.0,
            "description": "Classifier-free guidance; at 1 or below it is off and no negative prompt is used."}
RULES = ("Cross-field rules (refused with 400 at the first field named): `*_enhanced` types are refused (the "
         "orchestrator enhances); `config.enhance_prompt: true` is refused; `config.content_type` must match the "
         "type's output; `width`/`height` must agree with `resolution`; each legacy alias must agree with its "
         "canonical field; an image job has exactly 1 frame and no `fps`, a video at least 5 frames; "
         "`negative_prompt` needs guidance above 1; the references given must match `reference_mode` (derived "
         "from them when absent) and `both` needs a video; `metadata.exact_copy_mode` is refused (SDXL only); "
         "strengths and `resize_policy` need a reference; `denoise_strength` must equal 1 - `reference_strength` "
         "when both are sent.")


class WanConfig(BaseModel):
    """Generation parameters; the size and frame fields are added per profile (`wan_request`)."""
    model_config = STRICT_OBJECT

    frames: int | None = None
    frame_num: int | None = None
    steps: Annotated[int | None, Schema(STEPS)] = None
    sample_steps: Annotated[int | None, Schema(STEPS, description="Legacy alias of `steps`.")] = None
    guidance_scale: Annotated[float | None, Schema(GUIDANCE)] = None
    sample_guide_scale: Annotated[float | None, Schema(GUIDANCE,
                                                       description="Legacy alias of `guidance_scale`.")] = None
    width: int | None = None
    height: int | None = None
    resolution: str | None = None
    seed: Annotated[int | None, Schema(GENERATION_SEED)] = None
    negative_prompt: Annotated[str | None, Schema(NEGATIVE_PROMPT)] = None
    fps: Annotated[float | None, Schema({"type": "number", "minimum": 1, "maximum": 60, "description":
                                         "Playback rate of the MP4; duration_seconds = frames / fps."})] = None
    sample_solver: Annotated[str | None, Schema({"enum": SAMPLE_SOLVERS, "description": "`unipc` (UniPC multistep, "
                                                 "the default) or `dpm++` (DPM-Solver++)."})] = None
    reference_mode: Annotated[str | None, Schema({"enum": REFERENCE_MODES, "description": "Derived from the "
                                                  "references given when absent: start + end -> both, start -> "
                                                  "start, end -> end, reference_image_url -> single."})] = None
    image: Annotated[str | None, Schema(REFERENCE_URL,
                                        description="Legacy alias of metadata.reference_image_url.")] = None
    first_frame: Annotated[str | None, Schema(REFERENCE_URL,
                                              description="Legacy alias of metadata.start_reference_url.")] = None
    last_frame: Annotated[str | None, Schema(REFERENCE_URL,
                                             description="Legacy alias of metadata.end_reference_url.")] = None
    content_type: Annotated[str | None, Schema({"enum": ["image", "video"], "description": "Legacy; must agree "
                                                "with the job type's output."})] = None
    enhance_prompt: Annotated[bool | None, Schema({"type": "boolean", "description": "Legacy. `true` is refused "
                                                   "here (400): prompt enhancement runs on the orchestrator (POST "
                                                   "/jobs)."})] = None


class WanMetadata(BaseModel):
    """Reference-frame parameters; any other key is the caller's own, echoed back with the job."""
    model_config = ConfigDict(**OPEN_OBJECT, json_schema_extra={
        "description": "Reference-frame parameters. Other keys are the caller's own and are echoed back in the job "
                       "metadata."})

    reference_image_url: Annotated[str | None, Schema(
        REFERENCE_URL, description="The one reference of `single` (first frame).")] = None
    start_reference_url: Annotated[str | None, Schema(
        REFERENCE_URL, description="First-frame reference (`start`, `both`).")] = None
    end_reference_url: Annotated[str | None, Schema(
        REFERENCE_URL, description="Last-frame reference (`end`, `both`).")] = None
    reference_strength: Annotated[float | None, Schema(
        STRENGTH, exclusiveMinimum=0.0, description="How strongly the reference frames condition the video: the "
                                                    "VACE conditioning_scale.")] = None
    denoise_strength: Annotated[float | None, Schema(
        STRENGTH, exclusiveMaximum=1.0, description="Legacy: conditioning_scale = 1 - denoise_strength.")] = None
    resize_policy: Annotated[str | None, Schema({"enum": ["center_crop", "letterbox"]})] = None


class WanRequest(BaseModel):
    """Body of POST /generate on the WAN worker (and of a queued WAN job, once translated)."""
    model_config = ConfigDict(**STRICT_OBJECT, title="WAN generation job", json_schema_extra={"description": RULES})

    id: Annotated[str | None, Schema(SAFE_ID)] = None
    type: str
    prompt: Annotated[str, Schema(PROMPT)]
    user_id: Annotated[str | None, Schema(SAFE_ID)] = None
    content_tier: Annotated[str | None, Schema(CONTENT_TIER)] = None
    config: WanConfig = Field(default_factory=WanConfig)
    metadata: WanMetadata = Field(default_factory=WanMetadata)
    # What the cross-field rules resolved (everything but the seed), for to_params
    _resolved: dict = PrivateAttr(default_factory=dict)

    @model_validator(mode="after")
    def _agree(self, info: ValidationInfo) -> WanRequest:
        """The cross-field rules, in the order the contract reports them (the first one broken is the answer);
        what they resolve is kept for `to_params`."""
        settings = (info.context or {}).get("settings")
        if not isinstance(settings, Settings):
            raise TypeError("WanRequest validates with the settings in its context (configuration.requests.check)")
        config, metadata = self.config, self.metadata
        self._resolved = _resolve(self.type, {name: getattr(config, name) for name in config.model_fields_set},
                                  {**{name: getattr(metadata, name) for name in metadata.model_fields_set},
                                   **(metadata.model_extra or {})}, settings)
        return self

    def to_params(self, settings: Settings) -> WanParams:
        """The engine's parameters: the resolved values (presets of the job type and `settings`' profile, which
        the request was validated with) and the seed."""
        params: Any = dict(self._resolved)
        if params.pop("profile") != settings.model_profile:
            raise ValueError(f"validated for profile {self._resolved['profile']}, not {settings.model_profile}")
        params["prompt"] = self.prompt
        seed = self.config.seed
        params["seed"], params["seed_source"] = (reduce_seed(seed), "request") if seed is not None \
            else resolve_seed({})
        if seed is not None and seed != params["seed"]:
            params["seed_requested"] = seed
        return params


def _resolve(job_type: str, config: dict, metadata: dict, settings: Settings) -> dict:
    preset = job_types("wan")[job_type]
    if preset["enhance"]:
        raise field_error("/type", f"{job_type} asks for prompt enhancement, which the orchestrator does "
                                   f"(POST /jobs on the orchestrator); send {preset['base_type']} to the worker")
    defaults = preset_defaults(job_type, settings)
    output = preset["output"]
    if config.get("enhance_prompt"):
        raise field_error("/config/enhance_prompt", "the WAN worker does not enhance prompts; the orchestrator does "
                                                    "(POST /jobs), then sends the enhanced prompt here")
    if "content_type" in config and config["content_type"] != output:
        raise field_error("/config/content_type", f"{job_type} produces {output!r}, not {config['content_type']!r}")
    width, height = _size(config, defaults)
    steps = _aliased(config, "steps", "sample_steps")
    guidance = _aliased(config, "guidance_scale", "sample_guide_scale")
    guidance = float(defaults["guidance_scale"] if guidance is None else guidance)
    frames_requested, frames = _frames(config, defaults, output)
    negative_prompt = config.get("negative_prompt", defaults["negative_prompt"])
    if guidance <= 1.0:
        if "negative_prompt" in config:
            raise field_error("/config/negative_prompt", "has no effect when guidance_scale <= 1 (guidance is off)")
        negative_prompt = None
    return {
        "job_type": job_type, "output": output, "negative_prompt": negative_prompt,
        "steps": int(defaults["steps"] if steps is None else steps), "guidance_scale": guidance,
        "width": width, "height": height, "frames_requested": frames_requested, "frames": frames,
        "fps": _fps(config, defaults, output),
        "sample_solver": config.get("sample_solver", defaults["sample_solver"]),
        "reference": _reference(config, metadata, preset, frames),
        "caller_metadata": {k: v for k, v in metadata.items() if k not in _REFERENCE_FIELDS},
        "profile": settings.model_profile,
    }


def _aliased(config: dict, canonical: str, legacy: str) -> Any:
    """The value of `canonical` or its legacy alias (None when neither is given); two different values is an
    error at the alias."""
    if canonical in config and legacy in config and config[canonical] != config[legacy]:
        raise field_error(f"/config/{legacy}", f"conflicts with {canonical}={config[canonical]!r}")
    return config[canonical] if canonical in config else config.get(legacy)


def _size(config: dict, defaults: Any) -> tuple[int, int]:
    width, height = config.get("width"), config.get("height")
    if "resolution" in config:
        r_width, r_height = (int(v) for v in config["resolution"].split("x"))
        for name, value, other in (("width", width, r_width), ("height", height, r_height)):
            if value is not None and value != other:
                raise field_error(f"/config/{name}", f"conflicts with resolution {config['resolution']!r}")
        width, height = r_width, r_height
    return int(defaults["width"] if width is None else width), int(defaults["height"] if height is None else height)


def _frames(config: dict, defaults: Any, output: str) -> tuple[int, int]:
    requested = _aliased(config, "frames", "frame_num")
    path = "/config/frames" if "frames" in config else "/config/frame_num"
    requested = int(defaults["frames"] if requested is None else requested)
    frames = normalise_frames(requested)
    if output == "image" and requested != 1:
        raise field_error(path, "an image job produces exactly one frame; use a video_* type for more")
    if output == "video" and requested < MIN_VIDEO_FRAMES:
        raise field_error(path, f"a video has at least {MIN_VIDEO_FRAMES} frames; use an image_* type for one frame")
    return requested, frames


def _fps(config: dict, defaults: Any, output: str) -> float | None:
    if output == "image":
        if "fps" in config:
            raise field_error("/config/fps", "an image job has no playback rate; use a video_* type")
        return None
    return config.get("fps", defaults["fps"])


def _urls(config: dict, metadata: dict) -> dict[str, tuple[str, str]]:
    """role -> (url, field path) for every reference given, legacy config fields folded in."""
    urls: dict[str, tuple[str, str]] = {}
    for role, (canonical, legacy) in _URL_FIELDS.items():
        new, old = metadata.get(canonical), config.get(legacy)
        if new and old and new != old:
            raise field_error(f"/config/{legacy}", f"conflicts with metadata.{canonical}")
        url = new or old
        if url:
            urls[role] = (url, f"/metadata/{canonical}" if new else f"/config/{legacy}")
    return urls


def _reference(config: dict, metadata: dict, preset: Any, frames: int) -> WanReference | None:
    if "exact_copy_mode" in metadata:
        raise field_error("/metadata/exact_copy_mode", "is an SDXL image-to-image option; WAN has no exact-copy mode")
    urls = _urls(config, metadata)
    mode = config.get("reference_mode")
    mode_path = "/config/reference_mode"
    if mode is None:
        mode = _derived_mode(urls)
        mode_path = next(iter(urls.values()))[1] if urls else mode_path
    if mode == "none":
        for name in ("reference_strength", "denoise_strength", "resize_policy"):
            if name in metadata:
                raise field_error(f"/metadata/{name}", "needs a reference image (metadata.reference_image_url, "
                                                       "start_reference_url or end_reference_url)")
        for _url, path in urls.values():
            raise field_error(path, "is not used with reference_mode none")
        return None
    first = last = None
    if mode in ("single", "start", "both"):
        first = _pick(urls, ("start", "image") if mode != "single" else ("image", "start"), mode)
    if mode in ("end", "both"):
        last = _pick(urls, ("end",) if mode == "both" else ("end", "image"), mode)
    used = {u[0] for u in (first, last) if u}
    for url, path in urls.values():
        if url not in used:
            raise field_error(path, f"is not used with reference_mode {mode}")
    if mode == "both" and frames < 2:
        raise field_error(mode_path, "an image job has one frame; `both` needs a first and a last frame")
    scale, source = _conditioning_scale(metadata, preset)
    return {"mode": mode, "first_url": first[0] if first else None, "last_url": last[0] if last else None,
            "conditioning_scale": scale, "strength_source": source,
            "resize_policy": metadata.get("resize_policy", preset["reference"]["resize_policy"]),
            "source_field": mode_path}


def _derived_mode(urls: dict) -> str:
    if "image" in urls and ("start" in urls or "end" in urls) and \
            urls["image"][0] not in {urls.get("start", ("",))[0], urls.get("end", ("",))[0]}:
        raise field_error(urls["image"][1], "ambiguous with start/end references; set config.reference_mode")
    if "start" in urls and "end" in urls:
        return "both"
    if "start" in urls:
        return "start"
    if "end" in urls:
        return "end"
    return "single" if "image" in urls else "none"


def _pick(urls: dict, roles: tuple[str, ...], mode: str) -> tuple[str, str]:
    found = [urls[r] for r in roles if r in urls]
    if not found:
        canonical = [f"metadata.{_URL_FIELDS[r][0]}" for r in roles]
        raise field_error(f"/metadata/{_URL_FIELDS[roles[0]][0]}", f"reference_mode {mode} needs "
                                                                   f"{' or '.join(canonical)}")
    for url, path in found[1:]:
        if url != found[0][0]:
            raise field_error(path, f"conflicts with {found[0][1]} for reference_mode {mode}")
    return found[0]


def _conditioning_scale(metadata: dict, preset: Any) -> tuple[float, str]:
    """VACE conditioning_scale: reference_strength itself, or 1 - denoise_strength (legacy), else the preset."""
    if "reference_strength" in metadata and "denoise_strength" in metadata:
        if abs(metadata["reference_strength"] - (1 - metadata["denoise_strength"])) > 1e-6:
            raise field_error("/metadata/denoise_strength", "conflicts with reference_strength (reference = 1 - "
                                                            "denoise)")
    if "reference_strength" in metadata:
        return float(metadata["reference_strength"]), "reference_strength"
    if "denoise_strength" in metadata:
        return 1.0 - float(metadata["denoise_strength"]), "denoise_strength"
    return float(preset["reference"]["conditioning_scale"]), "preset"


@functools.lru_cache(maxsize=8)
def _request_for_limits(min_size: int, max_size: int, multiple: int, max_frames: int) -> type[WanRequest]:
    size, resolution = size_schemas({"min_size": min_size, "max_size": max_size, "multiple": multiple})
    frames = {"type": "integer", "minimum": 1, "maximum": max_requested_frames(max_frames),
              "description": f"Frames to generate; rounded to the nearest 4k+1 (ties down), at most {max_frames} "
                             "after rounding; both counts reported. Image jobs: 1. Videos: at least 5."}
    # (annotations built at run time: typed Any, as create_model takes them)
    size_type: Any = Annotated[int | None, Schema(size)]
    frames_type: Any = Annotated[int | None, Schema(frames)]
    legacy_frames_type: Any = Annotated[int | None, Schema(frames, description="Legacy alias of `frames`.")]
    resolution_type: Any = Annotated[str | None, Schema(resolution)]
    config = create_model("WanConfig", __base__=WanConfig, frames=(frames_type, None),
                          frame_num=(legacy_frames_type, None), width=(size_type, None), height=(size_type, None),
                          resolution=(resolution_type, None))
    type_type: Any = Annotated[str, Schema({
        "enum": sorted(job_types("wan")),
        "description": "`image_*` produce one PNG, `video_*` an MP4. The legacy `*_enhanced` types ask for prompt "
                       "enhancement, which the orchestrator does: the worker answers 400."})]
    return create_model("WanRequest", __base__=WanRequest, type=(type_type, ...),
                        config=(config, Field(default_factory=config)))


def wan_request(settings: Settings) -> type[WanRequest]:
    """The WAN request model of this profile (its size and frame bounds), built once per profile
    (`configuration.requests.request_model` keeps it)."""
    bounds = limits(settings)
    return _request_for_limits(int(bounds["min_size"]), int(bounds["max_size"]), int(bounds["multiple"]),
                               int(bounds["max_frames"]))
