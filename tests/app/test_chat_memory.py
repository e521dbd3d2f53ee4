"""Issue 20, the chat path's memory and the warm-up inside the lease, on the placeholder models in process:

- a join never blocks the running rows: the lease is grown on a thread of its own while they decode (a
  simulated slow broker holds the answer), and a refusal is asked once, not at every step;
- a CUDA out-of-memory error (torch's own `torch.OutOfMemoryError`, raised by a forward pre-hook on a
  decoder layer, so the decode step fails half-way through the layers) frees the cache, retries smaller and
  refuses only the rows that do not fit with insufficient_memory: never the whole batch;
- the allocator's cache is released after a busy period (the CUDA-only call isolated, its logic tested);
- a warm-up that fails (raised from inside the real warm-up's forward pass) unloads the model and releases
  its lease, the load failing with the reason; the warm-up's activations are leased like a job's.
"""
from __future__ import annotations

import threading
import time

import pytest
import torch

from common.errors import INSUFFICIENT_MEMORY, JobFailed, MemoryUnavailable
from configuration import requests as request_models
from configuration.settings import Settings
from workers import devices
from workers.engines.chat import Batcher, ChatEngine
from workers.runtime.local_memory import LocalMemory
from workers.runtime.models import ModelHost

MODEL = "qwen_instruct"


@pytest.fixture(scope="module")
def settings(placeholder_dir, tmp_path_factory):
    return Settings(placeholder_models_dir=placeholder_dir, output_dir=tmp_path_factory.mktemp("chat-memory"))


class SlowBroker(LocalMemory):
    """A memory client whose `grow_working` answers like a broker with no memory free: only when the test
    says (`answer`), with a grant or a refusal. Everything else is LocalMemory's."""

    def __init__(self, settings, device):
        super().__init__(settings, device)
        self.grow_calls: list[int] = []
        self.asked = threading.Event()
        self._answer = threading.Event()
        self._grant = True

    def grow_working(self, working_bytes: int) -> None:
        self.grow_calls.append(working_bytes)
        self.asked.set()
        if not self._answer.wait(60):
            raise AssertionError("the test never answered the lease request")
        if not self._grant:
            raise MemoryUnavailable("timed out after 120s: held by busy workers: sdxl/sdxl")

    def answer(self, grant: bool) -> None:
        self._grant = grant
        self._answer.set()


def request(settings, **body):
    body.setdefault("messages", [{"role": "user", "content": "a red fox in the snow"}])
    body.setdefault("max_tokens", 8)
    return request_models.normalise("chat.chat", {"model": MODEL, **body}, settings)


def loaded(settings, memory_cls=LocalMemory):
    engine = ChatEngine(settings)
    memory = memory_cls(settings, engine.device)
    host = ModelHost(engine, memory)
    host.load(MODEL)
    return engine, host, memory


def _wait_busy(host):
    deadline = time.monotonic() + 30
    while not host.status()[MODEL]["busy"]:
        assert time.monotonic() < deadline, "the batch never started"
        time.sleep(0.002)


# ---- joins never block running rows -------------------------------------------------------------------

@pytest.mark.parametrize("grant", [True, False])
def test_a_running_stream_keeps_its_pace_while_another_request_waits_for_memory(settings, grant):
    engine, host, memory = loaded(settings, SlowBroker)
    tokens = 150
    alone = engine.prepare(request(settings, seed=1, max_tokens=tokens, temperature=0.0))
    engine.generate([alone])
    alone_s = alone.wait(0).generation_time

    batcher = Batcher(engine, host, MODEL, batch_size=4, window_s=0.0, max_queue=8)
    # streamed, as the name says (the chat route has no `stream`: its request model refuses one, where the old
    # normaliser dropped it and this row ran unstreamed)
    long = engine.prepare({**request(settings, seed=1, max_tokens=tokens, temperature=0.0), "stream": True})
    batcher.submit(long)
    _wait_busy(host)
    short = engine.prepare(request(settings, seed=2, max_tokens=3))
    batcher.submit(short)
    assert memory.asked.wait(30), "joining never asked for a bigger lease"
    # The broker has not answered: the running row must still run to its end at its own pace. (Before issue
    # 20 the batcher thread itself waited for the answer, one token per lease timeout.)
    result = long.wait(30)
    assert not short.done
    assert result.completion_tokens == tokens
    assert result.generation_time < 5 * alone_s + 2.0, (result.generation_time, alone_s)
    memory.answer(grant)
    short_result = short.wait(30)  # admitted after the grant; after a refusal, in the next busy period
    assert short_result.completion_tokens == 3
    assert len(memory.grow_calls) == 1  # asked once, never once per step
    assert result.text == alone.wait(0).text


