"""The schema of the job payload the OurVidz app pushes onto `sdxl_queue` / `wan_queue`
(the app's `queue-job` function; field by field in docs/API.md).

It checks the kind and range of the fields only the app sends (`job_id`, `job_type`, `quality`, `format`,
`content_type`, top-level `negative_prompt`, `config.pipeline`, `config.denoise_strength`, the metadata
flags); `null` fields were removed before (they mean absent) and fields it does not know are the caller's
context (configuration/params/app_payload.py). Generation parameters proper are checked afterwards by the
worker's own `generate` schema, on the body the payload maps to.
"""
from __future__ import annotations

from configuration.schemas.common import DIALECT, END, NEGATIVE_PROMPT, SAFE_ID, STRENGTH

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
