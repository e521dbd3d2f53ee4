"""One queue and one thread per model: admits waiting generations into the model's running batch.

Continuous batching (CHAT_BATCHING=continuous, the default): a request joins the running batch at the
next step when a row is free, and leaves it the step it ends. Static batching (`static`): a batch is
formed while the model is idle and runs until its longest row ends; requests that arrive meanwhile
wait for the next batch. Either way the first request waits up to `window_s` for company, and a
`reproducible` request runs alone: it waits for the running batch to drain, nothing joins it, and the
requests behind it wait (first come, first served).

Memory: a busy period (from the first admitted request until the batch is empty again) holds the model
in use (`ModelHost.use`) with the KV-cache bound of its rows as working memory; when rows join, the
lease is grown to the bound of the rows then running, and a refusal keeps the newcomers waiting until
the batch drains.
"""
from __future__ import annotations

import collections
import logging
import threading
import time

from common.errors import CANCELLED, OVERLOADED, JobFailed, MemoryUnavailable, Unavailable
from workers.engines.chat.generation import Generation

log = logging.getLogger(__name__)


class Overloaded(Unavailable):
    """The model's queue is full; the caller should retry later (503)."""

    code = OVERLOADED

    def __init__(self, message: str):
        super().__init__(message, retry_after_s=1)


class Batcher:
    """Generations arrive validated (`ChatEngine.prepare`): what can still fail here is the model or the
    memory, never the request, and every admitted generation is answered either way."""

    def __init__(self, engine, host, model: str, batch_size: int, window_s: float, max_queue: int,
                 continuous: bool = True):
        self.engine, self.host, self.model = engine, host, model
        self.batch_size, self.window_s, self.max_queue, self.continuous = batch_size, window_s, max_queue, continuous
        self._waiting: collections.deque[Generation] = collections.deque()
        self._cond = threading.Condition()
        self.batches = self.rows = 0    # busy periods, generations admitted
        self._thread = threading.Thread(target=self._loop, name=f"chat-batcher-{model}", daemon=True)
        self._thread.start()

    def submit(self, generation: Generation) -> None:
        with self._cond:
            if len(self._waiting) >= self.max_queue:
                raise Overloaded(f"{self.max_queue} requests are already waiting for {self.model}")
            self._waiting.append(generation)
            self._cond.notify_all()

    def depth(self) -> int:
        with self._cond:
            return len(self._waiting)

    # ---- admission ----------------------------------------------------------------------------------
    def _take(self, free: int, running: int, exclusive: bool) -> list[Generation]:
        """Waiting generations to admit now, first come first served: none into a batch running a
        reproducible request; a reproducible one only into an empty batch, and then alone."""
        taken: list[Generation] = []
        with self._cond:
            while self._waiting and len(taken) < free and not exclusive:
                head = self._waiting[0]
                if head.cancelled:
                    self._waiting.popleft().fail(JobFailed("cancelled before it started", code=CANCELLED))
                    continue
                if head.params["reproducible"]:
                    if running or taken:
                        break
                    exclusive = True
                taken.append(self._waiting.popleft())
        return taken

    def _first(self) -> list[Generation]:
        """Block until a generation waits, then give it `window_s` to find company."""
        with self._cond:
            self._cond.wait_for(lambda: bool(self._waiting))
            deadline = time.monotonic() + self.window_s
            while len(self._waiting) < self.batch_size and not self._waiting[0].params["reproducible"]:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self._cond.wait(remaining):
                    break
        return self._take(self.batch_size, running=0, exclusive=False)

    # ---- the loop -----------------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            admitted = self._first()
            if admitted:
                self._busy_period(admitted)

    def _busy_period(self, admitted: list[Generation]) -> None:
        self.batches += 1
        self.rows += len(admitted)
        batch = None
        try:
            leased = self.engine.batch_working_bytes([g.params for g in admitted])
            with self.host.use([self.model], leased), self.engine.running(self.model) as batch:
                batch.admit(admitted)
                while len(batch):
                    batch.step()
                    if self.continuous and len(batch) < self.batch_size:
                        leased = self._join(batch, leased)
        except MemoryUnavailable as exc:
            if batch is None and len(admitted) > 1:
                # Refused before it ran: the batch is split, not failed. The second half goes back to the
                # front of the queue, the first half is tried alone (halving again if need be); only a
                # request that cannot fit by itself fails.
                half = len(admitted) // 2
                log.info("no memory for a batch of %d on %s (%s); splitting it", len(admitted), self.model,
                         exc.message)
                self.batches -= 1
                self.rows -= len(admitted)
                with self._cond:
                    self._waiting.extendleft(reversed(admitted[half:]))
                self._busy_period(admitted[:half])
                return
            log.warning("chat batch on %s failed: %s", self.model, exc)
            self._fail(admitted, batch, exc)
        except JobFailed as exc:
            log.warning("chat batch on %s failed: %s", self.model, exc)
            self._fail(admitted, batch, exc)
        except Exception as exc:  # every admitted request must get an answer
            log.exception("chat batch on %s failed", self.model)
            self._fail(admitted, batch, exc)

    def _join(self, batch, leased: int) -> int:
        """Admit waiting generations into the running batch; returns the working memory now leased."""
        exclusive = any(row.generation.params["reproducible"] for row in batch.rows)
        joining = self._take(self.batch_size - len(batch), running=len(batch), exclusive=exclusive)
        if not joining:
            return leased
        need = self.engine.batch_working_bytes([r.generation.params for r in batch.rows] + [g.params for g in joining])
        if need > leased:
            try:
                self.host.memory.grow_working(need)  # grows this worker's working-memory lease
            except MemoryUnavailable as exc:
                log.info("no memory for %d more rows on %s now (%s); they wait for the batch to drain",
                         len(joining), self.model, exc.message)
                with self._cond:
                    self._waiting.extendleft(reversed(joining))
                return leased
        self.rows += len(joining)
        try:
            batch.admit(joining)
        except BaseException as exc:  # the batch fails as a whole (_busy_period); these were not in it yet
            for g in joining:
                g.fail(exc)
            raise
        return max(need, leased)

    @staticmethod
    def _fail(admitted: list[Generation], batch, exc: BaseException) -> None:
        if batch is not None:
            batch.fail_all(exc)
        for g in admitted:  # those that never made it into the batch (finished ones ignore this)
            g.fail(exc)
