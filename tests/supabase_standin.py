"""A local HTTP server speaking the part of Supabase's HTTP API the pod uses, for the real
`supabase` Python client (and plain HTTP callers) to talk to in tests. Nothing is mocked on the
client side: the client builds its real requests and this server answers as Supabase does.

Storage (`/storage/v1/...`): upload (POST, multipart as the client sends it or a raw body; `x-upsert`),
update (PUT), download (`object/<bucket>/<path>`, `object/authenticated/...`), signed URLs
(`object/sign/...`), remove (`DELETE object/<bucket>`). Each bucket has its allowed MIME types,
checked per upload as the app's buckets do (an `application/octet-stream` upload is refused).
Every storage call needs the service key as bearer.

Edge functions (`POST /functions/v1/<name>`): every call is recorded (raw body and headers).
- `job-callback` checks `X-Callback-Signature: sha256=<hex HMAC-SHA256 of the exact body>` with the
  app's `JOB_CALLBACK_SECRET` (401 otherwise), needs `job_id` and `status` (400), skips callbacks
  for jobs already `completed` or `cancelled` (200), as the app's function does.
- `update-worker-url` GETs `{worker_url}/health` with a 5 s timeout and answers 400 when that fails,
  then stores `workerUrl` in `system_config`; `register-chat-worker` does the same for `chatWorkerUrl`
  and writes `workerHealthCache.chatWorker` without `workerUrl`, as the app's function does.
- `health-check-workers` (service key) GETs `/health` of the registered chat and WAN workers and writes
  `workerHealthCache.chatWorker` / `wanWorker` (`isHealthy`, `workerUrl`, `lastChecked`); `chat_worker_usable()`
  is roleplay-chat's gate on that entry (healthy, with a URL, checked under 120 s ago).
- `unavailable_until[name] = time.monotonic() + s` answers 503 to every call of that function for `s` seconds;
  `fail_functions[name] = n` to its next `n` calls.

REST (`GET /rest/v1/jobs`, PostgREST's form): the app's `jobs` table as `job_status` (id -> status; what
job-callback stores, and what a test sets with `set_job_status`, e.g. `cancelled` as the app's cancel
does). Filters `id=eq.<id>`, `select=<columns>` (`id`, `status`); the service key as bearer (401
otherwise); `fail_rest` answers 500 to that many reads first. Every read is in `rest_reads`.
`fail_uploads = n` answers 503 to the next `n` storage uploads (a transient failure the pod retries).
"""
from __future__ import annotations

import email.parser
import email.policy
import hashlib
import hmac
import json
import secrets
import threading
import time
from http.server import BaseHTTPRequestHandler
from urllib.parse import parse_qs, unquote, urlsplit

import requests

from tests.support import LocalHTTPServer, poll_until

SERVICE_KEY = "test-service-role-key"
CALLBACK_SECRET = "test-job-callback-secret"
IMAGE_AND_VIDEO = ("image/png", "image/jpeg", "image/webp", "image/gif", "video/mp4", "video/webm", "video/quicktime")
# The app's buckets as they are: images and (since March 2026) video only; no application/json, so the pod's
# provenance sidecars are refused there (PROVENANCE_SIDECAR is off by default on Supabase; docs/API.md).
DEFAULT_BUCKETS = {"workspace-temp": IMAGE_AND_VIDEO, "user-library": IMAGE_AND_VIDEO}
CHAT_HEALTH_MAX_AGE_S = 120  # roleplay-chat uses the chat worker only with a health entry younger than this
TERMINAL_SKIPPED = ("completed", "cancelled")  # the app skips callbacks for jobs already in these states


