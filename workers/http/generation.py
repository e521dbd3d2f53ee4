"""POST /generate for the generation workers (SDXL, WAN): validate, normalise, queue."""
from __future__ import annotations

from flask import Blueprint, jsonify, request

from configuration.params import normalise_generation
from configuration.params.common import summarise_data_urls
from configuration.schemas import validate_request
from workers.http.body import json_body, query_float
from workers.http.common import require_ready, state
from workers.http.errors import ApiError
from workers.runtime.errors import MemoryUnavailable

bp = Blueprint("generation", __name__)

MAX_WAIT_S = 600.0


@bp.post("/generate")
def generate():
    require_ready()
    s = state()
    body = json_body()
    validate_request(s.request_schema, body, s.settings)
    wait_s = query_float("wait", 0, MAX_WAIT_S)
    params = normalise_generation(s.name, body, s.settings)
    s.engine.check_request(params)
    try:
        s.host.admit(s.engine.required_models(params), s.engine.working_bytes(params))
    except MemoryUnavailable as exc:
        if not exc.too_big:  # the memory broker could not be asked: try again later
            raise ApiError(503, "memory_broker_unavailable", exc.message, [exc.details], headers={"Retry-After": "5"}) from None
        raise ApiError(409, "insufficient_memory", exc.message, [exc.details]) from None
    if request.args.get("dry_run") in ("1", "true"):
        # Everything a submission checks, nothing queued (the orchestrator checks before enhancing).
        return jsonify({"valid": True, "parameters": summarise_data_urls(
            {k: v for k, v in params.items() if k != "caller_metadata"})}), 200
    metadata = {"original_prompt": body["prompt"], "enhanced_prompt": None,
                "parameters": summarise_data_urls({k: v for k, v in params.items() if k != "caller_metadata"}),
                "caller_metadata": summarise_data_urls(params.get("caller_metadata", {}))}
    # The orchestrator sends the one terminal callback for jobs it routes.
    send_callback = request.headers.get("X-Callback-Mode", "send") != "none"
    record, created = s.runner.submit(body.get("id"), body["type"], body.get("user_id", "anonymous"),
                                      params, metadata, send_callback=send_callback)
    if wait_s and s.runner.wait(record.job_id, wait_s):
        return jsonify(record.public()), 200
    return jsonify({"job_id": record.job_id, "status": record.status, "status_url": f"/jobs/{record.job_id}",
                    "duplicate": not created}), 202 if created else 200
