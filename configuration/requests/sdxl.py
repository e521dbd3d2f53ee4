"""The SDXL worker's request (`sdxl.generate`): bounds, cross-field rules and the conversion to the engine's
parameters in one model.

The model is built per profile (`sdxl_request(settings)`: the size bounds come from configuration/models.json)
and cached, so a request costs one validation and one `to_params`. The published schema is generated from it
(configuration/published/sdxl.generate.json); the cross-field rules the schema cannot say are listed in its
`description`.
"""
from __future__ import annotations

import functools
from typing import Annotated, Any, ClassVar, NotRequired, TypedDict

from pydantic import BaseModel, ConfigDict, Field, create_model, model_validator

from configuration import job_types, model_config, preset_defaults
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


class SDXLReference(TypedDict):
    url: str
    mode: str                   # modify | exact_copy
    denoise_strength: float
    strength_source: str        # denoise_strength | reference_strength | preset
    resize_policy: str          # center_crop | letterbox


class SDXLParams(TypedDict):
    """What the SDXL engine runs with: every value within the schema's bounds, defaults applied."""
    job_type: str
    prompt: str
    negative_prompt: str
    num_images: int
    steps: int
    guidance_scale: float
    width: int
    height: int
    seed: int
    seed_source: str
    seed_requested: NotRequired[int]   # the caller's seed when it was reduced to the generators' range
    compel_enabled: bool
    compel_weights: str | None
    reference: SDXLReference | None
    caller_metadata: dict


STEPS = {"type": "integer", "minimum": 1, "maximum": 100}
RULES = ("Cross-field rules (refused with 400 at the first field named): `config.width`/`config.height` must agree "
         "with `config.resolution`; `config.steps` and its legacy alias `config.num_inference_steps` must agree; "
         "`metadata.denoise_strength`, `reference_strength`, `exact_copy_mode` and `resize_policy` need "
         "`metadata.reference_image_url`; `denoise_strength` must equal 1 - `reference_strength` when both are "
         "sent; `compel_weights` needs `compel_enabled: true`.")


class SDXLConfig(BaseModel):
    """Generation parameters; the size fields are added per profile (`sdxl_request`)."""
    model_config = STRICT_OBJECT

    num_images: Annotated[int | None, Schema({"enum": [1, 3, 6]})] = None
    steps: Annotated[int | None, Schema(STEPS)] = None
    num_inference_steps: Annotated[int | None, Schema(STEPS, description="Legacy alias of `steps`.")] = None
    guidance_scale: Annotated[float | None, Schema({"type": "number", "minimum": 0.0, "maximum": 30.0})] = None
    width: int | None = None
    height: int | None = None
    resolution: str | None = None
    seed: Annotated[int | None, Schema(GENERATION_SEED)] = None
    negative_prompt: Annotated[str | None, Schema(NEGATIVE_PROMPT)] = None

    def size(self, defaults: Any) -> tuple[int, int]:
        """(width, height) from `width`/`height` or `resolution`, else the preset (the rule that they agree
        was checked by the request)."""
        if self.resolution is not None:
            width, height = (int(v) for v in self.resolution.split("x"))
            return width, height
        return (int(defaults["width"] if self.width is None else self.width),
                int(defaults["height"] if self.height is None else self.height))


class SDXLMetadata(BaseModel):
    """Reference-image parameters; any other key is the caller's own, echoed back with the job."""
    model_config = ConfigDict(**OPEN_OBJECT, json_schema_extra={
        "description": "Reference-image parameters. Other keys are the caller's own and are echoed back in the job "
                       "metadata."})

    reference_image_url: Annotated[str | None, Schema(REFERENCE_URL)] = None
    denoise_strength: Annotated[float | None, Schema(STRENGTH, exclusiveMinimum=0.0)] = None
    reference_strength: Annotated[float | None, Schema(
        STRENGTH, exclusiveMaximum=1.0, description="Legacy: denoise_strength = 1 - reference_strength.")] = None
    exact_copy_mode: Annotated[bool | None, Schema({"type": "boolean"})] = None
    resize_policy: Annotated[str | None, Schema({"enum": ["center_crop", "letterbox"]})] = None

    @property
    def exact_copy(self) -> bool:
        return bool(self.exact_copy_mode and self.reference_image_url)


# The prompt's rule as the schema says it: non-empty text, unless the body asks for an exact copy.
_EXACT_COPY = {"required": ["metadata"], "properties": {"metadata": {
    "required": ["exact_copy_mode", "reference_image_url"], "properties": {"exact_copy_mode": {"const": True}}}}}
_PROMPT = Schema(PROMPT)
_PUBLISHED: dict[str, Any] = {"description": RULES, "if": {"not": _EXACT_COPY},
                              "then": {"properties": {"prompt": PROMPT}}}


