"""The orchestrator's requests: a routed job (`orchestrator.jobs`), an operator's memory action
(`orchestrator.memory_action`) and the memory broker's calls from the workers (`orchestrator.broker_*`).

`jobs` checks the routing envelope only (`target`, `enhance`, the legacy `config.enhance_prompt`): the rest of
the body is the target worker's `/generate` body, which that worker's own request model checks before anything
runs. Its `to_params` is the route (`RoutePlan`): the worker, the enhancement to ask the chat worker for (the
chat worker's own enhancement parameters, configuration/requests/chat.py, plus the model), and the body to
forward. The memory action and the broker's calls run nothing of their own: their routes read the validated,
frozen model.
"""
from __future__ import annotations

import functools
from typing import Annotated, Any, TypedDict

from pydantic import BaseModel, ConfigDict, create_model, model_validator

from configuration import chat_config, job_types, worker_configs
from configuration.requests import chat
from configuration.requests.common import CONTENT_TIER, END, PROMPT, SAFE_ID, field_error, nullable
from configuration.requests.fields import OPEN_OBJECT, STRICT_OBJECT, Schema
from configuration.settings import Settings


class RoutePlan(TypedDict):
    """Where a routed job goes: what the Router (orchestrator/routing.py) runs."""
    target: str                 # sdxl | wan
    enhance: dict | None        # the chat worker's enhancement parameters (`model`: its short name), or None
    forward: dict               # the body for the target's POST /generate (the job type without enhancement)


def default_enhance_model() -> str:
    """The chat worker's legacy default model, by its short name (`base`/`instruct`)."""
    config = chat_config()
    return config["models"][config["legacy_default_model"]]["short_name"]


# What the `enhance` object takes of the chat worker's /enhance parameters (each also null: absent, as there).
_ENHANCE_FROM_CHAT = ("system_prompt", "max_tokens", "temperature", "top_p", "top_k", "repetition_penalty", "stop",
                      "seed")
_ROUTING = ("target", "enhance")
JOBS_RULES = ("A generation body of the target worker's POST /generate (validated by that worker's schema), plus "
              "`target` and `enhance`. Cross-field rules (refused with 400 at the field named): `target` must be the "
              "worker of `type`; `config.enhance_prompt: false` contradicts an enhancement asked by `enhance` or by "
              "the type (`*_enhanced`).")


class JobRequest(BaseModel):
    """Body of POST /jobs on the orchestrator; the enums and the enhancement's bounds are added per profile
    (`_jobs_for`). Any other field is the target worker's, forwarded as sent."""
    model_config = ConfigDict(**OPEN_OBJECT, title="Routed generation job",
                              json_schema_extra={"description": JOBS_RULES})

    id: Annotated[str | None, Schema(SAFE_ID)] = None
    type: str
    prompt: Annotated[str, Schema(PROMPT)]
    user_id: Annotated[str | None, Schema(SAFE_ID)] = None
    content_tier: Annotated[str | None, Schema(CONTENT_TIER)] = None
    target: str | None = None
    enhance: dict | None = None
    config: Annotated[dict | None, Schema({"type": "object", "properties": {"enhance_prompt": {
        "type": "boolean", "description": "Legacy: true asks for enhancement with default parameters."}}})] = None
    metadata: Annotated[dict | None, Schema({"type": "object"})] = None

    @model_validator(mode="after")
    def _agree(self) -> JobRequest:
        """The cross-field rules, in the order the contract reports them (the first one broken is the answer)."""
        worker = job_types()[self.type]["worker"]
        if self.target is not None and self.target != worker:
            raise field_error("/target", f"job type {self.type} runs on the {worker} worker, not {self.target}")
        asked_by = self._enhancement_asked_by()
        if (self.config or {}).get("enhance_prompt") is False and asked_by:
            raise field_error("/config/enhance_prompt", f"false contradicts the enhancement asked by "
                                                        f"{', '.join(asked_by)}")
        return self

    def _enhancement_asked_by(self) -> list[str]:
        """What asks for an enhancement: the `enhance` object, the type, the legacy flag."""
        legacy_flag = (self.config or {}).get("enhance_prompt")
        return [reason for reason, on in (("enhance", self.enhance is not None),
                                          ("type", job_types()[self.type]["enhance"]),
                                          ("config.enhance_prompt", legacy_flag is True)) if on]

    def to_params(self) -> RoutePlan:
        """The route: the body's worker, its enhancement (the chat worker's default model unless named), and the
        body to forward (the type without enhancement, `config` without the legacy flag). Nothing in it depends
        on the profile, so it takes no settings (`configuration.requests.normalise` is for the engines')."""
        entry = job_types()[self.type]
        enhance = None
        if self._enhancement_asked_by():
            enhance = dict(self.enhance or {})
            enhance.setdefault("model", default_enhance_model())
        forward = self.model_dump(exclude_unset=True, exclude=set(_ROUTING))
        forward["type"] = entry["base_type"]
        if self.config is not None:
            forward["config"] = {k: v for k, v in self.config.items() if k != "enhance_prompt"}
        return {"target": self.target or entry["worker"], "enhance": enhance, "forward": forward}


