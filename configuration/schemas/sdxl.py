"""SDXL worker request schemas."""
from __future__ import annotations

from configuration import job_types, model_config
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


def schemas(settings: Settings) -> dict[str, dict]:
    size, resolution = size_schemas(model_config("sdxl", settings)["limits"])
    steps = {"type": "integer", "minimum": 1, "maximum": 100}
    generate = {
        "$schema": DIALECT,
        "title": "SDXL generation job",
        "type": "object",
        "required": ["type", "prompt"],
        "additionalProperties": False,
        # The app sends an empty prompt for exact copies; anywhere else a prompt must say something.
        "if": {"not": {"required": ["metadata"], "properties": {"metadata": {
            "required": ["exact_copy_mode", "reference_image_url"],
            "properties": {"exact_copy_mode": {"const": True}}}}}},
        "then": {"properties": {"prompt": PROMPT}},
        "properties": {
            "id": SAFE_ID,
            "type": {"enum": sorted(job_types("sdxl"))},
            "prompt": {"type": "string", "maxLength": 20000,
                       "description": "Non-empty text; empty only for an exact copy (metadata.exact_copy_mode with a "
                                      "reference_image_url), where the reference alone is the subject."},
            "user_id": SAFE_ID,
            "content_tier": CONTENT_TIER,
            "compel_enabled": {"type": "boolean", "description": "Apply compel prompt weighting."},
            "compel_weights": {"type": "string", "maxLength": 20000,
                               "description": "Compel-syntax weighted prompt; used instead of `prompt` for "
                                              "conditioning when compel is enabled."},
            "config": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "num_images": {"enum": [1, 3, 6]},
                    "steps": steps,
                    "num_inference_steps": {**steps, "description": "Legacy alias of `steps`."},
                    "guidance_scale": {"type": "number", "minimum": 0.0, "maximum": 30.0},
                    "width": size,
                    "height": size,
                    "resolution": resolution,
                    "seed": GENERATION_SEED,
                    "negative_prompt": NEGATIVE_PROMPT,
                },
            },
            "metadata": {
                "type": "object",
                "description": "Reference-image parameters. Other keys are the caller's own and are echoed back in the "
                               "job metadata.",
                "properties": {
                    "reference_image_url": REFERENCE_URL,
                    "denoise_strength": {**STRENGTH, "exclusiveMinimum": 0.0},
                    "reference_strength": {**STRENGTH, "exclusiveMaximum": 1.0,
                                           "description": "Legacy: denoise_strength = 1 - reference_strength."},
                    "exact_copy_mode": {"type": "boolean"},
                    "resize_policy": {"enum": ["center_crop", "letterbox"]},
                },
            },
        },
    }
    return {"generate": generate}
