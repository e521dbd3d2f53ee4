"""Supabase through its own Python client (`supabase`, as the design names it): storage objects
(outputs into `workspace-temp`, storage-path references out of `workspace-temp` / `user-library`)
and edge functions (worker registration). Always with the service key; never a user session.

Every failure is a SupabaseError carrying the HTTP status when there was one, so callers can tell
"retry later" (no answer, 5xx, 429) from "this will never work" (4xx).
"""
from __future__ import annotations

import json
from typing import Any

import httpx
from postgrest.exceptions import APIError
from storage3.exceptions import StorageApiError
from supabase import Client, create_client
from supabase.lib.client_options import SyncClientOptions
from supabase_functions.errors import FunctionsHttpError, FunctionsRelayError


class SupabaseError(Exception):
    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.message = message
        self.status = status

    @property
    def retryable(self) -> bool:
        return self.status is None or self.status >= 500 or self.status in (408, 425, 429)


def make_client(url: str, service_key: str, timeout_s: float = 60.0) -> Client:
    """A client for the project at `url` acting with the service key (the pod has no user session)."""
    http = httpx.Client(timeout=httpx.Timeout(timeout_s, connect=min(10.0, timeout_s)), follow_redirects=False)
    options = SyncClientOptions(auto_refresh_token=False, persist_session=False, httpx_client=http)
    return create_client(url, service_key, options)


def _status(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def upload(client: Client, bucket: str, path: str, data: bytes, content_type: str) -> None:
    """Store `data` at `bucket/path` with its exact MIME type, replacing what is there (upsert)."""
    try:
        client.storage.from_(bucket).upload(path, data, {"content-type": content_type, "upsert": "true"})
    except StorageApiError as exc:
        raise SupabaseError(f"upload of {bucket}/{path} refused: {exc.message}", _status(exc.status)) from None
    except httpx.HTTPError as exc:
        raise SupabaseError(f"upload of {bucket}/{path} failed: {type(exc).__name__}") from None


def remove(client: Client, bucket: str, paths: list[str]) -> None:
    try:
        client.storage.from_(bucket).remove(paths)
    except StorageApiError as exc:
        raise SupabaseError(f"removing from {bucket} refused: {exc.message}", _status(exc.status)) from None
    except httpx.HTTPError as exc:
        raise SupabaseError(f"removing from {bucket} failed: {type(exc).__name__}") from None


def download(client: Client, bucket: str, path: str, max_bytes: int) -> bytes:
    """The object at `bucket/path`; refused above `max_bytes`."""
    try:
        data = client.storage.from_(bucket).download(path)
    except StorageApiError as exc:
        raise SupabaseError(f"download of {bucket}/{path} refused: {exc.message}", _status(exc.status)) from None
    except httpx.HTTPError as exc:
        raise SupabaseError(f"download of {bucket}/{path} failed: {type(exc).__name__}") from None
    if len(data) > max_bytes:
        raise SupabaseError(f"{bucket}/{path} is {len(data)} bytes, over the {max_bytes} byte cap", 413)
    return data


def job_status(client: Client, job_id: str) -> str | None:
    """The `status` of the app's `jobs` row `job_id` (PostgREST: `GET /rest/v1/jobs?id=eq.<id>&select=status`),
    None when there is no such row."""
    try:
        # No client-side retries (they back off up to 30 s): a caller that reads again later decides.
        rows = client.table("jobs").select("status").eq("id", job_id).retry(False).execute().data
    except APIError as exc:
        raise SupabaseError(f"reading jobs/{job_id} refused: {exc.message}", _status(exc.code)) from None
    except httpx.HTTPError as exc:
        raise SupabaseError(f"reading jobs/{job_id} failed: {type(exc).__name__}") from None
    except ValueError:  # an answer that is not JSON
        raise SupabaseError(f"reading jobs/{job_id}: the answer is not JSON") from None
    if not rows:
        return None
    status = rows[0].get("status") if isinstance(rows[0], dict) else None
    return status if isinstance(status, str) else None


def invoke(client: Client, function: str, body: dict) -> dict:
    """POST `body` to the edge function and return its JSON answer."""
    try:
        answer = client.functions.invoke(function, {"body": body})
    except (FunctionsHttpError, FunctionsRelayError) as exc:
        raise SupabaseError(f"{function}: {exc.message}", _status(getattr(exc, "status", None))) from None
    except httpx.HTTPError as exc:
        raise SupabaseError(f"{function}: {type(exc).__name__}") from None
    try:
        parsed = json.loads(answer) if isinstance(answer, (bytes, str)) else answer
    except ValueError:
        raise SupabaseError(f"{function} answered something that is not JSON", 200) from None
    return parsed if isinstance(parsed, dict) else {"answer": parsed}