class SDXLRequest(BaseModel):
    """Body of POST /generate on the SDXL worker (and of a queued SDXL job, once translated)."""
    model_config = ConfigDict(**STRICT_OBJECT, title="SDXL generation job", json_schema_extra=_PUBLISHED)
    job_types: ClassVar[Any] = {}

    id: Annotated[str | None, Schema(SAFE_ID)] = None
    type: str
    prompt: Annotated[str, Schema({"type": "string", "maxLength": 20000,
                                   "description": "Non-empty text; empty only for an exact copy (metadata."
                                                  "exact_copy_mode with a reference_image_url), where the reference "
                                                  "alone is the subject."})]
    user_id: Annotated[str | None, Schema(SAFE_ID)] = None
    content_tier: Annotated[str | None, Schema(CONTENT_TIER)] = None
    compel_enabled: Annotated[bool | None, Schema({"type": "boolean",
                                                   "description": "Apply compel prompt weighting."})] = None
    compel_weights: Annotated[str | None, Schema({"type": "string", "maxLength": 20000,
                                                  "description": "Compel-syntax weighted prompt; used instead of "
                                                                 "`prompt` for conditioning when compel is "
                                                                 "enabled."})] = None
    config: SDXLConfig = Field(default_factory=SDXLConfig)
    metadata: SDXLMetadata = Field(default_factory=SDXLMetadata)

    @model_validator(mode="after")
    def _agree(self) -> SDXLRequest:
        """The cross-field rules, in the order the contract reports them (the first one broken is the answer)."""
        if not self.metadata.exact_copy:
            _PROMPT.check("/prompt", self.prompt)
        config, metadata = self.config, self.metadata
        if config.resolution is not None:
            r_width, r_height = (int(v) for v in config.resolution.split("x"))
            for name, value, other in (("width", config.width, r_width), ("height", config.height, r_height)):
                if value is not None and value != other:
                    raise field_error(f"/config/{name}", f"conflicts with resolution {config.resolution!r}")
        if config.steps is not None and config.num_inference_steps is not None \
                and config.steps != config.num_inference_steps:
            raise field_error("/config/num_inference_steps", f"conflicts with steps={config.steps!r}")
        if not metadata.reference_image_url:
            for name in ("denoise_strength", "reference_strength", "exact_copy_mode", "resize_policy"):
                if name in metadata.model_fields_set:
                    raise field_error(f"/metadata/{name}", "needs metadata.reference_image_url")
        elif metadata.denoise_strength is not None and metadata.reference_strength is not None \
                and abs(metadata.denoise_strength - (1 - metadata.reference_strength)) > 1e-6:
            raise field_error("/metadata/reference_strength", "conflicts with denoise_strength (denoise = 1 - "
                                                              "reference_strength)")
        if self.compel_weights and not self.compel_enabled:
            raise field_error("/compel_weights", "is only used when compel_enabled is true")
        return self

    def to_params(self, settings: Settings) -> SDXLParams:
        """The engine's parameters: presets (of the job type and profile) fill what the caller left out."""
        preset = self.job_types[self.type]
        defaults = preset_defaults(self.type, settings)
        config = self.config
        width, height = config.size(defaults)
        seed, seed_source = (reduce_seed(config.seed), "request") if config.seed is not None else resolve_seed({})
        steps = config.steps if config.steps is not None else config.num_inference_steps
        reference = self._reference(preset)
        exact_copy = reference is not None and reference["mode"] == "exact_copy"
        params: SDXLParams = {
            "job_type": self.type,
            "prompt": self.prompt,
            # An exact copy reproduces the reference: no negative prompt unless the caller sends one (the app
            # leaves it out on purpose), and the exact-copy guidance.
            "negative_prompt": config.negative_prompt if config.negative_prompt is not None
            else "" if exact_copy else str(defaults["negative_prompt"]),
            "num_images": int(config.num_images if config.num_images is not None else defaults["num_images"]),
            "steps": int(steps if steps is not None else defaults["steps"]),
            "guidance_scale": float(config.guidance_scale if config.guidance_scale is not None
                                    else preset["exact_copy"]["guidance_scale"] if exact_copy
                                    else defaults["guidance_scale"]),
            "width": width,
            "height": height,
            "seed": seed,
            "seed_source": seed_source,
            "compel_enabled": bool(self.compel_enabled),
            "compel_weights": self.compel_weights or None,
            "reference": reference,
            "caller_metadata": dict(self.metadata.model_extra or {}),
        }
        if config.seed is not None and config.seed != seed:
            params["seed_requested"] = config.seed
        return params

    def _reference(self, preset: Any) -> SDXLReference | None:
        metadata = self.metadata
        if not metadata.reference_image_url:
            return None
        exact_copy = bool(metadata.exact_copy_mode)
        if metadata.denoise_strength is not None:
            strength, source = float(metadata.denoise_strength), "denoise_strength"
        elif metadata.reference_strength is not None:
            strength, source = 1.0 - float(metadata.reference_strength), "reference_strength"
        else:
            mode_preset = preset["exact_copy"] if exact_copy else preset["img2img"]
            strength, source = float(mode_preset["denoise_strength"]), "preset"
        return {"url": metadata.reference_image_url, "mode": "exact_copy" if exact_copy else "modify",
                "denoise_strength": strength, "strength_source": source,
                "resize_policy": metadata.resize_policy or preset["img2img"]["resize_policy"]}


@functools.lru_cache(maxsize=8)
def _request_for_limits(min_size: int, max_size: int, multiple: int) -> type[SDXLRequest]:
    size, resolution = size_schemas({"min_size": min_size, "max_size": max_size, "multiple": multiple})
    # (annotations built at run time: typed Any, as create_model takes them)
    size_type: Any = Annotated[int | None, Schema(size)]
    resolution_type: Any = Annotated[str | None, Schema(resolution)]
    config = create_model("SDXLConfig", __base__=SDXLConfig, width=(size_type, None), height=(size_type, None),
                          resolution=(resolution_type, None))
    presets = job_types("sdxl")
    type_type: Any = Annotated[str, Schema({"enum": sorted(presets)})]
    request = create_model("SDXLRequest", __base__=SDXLRequest, type=(type_type, ...),
                           config=(config, Field(default_factory=config)))
    request.job_types = presets
    return request


def sdxl_request(settings: Settings) -> type[SDXLRequest]:
    """The SDXL request model of this profile (its size bounds), built once per profile
    (`configuration.requests.request_model` keeps it)."""
    limits = model_config("sdxl", settings)["limits"]
    return _request_for_limits(int(limits["min_size"]), int(limits["max_size"]), int(limits["multiple"]))
