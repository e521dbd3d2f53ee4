"""Issue 11, items 6 and 10 at the unit level: the memory broker refuses leases for models no worker
of the pod has and lets a `loading` lease expire when the load never finishes; a key of spaces is not
a key on a public bind."""
from __future__ import annotations

import time

import pytest

from common.errors import MemoryUnavailable
from configuration.settings import Settings, SettingsError
from orchestrator.broker_service import MemoryBroker
from orchestrator.device_memory import DeviceReading

GB = 1024**3


class Budget:
    """A device of `total` bytes with nothing measured (what a CPU machine reports)."""

    def __init__(self, total: int):
        self.total = total

    def read(self) -> DeviceReading:
        return DeviceReading("cpu", "budget", self.total, None)


class Clock:
    def __init__(self):
        self.offset = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self.offset


def broker(total=48 * GB, clock=None) -> MemoryBroker:
    return MemoryBroker(Settings(vram_reserve_mb=0), Budget(total), lambda w, m: (True, ""),
                        clock=clock or time.monotonic)


@pytest.mark.parametrize(("worker", "model"), [("sdxl", "no_such_model"), ("sdxl", "wan_t2v"), ("nobody", "sdxl")])
def test_a_lease_for_a_model_the_worker_does_not_have_is_refused(worker, model):
    b = broker()
    with pytest.raises((ValueError, MemoryUnavailable)):
        b.acquire(worker, model, 47 * GB, 0, timeout_s=1)
    assert b.status()["budget"]["leased_bytes"] == 0


def test_a_loading_lease_expires_when_the_load_never_finishes():
    """A worker that asked for a lease and never reported `loaded` (hung, or a forged request) must not
    hold the memory forever: the next request gets it once the load deadline has passed."""
    clock = Clock()
    b = broker(total=10 * GB, clock=clock)
    b.acquire("sdxl", "sdxl", 8 * GB, 0, timeout_s=1)
    assert b.status()["workers"]["sdxl"]["models"]["sdxl"]["state"] == "loading"
    clock.offset += 24 * 3600  # a day later, still loading
    b.acquire("wan", "wan_t2v", 8 * GB, 0, timeout_s=2)
    status = b.status()
    assert "sdxl" not in status["workers"] or not status["workers"]["sdxl"]["models"]
    assert any(e["event"] == "load_expired" for e in status["history"])


@pytest.mark.parametrize("key", ["   ", "\t", " \n "])
def test_a_key_of_whitespace_is_refused_on_a_public_bind(key):
    with pytest.raises(SettingsError):
        Settings(bind_host="0.0.0.0", api_key=key).check()


def test_whitespace_around_a_key_is_refused():
    with pytest.raises(SettingsError):
        Settings(bind_host="0.0.0.0", api_key=" secret-key-123 ").check()


# ---- strict JSON (the parser every route and the queue use) ------------------------------------------

@pytest.mark.parametrize(("raw", "reason"), [
    (b'{"a": NaN}', "NaN"), (b'{"a": -Infinity}', "Infinity"), (b'{"a": 1e999}', "out of range"),
    (b'{"a": ' + b"9" * 65 + b"}", "characters"), (b"[" * 5000 + b"]" * 5000, "nested"),
    (b"[" * 65 + b"]" * 65, "nested"), (b'{"a": "\\udc00"}', "lone surrogate"), (b'{"\\ud800": 1}', "lone surrogate"),
    ('{"a": 1}'.encode("utf-16"), "not UTF-8"), (b'{"a": "caf\xe9"}', "not UTF-8"), (b'{"a": }', "line 1"),
])
def test_strict_json_refuses_what_is_not_json_with_the_reason(raw, reason):
    from common.strict_json import InvalidJson, loads

    with pytest.raises(InvalidJson, match=reason):
        loads(raw)


def test_strict_json_reads_ordinary_json_and_writes_no_nan():
    from common.strict_json import dumps, loads

    assert loads(b'{"a": [1, 2.5, "\\ud83d\\ude00", {"b": null}], "n": 18446744073709551615}') == {
        "a": [1, 2.5, "\U0001F600", {"b": None}], "n": 2**64 - 1}
    assert loads(b"[" * 64 + b"]" * 64) is not None
    assert dumps({"x": float("nan"), "y": [float("inf"), 1.0]}) == '{"x": null, "y": [null, 1.0]}'
