"""The Redis queue consumer on a real redis-server, with a small in-process job sink standing in for
the worker runtime (the whole worker is exercised in tests/stack/test_queue_worker.py)."""
from __future__ import annotations

import json
import signal
import threading
import time

import pytest

from common.queues import Entry, QueueKeys, connect, parse_entry, queue_overview
from tests.redis_support import RedisServer
from tests.support import poll_until
from workers.runtime.queue_intake import QueueIntake

MAX_BYTES = 10 * 1024 * 1024


class Sink:
    """A one-thread executor like the worker's: FIFO, one job at a time, a journal of statuses."""

    def __init__(self, job_s: float = 0.0):
        self.job_s = job_s
        self.status: dict[str, str] = {}
        self.order: list[str] = []
        self.runs: dict[str, int] = {}
        self.rejected: dict[str, str] = {}
        self.payloads: dict[str, dict] = {}
        self.owners: dict[str, str | None] = {}
        self._queue: list[str] = []
        self._running = False
        self._lock = threading.Lock()
        self.intake: QueueIntake | None = None
        threading.Thread(target=self._loop, daemon=True).start()

    def can_take(self) -> bool:
        with self._lock:
            return not self._running and not self._queue

    def job_status(self, job_id):
        with self._lock:
            return self.status.get(job_id)

    def conflict(self, job_id, payload):
        with self._lock:
            owner = self.owners.get(job_id)
        return None if owner is None or owner == payload.get("user_id") else "another user's job has it"

    def submit(self, job_id, payload):
        with self._lock:
            self.owners[job_id] = payload.get("user_id")
            self.status[job_id] = "queued"
            self.payloads[job_id] = payload
            self._queue.append(job_id)

    def reject(self, job_id, payload, code, message):
        with self._lock:
            self.status[job_id] = "failed"
            self.rejected[job_id] = code

    def _loop(self):
        while True:
            with self._lock:
                job_id = self._queue.pop(0) if self._queue else None
                self._running = job_id is not None
            if job_id is None:
                time.sleep(0.005)
                continue
            time.sleep(self.payloads[job_id].get("run_s", self.job_s))
            with self._lock:
                self.order.append(job_id)
                self.runs[job_id] = self.runs.get(job_id, 0) + 1
                self.status[job_id] = "completed"
                self._running = False
            if self.intake:
                self.intake.notify()

    def wait_done(self, ids, timeout_s=20):
        def done() -> bool:
            with self._lock:
                return all(self.status.get(i) in ("completed", "failed") for i in ids)
        return poll_until(done, timeout_s, 0.02)


def start_intake(server, queue, sink, consumer="c1", **kw) -> QueueIntake:
    kw.setdefault("block_s", 0.2)
    kw.setdefault("backoff_s", 0.05)
    kw.setdefault("backoff_max_s", 0.5)
    intake = QueueIntake(connect(server.client_url, kw["block_s"]), queue, consumer, sink, **kw)
    sink.intake = intake
    return intake.start()


def push(client, queue, *entries):
    for entry in entries:
        client.rpush(queue, entry if isinstance(entry, (bytes, str)) else json.dumps(entry))


def settled(client, keys: QueueKeys, consumers=("c1",), timeout_s=10) -> bool:
    """Queue and processing lists empty (acknowledgement follows completion by a moment)."""
    return poll_until(lambda: client.llen(keys.queue) == 0
                      and all(client.llen(keys.processing(c)) == 0 for c in consumers), timeout_s, 0.02)


def test_entries_are_taken_in_push_order_and_acknowledged(redis_server):
    client, sink = redis_server.client(), Sink(job_s=0.02)
    ids = [f"fifo-{i}" for i in range(3)]
    push(client, "q_fifo", *({"id": i} for i in ids))
    intake = start_intake(redis_server, "q_fifo", sink)
    try:
        assert sink.wait_done(ids)
        assert sink.order == ids
        assert settled(client, QueueKeys("q_fifo"))
        assert intake.status()["acknowledged"] == 3
        assert intake.status()["in_flight"] == []
    finally:
        intake.stop_taking()


