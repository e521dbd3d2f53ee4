"""The memory broker's decisions as pure logic (orchestrator/broker.py), with property-based tests,
and its waiting/eviction/timeout behaviour (orchestrator/memory_service.py) with a scripted device
and scripted workers. No processes, no HTTP: the integration tests cover those."""
from __future__ import annotations

import threading
import time

import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from common.errors import MemoryUnavailable
from configuration.settings import Settings
from orchestrator.broker_policy import (
    EVICTING,
    LOADED,
    LOADING,
    Lease,
    Pool,
    Request,
    eviction_candidates,
    plan_lease,
    pressure,
)
from orchestrator.broker_service import MemoryBroker
from orchestrator.device_memory import DeviceReading
from tests.support import poll_until

MB = 1024 * 1024


def pool(capacity=100, reserve=0, leases=(), working=None, busy=(), external=0) -> Pool:
    return Pool(capacity=capacity, reserve=reserve, leases=tuple(leases), working=dict(working or {}),
                busy=frozenset(busy), external=external)


# ---- examples ----------------------------------------------------------------------------------------

def test_grant_when_it_fits():
    d = plan_lease(pool(100, 10, [Lease("chat", "qwen", 30)]), Request("sdxl", "sdxl", 50, 10))
    assert d.action == "grant"
    assert d.need == 60
    assert d.free == 60


def test_too_big_names_the_numbers():
    d = plan_lease(pool(100, 20), Request("wan", "wan_t2v", 70, 20))
    assert d.action == "too_big"
    assert "90 bytes" in d.message
    assert "80 bytes" in d.message
    assert "100 capacity - 20 reserve" in d.message


def test_evicts_least_recently_used_first():
    leases = [Lease("chat", "qwen_base", 30, last_used=3), Lease("sdxl", "sdxl", 30, last_used=1),
              Lease("chat", "qwen_instruct", 30, last_used=2)]
    d = plan_lease(pool(100, leases=leases), Request("wan", "wan_t2v", 40))
    assert d.action == "evict"
    assert [(lease.worker, lease.model) for lease in d.evict] == [("sdxl", "sdxl")]
    d = plan_lease(pool(100, leases=leases), Request("wan", "wan_t2v", 70))
    assert [(lease.worker, lease.model) for lease in d.evict] == [("sdxl", "sdxl"), ("chat", "qwen_instruct")]


def test_spares_an_old_model_that_is_not_needed():
    leases = [Lease("chat", "qwen", 5, last_used=1), Lease("sdxl", "sdxl", 60, last_used=2)]
    d = plan_lease(pool(100, leases=leases), Request("wan", "wan_t2v", 90))
    assert [(lease.worker, lease.model) for lease in d.evict] == [("sdxl", "sdxl")]


def test_busy_worker_is_never_evicted_so_the_request_waits():
    leases = [Lease("sdxl", "sdxl", 80, last_used=1)]
    d = plan_lease(pool(100, leases=leases, busy={"sdxl"}), Request("wan", "wan_t2v", 40))
    assert d.action == "wait"
    assert not d.evict


def test_loading_and_evicting_leases_are_not_candidates():
    leases = [Lease("sdxl", "sdxl", 50, LOADING), Lease("chat", "qwen", 40, EVICTING)]
    d = plan_lease(pool(100, leases=leases), Request("wan", "wan_t2v", 40))
    assert d.action == "wait"


def test_requester_may_unload_its_own_other_model_but_not_for_working_memory():
    leases = [Lease("wan", "wan_t2v", 60, last_used=1)]
    model = plan_lease(pool(100, leases=leases, busy={"wan"}), Request("wan", "wan_vace", 60))
    assert model.action == "evict"
    assert model.evict[0].model == "wan_t2v"
    working = plan_lease(pool(100, leases=leases), Request("wan", None, 0, 60))
    assert working.action == "wait"


def test_working_memory_already_reserved_is_not_counted_twice():
    p = pool(100, leases=[Lease("wan", "wan_t2v", 50)], working={"wan": 30})
    d = plan_lease(p, Request("wan", None, 0, 30))
    assert d.action == "grant"
    assert d.need == 0


def test_external_use_on_a_gpu_reduces_what_is_free():
    d = plan_lease(pool(100, 10, external=50), Request("sdxl", "sdxl", 45))
    assert d.action == "wait"
    assert d.free == 40


