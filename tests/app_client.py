"""Payloads built as the OurVidz app builds them, for replaying its traffic against the pod.

Two steps, as in the app (../shared/reference/real-client.md section 1, checked against the app's source):
- what a browser entry point sends to the `queue-job` function: the workspace (`workspace_request`: it always
  sends `denoise_strength`, writes `start_reference_url: null` when there is no start frame, and adds a
  `reference_profile` object when there is a reference) or the GenerationService behind avatars, scenes and
  quick generators (`generation_service_request`: no strengths without a reference);
- what `queue-job` makes of it (`queue_job`): the pipeline label, the resolved strengths, guidance and steps,
  the video reference mode and frames, the metadata overrides (the two frame URLs as JSON `null` on every
  video job), the negative prompt left out in exact-copy mode, and every key whose value is undefined left
  out of the JSON.

`ENTRY_POINTS` builds one payload per row of the entry-point table; `queue_job_payload` keeps the
keyword form older tests use. The app pushes with RPUSH onto `sdxl_queue` (types starting with `sdxl` or
containing `image`) or `wan_queue`.
"""
from __future__ import annotations

import json
import uuid
from collections.abc import Callable

APP_NEGATIVE_PROMPT = ", ".join(["blurry", "low quality", "distorted", "deformed", "watermark", "text"])
ASPECT_RESOLUTIONS = {"1:1": "1024x1024", "16:9": "1024x576", "9:16": "576x1024"}
# queue-job's defaults for the two reference branches.
COPY = {"denoise_strength": 0.05, "guidance_scale": 1.0, "steps": 15}
MODIFY = {"denoise_strength": 0.20, "guidance_scale": 6.0, "steps": 20}
UNDEFINED = object()  # a JavaScript `undefined`: the key is left out of the JSON


def queue_for(job_type: str) -> str:
    """The list the app's queue-job function pushes a job type onto."""
    return "sdxl_queue" if job_type.startswith("sdxl") or "image" in job_type else "wan_queue"


def _defined(values: dict) -> dict:
    return {k: v for k, v in values.items() if v is not UNDEFINED}


def workspace_request(*, fmt: str = "image", quality: str = "fast", prompt: str = "a red fox in the snow",
                      aspect_ratio: str = "1:1", num_images: int = 1, reference_url: str | None = None,
                      copy_mode: bool = False, start_url: str | None = None, end_url: str | None = None,
                      seed: int | None = None, content_type: str = "nsfw", reference_strength: float = 0.8,
                      steps: int | None = None, guidance_scale: float = 7.5) -> dict:
    """The body the workspace page sends to queue-job (its main generation page)."""
    video = fmt == "video"
    denoise = COPY["denoise_strength"] if copy_mode else round(1 - reference_strength, 2)
    metadata = _defined({
        "duration": 5 if video else UNDEFINED,
        "motion_intensity": 0.5 if video else UNDEFINED,
        "start_reference_url": start_url,                    # null when there is no start frame, images too
        **({"end_reference_url": end_url} if video else {}),
        "model_provider": "local",
        "reference_image_url": reference_url if reference_url else UNDEFINED,
        "aspect_ratio": aspect_ratio, "shot_type": "medium", "camera_angle": "eye_level", "style": UNDEFINED,
        "enhancement_model": "none" if copy_mode else "qwen_instruct", "contentType": content_type,
        "user_requested_enhancement": not copy_mode, "skip_enhancement": copy_mode,
        "reference_mode": "copy" if copy_mode else ("modify" if reference_url else UNDEFINED),
        "reference_type": "character" if reference_url else UNDEFINED,
        "exact_copy_mode": copy_mode, "lock_hair": False,
    })
    profile = {"reference_strength": reference_strength, "denoise_strength": round(1 - reference_strength, 2),
               "seed_locked": False}
    if copy_mode:
        metadata.update(num_inference_steps=15, guidance_scale=1.0, negative_prompt="",
                        reference_profile={"type": "copy", **profile, "guidance_scale": 1.0, "steps": 15,
                                           "exact_copy_mode": True})
    elif reference_url:
        metadata.update(num_inference_steps=steps or 25, guidance_scale=guidance_scale, denoise_strength=denoise,
                        exact_copy_mode=False, reference_mode="modify", reference_type="character",
                        reference_profile={"type": "character", **profile, "guidance_scale": guidance_scale,
                                           "steps": steps or 25, "exact_copy_mode": False})
    else:
        metadata.update(num_inference_steps=steps or 25, guidance_scale=guidance_scale, exact_copy_mode=False)
    return _defined({
        "job_type": (f"wan_video_{quality}" if video else f"sdxl_image_{quality}"),
        "prompt": "" if copy_mode else prompt,
        "quality": quality, "model_type": "wan" if video else "sdxl",
        "reference_image_url": reference_url if reference_url else UNDEFINED,
        "reference_strength": reference_strength, "seed": seed if seed is not None else UNDEFINED,
        "num_images": 1 if video else num_images, "steps": steps if steps is not None else UNDEFINED,
        "guidance_scale": 1.0 if copy_mode else guidance_scale,
        "denoise_strength": denoise,                          # always, with or without a reference
        "compel_enabled": False, "compel_weights": "", "metadata": metadata,
    })