def test_unusable_entries_go_to_the_dead_letter_list_and_never_block(redis_server):
    client, sink = redis_server.client(), Sink()
    push(client, "q_dead", b"{not json", {"id": "ok-1"}, "[1, 2]", {"prompt": "no id"},
         {"id": "../escape"}, b"\xff\xfe", {"job_id": "ok-2"})
    intake = start_intake(redis_server, "q_dead", sink)
    try:
        assert sink.wait_done(["ok-1", "ok-2"])
        assert sink.order == ["ok-1", "ok-2"]
        assert settled(client, QueueKeys("q_dead"))
        dead = [json.loads(d) for d in client.lrange("q_dead:dead", 0, -1)]
        assert [d["reason"].split(":")[0].split(" (")[0] for d in dead] == [
            "not valid JSON", "not a JSON object", "no job id",
            "job id is not a string of letters, digits, `_`, `-`, `.`", "not valid JSON"]
        assert dead[0]["entry"] == "{not json"
        assert dead[0]["consumer"] == "c1"
        assert intake.status()["dead_lettered"] == 5
    finally:
        intake.stop_taking()


def test_a_redelivered_finished_job_is_acknowledged_without_running(redis_server):
    client, sink = redis_server.client(), Sink()
    sink.status["done-1"] = "completed"
    push(client, "q_redeliver", {"id": "done-1"}, {"id": "new-1"})
    intake = start_intake(redis_server, "q_redeliver", sink)
    try:
        assert sink.wait_done(["new-1"])
        assert settled(client, QueueKeys("q_redeliver"))
        assert sink.runs == {"new-1": 1}
        assert intake.status()["redelivered_finished"] == 1
    finally:
        intake.stop_taking()


def test_entries_of_a_consumer_without_heartbeat_go_back_to_the_head_in_order(redis_server):
    client, sink = redis_server.client(), Sink()
    keys = QueueKeys("q_reap")
    # A consumer that died holding two entries (taken oldest first, so the newest is on the left).
    client.sadd(keys.consumers, "ghost")
    client.lpush(keys.processing("ghost"), json.dumps({"id": "held-old"}))
    client.lpush(keys.processing("ghost"), json.dumps({"id": "held-new"}))
    # A live consumer holding one entry must not be touched.
    client.sadd(keys.consumers, "alive")
    client.set(keys.heartbeat("alive"), "{}", ex=60)
    client.lpush(keys.processing("alive"), json.dumps({"id": "alive-1"}))
    push(client, "q_reap", {"id": "queued-1"})
    intake = start_intake(redis_server, "q_reap", sink)
    try:
        assert sink.wait_done(["held-old", "held-new", "queued-1"])
        assert sink.order == ["held-old", "held-new", "queued-1"]
        assert settled(client, keys)
        assert client.lrange(keys.processing("alive"), 0, -1) == [json.dumps({"id": "alive-1"}).encode()]
        assert not client.sismember(keys.consumers, "ghost")
        assert client.sismember(keys.consumers, "alive")
        assert intake.status()["reaped"] == 2
    finally:
        intake.stop_taking()


def test_a_restarted_consumer_resumes_its_own_processing_list(redis_server):
    """Same consumer id after a crash: a finished job is acknowledged, one never accepted is run."""
    client, sink = redis_server.client(), Sink()
    keys = QueueKeys("q_resume")
    client.sadd(keys.consumers, "c1")
    client.lpush(keys.processing("c1"), json.dumps({"id": "was-finished"}))
    client.lpush(keys.processing("c1"), json.dumps({"id": "never-accepted"}))
    sink.status["was-finished"] = "failed"  # the runtime's recovery ended it when the process restarted
    intake = start_intake(redis_server, "q_resume", sink)
    try:
        assert sink.wait_done(["never-accepted"])
        assert settled(client, keys)
        assert sink.runs == {"never-accepted": 1}
    finally:
        intake.stop_taking()