def test_pressure_levels():
    assert pressure(pool(100, leases=[Lease("a", "m", 10)]), waiting=0) == "low"
    assert pressure(pool(100, leases=[Lease("a", "m", 75)]), waiting=0) == "medium"
    assert pressure(pool(100, leases=[Lease("a", "m", 95)]), waiting=0) == "high"
    assert pressure(pool(100), waiting=1) == "critical"


# ---- properties ----------------------------------------------------------------------------------------

WORKERS = ["sdxl", "wan", "chat"]
MODELS = ["m1", "m2", "m3"]


@st.composite
def scenarios(draw):
    capacity = draw(st.integers(0, 1000))
    reserve = draw(st.integers(0, 200))
    keys = draw(st.lists(st.tuples(st.sampled_from(WORKERS), st.sampled_from(MODELS)), unique=True, max_size=7))
    leases = [Lease(w, m, draw(st.integers(0, 400)), draw(st.sampled_from([LOADED, LOADED, LOADING, EVICTING])),
                    float(draw(st.integers(0, 20)))) for w, m in keys]
    working = {w: draw(st.integers(0, 100)) for w in draw(st.lists(st.sampled_from(WORKERS), unique=True))}
    busy = frozenset(draw(st.lists(st.sampled_from(WORKERS), unique=True)))
    external = draw(st.integers(0, 100))
    p = Pool(capacity, reserve, tuple(leases), working, busy, external)
    worker = draw(st.sampled_from(WORKERS))
    model = draw(st.one_of(st.none(), st.sampled_from(MODELS)))
    request = Request(worker, model, 0 if model is None else draw(st.integers(0, 600)), draw(st.integers(0, 300)))
    return p, request


@hsettings(max_examples=400, deadline=None)
@given(scenarios())
def test_decisions_are_sound(scenario):
    p, request = scenario
    d = plan_lease(p, request)
    assert d.action in ("grant", "evict", "wait", "too_big")
    # too big exactly when the request alone exceeds the usable capacity
    assert (d.action == "too_big") == (request.total > p.usable)
    if d.action == "grant":
        assert d.need <= p.free
    if d.action in ("evict", "wait"):
        assert d.need > p.free
    candidates = eviction_candidates(p, request)
    if d.action == "evict":
        freed = sum(lease.bytes for lease in d.evict)
        assert freed >= d.need - d.free, "evicting must make it fit"
        for lease in d.evict:
            assert lease in candidates
            assert lease.state == LOADED, "only loaded models are unloaded"
            assert lease.worker not in p.busy or lease.worker == request.worker, "busy workers are never evicted"
            assert (lease.worker, lease.model) != (request.worker, request.model)
            assert freed - lease.bytes < d.need - d.free, "no model is unloaded that is not needed"
        assert list(d.evict) == sorted(d.evict, key=lambda x: (x.last_used, x.worker, x.model))
        # all evicted models come from the shortest least-recently-used prefix that suffices
        prefix, total = [], 0
        for lease in candidates:
            if total >= d.need - d.free:
                break
            prefix.append(lease)
            total += lease.bytes
        assert set(d.evict) <= set(prefix)
    if d.action == "wait":
        assert sum(x.bytes for x in candidates) < d.need - d.free, "waits only when idle models cannot make room"


@hsettings(max_examples=200, deadline=None)
@given(scenarios())
def test_working_requests_never_touch_the_requesters_models(scenario):
    p, request = scenario
    request = Request(request.worker, None, 0, request.working_bytes)
    for lease in eviction_candidates(p, request):
        assert lease.worker != request.worker


# ---- the service: waiting, evicting through workers, timeouts ---------------------------------------------

class Device:
    def __init__(self, total, used=None):
        self.total, self.used = total, used

    def read(self):
        return DeviceReading("cuda" if self.used is not None else "cpu", "test", self.total, self.used)


class Workers:
    """Scripted workers: `busy` ones refuse to unload (as ModelHost does for a model in use)."""

    def __init__(self):
        self.broker = None
        self.busy: set[tuple[str, str]] = set()
        self.unloads: list[tuple[str, str]] = []

    def unload(self, worker, model):
        self.unloads.append((worker, model))
        if (worker, model) in self.busy:
            return False, "HTTP 409 model is running a job"
        self.broker.release(worker, model)  # what the worker's ModelHost does before answering
        return True, ""