def generation_service_request(*, fmt: str = "image", quality: str = "fast", prompt: str = "a portrait of a knight",
                               num_images: int = 1, reference_url: str | None = None, seed: int | None = None,
                               content_type: str = "sfw", steps: int | None = None) -> dict:
    """The body GenerationService (avatars, scenes, quick generators, video from one image) sends."""
    video = fmt == "video"
    has_reference = bool(reference_url)
    metadata = _defined({
        "contentType": content_type, "aspect_ratio": "1:1", "prompt": prompt,
        "exact_copy_mode": UNDEFINED,
        "reference_image_url": reference_url if has_reference else UNDEFINED,
        "reference_strength": 0.75 if has_reference else UNDEFINED,
        "reference_mode": "modify" if has_reference else UNDEFINED,
        "denoise_strength": 0.25 if has_reference else UNDEFINED,
        "user_requested_enhancement": True, "enhancement_model": "qwen_instruct", "skip_enhancement": False,
        "steps": steps if steps is not None else UNDEFINED,
    })
    return _defined({
        "prompt": prompt, "original_prompt": prompt,
        "job_type": (f"wan_video_{quality}" if video else f"sdxl_image_{quality}"), "quality": quality,
        "format": "mp4" if video else "png", "model_type": "wan" if video else "sdxl",
        "num_images": 1 if video else num_images,
        "reference_image_url": reference_url if has_reference else UNDEFINED,
        "reference_strength": 0.75 if has_reference else UNDEFINED,
        "steps": steps if steps is not None else UNDEFINED,
        "guidance_scale": 7.0 if has_reference else UNDEFINED,
        "denoise_strength": 0.25 if has_reference else UNDEFINED,
        "seed": seed if seed is not None else UNDEFINED,
        "metadata": metadata,
    })


def queue_job(request: dict, *, user_id: str | None = None, job_id: str | None = None) -> dict:
    """What queue-job pushes for `request` (a browser body), as a JSON-ready dict (undefined keys left out;
    the two video frame URLs kept as `null`)."""
    job_id = job_id or str(uuid.uuid4())
    user_id = user_id or str(uuid.uuid4())
    meta = dict(request.get("metadata") or {})
    job_type = request["job_type"]
    video = "video" in job_type or "wan" in job_type
    image = "image" in job_type
    reference = meta.get("reference_image_url") or request.get("reference_image_url") or None
    start = meta.get("start_reference_url") or None
    end = meta.get("end_reference_url") or None
    prompt = request.get("original_prompt") or request.get("prompt") or ""
    exact_copy = bool(meta.get("exact_copy_mode")) and bool(reference) and not meta.get("originalEnhancedPrompt") \
        and not prompt.strip()
    modify = bool(reference) and not exact_copy and (
        meta.get("reference_mode") == "modify" or bool(meta.get("originalEnhancedPrompt")) or bool(prompt.strip()))

    def number(value):
        return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None

    denoise = number(request.get("denoise_strength"))
    if denoise is None and number(request.get("reference_strength")) is not None:
        denoise = 1 - request["reference_strength"]
    cfg = number(request.get("guidance_scale"))
    cfg = cfg if cfg is not None else number(meta.get("guidance_scale"))
    steps = number(request.get("steps"))
    steps = steps if steps is not None else number(meta.get("steps"))
    negative = None if exact_copy else APP_NEGATIVE_PROMPT  # base negatives from the app's table (+ the user's)
    if exact_copy:
        denoise = denoise if denoise is not None else COPY["denoise_strength"]
        cfg = COPY["guidance_scale"]
        steps = steps if steps is not None else COPY["steps"]
    elif modify:
        denoise = denoise if denoise is not None else MODIFY["denoise_strength"]
        cfg = cfg if cfg is not None else MODIFY["guidance_scale"]
        steps = steps if steps is not None else MODIFY["steps"]
    pipeline = "img2img" if (exact_copy or modify) else ("txt2img" if image else "video")
    batch = (request.get("num_images") or meta.get("num_images") or 1) if image else 1
    mode = "none"
    if video:
        mode = ("single" if reference and not start and not end else "both" if start and end
                else "start" if start else "end" if end else "none")
    seed = request.get("seed") or meta.get("seed") or UNDEFINED  # `||`: a seed of 0 is dropped
    frames: dict = {}
    if video and mode != "none":
        frames = {"first_frame": start if mode in ("start", "both") else UNDEFINED,
                  "last_frame": end if mode in ("end", "both") else UNDEFINED,
                  "image": reference if mode == "single" else UNDEFINED}
    config = _defined({
        "pipeline": pipeline, "num_images": 1 if batch <= 1 else (3 if batch <= 3 else 6),
        "num_inference_steps": steps if steps is not None else UNDEFINED,
        "guidance_scale": cfg if cfg is not None else UNDEFINED,
        "denoise_strength": denoise if denoise is not None else UNDEFINED,
        "resolution": ASPECT_RESOLUTIONS.get(str(meta.get("aspect_ratio")), "1024x1024"),
        "seed": seed, **frames,
        "sample_solver": "dpm++" if video else UNDEFINED,
    })
    metadata = {**meta,
                "denoise_strength": denoise if reference else UNDEFINED,
                "reference_strength": request.get("reference_strength", UNDEFINED) if reference else UNDEFINED,
                "exact_copy_mode": exact_copy,
                "reference_mode": "modify" if modify else ("copy" if exact_copy else UNDEFINED),
                "reference_image_url": reference or UNDEFINED}
    if video:
        metadata.update(video_reference_mode=mode, start_reference_url=start, end_reference_url=end)  # null kept
    metadata.update(originalEnhancedPrompt=meta.get("originalEnhancedPrompt") or UNDEFINED,
                    originalSeed=meta.get("seed") or UNDEFINED,
                    reference_type=meta.get("reference_type") or ("character" if exact_copy else "style"),
                    nsfw_optimization=(meta.get("contentType") or "sfw") == "nsfw",
                    reference_strength_overridden=False)
    return _defined({
        "id": job_id, "type": job_type.replace("wan_video_", "video_"),
        "prompt": request.get("enhanced_prompt") or prompt,
        "user_id": user_id, "config": config, "metadata": _defined(metadata),
        "negative_prompt": UNDEFINED if exact_copy else negative,
        "compel_enabled": bool(request.get("compel_enabled") or meta.get("compel_enabled") or False),
        "compel_weights": request.get("compel_weights") or meta.get("compel_weights") or "",  # a string, may be empty
        "job_id": job_id, "job_type": job_type,
        "quality": request.get("quality") or ("high" if "high" in job_type else "fast"),
        "format": "image" if image else "video", "content_type": meta.get("contentType") or "sfw",
    })


