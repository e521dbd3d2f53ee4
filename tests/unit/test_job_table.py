"""The one job lifecycle (common/job_table.py) on its own: a JobTable over a real journal in tmp_path and a
real CallbackSender posting to a real receiver. The worker's executor and the orchestrator's router both
keep their jobs in it, so what is checked here (ids claimed per user, a job ending once, waiters, recovery
after a restart, the ops page's summaries, retention) holds for both; test_runtime.py and the stack tests
check them through their owners."""
import json
import threading
import time
from dataclasses import dataclass

import pytest

from common.callbacks import CallbackSender
from common.errors import JobIdConflict
from common.http import iso_time
from common.job_status import CallbackStatus, JobStatus
from common.job_table import JobTable
from common.jobs import JobJournal, JobRecord
from configuration.settings import Settings


@dataclass
class Entry:
    """What an owner keeps per job around its record (the router's RoutedJob is one)."""
    record: JobRecord
    worker: str


class Ends:
    """The owner's hooks, recording what the table handed them and what the journal held at that moment."""

    def __init__(self, journal: JobJournal):
        self.journal = journal
        self.ending: list[str] = []
        self.ended: list[tuple[str, JobStatus, dict | None]] = []

    def on_ending(self, entry: Entry) -> None:
        self.ending.append(entry.record.job_id)
        entry.record.metadata["last_word"] = "before the journal"

    def on_end(self, entry: Entry) -> None:
        journaled = json.loads((self.journal.directory / f"{entry.record.job_id}.json").read_text())
        self.ended.append((entry.record.job_id, journaled["status"], journaled["metadata"].get("last_word")))


def make_table(tmp_path, receiver=None, retention_days=0.0, name="t"):
    journal = JobJournal(tmp_path / "journal", retention_days=retention_days)
    callbacks = CallbackSender(Settings(callback_url=receiver.url if receiver else "", callback_backoff_s=0.05))
    ends = Ends(journal)
    table = JobTable(name, journal, callbacks, lambda entry: entry.record, on_end=ends.on_end,
                     on_ending=ends.on_ending)
    return table, ends


def entry(job_id, user="u", worker="sdxl", status=JobStatus.QUEUED, **fields):
    fields.setdefault("params", {})
    return Entry(JobRecord(job_id=job_id, type="sdxl_image_fast", user_id=user, status=status, **fields), worker)


def journaled(table, job_id):
    return json.loads((table.journal.directory / f"{job_id}.json").read_text())


def test_claim_answers_the_same_users_job_and_refuses_another_users(tmp_path):
    table, _ = make_table(tmp_path)
    mine = entry("j1", user="alice")
    table.add(mine)
    assert table.claim("j1", "alice") is mine
    assert table.claim("j2", "alice") is None
    assert table.claim(None, "alice") is None
    with pytest.raises(JobIdConflict, match="'j1' is already in use; choose another"):
        table.claim("j1", "mallory")
    assert table.get("j1") is mine.record
    assert table.entry("j1") is mine
    assert table["j1"] is mine
    with pytest.raises(KeyError):
        table["nope"]
    table.remove("j1")  # refused before it was accepted: the id is free again
    assert "j1" not in table
    assert table.claim("j1", "mallory") is None