def make_broker(total_mb=10, used=None, reserve_mb=0):
    workers = Workers()
    broker = MemoryBroker(Settings(vram_reserve_mb=reserve_mb), Device(total_mb * MB, used), workers.unload)
    workers.broker = broker
    return broker, workers


def load(broker, worker, model, mb, working=0, timeout=1.0):
    broker.acquire(worker, model, int(mb * MB), int(working * MB), timeout)
    broker.loaded(worker, model, int(mb * MB))


def test_service_evicts_idle_lru_and_records_it():
    broker, workers = make_broker(10)
    load(broker, "chat", "qwen_base", 1)
    load(broker, "sdxl", "sdxl", 8)
    broker.touch("chat", ["qwen_base"])
    load(broker, "wan", "wan_t2v", 4)
    assert workers.unloads == [("sdxl", "sdxl")]
    status = broker.status()
    assert status["counters"]["evicted"] == 1
    assert set(status["workers"]["wan"]["models"]) == {"wan_t2v"}
    assert status["workers"].get("sdxl", {"models": {}})["models"] == {}


def test_service_waits_for_a_busy_worker_then_evicts():
    broker, workers = make_broker(10)
    load(broker, "sdxl", "sdxl", 8)
    broker.job_started("sdxl", 0, 1.0)
    granted = threading.Event()

    def request():
        load(broker, "wan", "wan_t2v", 4, timeout=10)
        granted.set()

    t = threading.Thread(target=request)
    t.start()
    time.sleep(0.3)
    assert not granted.is_set(), "a busy worker's model is never taken"
    assert workers.unloads == [], "a busy worker's model is never taken"
    assert broker.status()["pressure"] == "critical"
    assert broker.status()["waiting"]
    broker.job_finished("sdxl")
    t.join(5)
    assert granted.is_set()
    assert workers.unloads == [("sdxl", "sdxl")]
    events = [e["event"] for e in broker.status()["history"]]
    assert events.index("wait") < events.index("job_finished") < events.index("evicted")


def test_service_times_out_with_numbers():
    broker, _ = make_broker(10)
    load(broker, "sdxl", "sdxl", 8)
    broker.job_started("sdxl", 0, 1.0)
    started = time.monotonic()
    with pytest.raises(MemoryUnavailable) as err:
        broker.acquire("wan", "wan_t2v", 4 * MB, 0, 0.4)
    assert 0.35 < time.monotonic() - started < 3
    assert not err.value.too_big
    assert "timed out" in err.value.message
    assert "sdxl/sdxl" in err.value.message
    assert err.value.details["need_bytes"] == 4 * MB
    assert err.value.details["usable_bytes"] == 10 * MB
    assert broker.status()["counters"]["timeout"] == 1


def test_service_too_big_fails_at_once():
    broker, workers = make_broker(10, reserve_mb=2)
    started = time.monotonic()
    with pytest.raises(MemoryUnavailable) as err:
        broker.acquire("wan", "wan_t2v", 6 * MB, 3 * MB, 30)
    assert time.monotonic() - started < 1
    assert err.value.too_big
    assert err.value.details["usable_bytes"] == 8 * MB
    assert workers.unloads == []
    with pytest.raises(MemoryUnavailable) as err:
        broker.admit("wan", 9 * MB)
    assert err.value.too_big
    assert err.value.details["need_bytes"] == 9 * MB


def test_service_refused_unload_is_not_retried_in_a_loop():
    broker, workers = make_broker(10)
    load(broker, "chat", "qwen_base", 8)
    workers.busy.add(("chat", "qwen_base"))  # the worker says it is in use (a race the broker cannot see)
    with pytest.raises(MemoryUnavailable):
        broker.acquire("sdxl", "sdxl", 8 * MB, 0, 0.5)
    assert workers.unloads == [("chat", "qwen_base")]
    assert broker.status()["workers"]["chat"]["models"]["qwen_base"]["state"] == LOADED


def test_service_gpu_counts_memory_no_lease_explains():
    device = Device(10 * MB, used=0)
    broker = MemoryBroker(Settings(vram_reserve_mb=0), device, lambda w, m: (False, "no"))
    device.used = 7 * MB  # CUDA contexts, other processes
    with pytest.raises(MemoryUnavailable):
        broker.acquire("sdxl", "sdxl", 4 * MB, 0, 0.2)
    broker.acquire("sdxl", "sdxl", 3 * MB, 0, 0.2)
    device.used = 10 * MB  # the model is on the device now
    assert broker.status()["budget"]["external_bytes"] == 7 * MB
    assert broker.status()["budget"]["available_bytes"] == 0