def entry_points(user_id: str, reference: str, other: str, steps: int | None = None) -> dict[str, dict]:
    """One queued payload per row of real-client.md's entry-point table. `reference` and `other` are two
    different images (URLs or storage paths); `steps` shortens runs (the app's UI sends a step count too)."""
    def pushed(request: dict) -> dict:
        return queue_job(request, user_id=user_id)

    rows: dict[str, Callable[[], dict]] = {
        "workspace text to image": lambda: workspace_request(num_images=3, aspect_ratio="16:9", steps=steps),
        "workspace modify a reference": lambda: workspace_request(reference_url=reference, steps=steps),
        "workspace exact copy": lambda: workspace_request(reference_url=reference, copy_mode=True),
        "workspace text to video": lambda: workspace_request(fmt="video", aspect_ratio="16:9", steps=steps),
        "workspace video from a start frame": lambda: workspace_request(
            fmt="video", reference_url=reference, start_url=reference, aspect_ratio="9:16", steps=steps),
        "workspace start and end keyframes": lambda: workspace_request(
            fmt="video", start_url=reference, end_url=other, steps=steps),
        "workspace reference plus a different start frame": lambda: workspace_request(
            fmt="video", reference_url=reference, start_url=other, steps=steps),
        "generation service image": lambda: generation_service_request(seed=2**53 - 1, steps=steps),
        "generation service video from one image": lambda: generation_service_request(
            fmt="video", reference_url=reference, steps=steps),
    }
    return {name: pushed(build()) for name, build in rows.items()}


def queue_job_payload(*, fmt: str = "image", quality: str = "fast", prompt: str = "a red fox in the snow",
                      user_id: str | None = None, aspect_ratio: str = "1:1", num_images: int = 1,
                      reference_url: str | None = None, reference_mode: str = "modify",
                      start_url: str | None = None, end_url: str | None = None, seed: int | None = None,
                      content_type: str = "sfw", job_id: str | None = None, steps: int | None = None) -> dict:
    """One workspace job as queue-job pushes it (keyword form)."""
    request = workspace_request(fmt=fmt, quality=quality, prompt=prompt, aspect_ratio=aspect_ratio,
                                num_images=num_images, reference_url=reference_url,
                                copy_mode=reference_mode == "copy" and bool(reference_url), start_url=start_url,
                                end_url=end_url, seed=seed, content_type=content_type, steps=steps)
    return queue_job(request, user_id=user_id, job_id=job_id)


def roleplay_chat_body(messages: list[dict], *, content_tier: str = "nsfw") -> dict:
    """The body the app's roleplay-chat function sends to POST /chat (real-client.md section 3); for an nsfw
    conversation the app has already appended its guardrail sentence to the system prompt in `messages`."""
    return {"messages": messages, "model": "qwen_instruct", "sfw_mode": content_tier != "nsfw",
            "content_tier": content_tier, "temperature": 0.8, "top_p": 0.9, "max_tokens": 200,
            "frequency_penalty": 0.2, "presence_penalty": 0.1}


def rpush(redis_client, payload: dict, queue: str | None = None) -> str:
    """Push as the app does (onto `queue` when a test renames the lists); returns the queue name."""
    queue = queue or queue_for(payload["type"])
    redis_client.rpush(queue, json.dumps(payload))
    return queue
