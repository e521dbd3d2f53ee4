"""The OpenAPI description, generated from the same schema dictionaries the workers validate with."""
from __future__ import annotations

from configuration import worker_config
from configuration.schemas import schemas
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


# Extra routes per worker / orchestrator: path -> method -> (summary, request schema name or None, statuses)
ROUTES = {
    "common": {
        "/health": {"get": ("Process is alive (no auth).", None, ())},
        "/ready": {"get": ("Able to take work (no auth); 503 while shutting down.", None, (503,))},
        "/jobs/{job_id}": {"get": ("The job record.", None, (401, 404))},
        "/jobs/{job_id}/cancel": {"post": ("Cancel a queued or running job.", None, (401, 404, 409))},
        "/memory/status": {"get": ("Models loaded, resident bytes, device, busy.", None, (401,))},
        "/memory/load": {"post": ("Load a model (`which`).", "memory.action", (400, 401, 409, 503))},
        "/memory/unload": {"post": ("Unload a model (`which`); 409 while it runs a job.", "memory.action", (400, 401, 409))},
        "/openapi.json": {"get": ("This document.", None, (401,))},
    },
    "sdxl": {"/generate": {"post": ("Queue an SDXL job (202; `?wait=` blocks up to that many seconds; `?dry_run=1` checks and queues nothing).", "sdxl.generate", (400, 401, 409, 413, 503))}},
    "wan": {"/generate": {"post": ("Queue a WAN job (202; `?wait=` blocks up to that many seconds; `?dry_run=1` checks and queues nothing).", "wan.generate", (400, 401, 409, 413, 503))}},
}


_WAIT = {"name": "wait", "in": "query", "required": False, "schema": {"type": "number", "minimum": 0, "maximum": 600},
         "description": "Block up to this many seconds; 200 with the job record if it ended in time."}
_DRY_RUN = {"name": "dry_run", "in": "query", "required": False, "schema": {"enum": ["1", "true"]},
            "description": "Validate, normalise and check memory admission; queue nothing."}
# Query parameters of the generation routes (keyed by path, limited to the request schemas that take them).
QUERY_PARAMETERS = {
    "/generate": {"for": {"sdxl.generate", "wan.generate"}, "parameters": [_WAIT, _DRY_RUN]},
    "/jobs": {"for": {"orchestrator.jobs"}, "parameters": [_WAIT]},
}


def register_routes(group: str, routes: dict) -> None:
    """Other modules (chat, orchestrator) add their routes here so the document stays complete."""
    ROUTES[group] = routes


def openapi_document(worker: str, settings: Settings) -> dict:
    all_schemas = schemas(settings)
    groups = ["common", worker] if worker != "orchestrator" else ["orchestrator"]
    if worker == "chat" or worker == "orchestrator":
        import importlib
        importlib.import_module({"chat": "workers.http.chat", "orchestrator": "orchestrator.api"}[worker])
    paths: dict = {}
    used: set[str] = set()
    for group in groups:
        for path, methods in ROUTES.get(group, {}).items():
            for method, (summary, schema_name, statuses) in methods.items():
                op = {"summary": summary, "responses": {"200": _ok("success"), **_errors(*statuses)}}
                if path.startswith("/jobs/{job_id}"):
                    op["parameters"] = [{"name": "job_id", "in": "path", "required": True, "schema": {"type": "string"}}]
                if method == "post" and path in QUERY_PARAMETERS and schema_name in QUERY_PARAMETERS[path]["for"]:
                    op["parameters"] = QUERY_PARAMETERS[path]["parameters"]
                if path != "/health" and path != "/ready":
                    op["security"] = [{"bearer": []}]
                if schema_name:
                    ref = schema_name.replace(".", "_")
                    op["requestBody"] = _body(ref)
                    used.add(schema_name)
                paths.setdefault(path, {})[method] = op
    components = {name.replace(".", "_"): {k: v for k, v in all_schemas[name].items() if k != "$schema"} for name in sorted(used)}
    components["Error"] = ERROR
    role = worker_config(worker)["role"] if worker != "orchestrator" else "orchestrator"
    return {
        "openapi": "3.1.0",
        "info": {"title": f"OurVidz {worker} worker" if worker != "orchestrator" else "OurVidz orchestrator",
                 "version": "1.0.0", "description": f"Role: {role}. Profile: {settings.model_profile}."},
        "jsonSchemaDialect": "https://json-schema.org/draft/2020-12/schema",
        "paths": paths,
        "components": {"schemas": components,
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
    }
