"""The jobs of the generation workers (SDXL, WAN): POST /generate (validate, normalise, queue), the job
record and its cancellation. The chat worker has no jobs and serves none of these."""
from __future__ import annotations

from flask import Blueprint, jsonify, request

from common.body import json_body, query_bool, query_float
from common.job_routes import add_job_routes, submission_response
from configuration.openapi import RouteTable
from configuration.requests.common import ValidationFailed
from workers.http.common import require_ready, state
from workers.runtime.admission import admit, check_generation, job_metadata, parameters_used
from workers.runtime.fetch import FetchRefused, check_reference_url
from workers.runtime.jobs import JobRunner

bp = Blueprint("generation", __name__)

MAX_WAIT_S = 600.0


@bp.post("/generate")
def generate():
    require_ready()
    s = state()
    runner = _runner()
    body = json_body()
    # The one admission of queued and HTTP jobs (workers/runtime/admission.py): schema, normalisation, the
    # content policy (422 content_policy), the engine's checks.
    params = check_generation(s.request_schema, s.settings, runner.engine, body)
    wait_s = query_float("wait", 0, MAX_WAIT_S)
    dry_run = query_bool("dry_run")
    _check_references(body, runner.engine.reference_urls(params))
    # MemoryUnavailable: 409 for a job that can never fit, 503 when the broker cannot be asked (common/errors.py)
    admit(runner.engine, s.host, params)
    # The orchestrator sends the one terminal callback for jobs it routes.
    send_callback = request.headers.get("X-Callback-Mode", "send") != "none"
    runner.check_id(body.get("id"), body.get("user_id", "anonymous"), send_callback)
    if dry_run:
        # Everything a submission checks, nothing queued (the orchestrator checks before enhancing).
        return jsonify({"valid": True, "parameters": parameters_used(params)}), 200
    metadata = job_metadata(body, params)
    record, created = runner.submit(body.get("id"), body["type"], body.get("user_id", "anonymous"),
                                    params, metadata, send_callback=send_callback)
    return submission_response(runner, record, created, wait_s)


def _check_references(body: dict, urls: dict[str, str]) -> None:
    """A reference URL the fetch would refuse for its form alone is a 400 now, naming its field."""
    for url in urls.values():
        try:
            check_reference_url(url)
        except FetchRefused as exc:
            raise ValidationFailed([{"path": _pointer_to(body, url) or "", "message": exc.message}]) from None


def _pointer_to(value, wanted: str, path: str = "") -> str | None:
    """The JSON pointer of the first string equal to `wanted` in the request body."""
    if isinstance(value, str):
        return path if value == wanted else None
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, child in items:
        found = _pointer_to(child, wanted, f"{path}/{str(key).replace('~', '~0').replace('/', '~1')}")
        if found is not None:
            return found
    return None


def _runner() -> JobRunner:
    runner = state().runner
    if runner is None:  # this blueprint is registered only on workers with a job runner
        raise RuntimeError("generation routes on a worker without a job runner")
    return runner


add_job_routes(bp, _runner, "on this worker")


def _generate_route(what: str, schema: str) -> RouteTable:
    return {"/generate": {"post": (f"Queue {what} job (202; `?wait=` blocks up to that many seconds; `?dry_run=1` "
                                   f"checks "
                                   "and queues nothing).", schema, (400, 401, 409, 413, 422, 503))},
            "/jobs/{job_id}": {"get": ("The job record.", None, (401, 404))},
            "/jobs/{job_id}/cancel": {"post": ("Cancel a queued or running job.", None, (401, 404, 409))}}


# What /openapi.json describes, per worker serving /generate.
ROUTES: dict[str, RouteTable] = {"sdxl": _generate_route("an SDXL", "sdxl.generate"),
                                 "wan": _generate_route("a WAN", "wan.generate")}
