"""Provenance of every output: what made it, recorded next to it.

For each asset the job runtime puts an object in the asset's metadata (`metadata.provenance`): the model
and the SHA-256 of each of its weight files, the pipeline class, the scheduler and its configuration,
every parameter as used, the seed, the torch / diffusers / transformers versions, device and dtype, the
model profile and the time spent in each stage up to encoding. With PROVENANCE_SIDECAR (unset: on for
local storage, off for Supabase, whose `workspace-temp` bucket refuses JSON) the same object is stored as
a sidecar (`{i}.json` next to `{i}.png` / `{i}.mp4`); one the storage refuses is skipped with a warning.

Weight hashes are computed when a model is loaded (`WeightHashes.fingerprint`), once per file path,
size and modification time, and kept in a small JSON cache under the state directory so a restarted
worker does not read tens of gigabytes again.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import threading
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from common.http import now_iso
from common.logging import Progress
from workers.runtime.storage import Storage, StorageError

if TYPE_CHECKING:
    from diffusers.pipelines.pipeline_utils import DiffusionPipeline

log = logging.getLogger(__name__)

SCHEMA = "ourvidz.provenance/1"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf")
CHUNK_BYTES = 8 * 1024 * 1024
SIDECAR_MIME = "application/json"

# A JSON value (what `json_safe` returns).
JsonValue = dict[str, "JsonValue"] | list["JsonValue"] | str | int | float | bool | None


def weight_files(path: str | Path) -> list[Path]:
    """The weight files of a model: the file itself, or every weight file under a model directory
    (sorted; hidden directories such as a download cache are skipped). None found is an error."""
    root = Path(path)
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise FileNotFoundError(f"model path {root} does not exist")
    found = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in WEIGHT_SUFFIXES
                   and not any(part.startswith(".") for part in p.relative_to(root).parts))
    if not found:
        raise FileNotFoundError(f"no weight files ({', '.join(WEIGHT_SUFFIXES)}) under {root}")
    return found


class BytesProgress(Protocol):
    """What hashing reports to: the bytes read since the last call (a Progress counting bytes, or _MiBProgress)."""

    def advance(self, nbytes: int, /) -> None: ...


def file_sha256(path: Path, progress: BytesProgress | None = None) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK_BYTES):
            digest.update(chunk)
            if progress is not None:
                progress.advance(len(chunk))
    return digest.hexdigest()


def combined_sha256(files: list[dict]) -> str:
    """One hash for a model: over each file's relative path and hash, in order."""
    digest = hashlib.sha256()
    for entry in files:
        digest.update(f"{entry['file']}\0{entry['sha256']}\n".encode())
    return digest.hexdigest()


class WeightHashes:
    """SHA-256 of weight files, computed once per (path, size, mtime) and remembered in `cache_file`."""

    def __init__(self, cache_file: Path | None = None):
        self.cache_file = Path(cache_file) if cache_file else None
        self._lock = threading.Lock()
        self._cache: dict[str, dict] = self._read_cache()
        self.computed = 0  # files actually read (tests: a second fingerprint reads none)

    def _read_cache(self) -> dict:
        if self.cache_file is None or not self.cache_file.exists():
            return {}
        try:
            data = json.loads(self.cache_file.read_text(encoding="utf-8"))
            return data if isinstance(data, dict) else {}
        except (OSError, ValueError) as exc:
            log.warning("weight hash cache %s unreadable (%s); hashing again", self.cache_file, exc)
            return {}

    def _write_cache(self) -> None:
        if self.cache_file is None:
            return
        self.cache_file.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.cache_file.parent, prefix=".tmp-")
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(self._cache, fh)
        os.replace(tmp, self.cache_file)

    def sha256(self, path: Path, progress: BytesProgress | None = None) -> str:
        path = Path(path).resolve()
        stat = path.stat()
        key = str(path)
        with self._lock:
            known = self._cache.get(key)
            if known and known["size"] == stat.st_size and known["mtime_ns"] == stat.st_mtime_ns:
                if progress is not None:
                    progress.advance(stat.st_size)
                return known["sha256"]
        value = file_sha256(path, progress)
        with self._lock:
            self.computed += 1
            self._cache[key] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": value}
            self._write_cache()
        return value

    def fingerprint(self, name: str, path: str | Path) -> dict:
        """{name, path, sha256, files: [{file, bytes, sha256}]} of a model's weight files."""
        root = Path(path)
        files = weight_files(root)
        total = sum(f.stat().st_size for f in files)
        progress = Progress(log, f"weight hashes of {name}", total / 1024**2, "MiB", every_s=5.0)
        mib = _MiBProgress(progress)
        entries = []
        for f in files:
            rel = f.name if root.is_file() else f.relative_to(root).as_posix()
            entries.append({"file": rel, "bytes": f.stat().st_size, "sha256": self.sha256(f, mib)})
        progress.finish()
        return {"name": name, "path": str(root), "sha256": combined_sha256(entries), "files": entries}


