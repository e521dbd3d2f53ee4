"""The OpenAPI description: each request body's schema is the one published from its request model
(configuration/requests/), the app's queued payload the translator's own (configuration/requests/app_payload.py)."""
from __future__ import annotations

from configuration import worker_config, worker_configs
from configuration.requests import schemas
from configuration.requests.app_payload import schema as app_payload_schema
from configuration.settings import Settings

ERROR = {
    "type": "object", "required": ["error"],
    "properties": {"error": {"type": "object", "required": ["code", "message", "details"], "properties": {
        "code": {"type": "string"}, "message": {"type": "string"},
        "details": {"type": "array", "items": {"type": "object", "properties": {
            "path": {"type": "string"}, "message": {"type": "string"}}}}}}},
}


def _errors(*statuses: int) -> dict:
    ref = "#/components/schemas/Error"
    return {str(s): {"description": "error", "content": {"application/json": {"schema": {"$ref": ref}}}}
            for s in statuses}


def _body(ref: str, required: bool = True) -> dict:
    return {"required": required, "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{ref}"}}}}


def _ok(description: str, schema: dict | None = None) -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema or {"type": "object"}}}}


# The answers' bodies where a caller reads them (the rest are objects described by the route's summary).
_JOB_STATUS = {"enum": ["queued", "processing", "completed", "failed", "cancelled"]}
JOB_SUBMISSION = {
    "type": "object", "required": ["job_id", "status", "status_url", "duplicate"],
    "properties": {"job_id": {"type": "string"}, "status": _JOB_STATUS, "status_url": {"type": "string"},
                   "duplicate": {"type": "boolean", "description": "true: this id was submitted before (the same "
                                                                   "caller); the first job is the one that runs."}},
}
JOB_RECORD = {
    "type": "object",
    "required": ["job_id", "type", "user_id", "status", "progress", "assets", "error", "metadata", "created_at",
                 "started_at", "finished_at", "callback"],
    "properties": {
        "job_id": {"type": "string"}, "type": {"type": "string"}, "user_id": {"type": "string"}, "status": _JOB_STATUS,
        "progress": {"type": "object"}, "assets": {"type": "array", "items": {"type": "object"}},
        "error": {"type": ["object", "null"]}, "metadata": {"type": "object"},
        "created_at": {"type": "string"}, "started_at": {"type": ["string", "null"]},
        "finished_at": {"type": ["string", "null"]},
        "callback": {"type": "object", "required": ["status", "attempts"],
                     "properties": {"status": {"enum": ["not_sent", "disabled", "pending", "delivered", "failed"]},
                                    "attempts": {"type": "integer", "minimum": 0}}},
    },
}
# Request schemas of job submissions (200 with the record or a dry run's answer, 202 with where to look),
# and those whose body is optional (the query parameters say the same).
SUBMISSIONS = {"sdxl.generate", "wan.generate", "orchestrator.jobs"}
OPTIONAL_BODIES = {"memory.action", "orchestrator.memory_action"}
# Routes that do not answer JSON: path -> content types of their 200.
CONTENT_TYPES = {"/": ("text/html",), "/ops": ("text/html",), "/metrics": ("text/plain",),
                 "/v1/chat/completions": ("application/json", "text/event-stream")}


_CONTENT_SCHEMAS = {
    "application/json": {"type": "object"},
    # one server-sent event: `data:` is a JSON chunk or [DONE]
    "text/event-stream": {"type": "object", "required": ["data"],
                          "properties": {"data": {"type": "string"}, "event": {"type": "string"}}},
}


def _success(path: str, schema_name: str | None) -> dict:
    if schema_name in SUBMISSIONS:
        return {"200": _ok("The job record (it ended within `?wait=`), the first job of a repeated id, or a dry "
                           "run's answer."),
                "202": _ok("Accepted: where to follow the job.", {"$ref": "#/components/schemas/JobSubmission"})}
    if path in ("/jobs/{job_id}", "/jobs/{job_id}/cancel"):
        return {"200": _ok("The job record.", {"$ref": "#/components/schemas/JobRecord"})}
    if path in CONTENT_TYPES:
        content = {kind: {"schema": _CONTENT_SCHEMAS.get(kind, {"type": "string"})} for kind in CONTENT_TYPES[path]}
        return {"200": {"description": "success", "content": content}}
    return {"200": _ok("success")}


# A route table: path -> method -> (summary, request schema name or None, error statuses). Each app
# module that serves routes exports its table (ROUTES); the app passes its tables in.
RouteTable = dict[str, dict[str, tuple[str, str | None, tuple[int, ...]]]]


def route_endpoints(*tables: RouteTable) -> dict[str, list[str]]:
    """path -> its methods (upper case), of the routes a process serves: `/health`'s `endpoints`."""
    endpoints: dict[str, list[str]] = {}
    for table in tables:
        for path, methods in table.items():
            endpoints.setdefault(path, []).extend(m.upper() for m in methods)
    return endpoints