def test_a_job_delivered_too_often_fails_instead_of_circling(redis_server):
    client, sink = redis_server.client(), Sink()
    keys = QueueKeys("q_poison")
    client.hset(keys.deliveries, "poison", 3)  # three consumers took it and died
    push(client, "q_poison", {"id": "poison"}, {"id": "after"})
    intake = start_intake(redis_server, "q_poison", sink, max_deliveries=3)
    try:
        assert sink.wait_done(["poison", "after"])
        assert sink.rejected == {"poison": "redelivery_limit"}
        assert sink.runs == {"after": 1}
        assert settled(client, keys)
        assert not client.hexists(keys.deliveries, "poison")
    finally:
        intake.stop_taking()


def test_an_idle_consumer_gets_the_next_job_rather_than_a_busy_one(redis_server):
    client = redis_server.client()
    sinks = [Sink(job_s=0.05), Sink(job_s=0.05)]
    intakes = [start_intake(redis_server, "q_share", s, consumer=f"c{i}") for i, s in enumerate(sinks)]
    ids = [f"share-{i}" for i in range(20)]
    try:
        push(client, "q_share", *({"id": i} for i in ids))
        assert all(s.wait_done([i for i in ids if i in s.status]) for s in sinks)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and sum(len(s.order) for s in sinks) < len(ids):
            time.sleep(0.02)
        done = [i for s in sinks for i in s.order]
        assert sorted(done) == sorted(ids)
        assert len(done) == len(ids)
        assert all(len(s.order) >= 5 for s in sinks), [len(s.order) for s in sinks]
        assert settled(client, QueueKeys("q_share"), consumers=("c0", "c1"))
        overview = queue_overview(client, "q_share", MAX_BYTES)
        assert overview["depth"] == 0
        assert {c["consumer_id"] for c in overview["consumers"]} == {"c0", "c1"}
    finally:
        for intake in intakes:
            intake.stop_taking()


def test_redis_down_is_reported_and_nothing_is_lost_when_it_returns():
    with RedisServer() as server:
        client, sink = server.client(), Sink(job_s=0.05)
        ids = [f"outage-{i}" for i in range(6)]
        push(client, "q_outage", *({"id": i} for i in ids))
        intake = start_intake(server, "q_outage", sink)
        try:
            assert sink.wait_done(ids[:1])
            server.stop()
            deadline = time.monotonic() + 10
            while intake.status()["connected"] and time.monotonic() < deadline:
                time.sleep(0.02)
            status = intake.status()
            assert not status["connected"]
            assert status["last_error"]
            assert status["disconnected_since"]
            time.sleep(0.3)
            server.start()
            assert sink.wait_done(ids)
            assert sorted(sink.order) == sorted(ids)
            assert all(n == 1 for n in sink.runs.values())
            assert settled(server.client(), QueueKeys("q_outage"))
            assert intake.status()["connected"]
            assert intake.status()["reconnects"] >= 1
        finally:
            intake.stop_taking()


def test_tls_with_a_password_and_a_clean_exit_deregisters():
    with RedisServer(tls=True) as server:
        assert server.url.startswith("rediss://:test-redis-password@")
        client, sink = server.client(), Sink()
        push(client, "q_tls", {"id": "tls-1"})
        intake = start_intake(server, "q_tls", sink)
        assert sink.wait_done(["tls-1"])
        assert settled(client, QueueKeys("q_tls"))
        intake.stop_taking()
        intake.close()
        assert queue_overview(client, "q_tls", MAX_BYTES)["consumers"] == []