@functools.lru_cache(maxsize=8)
def _jobs_for(max_tokens: int) -> type[JobRequest]:
    """The routed job's model where the chat worker generates at most `max_tokens` tokens."""
    short_names = sorted(m["short_name"] for m in chat_config()["models"].values())
    chat_enhance = {"system_prompt": chat.SYSTEM_PROMPT, "max_tokens": chat.max_tokens(max_tokens), **chat.SAMPLING}
    enhance = {
        "type": "object", "additionalProperties": False,
        "description": "Enhance the prompt on the chat worker first; the generation uses the enhanced prompt. "
                       "Parameters are the chat worker's /enhance/<model> parameters.",
        "properties": {"model": {"enum": short_names, "description": "Chat model (default: the chat worker's legacy "
                                                                     "default)."},
                       **{name: nullable(chat_enhance[name]) for name in _ENHANCE_FROM_CHAT}},
    }
    workers = sorted({entry["worker"] for entry in job_types().values()})
    # (annotations built at run time: typed Any, as create_model takes them)
    type_type: Any = Annotated[str, Schema({"enum": sorted(job_types())})]
    target_type: Any = Annotated[str | None, Schema({"enum": workers, "description": "Inferred from `type` when "
                                                                                     "absent; must agree with it."})]
    enhance_type: Any = Annotated[dict | None, Schema(enhance)]
    return create_model("JobRequest", __base__=JobRequest, type=(type_type, ...), target=(target_type, None),
                        enhance=(enhance_type, None))


def jobs_request(settings: Settings) -> type[JobRequest]:
    """The routed job's model of this profile (the chat worker's max_tokens bound)."""
    return _jobs_for(chat.max_tokens_bound(settings))


# ---- an operator's memory action ------------------------------------------------------------------------------

class MemoryActionRequest(BaseModel):
    """Body of POST /memory/load and /memory/unload on the orchestrator (query parameters merged by the route);
    the worker's enum is added (`memory_action_request`)."""
    model_config = ConfigDict(**STRICT_OBJECT, title="Load/unload a worker's models", json_schema_extra={
        "description": "Cross-field rules: none between fields; the worker answers as its own /memory/load or "
                       "/memory/unload does (`wait_s` is refused by load, `which` must name one of its models)."})

    worker: str
    which: Annotated[str | None, Schema({"type": "string", "minLength": 1, "maxLength": 64,
                                         "description": "A model of that worker or `all` (default)."})] = None
    wait_s: Annotated[float | None, Schema({"type": "number", "minimum": 0, "maximum": 600,
                                            "description": "Unload only: how long to wait for a running job."})] = None

    def forward(self) -> dict:
        """The body for the worker's own memory route: what was sent, less `worker`."""
        return self.model_dump(exclude_unset=True, exclude={"worker"})


