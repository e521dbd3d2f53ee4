"""WAN worker request schemas (text-to-video, image jobs, reference-frame modes)."""
from __future__ import annotations

import math

from configuration import ConfigurationError, job_types, model_config
from configuration.schemas.common import (
    CONTENT_TIER,
    DIALECT,
    GENERATION_SEED,
    NEGATIVE_PROMPT,
    PROMPT,
    REFERENCE_URL,
    SAFE_ID,
    STRENGTH,
    size_schemas,
)
from configuration.settings import Settings

REFERENCE_MODES = ["none", "single", "start", "end", "both"]
# Wan's own two solvers (`--sample_solver` of the Wan repository); the engine maps each to a scheduler.
SAMPLE_SOLVERS = ["unipc", "dpm++"]


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
    """The largest frame count up to max_frames whose 4k+1 rounding (configuration/params/wan.py) stays
    within max_frames (max_frames itself when it is of the form 4k+1)."""
    return min(max_frames, (max_frames - 1) // 4 * 4 + 3)


def schemas(settings: Settings) -> dict[str, dict]:
    bounds = limits(settings)
    size, resolution = size_schemas(bounds)
    frames = {"type": "integer", "minimum": 1, "maximum": max_requested_frames(bounds["max_frames"]),
              "description": f"Frames to generate; rounded to the nearest 4k+1 (ties down), at most "
                             f"{bounds['max_frames']} after rounding; both counts reported. "
                             "Image jobs: 1. Videos: at least 5."}
    steps = {"type": "integer", "minimum": 1, "maximum": 100}
    guidance = {"type": "number", "minimum": 0.0, "maximum": 20.0,
                "description": "Classifier-free guidance; at 1 or below it is off and no negative prompt is used."}
    generate = {
        "$schema": DIALECT,
        "title": "WAN generation job",
        "type": "object",
        "required": ["type", "prompt"],
        "additionalProperties": False,
        "properties": {
            "id": SAFE_ID,
            "type": {"enum": sorted(job_types("wan")),
                     "description": "`image_*` produce one PNG, `video_*` an MP4. The legacy `*_enhanced` types ask "
                                    "for prompt enhancement, which the orchestrator does: the worker answers 400."},
            "prompt": PROMPT,
            "user_id": SAFE_ID,
            "content_tier": CONTENT_TIER,
            "config": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "frames": frames,
                    "frame_num": {**frames, "description": "Legacy alias of `frames`."},
                    "steps": steps,
                    "sample_steps": {**steps, "description": "Legacy alias of `steps`."},
                    "guidance_scale": guidance,
                    "sample_guide_scale": {**guidance, "description": "Legacy alias of `guidance_scale`."},
                    "width": size,
                    "height": size,
                    "resolution": resolution,
                    "seed": GENERATION_SEED,
                    "negative_prompt": NEGATIVE_PROMPT,
                    "fps": {"type": "number", "minimum": 1, "maximum": 60,
                            "description": "Playback rate of the MP4; duration_seconds = frames / fps."},
                    "sample_solver": {"enum": SAMPLE_SOLVERS,
                                      "description": "`unipc` (UniPC multistep, the default) or `dpm++` "
                                                     "(DPM-Solver++)."},
                    "reference_mode": {"enum": REFERENCE_MODES,
                                       "description": "Derived from the references given when absent: start + end "
                                                      "-> both, start -> start, end -> end, reference_image_url -> "
                                                      "single."},
                    "image": {**REFERENCE_URL, "description": "Legacy alias of metadata.reference_image_url."},
                    "first_frame": {**REFERENCE_URL, "description": "Legacy alias of metadata.start_reference_url."},
                    "last_frame": {**REFERENCE_URL, "description": "Legacy alias of metadata.end_reference_url."},
                    "content_type": {"enum": ["image", "video"],
                                     "description": "Legacy; must agree with the job type's output."},
                    "enhance_prompt": {"type": "boolean",
                                       "description": "Legacy. `true` is refused here (400): prompt enhancement "
                                                      "runs on the orchestrator (POST /jobs)."},
                },
            },
            "metadata": {
                "type": "object",
                "description": "Reference-frame parameters. Other keys are the caller's own and are echoed back in the "
                               "job metadata.",
                "properties": {
                    "reference_image_url": {**REFERENCE_URL, "description": "The one reference of `single` (first "
                                                                            "frame)."},
                    "start_reference_url": {**REFERENCE_URL, "description": "First-frame reference (`start`, `both`)."},
                    "end_reference_url": {**REFERENCE_URL, "description": "Last-frame reference (`end`, `both`)."},
                    "reference_strength": {**STRENGTH, "exclusiveMinimum": 0.0,
                                           "description": "How strongly the reference frames condition the video: "
                                                          "the VACE conditioning_scale."},
                    "denoise_strength": {**STRENGTH, "exclusiveMaximum": 1.0,
                                         "description": "Legacy: conditioning_scale = 1 - denoise_strength."},
                    "resize_policy": {"enum": ["center_crop", "letterbox"]},
                },
            },
        },
    }
    return {"generate": generate}
