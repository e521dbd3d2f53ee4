"""Where job outputs go. Asset URLs are storage-relative paths: `{user_id}/{job_id}/{name}`.

`Storage` is what the output pipeline and provenance (workers/runtime/outputs.py, provenance.py) ask of a
store; the local folder and the Supabase bucket provide it without deriving from it."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Protocol

from common import supabase
from common.retry import linear_delay, retry_call
from configuration.settings import Settings


class StorageError(Exception):
    pass


class Storage(Protocol):
    def put(self, path: str, data: bytes, content_type: str) -> str:
        """Store `data` at `path`; return the URL callers get (the bucket-relative path). StorageError when
        the store refuses it."""

    def delete(self, path: str) -> None:
        """Remove `path` if present (used to clean up a job that failed half-way through storing)."""


class LocalStorage:
    def __init__(self, root: Path):
        self.root = Path(root).resolve()

    def _file(self, path: str) -> Path:
        target = (self.root / path).resolve()
        if self.root not in target.parents:
            raise StorageError(f"path {path!r} escapes the storage root")
        return target

    def put(self, path: str, data: bytes, content_type: str) -> str:
        target = self._file(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; outputs are served to others
        os.replace(tmp, target)
        return path

    def delete(self, path: str) -> None:
        self._file(path).unlink(missing_ok=True)


class SupabaseStorage:
    """Supabase Storage through the supabase client, with the service key: the exact MIME type matters
    (the app's bucket refuses application/octet-stream) and an upload replaces what is there (upsert),
    so a retried job overwrites its own files."""

    ATTEMPTS = 3  # a transient failure (no answer, 5xx, 429) is retried; a refusal is not

    def __init__(self, url: str, service_key: str, bucket: str, timeout_s: float = 60.0, backoff_s: float = 0.5):
        self.client = supabase.make_client(url, service_key, timeout_s)
        self.bucket = bucket
        self.backoff_s = backoff_s

    def put(self, path: str, data: bytes, content_type: str) -> str:
        try:
            retry_call(lambda: supabase.upload(self.client, self.bucket, path, data, content_type),
                       attempts=self.ATTEMPTS, delay_s=linear_delay(self.backoff_s),
                       retryable=lambda exc: isinstance(exc, supabase.SupabaseError) and exc.retryable)
        except supabase.SupabaseError as exc:
            status = f" (HTTP {exc.status})" if exc.status else ""
            raise StorageError(f"{exc.message}{status}") from None
        return path

    def delete(self, path: str) -> None:
        try:
            supabase.remove(self.client, self.bucket, [path])
        except supabase.SupabaseError:
            pass  # best effort: cleaning up a job that failed half-way through storing


def make_storage(settings: Settings) -> Storage:
    if settings.storage_backend == "supabase":
        return SupabaseStorage(settings.supabase_url, settings.supabase_service_key, settings.supabase_bucket)
    return LocalStorage(settings.output_dir)