def test_parse_entry_reasons():
    assert parse_entry(b'{"id": "a", "job_id": "a"}', MAX_BYTES) == Entry({"id": "a", "job_id": "a"}, "a")
    assert parse_entry(b'{"job_id": "b"}', MAX_BYTES) == Entry({"job_id": "b"}, "b")
    assert str(parse_entry(b'{"id": 5}', MAX_BYTES)).startswith("job id is not")
    assert parse_entry(b'"text"', MAX_BYTES) == "not a JSON object (a str)"
    assert str(parse_entry(b"", MAX_BYTES)).startswith("not valid JSON")
    # The HTTP body rules (common/strict_json.py, the id pattern, the size cap), never an exception.
    deep = "[" * 3000 + "]" * 3000
    assert "nested more than 64 deep" in parse_entry(f'{{"id": "d", "x": {deep}}}', MAX_BYTES)
    assert "nested more than 64 deep" in parse_entry('{"id": "d", "x": ' + "[" * 900 + "]" * 900 + "}", MAX_BYTES)
    assert "NaN is not a JSON value" in parse_entry(b'{"id": "n", "guidance_scale": NaN}', MAX_BYTES)
    assert "out of range" in parse_entry(b'{"id": "n", "guidance_scale": 1e999}', MAX_BYTES)
    assert str(parse_entry(b'{"id": "newline\\n"}', MAX_BYTES)).startswith("job id is not")
    assert str(parse_entry(json.dumps({"id": "newline\n"}), MAX_BYTES)).startswith("job id is not")
    big = b'{"id": "big", "m": "' + b"x" * 100 + b'"}'
    assert parse_entry(big, 64).startswith("the entry is 122 bytes; at most 64")
    assert parse_entry(b'{"id": "\\ud800x"}', MAX_BYTES).startswith("not valid JSON: the string at /id contains a lone")


def test_missing_redis_server_fails_with_how_to_get_it(monkeypatch):
    from tests import redis_support
    monkeypatch.setattr(redis_support.shutil, "which", lambda name: None)
    with pytest.raises(pytest.fail.Exception, match="apt-get install redis-server"):
        redis_support.redis_server_binary()


def test_a_job_the_sink_fails_to_accept_ends_failed_and_is_acknowledged(redis_server):
    class Failing(Sink):
        def submit(self, job_id, payload):
            if payload.get("explode"):
                raise RuntimeError("a defect in accepting this job")
            super().submit(job_id, payload)

    client, sink = redis_server.client(), Failing()
    push(client, "q_defect", {"id": "defect-1", "explode": True}, {"id": "fine-1"})
    intake = start_intake(redis_server, "q_defect", sink)
    try:
        assert sink.wait_done(["defect-1", "fine-1"])
        assert sink.rejected == {"defect-1": "internal_error"}
        assert sink.runs == {"fine-1": 1}
        assert settled(client, QueueKeys("q_defect"))
    finally:
        intake.stop_taking()


def test_hostile_entries_are_dead_lettered_once_with_the_reason_and_the_queue_moves_on(redis_server):
    """Each ends in the dead-letter list exactly once (a 3,000-deep entry used to raise RecursionError and be
    handled again forever), and the job behind each runs."""
    client, sink = redis_server.client(), Sink()
    sink.owners["taken-1"], sink.status["taken-1"] = "alice", "completed"
    hostile = {
        "deep": '{"id": "deep-1", "m": ' + "[" * 3000 + "]" * 3000 + "}",
        "nan": '{"id": "nan-1", "guidance_scale": NaN}',
        "newline": json.dumps({"id": "newline-1\n"}),
        "big": json.dumps({"id": "big-1", "metadata": "x" * 9000}),
        "other user": json.dumps({"id": "taken-1", "user_id": "mallory"}),
    }
    entries = []
    for i, entry in enumerate(hostile.values()):
        entries += [entry, {"id": f"behind-{i}"}]
    push(client, "q_hostile", *entries)
    intake = start_intake(redis_server, "q_hostile", sink, max_entry_bytes=8192)
    try:
        assert sink.wait_done([f"behind-{i}" for i in range(len(hostile))])
        assert settled(client, QueueKeys("q_hostile"))
        time.sleep(0.5)  # nothing is handled again after the queue has settled
        dead = [json.loads(d) for d in client.lrange("q_hostile:dead", 0, -1)]
        reasons = [d["reason"] for d in dead]
        assert len(dead) == len(hostile), reasons
        assert "nested more than 64 deep" in reasons[0]
        assert "NaN is not a JSON value" in reasons[1]
        assert reasons[2].startswith("job id is not")
        assert reasons[3].startswith("the entry is")
        assert dead[3]["bytes"] > 8192
        assert reasons[4] == "job id taken-1 is already in use: another user's job has it"
        assert sink.status["taken-1"] == "completed"
        assert "taken-1" not in sink.runs
        status = intake.status()
        assert status["dead_lettered"] == 5
        assert status["id_conflicts"] == 1
        assert status["taken"] == 10
    finally:
        intake.stop_taking()


