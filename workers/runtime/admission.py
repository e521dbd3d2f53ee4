"""What every generation job goes through before it is queued, whichever way it arrived (POST
/generate or the app's Redis queue): the worker's own schema, normalisation, the engine's checks,
and whether it could ever fit in memory. One path, so a queued job and an HTTP job are held to the
same rules and reported the same way."""
from __future__ import annotations

from typing import Any

from common import policy
from configuration import requests
from configuration.requests.common import summarise_data_urls
from configuration.settings import Settings
from workers.runtime import text_safety
from workers.runtime.jobs import JobEngine
from workers.runtime.models import ModelHost

# Where check_generation leaves the admission's content-policy checks for job_metadata (not a parameter).
CONTENT_CHECKS = "content_policy_checks"


def check_generation(schema: str, settings: Settings, engine: JobEngine[Any], body: dict) -> dict:
    """The normalised parameters of `body` (a request of schema `schema`, e.g. sdxl.generate); raises
    ValidationFailed (a field path per problem) or the engine's own refusal."""
    # One validation: the request model holds the bounds and the cross-field rules (configuration/requests/).
    params = dict(requests.normalise(schema, body, settings))
    # The content policy on the prompt and compel weights (ContentPolicyRefused: 422, or a failed queued job):
    # the word rules, then the text classifier (workers/runtime/text_safety.py) on the same text.
    tier, rules_check = policy.check_generation_prompt(body, settings.content_tier_default, body.get("id"))
    classifier_check = text_safety.require(text_safety.check_text(
        settings, [body.get("prompt"), body.get("compel_weights")], tier=tier, stage="prompt", job_id=body.get("id")))
    params["content_tier"] = tier
    params[CONTENT_CHECKS] = [rules_check.public(), classifier_check.public()]
    engine.check_request(params)
    return params


def admit(engine: JobEngine[Any], host: ModelHost, params: dict) -> None:
    """MemoryUnavailable when the job could never fit (too_big) or the memory broker cannot be asked."""
    host.admit(engine.required_models(params), engine.working_bytes(params))


def parameters_used(params: dict) -> dict:
    """The parameters as reported (job records, callbacks): data: URLs summarised, caller fields apart."""
    return summarise_data_urls({k: v for k, v in params.items() if k not in ("caller_metadata", CONTENT_CHECKS)})


def job_metadata(body: dict, params: dict, **extra: Any) -> dict:
    """The metadata a job record starts with: prompts, parameters as used, the caller's own fields, the
    admission's content-policy checks (taken out of `params`, so the job's parameters and provenance do not
    carry them)."""
    checks = params.pop(CONTENT_CHECKS)
    return {"original_prompt": body["prompt"], "enhanced_prompt": None, "parameters": parameters_used(params),
            "caller_metadata": summarise_data_urls(params.get("caller_metadata", {})),
            "content_policy": {"tier": params["content_tier"], "checks": checks}, **extra}
