"""The OpenAPI description, generated from the same schema dictionaries the workers validate with."""
from __future__ import annotations

from configuration import worker_config
from configuration.schemas import schemas
from configuration.schemas.app_payload import schema as app_payload_schema
from configuration.settings import Settings

ERROR = {
    "type": "object", "required": ["error"],
    "properties": {"error": {"type": "object", "required": ["code", "message", "details"], "properties": {
        "code": {"type": "string"}, "message": {"type": "string"},
        "details": {"type": "array", "items": {"type": "object", "properties": {
            "path": {"type": "string"}, "message": {"type": "string"}}}}}}},
}


def _errors(*statuses: int) -> dict:
    return {str(s): {"description": "error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
            for s in statuses}


def _body(ref: str) -> dict:
    return {"required": True, "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{ref}"}}}}


def _ok(description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": {"type": "object"}}}}


# A route table: path -> method -> (summary, request schema name or None, error statuses). Each app
# module that serves routes exports its table (ROUTES); the app passes its tables in.
RouteTable = dict[str, dict[str, tuple[str, str | None, tuple[int, ...]]]]


_WAIT = {"name": "wait", "in": "query", "required": False, "schema": {"type": "number", "minimum": 0, "maximum": 600},
         "description": "Block up to this many seconds; 200 with the job record if it ended in time."}
_DRY_RUN = {"name": "dry_run", "in": "query", "required": False, "schema": {"enum": ["1", "true"]},
            "description": "Validate, normalise and check memory admission; queue nothing."}
# Query parameters of the generation routes (keyed by path, limited to the request schemas that take them).
QUERY_PARAMETERS = {
    "/generate": {"for": {"sdxl.generate", "wan.generate"}, "parameters": [_WAIT, _DRY_RUN]},
    "/jobs": {"for": {"orchestrator.jobs"}, "parameters": [_WAIT]},
}


def openapi_document(worker: str, settings: Settings, *tables: RouteTable) -> dict:
    """The document of a worker (or "orchestrator") serving the routes of `tables`."""
    all_schemas = schemas(settings)
    paths: dict = {}
    used: set[str] = set()
    for table in tables:
        for path, methods in table.items():
            for method, (summary, schema_name, statuses) in methods.items():
                op = {"summary": summary, "responses": {"200": _ok("success"), **_errors(*statuses)}}
                if path.startswith("/jobs/{job_id}"):
                    op["parameters"] = [{"name": "job_id", "in": "path", "required": True, "schema": {"type": "string"}}]
                if method == "post" and path in QUERY_PARAMETERS and schema_name in QUERY_PARAMETERS[path]["for"]:
                    op["parameters"] = QUERY_PARAMETERS[path]["parameters"]
                if 401 in statuses:  # the open routes (probes, the ops page's HTML) list no 401
                    op["security"] = [{"bearer": []}]
                if schema_name:
                    ref = schema_name.replace(".", "_")
                    op["requestBody"] = _body(ref)
                    used.add(schema_name)
                paths.setdefault(path, {})[method] = op
    components = {name.replace(".", "_"): {k: v for k, v in all_schemas[name].items() if k != "$schema"} for name in sorted(used)}
    components["Error"] = ERROR
    role = worker_config(worker)["role"] if worker != "orchestrator" else "orchestrator"
    description = f"Role: {role}. Profile: {settings.model_profile}."
    if worker in ("sdxl", "wan"):  # not an HTTP route, but how the app sends every image and video job
        components["app_payload"] = {k: v for k, v in app_payload_schema().items() if k != "$schema"}
        description += (" With REDIS_URL this worker also takes the app's jobs from its Redis list (SDXL_QUEUE / "
                        "WAN_QUEUE): `components.schemas.app_payload` is the queued payload; each job ends in one "
                        "callback signed with `X-Callback-Signature` (docs/QUEUE.md).")
    return {
        "openapi": "3.1.0",
        "info": {"title": f"OurVidz {worker} worker" if worker != "orchestrator" else "OurVidz orchestrator",
                 "version": "1.0.0", "description": description},
        "jsonSchemaDialect": "https://json-schema.org/draft/2020-12/schema",
        "paths": paths,
        "components": {"schemas": components,
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
    }
