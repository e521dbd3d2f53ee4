"""WAN request body -> internal parameters.

Legacy names (`frame_num`, `sample_steps`, `sample_guide_scale`, `config.image`, `config.first_frame`,
`config.last_frame`) map onto the canonical ones; two different values for one parameter is a 400.
Frames are rounded to 4k+1 (the Wan VAE's temporal stride) and both counts are kept.
"""
from __future__ import annotations

from typing import NotRequired, TypedDict

from configuration import job_types, preset_defaults
from configuration.params.common import aliased, caller_metadata, given, requested_seed, resolve_seed, resolve_size
from configuration.schemas.common import field_error
from configuration.settings import Settings

_REFERENCE_FIELDS = {"reference_image_url", "start_reference_url", "end_reference_url", "reference_strength",
                     "denoise_strength", "resize_policy", "exact_copy_mode"}
# (canonical metadata field, legacy config field)
_URL_FIELDS = {"image": ("reference_image_url", "image"),
               "start": ("start_reference_url", "first_frame"),
               "end": ("end_reference_url", "last_frame")}
MIN_VIDEO_FRAMES = 5


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


def normalise_frames(requested: int) -> int:
    """The frame count Wan can produce: 4k+1, the nearest to `requested` (ties go down, as diffusers rounds)."""
    return max(1, requested // 4 * 4 + 1)


def normalise(body: dict, settings: Settings) -> WanParams:
    job_type = body["type"]
    preset = job_types("wan")[job_type]
    if preset["enhance"]:
        raise field_error("/type", f"{job_type} asks for prompt enhancement, which the orchestrator does "
                                   f"(POST /jobs on the orchestrator); send {preset['base_type']} to the worker")
    defaults = preset_defaults(job_type, settings)
    config = body.get("config", {})
    metadata = body.get("metadata", {})
    output = preset["output"]

    if config.get("enhance_prompt"):
        raise field_error("/config/enhance_prompt", "the WAN worker does not enhance prompts; the orchestrator does "
                                                    "(POST /jobs), then sends the enhanced prompt here")
    if "content_type" in config and config["content_type"] != output:
        raise field_error("/config/content_type", f"{job_type} produces {output!r}, not {config['content_type']!r}")

    width, height = resolve_size(config, defaults)
    seed, seed_source = resolve_seed(config)
    steps = aliased(config, "steps", ("sample_steps",), "/config")
    guidance = aliased(config, "guidance_scale", ("sample_guide_scale",), "/config")
    guidance = float(guidance if given(guidance) else defaults["guidance_scale"])
    frames_requested, frames = _frames(config, defaults, output)

    negative_prompt = config.get("negative_prompt", defaults["negative_prompt"])
    if guidance <= 1.0:
        if "negative_prompt" in config:
            raise field_error("/config/negative_prompt", "has no effect when guidance_scale <= 1 (guidance is off)")
        negative_prompt = None

    params: WanParams = {
        "job_type": job_type,
        "output": output,
        "prompt": body["prompt"],
        "negative_prompt": negative_prompt,
        "steps": int(steps if given(steps) else defaults["steps"]),
        "guidance_scale": guidance,
        "width": width,
        "height": height,
        "frames_requested": frames_requested,
        "frames": frames,
        "fps": _fps(config, defaults, output),
        "sample_solver": config.get("sample_solver", defaults["sample_solver"]),
        "seed": seed,
        "seed_source": seed_source,
        "reference": _reference(config, metadata, preset, frames),
        "caller_metadata": caller_metadata(metadata, _REFERENCE_FIELDS),
    }
    params.update(requested_seed(config, seed))  # type: ignore[typeddict-item]
    return params


def _frames(config: dict, defaults: dict, output: str) -> tuple[int, int]:
    requested = aliased(config, "frames", ("frame_num",), "/config")
    path = "/config/frames" if "frames" in config else "/config/frame_num"
    if not given(requested):
        requested = defaults["frames"]
    requested = int(requested)
    frames = normalise_frames(requested)
    if output == "image" and requested != 1:
        raise field_error(path, "an image job produces exactly one frame; use a video_* type for more")
    if output == "video" and requested < MIN_VIDEO_FRAMES:
        raise field_error(path, f"a video has at least {MIN_VIDEO_FRAMES} frames; use an image_* type for one frame")
    return requested, frames


def _fps(config: dict, defaults: dict, output: str) -> float | None:
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


def _reference(config: dict, metadata: dict, preset: dict, frames: int) -> WanReference | None:
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
    return {
        "mode": mode,
        "first_url": first[0] if first else None,
        "last_url": last[0] if last else None,
        "conditioning_scale": scale,
        "strength_source": source,
        "resize_policy": metadata.get("resize_policy", preset["reference"]["resize_policy"]),
        "source_field": mode_path,
    }


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


def _conditioning_scale(metadata: dict, preset: dict) -> tuple[float, str]:
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