_WAIT = {"name": "wait", "in": "query", "required": False, "schema": {"type": "number", "minimum": 0, "maximum": 600},
         "description": "Block up to this many seconds; 200 with the job record if it ended in time (when the "
                        "server has no thread to spare for waiting, it answers at once, as without `wait`)."}
_DRY_RUN = {"name": "dry_run", "in": "query", "required": False, "schema": {"enum": ["1", "true", "0", "false"]},
            "description": "1/true: validate, normalise and check memory admission and the job id; queue nothing."}


def _models(worker: str) -> list[str]:
    """The models `which` may name: the worker's (every worker's for the orchestrator), and `all`."""
    names = worker_configs() if worker == "orchestrator" else [worker]
    return sorted({m for name in names for m in worker_config(name)["models"]}) + ["all"]


def _query_parameters(worker: str, path: str, method: str, schema_name: str | None) -> list[dict]:
    """Every query parameter an operation reads (the routes read these and no others)."""
    if method == "post" and schema_name in SUBMISSIONS:
        return [_WAIT, _DRY_RUN]
    if path in ("/memory/load", "/memory/unload") and schema_name in OPTIONAL_BODIES:
        params = []
        if worker == "orchestrator":
            params.append({"name": "worker", "in": "query", "required": False,
                           "schema": {"enum": sorted(worker_configs())}, "description": "Same as the body's `worker`."})
        params.append({"name": "which", "in": "query", "required": False, "schema": {"enum": _models(worker)},
                       "description": "Same as the body's `which`."})
        if path == "/memory/unload":
            params.append({"name": "wait_s", "in": "query", "required": False,
                           "schema": {"type": "number", "minimum": 0, "maximum": 600},
                           "description": "Same as the body's `wait_s`."})
        return params
    if worker == "orchestrator" and path == "/memory/status":
        return [{"name": "history", "in": "query", "required": False,
                 "schema": {"type": "number", "minimum": 0, "maximum": 500},
                 "description": "How many of the broker's latest decisions to list (default 100)."}]
    return []


def openapi_document(worker: str, settings: Settings, *tables: RouteTable) -> dict:
    """The document of a worker (or "orchestrator") serving the routes of `tables`."""
    all_schemas = schemas(settings)
    paths: dict = {}
    used: set[str] = set()
    for table in tables:
        for path, methods in table.items():
            for method, (summary, schema_name, statuses) in methods.items():
                parameters = _query_parameters(worker, path, method, schema_name)
                # A body can be malformed (400) or too large (413); a query parameter out of range is a 400.
                codes = set(statuses) | ({400, 413} if schema_name else set()) | ({400} if parameters else set())
                op = {"summary": summary, "responses": {**_success(path, schema_name), **_errors(*sorted(codes))}}
                if path.startswith("/jobs/{job_id}"):
                    parameters = [{"name": "job_id", "in": "path", "required": True, "schema": {"type": "string"}},
                                  *parameters]
                if parameters:
                    op["parameters"] = parameters
                if 401 in statuses:  # the open routes (probes, the ops page's HTML) list no 401
                    op["security"] = [{"bearer": []}]
                if schema_name:
                    ref = schema_name.replace(".", "_")
                    op["requestBody"] = _body(ref, required=schema_name not in OPTIONAL_BODIES)
                    used.add(schema_name)
                paths.setdefault(path, {})[method] = op
    components = {name.replace(".", "_"): {k: v for k, v in all_schemas[name].items() if k != "$schema"}
                  for name in sorted(used)}
    for name in OPTIONAL_BODIES & used:  # `which`: exactly the models this process can name
        component = components[name.replace(".", "_")]
        properties = dict(component["properties"])
        properties["which"] = {**properties["which"], "enum": _models(worker)}
        components[name.replace(".", "_")] = {**component, "properties": properties}
    components["Error"] = ERROR
    components["JobSubmission"] = JOB_SUBMISSION
    components["JobRecord"] = JOB_RECORD
    role = worker_config(worker)["role"] if worker != "orchestrator" else "orchestrator"
    description = (f"Role: {role}. Profile: {settings.model_profile}. `OPTIONS` on any path below answers 204 with "
                   "an `Allow` header, without auth and without running the operation (an unknown path: 404).")
    if worker in ("sdxl", "wan"):  # not an HTTP route, but how the app sends every image and video job
        components["app_payload"] = {k: v for k, v in app_payload_schema().items() if k != "$schema"}
        description += (" With REDIS_URL this worker also takes the app's jobs from its Redis list (SDXL_QUEUE / "
                        "WAN_QUEUE): `components.schemas.app_payload` is the queued payload; each job ends in one "
                        "callback signed with `X-Callback-Signature` (docs/API.md).")
    return {
        "openapi": "3.1.0",
        "info": {"title": f"OurVidz {worker} worker" if worker != "orchestrator" else "OurVidz orchestrator",
                 "version": "1.0.0", "description": description},
        "jsonSchemaDialect": "https://json-schema.org/draft/2020-12/schema",
        "paths": paths,
        "components": {"schemas": components,
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
    }
