"""Payloads built exactly as the OurVidz app builds them (its `queue-job` function, as recorded in
../shared/reference/real-client.md section 1), for replaying the app's traffic against the pod.

The app pushes with RPUSH onto `sdxl_queue` (types starting with `sdxl` or containing `image`) or
`wan_queue`; keys whose value is undefined are left out of the JSON.
"""
from __future__ import annotations

import json
import uuid

APP_NEGATIVE_PROMPT = ", ".join(["blurry", "low quality", "distorted", "deformed", "watermark", "text"])
# Reference defaults the app applies: copy mode / modify mode.
REFERENCE_DEFAULTS = {"copy": {"denoise_strength": 0.05, "guidance_scale": 1.0, "num_inference_steps": 15},
                      "modify": {"denoise_strength": 0.20, "guidance_scale": 6.0, "num_inference_steps": 20}}
ASPECT_RESOLUTIONS = {"1:1": "1024x1024", "16:9": "1024x576", "9:16": "576x1024"}


def queue_for(job_type: str) -> str:
    """The list the app's queue-job function pushes a job type onto."""
    return "sdxl_queue" if job_type.startswith("sdxl") or "image" in job_type else "wan_queue"


def queue_job_payload(*, fmt: str = "image", quality: str = "fast", prompt: str = "a red fox in the snow",
                      user_id: str | None = None, aspect_ratio: str = "1:1", num_images: int = 1,
                      reference_url: str | None = None, reference_mode: str = "modify",
                      video_reference_mode: str | None = None, start_url: str | None = None,
                      end_url: str | None = None, seed: int | None = None, content_type: str = "sfw",
                      job_id: str | None = None) -> dict:
    """One job payload as queue-job builds it (JSON-ready dict, undefined keys left out)."""
    job_id = job_id or str(uuid.uuid4())
    user_id = user_id or str(uuid.uuid4())
    video = fmt == "video"
    exact_copy = reference_mode == "copy" and bool(reference_url)
    has_reference = bool(reference_url or start_url or end_url)
    browser_job_type = f"wan_video_{quality}" if video else f"sdxl_image_{quality}"
    config: dict = {
        "pipeline": "img2img" if has_reference else ("video" if video else "txt2img"),
        "num_images": 1 if video else num_images,
        "resolution": ASPECT_RESOLUTIONS[aspect_ratio],
    }
    if seed is not None:
        config["seed"] = seed
    if has_reference:
        defaults = REFERENCE_DEFAULTS["copy" if exact_copy else "modify"]
        config.update(defaults)
    if video:
        config["sample_solver"] = "dpm++"
        if start_url:
            config["first_frame"] = start_url
        if end_url:
            config["last_frame"] = end_url
        if reference_url:
            config["image"] = reference_url
    # Every field the browser sent ...
    metadata: dict = {"aspect_ratio": aspect_ratio, "contentType": content_type, "enhancement_model": "qwen_instruct",
                      "lock_hair": False, "reference_profile": "default", "num_inference_steps": 25,
                      "negative_prompt": APP_NEGATIVE_PROMPT}
    if video:
        metadata.update(duration=5, motion_intensity=0.5)
    # ... overridden with the app's reference fields.
    if has_reference:
        denoise = config["denoise_strength"]
        metadata.update(denoise_strength=denoise, reference_strength=round(1 - denoise, 2))
    metadata.update(exact_copy_mode=exact_copy, reference_mode="copy" if exact_copy else "modify")
    if reference_url:
        metadata["reference_image_url"] = reference_url
    if video:
        metadata["video_reference_mode"] = video_reference_mode or (
            "both" if start_url and end_url else "start" if start_url else "end" if end_url
            else "single" if reference_url else "none")
        if start_url:
            metadata["start_reference_url"] = start_url
        if end_url:
            metadata["end_reference_url"] = end_url
    metadata.update(originalEnhancedPrompt=prompt, originalSeed=seed if seed is not None else None,
                    reference_type="character" if has_reference else None, nsfw_optimization=content_type == "nsfw",
                    reference_strength_overridden=False)
    metadata = {k: v for k, v in metadata.items() if v is not None}

    payload: dict = {
        "id": job_id,
        "job_id": job_id,
        "type": f"video_{quality}" if video else f"sdxl_image_{quality}",
        "job_type": browser_job_type,
        "prompt": "" if exact_copy else prompt,
        "user_id": user_id,
        "config": config,
        "metadata": metadata,
        "compel_enabled": False,
        "compel_weights": "",
        "quality": quality,
        "format": fmt,
        "content_type": content_type,
    }
    if not exact_copy:
        payload["negative_prompt"] = APP_NEGATIVE_PROMPT
    return payload


def rpush(redis_client, payload: dict, queue: str | None = None) -> str:
    """Push as the app does (onto `queue` when a test renames the lists); returns the queue name."""
    queue = queue or queue_for(payload["type"])
    redis_client.rpush(queue, json.dumps(payload))
    return queue