def test_worker_gone_frees_everything_and_wakes_waiters():
    broker, _ = make_broker(10)
    load(broker, "sdxl", "sdxl", 8)
    broker.job_started("sdxl", 0, 1.0)
    result = {}

    def request():
        try:
            load(broker, "wan", "wan_t2v", 4, timeout=10)
            result["ok"] = True
        except MemoryUnavailable as exc:
            result["error"] = exc

    t = threading.Thread(target=request)
    t.start()
    time.sleep(0.2)
    broker.worker_gone("sdxl", "killed by SIGKILL")
    t.join(5)
    assert result == {"ok": True}
    assert "sdxl" not in broker.status()["workers"] or not broker.status()["workers"]["sdxl"]["models"]


def test_working_memory_is_held_for_the_job_and_released_after():
    broker, _ = make_broker(10)
    load(broker, "wan", "wan_t2v", 2, working=3)
    broker.job_started("wan", 3 * MB, 1.0)
    assert broker.status()["budget"]["working_bytes"] == 3 * MB
    with pytest.raises(MemoryUnavailable):
        broker.acquire("sdxl", "sdxl", 6 * MB, 0, 0.2)  # 2 + 3 + 6 > 10, wan busy
    broker.job_finished("wan")
    assert broker.status()["budget"]["working_bytes"] == 0
    broker.acquire("sdxl", "sdxl", 6 * MB, 0, 0.2)


def test_growing_a_jobs_working_memory_is_not_another_job():
    broker, _ = make_broker(10)
    load(broker, "chat", "qwen_base", 1)
    broker.job_started("chat", 1 * MB, 1.0)
    broker.grow_working("chat", 3 * MB, 1.0)  # a batch gained rows
    assert broker.status()["budget"]["working_bytes"] == 3 * MB
    broker.job_finished("chat")
    status = broker.status()
    assert status["budget"]["working_bytes"] == 0
    assert not status["workers"]["chat"]["busy"]
    with pytest.raises(MemoryUnavailable) as err:  # more than the whole device
        broker.grow_working("chat", 11 * MB, 0.2)
    assert err.value.too_big


def test_hello_from_a_new_process_drops_what_the_old_one_held():
    broker, _ = make_broker(10)
    load(broker, "sdxl", "sdxl", 8)
    broker.hello("sdxl", 1234)
    assert broker.status()["budget"]["leased_bytes"] == 0


def test_a_worker_between_jobs_yields_to_an_older_request_for_its_memory():
    broker, workers = make_broker(10)
    load(broker, "sdxl", "sdxl", 8)
    broker.job_started("sdxl", 0, 1.0)
    granted = threading.Event()
    t = threading.Thread(target=lambda: (load(broker, "wan", "wan_t2v", 4, timeout=10), granted.set()))
    t.start()
    assert _eventually(lambda: broker.status()["waiting"])
    # the sdxl job ends and the next one asks for its turn at once (its queue is not empty)
    broker.job_finished("sdxl")
    broker.wait_turn("sdxl", 10)
    # when the turn is given, the older request already holds its lease
    assert "wan_t2v" in broker.status()["workers"]["wan"]["models"], "the waiting request was served first"
    assert granted.wait(5)
    assert workers.unloads == [("sdxl", "sdxl")]
    t.join(5)


def test_a_turn_does_not_wait_for_requests_that_need_other_workers():
    broker, _ = make_broker(10)
    load(broker, "chat", "qwen_base", 8)
    broker.job_started("chat", 0, 1.0)  # busy: the waiter needs chat's memory, not sdxl's
    load(broker, "sdxl", "sdxl", 1)
    t = threading.Thread(target=lambda: _swallow(lambda: broker.acquire("wan", "wan_t2v", 4 * MB, 0, 1.0)))
    t.start()
    assert _eventually(lambda: broker.status()["waiting"])
    started = time.monotonic()
    broker.wait_turn("sdxl", 10)
    assert time.monotonic() - started < 0.5
    t.join(5)


def _eventually(predicate, timeout_s=5.0):
    return poll_until(predicate, timeout_s, 0.01)


def _swallow(fn):
    try:
        fn()
    except MemoryUnavailable:
        pass