def test_a_job_ends_once_journaled_before_its_waiters_and_its_one_callback(tmp_path, receiver, caplog):
    table, ends = make_table(tmp_path, receiver)
    job = entry("j1")
    table.add(job)
    assert table.wait("j1", 0.05) is False  # not ended yet
    woke = []
    waiter = threading.Thread(target=lambda: woke.append(table.wait("j1", 10)))
    waiter.start()
    table.finish(job, JobStatus.FAILED, {"code": "test_failure", "message": "asked to fail"})
    waiter.join(10)
    assert woke == [True]
    assert job.record.status == JobStatus.FAILED
    assert job.record.error == {"code": "test_failure", "message": "asked to fail"}
    assert job.record.finished_at is not None
    # on_ending's change is in the journal, and the journal held the end when on_end ran
    assert ends.ending == ["j1"]
    assert ends.ended == [("j1", "failed", "before the journal")]
    finished_at = job.record.finished_at
    # a second end (an engine back after its stuck job was ended, a late mirror) changes nothing
    table.finish(job, JobStatus.COMPLETED)
    assert "job j1 already ended failed; not ending it completed" in caplog.text
    assert job.record.status == JobStatus.FAILED
    assert job.record.error["code"] == "test_failure"
    assert job.record.finished_at == finished_at
    assert ends.ended == [("j1", "failed", "before the journal")]
    assert table.callbacks.flush(10)
    assert [b["status"] for b in receiver.bodies("j1")] == ["failed"]
    assert [b["error_message"] for b in receiver.bodies("j1")] == ["asked to fail"]
    assert journaled(table, "j1")["callback"]["status"] == CallbackStatus.DELIVERED
    assert table.wait("unknown", 0.01) is False


def test_a_completed_job_carries_no_error_and_a_job_without_callbacks_says_so(tmp_path):
    table, ends = make_table(tmp_path)  # no callback URL: callbacks are off
    job = entry("j1")
    table.add(job)
    table.finish(job, JobStatus.COMPLETED, {"code": "ignored", "message": "a completed job has no error"})
    assert job.record.error is None
    assert journaled(table, "j1")["status"] == "completed"
    assert journaled(table, "j1")["callback"] == {"status": "disabled", "attempts": 0}
    assert table.wait("j1", 0) is True


def write_journal(directory, records):
    journal = JobJournal(directory)
    for record in records:
        journal.write(record)


def test_recovery_keeps_ended_jobs_resends_pending_callbacks_drops_expired_and_hands_over_unfinished(
        tmp_path, receiver):
    long_ago = iso_time(time.time() - 3 * 86400)
    pending = {"status": CallbackStatus.PENDING, "attempts": 2, "since": iso_time(time.time() - 60)}
    delivered = {"status": CallbackStatus.DELIVERED, "attempts": 1}
    write_journal(tmp_path / "journal", [
        JobRecord("queued", "t", "u", {}, status=JobStatus.QUEUED),
        JobRecord("running", "t", "u", {}, status=JobStatus.PROCESSING, started_at=iso_time()),
        JobRecord("done", "t", "u", {}, status=JobStatus.COMPLETED, finished_at=iso_time(), callback=delivered),
        JobRecord("owed", "t", "u", {}, status=JobStatus.FAILED, finished_at=iso_time(),
                  error={"code": "x", "message": "failed before the restart"}, callback=dict(pending)),
        JobRecord("old", "t", "u", {}, status=JobStatus.COMPLETED, finished_at=long_ago, callback=delivered),
        JobRecord("old-owed", "t", "u", {}, status=JobStatus.COMPLETED, finished_at=long_ago,
                  callback=dict(pending)),
    ])
    table, ends = make_table(tmp_path, receiver, retention_days=1)
    seen_by_policy = []

    def fail_it(e):  # the worker's policy: what the last process left unfinished ends failed
        seen_by_policy.append((e.record.job_id, sorted(r.record.job_id for r in table.entries())))
        table.finish(e, JobStatus.FAILED, {"code": "worker_restarted", "message": "restarted"})

    unfinished = table.recover(lambda record: Entry(record, "sdxl"), fail_it)
    assert [e.record.job_id for e in unfinished] == ["queued", "running"]
    # the policy runs once the whole journal is in the table (the router's monitor may then ask about any job)
    everything = ["done", "old-owed", "owed", "queued", "running"]
    assert seen_by_policy == [("queued", everything), ("running", everything)]
    assert not (tmp_path / "journal" / "old.json").exists()  # expired: gone from disk and memory
    assert "old" not in table
    assert table.get("queued").error["code"] == "worker_restarted"
    assert all(table.wait(job_id, 0) for job_id in everything)
    assert table.callbacks.flush(10)
    assert [b["status"] for b in receiver.bodies("queued")] == ["failed"]
    assert [b["status"] for b in receiver.bodies("running")] == ["failed"]
    assert receiver.bodies("done") == []  # delivered before the restart: not sent again
    assert [b["status"] for b in receiver.bodies("owed")] == ["failed"]
    assert [b["status"] for b in receiver.bodies("old-owed")] == ["completed"]  # owed: kept past retention
    # a resent callback goes on from the attempts and the horizon the journal had
    assert journaled(table, "owed")["callback"]["status"] == CallbackStatus.DELIVERED
    assert journaled(table, "owed")["callback"]["attempts"] == 3
    assert journaled(table, "owed")["callback"]["since"] == pending["since"]
    assert [job_id for job_id, _, _ in ends.ended] == ["queued", "running"]  # recovered ends are not re-ended


