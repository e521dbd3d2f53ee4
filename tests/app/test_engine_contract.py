"""The engine contract (workers/engines/base.py `Engine`): what the job runtime and the model host count on
from every engine, checked on each of the three on their placeholder models, in the manner of diffusers'
pipeline tester mixin. `EngineContract` holds the checks; each engine's class below only says what it is
(its class, a minimal request body the app would accept, what its outputs are). A new engine gets the
whole contract by adding one such class.

The chat engine runs no jobs (docs/ENGINES.md: the chat worker's `/jobs/*` is 404): it is an `Engine` but
not a `JobEngineBase`, has no `run` (nor the job-only `check_request`, `reference_urls`, `pipeline_of`),
and is not the runtime's JobEngine, so its worker builds no job runner; the contract checks exactly that.
Its requests go through `prepare` and `generate` instead, which is where the contract reads its outputs,
determinism and cancellation. Each engine's own feature set is in its tests/app/test_*_engine.py.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest

from common.errors import CANCELLED, JobCancelled, JobFailed
from common.jobs import JobRecord
from configuration import requests, worker_config
from workers.engines.base import Engine, GeneratedAsset, JobEngineBase
from workers.engines.chat import ChatEngine
from workers.engines.sdxl import SDXLEngine
from workers.engines.wan import WanEngine
from workers.runtime.jobs import JobContext, JobEngine

STEPS = 2  # the fewest that still show steps counting up to a total


class _Progress:
    """What a JobContext asks of its JobRunner while an engine runs: keep the job's progress (the runner
    also journals it, which a contract check does not need)."""

    def _update(self, record: JobRecord, progress: dict, journal: bool = True) -> None:
        record.progress = progress


class StepContext(JobContext):
    """The runtime's JobContext (progress, the cancellation check at each step, the fetched references),
    recording every step the engine reports. `cancel_at`: the job is cancelled when that step is reported,
    as JobRunner.cancel does to a running job (it sets `cancel_requested`)."""

    def __init__(self, params: dict, cancel_at: int | None = None):
        super().__init__(_Progress(), JobRecord(job_id="contract", type="contract", user_id="u", params=params))
        self.steps: list[tuple[int, int]] = []
        self.cancel_at = cancel_at

    @property
    def progress(self) -> dict:
        return self._record.progress

    def on_step(self, step: int, total_steps: int) -> None:
        self.steps.append((step, total_steps))
        if step == self.cancel_at:
            self.cancel_requested.set()
        super().on_step(step, total_steps)


def payload(asset: GeneratedAsset) -> list[bytes]:
    """An asset's pixels, frame by frame (what two runs are compared on)."""
    return [np.asarray(frame).tobytes() for frame in asset.frames]