def test_a_refused_growth_is_not_asked_again_in_the_busy_period(settings):
    engine, host, memory = loaded(settings, SlowBroker)
    memory.answer(False)  # every growth refused at once
    batcher = Batcher(engine, host, MODEL, batch_size=4, window_s=0.0, max_queue=8)
    long = engine.prepare(request(settings, seed=1, max_tokens=120, temperature=0.0))
    batcher.submit(long)
    _wait_busy(host)
    others = [engine.prepare(request(settings, seed=10 + i, max_tokens=4)) for i in range(3)]
    for g in others:
        batcher.submit(g)
    assert long.wait(30).completion_tokens == 120
    assert all(g.wait(30).completion_tokens == 4 for g in others)
    # refused once while the long row ran; the others waited for it to drain, then ran in a new busy period
    assert len(memory.grow_calls) == 1


# ---- out of memory: free, retry smaller, refuse only what does not fit -----------------------------------

class OutOfMemoryWhen:
    """A forward pre-hook on one decoder layer raising torch.OutOfMemoryError (what CUDA's allocator raises)
    whenever `condition(rows, query_length)` holds; layers before it have already run (and cached)."""

    def __init__(self, engine, condition, layer: int = 1):
        self.condition, self.raised = condition, 0
        decoder = engine._loaded[MODEL].model.model.layers[layer]
        self.handle = decoder.register_forward_pre_hook(self, with_kwargs=True)

    def __call__(self, module, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        if self.condition(hidden.shape[0], hidden.shape[1]):
            self.raised += 1
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected by the test)")
        return None

    def remove(self):
        self.handle.remove()


def _submit_together(engine, host, requests, batch_size=4):
    batcher = Batcher(engine, host, MODEL, batch_size=batch_size, window_s=0.5, max_queue=16)
    generations = [engine.prepare(p) for p in requests]
    for g in generations:
        batcher.submit(g)
    for g in generations:
        g._done.wait(60)
    return batcher, generations


def test_an_out_of_memory_decode_step_refuses_only_the_rows_that_do_not_fit(settings):
    engine, host, _ = loaded(settings)
    hook = OutOfMemoryWhen(engine, lambda rows, length: rows >= 3 and length == 1)
    try:
        releases = engine.cache_releases
        batcher, generations = _submit_together(
            engine, host, [request(settings, seed=i, max_tokens=12, temperature=0.0) for i in range(3)])
    finally:
        hook.remove()
    assert all(g.done for g in generations)
    refused = [g for g in generations if g.error is not None]
    assert len(refused) == 1
    assert refused[0] is generations[-1]
    assert isinstance(refused[0].error, MemoryUnavailable)
    assert refused[0].error.code == INSUFFICIENT_MEMORY
    # the others decode to their end: the layer that cached before the failure dropped its column
    assert [g.wait(0).completion_tokens for g in generations[:2]] == [12, 12]
    assert hook.raised == 2
    assert batcher.out_of_memory == 1
    assert engine.cache_releases >= releases + 2  # after each failure (and after the busy period)


def test_an_out_of_memory_prefill_is_retried_in_halves_and_refuses_only_what_cannot_fit_alone(settings):
    engine, host, _ = loaded(settings)
    long_prompt = [{"role": "user", "content": "snow " * 60}]
    long_len = len(engine.prompt_ids(request(settings, messages=long_prompt)))
    # a prefill of several rows, or of the long prompt even alone, does not fit
    hook = OutOfMemoryWhen(engine, lambda rows, length: length > 1 and (rows > 1 or length >= long_len))
    try:
        requests = [request(settings, seed=i, max_tokens=5) for i in range(3)]
        requests.append(request(settings, seed=9, max_tokens=5, messages=long_prompt))
        batcher, generations = _submit_together(engine, host, requests)
    finally:
        hook.remove()
    assert all(g.done for g in generations)
    assert [g.wait(0).completion_tokens for g in generations[:3]] == [5, 5, 5]
    error = generations[3].error
    assert isinstance(error, MemoryUnavailable)
    assert error.code == INSUFFICIENT_MEMORY
    assert batcher.out_of_memory >= 2


# ---- the cache released after a busy period ----------------------------------------------------------------

def test_cached_memory_is_released_on_cuda_only():
    calls = []
    assert devices.release_cached_memory("cuda", empty_cache=lambda: calls.append("empty_cache")) is True
    assert calls == ["empty_cache"]
    assert devices.release_cached_memory("cpu", empty_cache=lambda: calls.append("never")) is False
    assert calls == ["empty_cache"]