def test_summaries_list_unfinished_oldest_first_then_the_latest_finished_and_counts_the_unfinished(tmp_path):
    table, _ = make_table(tmp_path)
    for job_id, worker, status, created, finished in [
            ("a", "sdxl", JobStatus.PROCESSING, "2026-01-01T00:00:02", None),
            ("b", "wan", JobStatus.QUEUED, "2026-01-01T00:00:01", None),
            ("c", "wan", JobStatus.QUEUED, "2026-01-01T00:00:03", None),
            ("d", "sdxl", JobStatus.COMPLETED, "2026-01-01T00:00:00", "2026-01-01T00:01:00"),
            ("e", "sdxl", JobStatus.FAILED, "2026-01-01T00:00:00", "2026-01-01T00:03:00"),
            ("f", "wan", JobStatus.CANCELLED, "2026-01-01T00:00:00", "2026-01-01T00:02:00")]:
        table.add(entry(job_id, worker=worker, status=status, created_at=created, finished_at=finished,
                        params={"prompt": "secret"}))
    summaries = table.summaries(2, lambda e: e.worker)
    assert [(s["job_id"], s["worker"]) for s in summaries] == [
        ("b", "wan"), ("a", "sdxl"), ("c", "wan"), ("e", "sdxl"), ("f", "wan")]
    assert all("prompt" not in s and "params" not in s and "user_id" not in s for s in summaries)
    assert table.counts(lambda e: e.worker) == {("sdxl", "processing"): 1, ("wan", "queued"): 2}
    assert sorted(table.unfinished()) == ["a", "b", "c"]


def test_sweep_forgets_finished_jobs_past_retention_but_not_owed_callbacks_or_unfinished_jobs(tmp_path):
    table, _ = make_table(tmp_path, retention_days=1, name="sweeptest")
    assert table.sweeper is not None
    assert table.sweeper.name == "sweeptest-retention"
    assert table.sweeper.is_alive()
    long_ago = iso_time(time.time() - 3 * 86400)
    delivered = {"status": CallbackStatus.DELIVERED, "attempts": 1}
    for e in [entry("old", status=JobStatus.COMPLETED, finished_at=long_ago, callback=delivered),
              entry("owed", status=JobStatus.FAILED, finished_at=long_ago,
                    callback={"status": CallbackStatus.PENDING, "attempts": 4}),
              entry("recent", status=JobStatus.COMPLETED, finished_at=iso_time(), callback=delivered),
              entry("running", status=JobStatus.PROCESSING)]:
        table.add(e)
        table.journal.write(e.record)
    assert table.sweep() == ["old"]
    assert "old" not in table
    assert table.wait("old", 0) is False  # its done-event left with it
    assert not (table.journal.directory / "old.json").exists()
    assert sorted(e.record.job_id for e in table.entries()) == ["owed", "recent", "running"]
    assert (table.journal.directory / "owed.json").exists()
    # a day later than now, the recent one is past retention too
    assert table.sweep(now=time.time() + 2 * 86400) == ["recent"]


def test_retention_off_starts_no_sweeper(tmp_path):
    table, _ = make_table(tmp_path)
    assert table.sweeper is None