class EngineContract:
    """The checks every engine passes. A subclass names the engine (`engine_cls`), a minimal request body
    its route's schema accepts (`body`, a seed left for the checks to set), the kind of its outputs and how
    many one request makes, and whether it runs queued jobs (`runs_jobs`)."""

    engine_cls: ClassVar[type[Engine]]
    body: ClassVar[dict]
    kind: ClassVar[str]             # image | video | text
    outputs_per_request: ClassVar[int]
    runs_jobs: ClassVar[bool] = True

    # ---- what the subclass may override ---------------------------------------------------------
    def params(self, settings, seed: int = 7) -> dict:
        """The normalised parameters, built as the worker builds them: the worker's request model (bounds,
        cross-field rules, then to_params)."""
        worker = self.engine_cls.worker
        body = {**self.body, "config": {**self.body.get("config", {}), "seed": seed}}
        return dict(requests.normalise(worker_config(worker)["request_schema"], body, settings))

    def outputs(self, engine: Engine, params: dict) -> list[tuple[str, Any]]:
        """(kind, content) of each output of one request on the engine's own path: a job's `run` here."""
        return [(asset.kind, payload(asset)) for asset in engine.run(params, StepContext(params))]

    def check_request_cancelled(self, engine: Engine, params: dict) -> None:
        """For an engine that runs no jobs: how a request of its own is cancelled."""
        raise NotImplementedError(f"{type(self).__name__} runs no jobs and names no cancellation of its own")

    # ---- helpers --------------------------------------------------------------------------------
    @pytest.fixture
    def engine(self, settings) -> Engine:
        return self.engine_cls(settings)

    @staticmethod
    def load_for(engine: Engine, params: dict) -> None:
        for model in engine.required_models(params):
            if not engine.is_loaded(model):
                engine.load(model)

    # ---- lifecycle and memory -------------------------------------------------------------------
    def test_model_names_are_its_workers_configured_models(self, engine):
        names = engine.model_names()
        assert names, "an engine serves at least one model"
        assert names == list(worker_config(self.engine_cls.worker)["models"])

    def test_each_model_loads_measures_and_unloads(self, engine):
        for model in engine.model_names():
            assert not engine.is_loaded(model)
            assert engine.resident_bytes(model) == 0
            engine.load(model)
            assert engine.is_loaded(model)
            resident = engine.resident_bytes(model)
            assert resident > 0, model
            paths = engine.weight_paths(model)
            assert paths, model
            assert all(Path(path).exists() for path in paths), paths
            engine.unload(model)
            assert not engine.is_loaded(model)
            assert engine.resident_bytes(model) == 0

    def test_memory_estimate_is_positive_and_after_a_load_what_the_load_measured(self, engine):
        for model in engine.model_names():
            assert engine.memory_estimate(model) > 0, model
            engine.load(model)
            measured = engine.resident_bytes(model)
            engine.unload(model)
            # The host leases what the last load measured, not the configured guess, once it knows.
            assert engine.memory_estimate(model) == measured

    def test_a_request_needs_its_own_models_memory_and_no_references(self, engine, settings):
        params = self.params(settings)
        required = engine.required_models(params)
        assert required
        assert set(required) <= set(engine.model_names())
        assert engine.working_bytes(params) >= 0
        if self.runs_jobs:
            engine.check_request(params)  # a minimal valid request passes the engine's own checks
            assert engine.reference_urls(params) == {}

    def test_it_is_a_job_engine_exactly_when_it_runs_jobs(self, engine):
        """The runtime's JobEngine protocol (what WorkerState builds a job runner for) and the job engines'
        base class agree with `runs_jobs`; an engine that runs no jobs has none of the job-only methods."""
        assert isinstance(engine, JobEngine) == self.runs_jobs
        assert issubclass(self.engine_cls, JobEngineBase) == self.runs_jobs
        for name in ("run", "check_request", "reference_urls", "pipeline_of"):
            assert hasattr(engine, name) == self.runs_jobs, name

    def test_warm_up_runs_on_a_loaded_model_and_only_on_cuda_at_load(self, engine):
        assert engine.warm_up_at_load == (engine.device == "cuda")
        for model in engine.model_names():
            assert engine.warm_up_working_bytes(model) >= 0
            engine.load(model)
            engine.warm_up(model)
            assert engine.is_loaded(model)
            engine.unload(model)

    # ---- the job path -----------------------------------------------------------------------------
    def test_run_reports_every_step_up_to_the_total_and_returns_its_assets(self, engine, settings):
        if not self.runs_jobs:
            assert not hasattr(engine, "run")  # nothing a job runner could call
            return
        params = self.params(settings)
        ctx = StepContext(params)
        self.load_for(engine, params)
        assets = engine.run(params, ctx)
        assert ctx.steps == [(step, STEPS) for step in range(1, STEPS + 1)]
        assert ctx.progress["stage"] == "generating"
        assert ctx.progress["percent"] == 100.0
        assert len(assets) == self.outputs_per_request
        assert assets[0].metadata["seed"] == params["seed"]  # the parameters reported are those used
        for asset in assets:
            assert isinstance(asset, GeneratedAsset)
            assert asset.kind == self.kind
            if self.kind == "video":
                assert len(asset.frames) == params["frames"]
                assert asset.fps == params["fps"]
            else:
                assert len(asset.frames) == 1
            assert {frame.size for frame in asset.frames} == {(params["width"], params["height"])}

    def test_outputs_are_of_its_kind_and_count(self, engine, settings):
        params = self.params(settings)
        self.load_for(engine, params)
        outputs = self.outputs(engine, params)
        assert [kind for kind, _ in outputs] == [self.kind] * self.outputs_per_request
        assert all(content for _, content in outputs)

    def test_the_same_seed_gives_the_same_outputs_and_another_seed_others(self, engine, settings):
        params = self.params(settings, seed=7)
        self.load_for(engine, params)
        first = self.outputs(engine, params)
        assert self.outputs(engine, params) == first
        assert self.outputs(engine, self.params(settings, seed=8)) != first

    def test_a_cancel_requested_at_a_step_stops_the_run_there(self, engine, settings):
        params = self.params(settings)
        self.load_for(engine, params)
        if not self.runs_jobs:
            self.check_request_cancelled(engine, params)
            return
        ctx = StepContext(params, cancel_at=1)
        with pytest.raises(JobCancelled):
            engine.run(params, ctx)
        assert ctx.steps == [(1, STEPS)]

    def test_pipeline_of_is_the_pipeline_its_outputs_came_from(self, engine, settings):
        if not self.runs_jobs:
            assert not hasattr(engine, "pipeline_of")  # no job outputs, so no provenance to record
            return
        params = self.params(settings)
        self.load_for(engine, params)
        pipeline = engine.pipeline_of(params)
        assets = engine.run(params, StepContext(params))
        assert {asset.metadata["pipeline"] for asset in assets} == {type(pipeline).__name__}


class TestSDXLEngine(EngineContract):
    engine_cls = SDXLEngine
    body: ClassVar[dict] = {"id": "contract", "type": "sdxl_image_fast", "prompt": "a red fox", "user_id": "u",
                            "config": {"steps": STEPS, "num_images": 3}}
    kind = "image"
    outputs_per_request = 3


class TestWanEngine(EngineContract):
    engine_cls = WanEngine
    body: ClassVar[dict] = {"id": "contract", "type": "video_fast", "prompt": "a red fox", "user_id": "u",
                            "config": {"steps": STEPS, "frames": 5}}   # the fewest a video has
    kind = "video"
    outputs_per_request = 1


class TestChatEngine(EngineContract):
    engine_cls = ChatEngine
    body: ClassVar[dict] = {"model": "qwen_instruct", "messages": [{"role": "user", "content": "a red fox"}],
                            "max_tokens": 4}
    kind = "text"
    outputs_per_request = 1
    runs_jobs = False

    def params(self, settings, seed: int = 7) -> dict:
        """As POST /chat builds them: its request model (configuration/requests/chat.py)."""
        return dict(requests.normalise("chat.chat", {**self.body, "seed": seed}, settings))

    def outputs(self, engine, params):
        generation = engine.prepare(params)
        engine.generate([generation])
        return [("text", generation.wait(0).text)]

    def check_request_cancelled(self, engine, params):
        """A generation cancelled before its batch starts (its client went away) fails `cancelled` and never
        runs; a running one stops at its next token (tests/stack/test_chat_worker.py, a streaming client that
        disconnects)."""
        generation = engine.prepare(params)
        generation.cancel()
        engine.generate([generation])
        with pytest.raises(JobFailed, match="^cancelled before it started$") as failed:
            generation.wait(0)
        assert failed.value.code == CANCELLED
        assert generation.result is None