def test_an_exception_while_handling_an_entry_dead_letters_it_once(redis_server):
    class Broken(Sink):
        def conflict(self, job_id, payload):
            if payload.get("break"):
                raise RecursionError("maximum recursion depth exceeded")
            return super().conflict(job_id, payload)

    client, sink = redis_server.client(), Broken()
    push(client, "q_broken", {"id": "broken-1", "break": True}, {"id": "after-1"})
    intake = start_intake(redis_server, "q_broken", sink)
    try:
        assert sink.wait_done(["after-1"])
        assert settled(client, QueueKeys("q_broken"))
        time.sleep(0.5)
        [dead] = [json.loads(d) for d in client.lrange("q_broken:dead", 0, -1)]
        assert dead["reason"] == "handling the entry failed: RecursionError"
        assert intake.status()["taken"] == 2
        assert intake.status()["dead_lettered"] == 1
    finally:
        intake.stop_taking()


def test_the_overview_shows_what_it_finds_and_never_fails(redis_server):
    client, keys = redis_server.client(), QueueKeys("q_odd")
    client.sadd(keys.consumers, "plain-text-heartbeat", "no-heartbeat", "\x1b[31mred")
    client.set(keys.heartbeat("plain-text-heartbeat"), b"not json \xff")
    client.lpush(keys.processing("plain-text-heartbeat"), b'{"id": "x", "v": NaN}', json.dumps({"id": "ok-1"}))
    client.lpush(keys.processing("plain-text-heartbeat"), json.dumps({"id": "huge", "m": "x" * 5000}))
    client.set(keys.dead, "a string where a list should be")
    overview = queue_overview(client, "q_odd", 4096)
    assert overview["depth"] == 0
    assert overview["dead_letters"] is None
    assert overview["errors"]
    assert overview["errors"][0].startswith("q_odd:dead: ResponseError: WRONGTYPE")
    by_id = {c["consumer_id"]: c for c in overview["consumers"]}
    odd = by_id["plain-text-heartbeat"]
    assert odd["alive"]
    assert odd["info"] == {"unreadable": "not json \ufffd", "truncated": False}
    assert odd["held"] == 3
    assert odd["in_flight"][0].startswith("<unusable entry: not valid JSON: NaN")
    assert odd["in_flight"][1] == "ok-1"
    assert odd["in_flight"][2].startswith("<unusable entry: the entry is")
    assert not by_id["no-heartbeat"]["alive"]
    assert by_id["no-heartbeat"]["info"] is None
    assert "\x1b[31mred" in by_id


