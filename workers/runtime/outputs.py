"""The output pipeline: what happens to an engine's outputs between `engine.run` and the job's end.

The executor (workers/runtime/jobs.py) runs the engine and hands its outputs to `OutputPipeline.deliver`,
which checks them against the content policy (workers/runtime/safety.py), encodes them with their
thumbnails (media.py), writes their provenance (provenance.py), stores them (storage.py) and returns
the job's assets. A delivery that fails removes what it had stored before the exception leaves it, so a
failed job leaves no partial outputs behind.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

from common import errors, policy
from common.errors import ContentPolicyRefused, JobFailed
from common.jobs import JobRecord
from common.metrics import StageTimer
from configuration.requests.common import summarise_data_urls
from configuration.settings import Settings
from workers.engines.base import GeneratedAsset
from workers.runtime import media, provenance, safety
from workers.runtime.storage import Storage, StorageError

if TYPE_CHECKING:
    from diffusers.pipelines.pipeline_utils import DiffusionPipeline

log = logging.getLogger(__name__)

Asset = dict[str, Any]  # one entry of a record's `assets`: type, url, thumbnail_url, provenance_url, metadata


class Stages(Protocol):
    """What the pipeline needs of a job's context (workers/runtime/jobs.py `JobContext`): entering a
    stage (encoding, storing) and the seconds spent per stage so far (for the provenance)."""

    def stage(self, name: str) -> None: ...

    @property
    def timer(self) -> StageTimer: ...


@dataclass(frozen=True)
class MadeBy:
    """What made a job's outputs, read while its models were still in use: the weight files of its
    models (ModelHost's fingerprints) and the diffusers pipeline's class, dtype and scheduler."""
    models: list[dict[str, Any]]
    pipeline: dict[str, Any]


def made_by(models: list[str], fingerprints: Mapping[str, list[dict[str, Any]]],
            pipe: DiffusionPipeline | None) -> MadeBy:
    """The MadeBy of a job that ran on `models`, `pipe` being the engine's pipeline (None without one)."""
    return MadeBy(models=[f for m in models for f in fingerprints.get(m, [])],
                  pipeline=provenance.pipeline_facts(pipe) if pipe is not None else {})


class OutputFile(NamedTuple):
    name: str          # file name inside the job's folder: "0.png", "0.thumb.webp", ...
    data: bytes
    content_type: str


@dataclass
class Delivered:
    """The job's assets, and the storage paths written for them (removed if the job then fails to end)."""
    assets: list[Asset]
    stored: list[str] = field(default_factory=list)


def encode(index: int, output: GeneratedAsset) -> tuple[list[OutputFile], Asset]:
    """One output as its files (the PNG or MP4 first, its WebP thumbnail second) and its asset entry
    (type and metadata, without URLs yet)."""
    if output.kind == "video":
        if output.fps is None:
            raise JobFailed("the engine returned a video without a playback rate")
        data = media.encode_mp4(output.frames, output.fps)
        main = OutputFile(f"{index}.mp4", data, "video/mp4")
        thumb_source = output.frames[len(output.frames) // 2]
        fmt = "mp4"
    else:
        data = media.encode_png(output.frames[0])
        main = OutputFile(f"{index}.png", data, "image/png")
        thumb_source = output.frames[0]
        fmt = "png"
    metadata = dict(output.metadata, format=fmt, file_size_bytes=len(data), asset_index=index)
    thumb = OutputFile(f"{index}.thumb.webp", media.encode_thumbnail(thumb_source), "image/webp")
    return [main, thumb], {"type": output.kind, "metadata": metadata}


def storage_path(record: JobRecord, name: str) -> str:
    """Where a job's file goes: the user's folder, then the job's."""
    return f"{record.user_id}/{record.job_id}/{name}"


class OutputPipeline:
    """One per executor, for its worker's engine (`settings`, `device`). `lock` is the executor's: the
    content-policy note goes into the record under it."""

    def __init__(self, worker: str, settings: Settings, device: str, storage: Storage, lock: threading.RLock) -> None:
        self.worker = worker
        self.settings = settings
        self.device = device
        self.storage = storage
        self._lock = lock

    def deliver(self, record: JobRecord, outputs: list[GeneratedAsset], made: MadeBy, stages: Stages) -> Delivered:
        """Check, encode, describe and store a job's outputs; the job's assets. Raises ContentPolicyRefused
        for a flagged output (never stored), JobFailed (storage_failed) for a storage that cannot take a
        file; whatever it raises, the files it had stored are removed first."""
        delivered = Delivered(assets=[])
        try:
            self._check(record, outputs)  # sfw: a flagged output is never stored (ContentPolicyRefused)
            stages.stage("encoding")
            encoded = [encode(i, out) for i, out in enumerate(outputs)]
            stages.stage("storing")
            sidecars = self.settings.stores_provenance_sidecar  # PROVENANCE_SIDECAR (default by backend)
            provenance_files = [self._provenance_file(record, asset, output, made, stages.timer.timings())
                                for (_files, asset), output in zip(encoded, outputs, strict=True)]
            for (files, asset), (sidecar_name, sidecar) in zip(encoded, provenance_files, strict=True):
                for name, data, content_type in files:
                    delivered.stored.append(self._store(storage_path(record, name), data, content_type))
                asset["url"] = storage_path(record, files[0].name)
                asset["thumbnail_url"] = storage_path(record, files[1].name)
                # A sidecar the storage refuses (a bucket without application/json) is skipped, never a failed job.
                asset["provenance_url"] = (provenance.store_sidecar(self.storage, storage_path(record, sidecar_name),
                                                                    sidecar) if sidecars else None)
                if asset["provenance_url"]:
                    delivered.stored.append(asset["provenance_url"])
                delivered.assets.append(asset)
        except Exception:
            self.remove(delivered.stored)
            raise
        return delivered

    def remove(self, stored: list[str]) -> None:
        """Remove stored outputs of a job that did not complete (a file that will not go is a warning)."""
        for path in stored:
            try:
                self.storage.delete(path)
            except Exception:
                log.warning("could not remove partial output %s", path)

    def _check(self, record: JobRecord, outputs: list[GeneratedAsset]) -> None:
        """The content policy's output check (workers/runtime/safety.py), noted in the record; raises when flagged."""
        tier = record.params.get("content_tier", self.settings.content_tier_default)
        check = safety.check_outputs(self.settings, tier, outputs, record.job_id)
        if check is None:
            return
        with self._lock:
            noted = record.metadata.setdefault("content_policy", {"tier": tier, "checks": []})
            noted["checks"] = [*noted["checks"], check.public()]
        if check.flagged:
            raise ContentPolicyRefused(policy.EXPLICIT, "output", tier, "classifier")

    def _provenance_file(self, record: JobRecord, asset: Asset, output: GeneratedAsset, made: MadeBy,
                         timings: dict[str, float]) -> tuple[str, bytes]:
        """The asset's provenance: put in its metadata and returned as its JSON sidecar file (name, bytes)."""
        index = asset["metadata"]["asset_index"]
        params = {k: v for k, v in record.params.items() if k != "caller_metadata"}
        record_of = provenance.build_provenance(
            job_id=record.job_id, job_type=record.type, worker=self.worker, asset_index=index,
            models=made.models, pipeline=made.pipeline,
            parameters={"requested": summarise_data_urls(params), "used": output.metadata},
            seed=output.metadata.get("seed", params.get("seed")), device=self.device,
            dtype=made.pipeline.get("dtype"), profile=self.settings.model_profile,
            timings_s={k: v for k, v in timings.items() if k != "storing"})
        asset["metadata"]["provenance"] = record_of
        return provenance.sidecar_name(index), provenance.encode_sidecar(record_of)

    def _store(self, path: str, data: bytes, content_type: str) -> str:
        """storage.put; a storage that cannot take the file fails the job with a reason (no server paths)."""
        try:
            return self.storage.put(path, data, content_type)
        except StorageError as exc:
            raise JobFailed(f"storing the outputs failed: {exc}", code=errors.STORAGE_FAILED) from None
        except OSError as exc:
            log.error("storing %s failed: %s", path, exc)
            raise JobFailed(f"storing the outputs failed: {type(exc).__name__} ({exc.strerror or 'I/O error'})",
                            code=errors.STORAGE_FAILED) from None
