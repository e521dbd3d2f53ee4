"""One job lifecycle, shared by the workers' executor and the orchestrator's router.

Both keep a table of jobs that must behave the same way: an id repeated by its own caller answers the
existing job, another caller's id is refused; a job ends once (its terminal state journaled before its
waiters wake and its one callback goes out); a restarted process reads its journal back, resends the
callbacks still pending and hands what the last process left unfinished to its owner's policy; finished
jobs leave after JOB_RETENTION_DAYS. `JobTable` is that lifecycle, written once. What differs stays with
the owner: what it keeps per job (the worker keeps the JobRecord itself, the router a RoutedJob around
it: `record_of` maps one to the other), its metrics and log line at a job's end (`on_end`), its last
change to an ending record (`on_ending`), and what becomes of an unfinished job after a restart.
Records, the journal and the terminal callback's outbox are common/jobs.py's.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from common.errors import JobIdConflict
from common.http import now_iso
from common.job_status import TERMINAL, CallbackStatus, JobStatus
from common.jobs import CallbackSink, JobJournal, JobRecord, send_terminal_callback

log = logging.getLogger(__name__)

E = TypeVar("E")  # what the owner keeps per job

SWEEP_INTERVAL_S = 3600.0


class JobTable(Generic[E]):
    """The jobs of one process, by id, with their done-events, journal and terminal callbacks.

    `lock` guards the table, and the owner takes it for its own compound steps (check, then finish) and
    the state it keeps beside the table (one lock: a finish never waits on a second one). The table's
    own methods take it too (it is reentrant), so they may be called with it held or not."""

    def __init__(self, name: str, journal: JobJournal, callbacks: CallbackSink, record_of: Callable[[E], JobRecord],
                 on_end: Callable[[E], None] | None = None, on_ending: Callable[[E], None] | None = None) -> None:
        """`on_ending(entry)`: the owner's last change to a record that now holds its terminal status, before
        it is journaled (the worker's completed progress). `on_end(entry)`: after the journal and the waiters,
        before the callback is queued, so a job's metrics are counted before its caller can hear of its end.
        With the journal's retention on, a sweeper thread (`{name}-retention`) runs `sweep` hourly."""
        self.name = name
        self.journal = journal
        self.callbacks = callbacks
        self.record_of = record_of
        self.lock = threading.RLock()
        self._entries: dict[str, E] = {}
        self._done: dict[str, threading.Event] = {}
        self._on_end = on_end
        self._on_ending = on_ending
        self.sweeper: threading.Thread | None = None
        if journal.retention_days:
            self.sweeper = _start_sweeper(name, self.sweep)

    # -- entries --------------------------------------------------------------------------------------------
    def claim(self, job_id: str | None, user_id: str) -> E | None:
        """The entry of `job_id` when the same user repeats it (None for an id not in use, or none given);
        JobIdConflict when the id is another user's job (never answered with their job)."""
        with self.lock:
            entry = self._entries.get(job_id) if job_id else None
            if entry is None:
                return None
            if self.record_of(entry).user_id != user_id:
                raise JobIdConflict(f"job id {job_id!r} is already in use; choose another")
            return entry

    def add(self, entry: E) -> None:
        """Keep `entry` under its record's id, with a done-event (already set when the record has ended)."""
        record = self.record_of(entry)
        with self.lock:
            self._entries[record.job_id] = entry
            done = self._done[record.job_id] = threading.Event()
            if record.status in TERMINAL:
                done.set()

    def remove(self, job_id: str) -> None:
        """Forget a job reserved by `add` that was refused before it was accepted (nothing journaled)."""
        with self.lock:
            del self._entries[job_id]
            self._done.pop(job_id, None)

    def entry(self, job_id: str) -> E | None:
        with self.lock:
            return self._entries.get(job_id)

    def __getitem__(self, job_id: str) -> E:
        """The entry of `job_id`; KeyError for an unknown one (the owners' cancel answers 404 on it)."""
        with self.lock:
            return self._entries[job_id]

    def __contains__(self, job_id: object) -> bool:
        with self.lock:
            return job_id in self._entries

    def entries(self) -> list[E]:
        """A snapshot of every entry: the owner may finish jobs while it walks it."""
        with self.lock:
            return list(self._entries.values())

    def get(self, job_id: str) -> JobRecord | None:
        with self.lock:
            entry = self._entries.get(job_id)
            return self.record_of(entry) if entry is not None else None

    def wait(self, job_id: str, timeout_s: float) -> bool:
        """True once the job has ended, False when `timeout_s` passed first or the id is unknown."""
        event = self._done.get(job_id)
        return event.wait(timeout_s) if event else False

    def unfinished(self) -> list[str]:
        with self.lock:
            return [job_id for job_id, entry in self._entries.items() if self.record_of(entry).status not in TERMINAL]

    # -- the end of a job -------------------------------------------------------------------------------------
    def finish(self, entry: E, status: JobStatus, error: dict[str, Any] | None = None) -> None:
        """End the job: terminal state, journal, waiters, the owner's `on_end`, then the one callback. A job
        ends once: a second end (an engine that comes back after its stuck job was ended, a late mirror) is
        logged and changes nothing. A completed job carries no error."""
        record = self.record_of(entry)
        with self.lock:
            if record.status in TERMINAL:
                log.warning("job %s already ended %s; not ending it %s", record.job_id, record.status, status)
                return
            record.status = status
            record.error = error if status != JobStatus.COMPLETED else None
            record.finished_at = now_iso()
            if self._on_ending is not None:
                self._on_ending(entry)
            self.journal.write(record)
            self._done[record.job_id].set()
            if self._on_end is not None:
                self._on_end(entry)
            self._send_callback(record)

    def _send_callback(self, record: JobRecord) -> None:
        send_terminal_callback(record, self.callbacks, self.journal, self.lock)

    # -- a restart ----------------------------------------------------------------------------------------------
    def recover(self, make_entry: Callable[[JobRecord], E], on_unfinished: Callable[[E], None]) -> list[E]:
        """Read the journal back: entries past the retention period are deleted, ended ones are kept (a callback
        still pending is resent, with the attempts and horizon it had), and each unfinished one goes to the
        owner's `on_unfinished` once the whole journal is in the table (the worker fails it, the router asks
        its worker what became of it). Returns the unfinished entries."""
        unfinished: list[E] = []
        with self.lock:
            for record in self.journal.load_all():
                if self.journal.expired(record):  # past JOB_RETENTION_DAYS
                    self.journal.delete(record.job_id)
                    continue
                entry = make_entry(record)
                self.add(entry)
                if record.status not in TERMINAL:
                    unfinished.append(entry)
                elif record.callback.get("status") == CallbackStatus.PENDING:
                    self._send_callback(record)
        for entry in unfinished:
            on_unfinished(entry)
        return unfinished

    # -- retention ----------------------------------------------------------------------------------------------
    def sweep(self, now: float | None = None) -> list[str]:
        """Forget every finished job past the journal's retention (memory and disk; a callback still pending
        keeps its job). Returns their ids."""
        with self.lock:
            gone = [job_id for job_id, entry in self._entries.items()
                    if self.journal.expired(self.record_of(entry), now)]
            for job_id in gone:
                del self._entries[job_id]
                self._done.pop(job_id, None)
                self.journal.delete(job_id)
        if gone:
            log.info("retention: %d finished job(s) older than %g days removed", len(gone),
                     self.journal.retention_days)
        return gone

    # -- the ops page --------------------------------------------------------------------------------------------
    def summaries(self, limit: int, worker_of: Callable[[E], str]) -> list[dict[str, Any]]:
        """What the ops page lists: every unfinished job (oldest first), then the `limit` most recently
        finished; no prompts, parameters or users (JobRecord.summary)."""
        with self.lock:
            pairs = [(self.record_of(entry), worker_of(entry)) for entry in self._entries.values()]
            active = sorted((p for p in pairs if p[0].status not in TERMINAL), key=lambda p: p[0].created_at)
            finished = sorted((p for p in pairs if p[0].status in TERMINAL), key=lambda p: p[0].finished_at or "",
                              reverse=True)[:limit]
            return [record.summary(worker) for record, worker in active + finished]

    def counts(self, worker_of: Callable[[E], str]) -> dict[tuple[str, str], int]:
        """(worker, status) -> jobs not finished yet."""
        counts: dict[tuple[str, str], int] = {}
        with self.lock:
            for entry in self._entries.values():
                status = self.record_of(entry).status
                if status not in TERMINAL:
                    key = (worker_of(entry), status)
                    counts[key] = counts.get(key, 0) + 1
        return counts


def _start_sweeper(name: str, run: Callable[[], Any], interval_s: float = SWEEP_INTERVAL_S) -> threading.Thread:
    """A daemon thread running `run` (a sweep) every `interval_s`; a failed sweep is logged, never the end
    of the thread."""
    def loop() -> None:
        while True:
            time.sleep(interval_s)
            try:
                run()
            except Exception:  # the sweep must never stop for good
                log.exception("retention sweep failed")

    thread = threading.Thread(target=loop, name=f"{name}-retention", daemon=True)
    thread.start()
    return thread