def test_the_heartbeat_reports_an_outage_while_the_intake_loop_is_quiet():
    """A long job keeps the intake loop from touching Redis: the heartbeat thread still notices."""
    with RedisServer() as server:
        sink = Sink()
        sink._running = True  # the executor is busy: the loop never takes and never blocks on Redis
        intake = start_intake(server, "q_quiet", sink, heartbeat_ttl_s=30)
        try:
            deadline = time.monotonic() + 10
            while not intake.status()["connected"] and time.monotonic() < deadline:
                time.sleep(0.02)
            assert intake.status()["redis"] == "connected"
            server.stop()
            stopped = time.monotonic()
            while intake.status()["connected"] and time.monotonic() < stopped + 20:
                time.sleep(0.05)
            took = time.monotonic() - stopped
            assert intake.status()["redis"] == "unreachable", intake.status()
            assert took < 10, f"the outage showed after {took:.1f}s"  # LIVENESS_S is 2 s; margin for a loaded box
        finally:
            intake.stop_taking()


def test_a_wrong_password_is_reported_as_refused():
    with RedisServer(password="the-right-one") as server:
        url = server.url.replace("the-right-one", "a-wrong-one")
        sink = Sink()
        intake = QueueIntake(connect(url, 0.2), "q_auth", "c1", sink, block_s=0.2, backoff_s=0.05, backoff_max_s=0.5)
        intake.start()
        try:
            deadline = time.monotonic() + 10
            while intake.status()["last_error"] is None and time.monotonic() < deadline:
                time.sleep(0.02)
            status = intake.status()
            assert status["redis"] == "password_refused", status
            assert not status["connected"], status
            assert "a-wrong-one" not in json.dumps(status)
        finally:
            intake.stop_taking()


def test_a_command_redis_refuses_while_handling_dead_letters_the_entry_once(redis_server):
    """A key of the wrong type (here the deliveries hash) fails every time: the entry goes to the dead-letter
    list with the reason instead of being handled again forever."""
    client, sink = redis_server.client(), Sink()
    keys = QueueKeys("q_wrongtype")
    client.set(keys.deliveries, "not a hash")
    push(client, "q_wrongtype", {"id": "refused-1"})
    intake = start_intake(redis_server, "q_wrongtype", sink)
    try:
        deadline = time.monotonic() + 10
        while not client.llen(keys.dead) and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.5)
        [dead] = [json.loads(d) for d in client.lrange(keys.dead, 0, -1)]
        assert dead["reason"] == "handling the entry failed: ResponseError"
        assert intake.status()["taken"] == 1
        assert intake.status()["connected"]
        client.delete(keys.deliveries)
        push(client, "q_wrongtype", {"id": "after-1"})
        assert sink.wait_done(["after-1"])
        assert sink.runs == {"after-1": 1}
        assert settled(client, keys)
    finally:
        intake.stop_taking()


def test_an_entry_taken_just_before_redis_goes_away_runs_after_the_reconnect(redis_server):
    """Redis killed between taking an entry (BLMOVE) and counting its delivery (HINCRBY): the entry stays in
    this consumer's processing list and must run once Redis is back. It used to be tracked before the count,
    so the reconciliation after the reconnect skipped it and it never ran (a loaded run of
    test_redis_restarted_mid_run_loses_nothing lost a job this way)."""
    stopped = threading.Event()

    class KillsRedisOnFirstLook(Sink):
        def job_status(self, job_id):
            if job_id == "cut" and not stopped.is_set():  # looked up right before the delivery is counted
                stopped.set()
                redis_server.stop(signal.SIGKILL)
            return super().job_status(job_id)

    sink = KillsRedisOnFirstLook(job_s=0.02)
    push(redis_server.client(), "q_cut", {"id": "cut"})
    intake = start_intake(redis_server, "q_cut", sink)
    try:
        assert poll_until(stopped.is_set, 10)
        time.sleep(0.5)  # the intake's HINCRBY meets a dead server
        redis_server.start()
        assert sink.wait_done(["cut"], 30), intake.status()
        assert sink.runs == {"cut": 1}
        assert settled(redis_server.client(), QueueKeys("q_cut"))
    finally:
        intake.stop_taking()