@functools.cache
def _memory_action() -> type[MemoryActionRequest]:
    worker_type: Any = Annotated[str, Schema({"enum": sorted(worker_configs())})]
    return create_model("MemoryActionRequest", __base__=MemoryActionRequest, worker=(worker_type, ...))


def memory_action_request(_settings: Settings) -> type[MemoryActionRequest]:
    """The same on every profile (the workers are configuration/workers.json's)."""
    return _memory_action()


# ---- the memory broker's calls ----------------------------------------------------------------------------------

_NAME = {"type": "string", "pattern": "^[a-z0-9_]{1,64}" + END}
_BYTES = {"type": "integer", "minimum": 0, "maximum": 2**50}
_MODEL = {"type": "string", "minLength": 1, "maxLength": 64}
_MODELS = {"type": "array", "items": _MODEL, "maxItems": 16}


def _broker(title: str) -> ConfigDict:
    return ConfigDict(**STRICT_OBJECT, title=f"Memory broker: {title}", json_schema_extra={
        "description": "Cross-field rules: none between fields; `worker` must be a worker of this pod (400 at "
                       "/worker) and each model one of its models (400 at /model or /models/<i>)."})


class BrokerCall(BaseModel):
    """A worker's call to the memory broker: who calls."""
    model_config = STRICT_OBJECT

    worker: Annotated[str, Schema(_NAME)]


class BrokerHello(BrokerCall):
    model_config = _broker("a worker process started")
    pid: Annotated[int, Schema({"type": "integer", "minimum": 1})]


class BrokerAcquire(BrokerCall):
    model_config = _broker("lease memory before loading a model")
    model: Annotated[str, Schema(_MODEL)]
    estimate_bytes: Annotated[int, Schema(_BYTES)]
    working_bytes: Annotated[int, Schema(_BYTES)] = 0


class BrokerAdmit(BrokerCall):
    model_config = _broker("could a job of this size ever fit")
    need_bytes: Annotated[int, Schema(_BYTES)]


class BrokerLoaded(BrokerCall):
    model_config = _broker("a model is loaded; its measured size")
    model: Annotated[str, Schema(_MODEL)]
    resident_bytes: Annotated[int, Schema(_BYTES)]


class BrokerRelease(BrokerCall):
    model_config = _broker("a model was unloaded")
    model: Annotated[str, Schema(_MODEL)]


class BrokerJobStarted(BrokerCall):
    model_config = _broker("a job starts; its working memory")
    working_bytes: Annotated[int, Schema(_BYTES)] = 0


class BrokerWorking(BrokerCall):
    model_config = _broker("a running job needs more working memory")
    working_bytes: Annotated[int, Schema(_BYTES)]


class BrokerJobFinished(BrokerCall):
    model_config = _broker("a job ended")


class BrokerTouch(BrokerCall):
    model_config = _broker("models were used")
    models: Annotated[list[str], Schema(_MODELS)]


class BrokerTurn(BrokerCall):
    model_config = _broker("a job is about to start on these models")
    models: Annotated[list[str], Schema(_MODELS)]


BROKER_CALLS: dict[str, type[BrokerCall]] = {
    "hello": BrokerHello, "acquire": BrokerAcquire, "admit": BrokerAdmit, "loaded": BrokerLoaded,
    "release": BrokerRelease, "job_started": BrokerJobStarted, "working": BrokerWorking,
    "job_finished": BrokerJobFinished, "touch": BrokerTouch, "turn": BrokerTurn}


def _static(model: type[BaseModel]) -> Any:
    def of_profile(_settings: Settings) -> type[BaseModel]:
        return model
    of_profile.__doc__ = f"{model.__name__}: the same on every profile."
    return of_profile


# request schema name -> the factory of its model for a profile (configuration.requests.MODELS)
ORCHESTRATOR_REQUESTS = {"orchestrator.jobs": jobs_request, "orchestrator.memory_action": memory_action_request,
                         **{f"orchestrator.broker_{action}": _static(model) for action, model in BROKER_CALLS.items()}}