def test_every_busy_period_ends_by_releasing_the_cache(settings):
    engine, host, _ = loaded(settings)
    batcher = Batcher(engine, host, MODEL, batch_size=4, window_s=0.0, max_queue=8)
    before = engine.cache_releases
    for seed in range(2):
        g = engine.prepare(request(settings, seed=seed, max_tokens=3))
        batcher.submit(g)
        g.wait(30)
        deadline = time.monotonic() + 10
        while engine.cache_releases < before + seed + 1 and time.monotonic() < deadline:
            time.sleep(0.005)
    assert engine.cache_releases == before + 2 == before + batcher.batches


# ---- warm-up inside the lease ---------------------------------------------------------------------------------

class RecordingMemory(LocalMemory):
    def __init__(self, settings, device):
        super().__init__(settings, device)
        self.events: list[tuple] = []

    def acquire(self, model, estimate_bytes, working_bytes):
        super().acquire(model, estimate_bytes, working_bytes)
        self.events.append(("acquire", model, working_bytes))

    def job_started(self, working_bytes):
        self.events.append(("job_started", working_bytes))

    def job_finished(self):
        self.events.append(("job_finished",))

    def loaded(self, model, resident_bytes):
        super().loaded(model, resident_bytes)
        self.events.append(("loaded", model))

    def release(self, model):
        super().release(model)
        self.events.append(("release", model))


def _warming(cls, failure=None):
    """The engine class, warming up at load as on CUDA, with `failure` raised from a forward pre-hook on the
    module its warm-up runs first (chat: the LM; SDXL: the UNet; WAN: the transformer)."""

    class Warming(cls):
        warm_ups = 0

        @property
        def warm_up_at_load(self):
            return True

        def load(self, model):
            super().load(model)
            if failure is not None:
                def fail(module, args):
                    raise failure
                self._hooked_module(model).register_forward_pre_hook(fail)

        def _hooked_module(self, model):
            if hasattr(self, "txt2img"):
                return self.txt2img.unet
            if hasattr(self, "pipeline"):
                return self.pipeline(model).transformer
            return self._loaded[model].model

        def warm_up(self, model):
            type(self).warm_ups += 1
            super().warm_up(model)

    return Warming


ENGINES = [("chat", MODEL), ("sdxl", "sdxl"), ("wan", "wan_t2v")]


def _engine_class(worker):
    from workers.engines.sdxl import SDXLEngine
    from workers.engines.wan import WanEngine

    return {"chat": ChatEngine, "sdxl": SDXLEngine, "wan": WanEngine}[worker]


@pytest.mark.parametrize(("worker", "model"), ENGINES)
def test_a_failed_warm_up_leaves_no_model_loaded_and_no_lease_held(settings, worker, model):
    engine = _warming(_engine_class(worker), RuntimeError("cuDNN error: CUDNN_STATUS_EXECUTION_FAILED"))(settings)
    memory = RecordingMemory(settings, engine.device)
    host = ModelHost(engine, memory)
    with pytest.raises(JobFailed, match="warm-up failed .*CUDNN_STATUS_EXECUTION_FAILED.*unloaded"):
        host.load(model)
    assert type(engine).warm_ups == 1
    assert not engine.is_loaded(model)
    assert host.status()[model]["loaded"] is False
    assert memory.status()["held_bytes"] == {}
    names = [e[0] for e in memory.events]
    assert names == ["acquire", "job_started", "job_finished", "release"], memory.events


def test_a_warm_up_out_of_memory_is_a_memory_refusal_and_unloads(settings):
    engine = _warming(ChatEngine, torch.OutOfMemoryError("CUDA out of memory (injected)"))(settings)
    memory = RecordingMemory(settings, engine.device)
    host = ModelHost(engine, memory)
    with pytest.raises(MemoryUnavailable, match="warm-up"):
        host.load(MODEL)
    assert not engine.is_loaded(MODEL)
    assert memory.status()["held_bytes"] == {}


def test_a_warm_up_runs_inside_the_lease_with_its_activations_leased(settings):
    engine = _warming(ChatEngine)(settings)
    memory = RecordingMemory(settings, engine.device)
    host = ModelHost(engine, memory)
    host.load(MODEL)
    warm = engine.warm_up_working_bytes(MODEL)
    assert warm > 0
    assert type(engine).warm_ups == 1
    assert memory.events == [("acquire", MODEL, warm), ("job_started", warm), ("job_finished",), ("loaded", MODEL)]
    assert engine.is_loaded(MODEL)
    assert MODEL in memory.status()["held_bytes"]