class _MiBProgress:
    """Adapts byte counts to a Progress counting MiB."""

    def __init__(self, progress: Progress):
        self.progress = progress

    def advance(self, nbytes: int) -> None:
        self.progress.advance(nbytes / 1024**2)


# ---- what a provenance record holds -----------------------------------------------------------------

def library_versions() -> dict[str, str]:
    versions = {}
    for package in ("torch", "diffusers", "transformers"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


def json_safe(value: object) -> JsonValue:
    """Configuration values as JSON: tuples as lists, numbers and strings as they are, the rest as str."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def pipeline_facts(pipe: DiffusionPipeline) -> dict:
    """The pipeline class, its dtype and its scheduler (class and configuration) of a diffusers pipeline."""
    scheduler = getattr(pipe, "scheduler", None)
    return {"pipeline_class": type(pipe).__name__, "dtype": str(pipe.dtype).removeprefix("torch."),
            "scheduler": None if scheduler is None else {
                "class": type(scheduler).__name__,
                "config": json_safe({k: v for k, v in dict(scheduler.config).items() if not k.startswith("_")})}}


def build_provenance(*, job_id: str, job_type: str, worker: str, asset_index: int, models: list[dict],
                     pipeline: dict, parameters: dict, seed: int | None, device: str, dtype: str | None, profile: str,
                     timings_s: dict) -> dict:
    """The provenance object of one asset (the sidecar's content and `metadata.provenance`)."""
    return {
        "schema": SCHEMA,
        "job_id": job_id,
        "job_type": job_type,
        "worker": worker,
        "asset_index": asset_index,
        "created_at": now_iso(),
        "models": models,
        "pipeline_class": pipeline.get("pipeline_class"),
        "scheduler": pipeline.get("scheduler"),
        "parameters": json_safe(parameters),
        "seed": seed,
        "versions": library_versions(),
        "device": device,
        "dtype": dtype,
        "profile": profile,
        "timings_s": {k: round(v, 4) for k, v in timings_s.items()},
    }


def sidecar_name(asset_index: int) -> str:
    return f"{asset_index}.json"


def encode_sidecar(provenance: dict) -> bytes:
    return json.dumps(provenance, indent=2, sort_keys=False).encode("utf-8")


def store_sidecar(storage: Storage, path: str, data: bytes) -> str | None:
    """Store a sidecar as `application/json`; its URL, or None when the storage refuses it (the app's
    `workspace-temp` bucket takes images and videos only). The image or video is stored already and the
    provenance stays in the asset's metadata, so a refused sidecar is a warning, never a failed job."""
    try:
        return storage.put(path, data, SIDECAR_MIME)
    except (StorageError, OSError) as exc:
        log.warning("provenance sidecar %s not stored (%s); the provenance stays in the asset's metadata "
                    "(PROVENANCE_SIDECAR=0 stops trying)", path.rpartition("/")[2], str(exc)[:300])
        return None
