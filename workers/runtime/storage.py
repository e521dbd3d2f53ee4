"""Where job outputs go. Asset URLs are storage-relative paths: `{user_id}/{job_id}/{name}`."""
from __future__ import annotations

import os
import tempfile
from abc import ABC, abstractmethod
from pathlib import Path

import requests

from common.http import bearer_session
from configuration.settings import Settings


class StorageError(Exception):
    pass


class Storage(ABC):
    @abstractmethod
    def put(self, path: str, data: bytes, content_type: str) -> str:
        """Store `data` at `path`; return the URL callers get (the bucket-relative path)."""

    @abstractmethod
    def delete(self, path: str) -> None:
        """Remove `path` if present (used to clean up a job that failed half-way through storing)."""


class LocalStorage(Storage):
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


class SupabaseStorage(Storage):
    """Supabase Storage REST API: the exact Content-Type matters (the bucket rejects octet-stream)."""

    def __init__(self, url: str, service_key: str, bucket: str, timeout_s: float = 60.0):
        self.base = url.rstrip("/") + "/storage/v1/object"
        self.bucket = bucket
        self.timeout_s = timeout_s
        self.session = bearer_session(service_key)

    def put(self, path: str, data: bytes, content_type: str) -> str:
        try:
            response = self.session.post(f"{self.base}/{self.bucket}/{path}", data=data, timeout=self.timeout_s,
                                         headers={"Content-Type": content_type, "x-upsert": "true"})
        except requests.RequestException as exc:
            raise StorageError(f"upload of {path} failed: {type(exc).__name__}") from None
        if response.status_code >= 300:
            raise StorageError(f"upload of {path} failed: HTTP {response.status_code} {response.text[:200]}")
        return path

    def delete(self, path: str) -> None:
        try:
            self.session.delete(f"{self.base}/{self.bucket}", json={"prefixes": [path]}, timeout=self.timeout_s)
        except requests.RequestException:
            pass


def make_storage(settings: Settings) -> Storage:
    if settings.storage_backend == "supabase":
        return SupabaseStorage(settings.supabase_url, settings.supabase_service_key, settings.supabase_bucket)
    return LocalStorage(settings.output_dir)