def app_accepts_signature(headers: dict, raw_body: bytes, secret: str) -> bool:
    """A copy of the app's check in `job-callback`: `X-Callback-Signature` must be `sha256=` followed by
    the lowercase hex HMAC-SHA256 of the exact body bytes, keyed with JOB_CALLBACK_SECRET."""
    supplied = next((v for k, v in headers.items() if k.lower() == "x-callback-signature"), "")
    if not secret or not supplied.startswith("sha256="):
        return False
    expected = hmac.new(secret.encode(), raw_body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(supplied[len("sha256="):], expected)


class SupabaseStandIn(LocalHTTPServer):
    def __init__(self, service_key: str = SERVICE_KEY, callback_secret: str = CALLBACK_SECRET,
                 buckets: dict[str, tuple[str, ...]] | None = None):
        self.service_key = service_key
        self.callback_secret = callback_secret
        self.buckets = dict(buckets or DEFAULT_BUCKETS)
        self.objects: dict[tuple[str, str], tuple[bytes, str]] = {}   # (bucket, path) -> (data, mime)
        self.calls: list[dict] = []            # every function call: name, headers, raw, body, status
        self.requests: list[dict] = []         # every request: method, path, status
        self.job_status: dict[str, str] = {}   # what job-callback stored per job
        self.system_config: dict = {}          # row 1's `config` of the app's system_config table
        self.fail_functions: dict[str, int] = {}  # name -> answer 503 this many times first
        self.unavailable_until: dict[str, float] = {}  # name -> answer 503 until this time.monotonic()
        self.fail_rest = 0                     # answer 500 to this many REST reads first
        self.fail_uploads = 0                  # answer 503 to this many uploads first
        self.rest_reads: list[str] = []        # job id of every REST read of `jobs`
        self._signed: dict[str, tuple[str, str, float]] = {}  # token -> (bucket, path, expiry)
        self._lock = threading.Lock()
        super().__init__(self._handler())

    # -- test helpers ---------------------------------------------------------------------------
    def client(self):
        """The real supabase client, pointed here with the service key."""
        from supabase import create_client
        return create_client(self.url, self.service_key)

    def put_object(self, bucket: str, path: str, data: bytes, mime: str) -> None:
        with self._lock:
            self.objects[(bucket, path)] = (data, mime)

    def signed_url(self, bucket: str, path: str, expires_in: int = 3600) -> str:
        token = secrets.token_urlsafe(24)
        with self._lock:
            self._signed[token] = (bucket, path, time.time() + expires_in)
        return f"{self.url}/storage/v1/object/sign/{bucket}/{path}?token={token}"

    def callbacks(self, job_id: str | None = None, accepted_only: bool = False) -> list[dict]:
        with self._lock:
            return [c for c in self.calls if c["name"] == "job-callback"
                    and (job_id is None or (c["body"] or {}).get("job_id") == job_id)
                    and (not accepted_only or c["status"] == 200)]

    def terminal_callbacks(self, job_id: str | None = None) -> list[dict]:
        return [c for c in self.callbacks(job_id, accepted_only=True)
                if c["body"]["status"] in ("completed", "failed", "cancelled")]

    def wait_for(self, predicate, timeout_s: float = 60, interval_s: float = 0.05):
        return poll_until(predicate, timeout_s, interval_s)

    def set_job_status(self, job_id: str, status: str) -> None:
        """A row of the app's `jobs` table (the app cancels by setting `cancelled`)."""
        with self._lock:
            self.job_status[job_id] = status

    def reads_of(self, job_id: str) -> int:
        with self._lock:
            return self.rest_reads.count(job_id)

    def chat_worker_usable(self) -> bool:
        """roleplay-chat's gate: `workerHealthCache.chatWorker` healthy, with a `workerUrl`, checked < 120 s ago."""
        from datetime import datetime
        with self._lock:
            entry = dict((self.system_config.get("workerHealthCache") or {}).get("chatWorker") or {})
        if not (entry.get("isHealthy") and entry.get("workerUrl") and entry.get("lastChecked")):
            return False
        age = time.time() - datetime.fromisoformat(entry["lastChecked"]).timestamp()
        return age < CHAT_HEALTH_MAX_AGE_S

    def function_calls(self, name: str) -> list[dict]:
        with self._lock:
            return [c for c in self.calls if c["name"] == name]

    def __enter__(self) -> SupabaseStandIn:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- the server -------------------------------------------------------------------------------
    def _handler(self):
        standin = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _body(self) -> bytes:
                length = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(length) if length else b""

            def _answer(self, status: int, payload=None, data: bytes | None = None, mime: str = "application/json"):
                body = data if data is not None else json.dumps(payload if payload is not None else {}).encode()
                self.send_response(status)
                self.send_header("Content-Type", mime)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                with standin._lock:
                    standin.requests.append({"method": self.command, "path": self.path, "status": status})

            def _storage_error(self, status: int, error: str, message: str):
                # Supabase Storage's error shape, which storage3 parses (statusCode is a string there).
                self._answer(status, {"statusCode": str(status), "error": error, "message": message})

            def _authorised(self) -> bool:
                return self.headers.get("Authorization", "") == f"Bearer {standin.service_key}"

            def do_GET(self):
                self._dispatch("GET")

            def do_POST(self):
                self._dispatch("POST")

            def do_PUT(self):
                self._dispatch("PUT")

            def do_DELETE(self):
                self._dispatch("DELETE")

            def _dispatch(self, method: str):
                parts = urlsplit(self.path)
                path = unquote(parts.path)
                raw = self._body()
                if path.startswith("/functions/v1/") and method == "POST":
                    return standin._function(self, path[len("/functions/v1/"):], raw)
                if path.startswith("/rest/v1/") and method == "GET":
                    return standin._rest(self, path[len("/rest/v1/"):], parse_qs(parts.query))
                if path.startswith("/storage/v1/object/"):
                    return standin._storage(self, method, path[len("/storage/v1/object/"):], parse_qs(parts.query), raw)
                self._answer(404, {"message": f"no route {method} {path}"})

        return Handler

    # -- storage ---------------------------------------------------------------------------------
    def _storage(self, h, method: str, rest: str, query: dict, raw: bytes) -> None:
        if rest.startswith("sign/") and method == "GET":
            return self._signed_download(h, rest[len("sign/"):], query)
        if not h._authorised():
            return h._storage_error(403, "Unauthorized", "invalid or missing service key")
        if rest.startswith("sign/") and method == "POST":
            bucket, _, path = rest[len("sign/"):].partition("/")
            if (bucket, path) not in self.objects:
                return h._storage_error(404, "not_found", "Object not found")
            expires = int(json.loads(raw or b"{}").get("expiresIn", 60))
            signed = self.signed_url(bucket, path, expires)
            return h._answer(200, {"signedURL": signed[len(self.url + "/storage/v1"):]})
        if rest.startswith("authenticated/"):
            rest = rest[len("authenticated/"):]
        bucket, _, path = rest.partition("/")
        if bucket not in self.buckets:
            return h._storage_error(404, "Bucket not found", f"bucket {bucket} does not exist")
        if method == "GET":
            found = self.objects.get((bucket, path))
            if not found:
                return h._storage_error(404, "not_found", "Object not found")
            return h._answer(200, data=found[0], mime=found[1])
        if method == "DELETE" and not path:
            prefixes = json.loads(raw or b"{}").get("prefixes", [])
            with self._lock:
                removed = [p for p in prefixes if self.objects.pop((bucket, p), None) is not None]
            return h._answer(200, [{"name": p, "bucket_id": bucket} for p in removed])
        if method in ("POST", "PUT") and path:
            return self._upload(h, method, bucket, path, raw)
        return h._storage_error(400, "invalid_request", f"unsupported {method} on {rest}")

    def _upload(self, h, method: str, bucket: str, path: str, raw: bytes) -> None:
        with self._lock:
            failing = self.fail_uploads > 0
            if failing:
                self.fail_uploads -= 1
        if failing:
            return h._storage_error(503, "service_unavailable", "storage is briefly unavailable")
        content_type = h.headers.get("Content-Type", "")
        if content_type.startswith("multipart/form-data"):
            data, mime = _multipart_file(content_type, raw)
            if data is None:
                return h._storage_error(400, "invalid_request", "multipart upload without a `file` part")
        else:
            data, mime = raw, content_type.split(";")[0].strip()
        if mime not in self.buckets[bucket]:
            return h._storage_error(415, "invalid_mime_type", f"mime type {mime or 'none'} is not supported")
        upsert = h.headers.get("x-upsert", "false").lower() == "true"
        with self._lock:
            exists = (bucket, path) in self.objects
            if method == "POST" and exists and not upsert:
                conflict = True
            elif method == "PUT" and not exists:
                conflict = None
            else:
                conflict = False
                self.objects[(bucket, path)] = (data, mime)
        if conflict:
            return h._storage_error(409, "Duplicate", "The resource already exists")
        if conflict is None:
            return h._storage_error(404, "not_found", "Object not found")
        h._answer(200, {"Key": f"{bucket}/{path}", "Id": hashlib.sha1(f"{bucket}/{path}".encode()).hexdigest()})

    def _signed_download(self, h, rest: str, query: dict) -> None:
        bucket, _, path = rest.partition("/")
        token = (query.get("token") or [""])[0]
        with self._lock:
            signed = self._signed.get(token)
            found = self.objects.get((bucket, path))
        if not signed or signed[:2] != (bucket, path) or signed[2] < time.time():
            return h._storage_error(400, "InvalidSignature", "invalid or expired token")
        if not found:
            return h._storage_error(404, "not_found", "Object not found")
        h._answer(200, data=found[0], mime=found[1])

    # -- REST (PostgREST) ------------------------------------------------------------------------
    def _rest(self, h, table: str, query: dict) -> None:
        if not h._authorised():
            return h._answer(401, {"code": "PGRST301", "message": "JWT invalid", "details": None, "hint": None})
        if table != "jobs":
            return h._answer(404, {"code": "42P01", "message": f'relation "public.{table}" does not exist',
                                   "details": None, "hint": None})
        wanted = (query.get("id") or [""])[0]
        columns = [c for c in (query.get("select") or ["*"])[0].split(",") if c]
        with self._lock:
            if wanted.startswith("eq."):
                self.rest_reads.append(wanted[3:])
            failing = self.fail_rest > 0
            if failing:
                self.fail_rest -= 1
            rows: list[dict[str, str | None]] = [{"id": job_id, "status": status}
                                                 for job_id, status in self.job_status.items()
                                                 if not wanted or wanted == f"eq.{job_id}"]
        if failing:
            return h._answer(500, {"code": "XX000", "message": "internal error", "details": None, "hint": None})
        if columns != ["*"]:
            rows = [{c: row.get(c) for c in columns} for row in rows]
        h._answer(200, rows)

    # -- edge functions ----------------------------------------------------------------------------
    def _function(self, h, name: str, raw: bytes) -> None:
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        status, answer = self._run_function(h, name, raw, body)
        with self._lock:
            self.calls.append({"name": name, "headers": dict(h.headers), "raw": raw, "body": body, "status": status})
        h._answer(status, answer)

    def _run_function(self, h, name: str, raw: bytes, body) -> tuple[int, dict]:
        with self._lock:
            if self.fail_functions.get(name, 0) > 0:
                self.fail_functions[name] -= 1
                return 503, {"error": "temporarily unavailable"}
            if time.monotonic() < self.unavailable_until.get(name, 0.0):
                return 503, {"error": "temporarily unavailable"}
        if name == "job-callback":
            return self._job_callback(h, raw, body)
        if name in ("update-worker-url", "register-chat-worker"):
            if not h._authorised():
                return 401, {"error": "unauthorised"}
            return self._register(name, body)
        if name == "health-check-workers":
            if not h._authorised():
                return 401, {"error": "unauthorised"}
            return self._health_check_workers()
        return 404, {"error": f"no function {name}"}

    def _job_callback(self, h, raw: bytes, body) -> tuple[int, dict]:
        if not app_accepts_signature(dict(h.headers), raw, self.callback_secret):
            return 401, {"error": "Invalid or missing callback signature"}
        if not isinstance(body, dict) or not body.get("job_id") or not body.get("status"):
            return 400, {"error": "Missing required fields: job_id and status"}
        if body["status"] not in ("queued", "processing", "completed", "failed", "cancelled"):
            return 400, {"error": f"invalid status {body['status']}"}
        with self._lock:
            previous = self.job_status.get(body["job_id"])
            if previous in TERMINAL_SKIPPED:
                return 200, {"success": True, "skipped": True, "message": f"job already {previous}"}
            self.job_status[body["job_id"]] = body["status"]
        return 200, {"success": True}

    def _register(self, name: str, body) -> tuple[int, dict]:
        url = (body or {}).get("worker_url")
        if not url:
            return 400, {"success": False, "error": "worker_url is required"}
        try:
            healthy = requests.get(url.rstrip("/") + "/health", timeout=5).ok
        except requests.RequestException:
            healthy = False
        if not healthy:
            return 400, {"success": False, "error": f"worker at {url} failed its health check"}
        key = "workerUrl" if name == "update-worker-url" else "chatWorkerUrl"
        with self._lock:
            self.system_config[key] = url
            if name == "register-chat-worker":  # the app's function leaves workerUrl out of the entry
                cache = self.system_config.setdefault("workerHealthCache", {})
                cache["chatWorker"] = {"isHealthy": True, "lastChecked": _now_iso()}
        return 200, {"success": True, "worker_url": url}

    def _health_check_workers(self) -> tuple[int, dict]:
        with self._lock:
            urls = {"chatWorker": self.system_config.get("chatWorkerUrl"),
                    "wanWorker": self.system_config.get("workerUrl")}
        entries = {}
        for key, url in urls.items():
            if not url:
                continue
            try:
                healthy = requests.get(url.rstrip("/") + "/health", timeout=5).ok
            except requests.RequestException:
                healthy = False
            entries[key] = {"isHealthy": healthy, "workerUrl": url, "lastChecked": _now_iso()}
        with self._lock:
            self.system_config.setdefault("workerHealthCache", {}).update(entries)
        return 200, {"success": True, "workers": entries}


def _now_iso() -> str:
    from datetime import UTC, datetime
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _multipart_file(content_type: str, raw: bytes) -> tuple[bytes | None, str]:
    """(data, MIME type) of the `file` part of a multipart body (the part's own Content-Type, which
    is what Supabase Storage checks against the bucket)."""
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + raw)
    for part in message.iter_parts():
        if part.get_param("name", header="content-disposition") == "file":
            return part.get_payload(decode=True), part.get_content_type()
    return None, ""
