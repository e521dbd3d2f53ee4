"""One queue and one thread per model: admits waiting generations into the model's running batch.

Continuous batching (CHAT_BATCHING=continuous, the default): a request joins the running batch at the
next step when a row is free, and leaves it the step it ends. Static batching (`static`): a batch is
formed while the model is idle and runs until its longest row ends; requests that arrive meanwhile
wait for the next batch. Either way the first request waits up to `window_s` for company, and a
`reproducible` request runs alone: it waits for the running batch to drain, nothing joins it, and the
requests behind it wait (first come, first served).

Memory: a busy period (from the first admitted request until the batch is empty again) holds the model
in use (`ModelHost.use`) with the working-memory bound of its rows (plan.batch_working_bytes). When rows
would join and need more, the lease is grown on a thread of its own (`Growth`: under the orchestrator the
broker answers only when it can grant, up to LEASE_TIMEOUT_S) while the running rows keep decoding; the
newcomers join at the first step after the grant. A refusal sends them back to the front of the queue,
and for the rest of the busy period rows join only within the lease already held. A busy period ends by
returning the allocator's cached blocks to the device (`ChatEngine.release_cached_memory`).

A CUDA out-of-memory error never fails the batch as a whole: the cache is freed and the step is retried;
if it fails again, the most recently admitted half of the rows is refused (`insufficient_memory`) and the
rest retried, down to one row. A prefill that runs out of memory is retried in halves, and only a request
that cannot be prefilled alone is refused.
"""
from __future__ import annotations

import collections
import logging
import threading
import time

from common.errors import CANCELLED, OVERLOADED, JobFailed, MemoryUnavailable, Unavailable
from workers import devices
from workers.engines.chat.generation import Generation

log = logging.getLogger(__name__)


class Overloaded(Unavailable):
    """The model's queue is full; the caller should retry later (503)."""

    code = OVERLOADED

    def __init__(self, message: str):
        super().__init__(message, retry_after_s=1)


class Growth:
    """One request to grow the working-memory lease to `need` bytes for `joining`, asked on its own thread
    so the batch keeps decoding while the memory client waits for an answer."""

    def __init__(self, memory, need: int, joining: list[Generation]):
        self.need, self.joining = need, joining
        self.error: MemoryUnavailable | None = None
        self.done = threading.Event()
        self._thread = threading.Thread(target=self._ask, args=(memory,), name="chat-lease-growth", daemon=True)
        self._thread.start()

    def _ask(self, memory) -> None:
        try:
            memory.grow_working(self.need)
        except MemoryUnavailable as exc:
            self.error = exc
        except Exception as exc:  # the memory client failed in a way it does not name: a refusal, said so
            log.exception("growing the working-memory lease failed")
            self.error = MemoryUnavailable(f"the working-memory lease could not be grown ({type(exc).__name__})")
        finally:
            self.done.set()


def out_of_memory_refusal(rows: int) -> MemoryUnavailable:
    return MemoryUnavailable(f"the device ran out of memory for this request in a batch of {rows} (CUDA out of "
                             "memory after freeing the cache and retrying with fewer rows)", details={"rows": rows})


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
        self.out_of_memory = 0          # out-of-memory errors recovered from (steps and prefills)
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

    def _requeue(self, generations: list[Generation]) -> None:
        with self._cond:
            self._waiting.extendleft(reversed(generations))
            self._cond.notify_all()

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

    def _bound(self, generations: list[Generation]) -> int:
        return self.engine.batch_working_bytes(self.model, [(len(g.prompt_ids), g.params["max_tokens"])
                                                            for g in generations])

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
        growth: Growth | None = None
        try:
            leased = self._bound(admitted)
            with self.host.use([self.model], leased), self.engine.running(self.model) as batch:
                try:
                    self._admit(batch, admitted)
                    may_grow = True
                    while True:
                        if len(batch):
                            self._step(batch)
                        if growth is not None and (growth.done.is_set() or not len(batch)):
                            # An empty batch waits for the answer (nothing runs whose pace it could slow): a
                            # grant arriving after this busy period ended would hold memory no job uses.
                            growth.done.wait()
                            leased, may_grow = self._settle(batch, growth, leased, may_grow)
                            growth = None
                        if growth is None and self.continuous and len(batch) < self.batch_size:
                            leased, growth = self._join(batch, leased, may_grow)
                        if not len(batch) and growth is None:
                            break
                finally:
                    if growth is not None:  # the batch failed with a request pending: its answer lands first
                        growth.done.wait()
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
                self._requeue(admitted[half:])
                self._busy_period(admitted[:half])
                return
            log.warning("chat batch on %s failed: %s", self.model, exc)
            self._fail(admitted, batch, exc, growth)
        except JobFailed as exc:
            log.warning("chat batch on %s failed: %s", self.model, exc)
            self._fail(admitted, batch, exc, growth)
        except Exception as exc:  # every admitted request must get an answer
            log.exception("chat batch on %s failed", self.model)
            self._fail(admitted, batch, exc, growth)
        finally:
            self.engine.release_cached_memory()

    def _join(self, batch, leased: int, may_grow: bool) -> tuple[int, Growth | None]:
        """Admit waiting generations that fit in the lease held; ask for more on a Growth thread when they
        do not (at most one at a time, none after a refusal in this busy period)."""
        exclusive = any(row.generation.params["reproducible"] for row in batch.rows)
        joining = self._take(self.batch_size - len(batch), running=len(batch), exclusive=exclusive)
        if not joining:
            return leased, None
        need = self._bound([row.generation for row in batch.rows] + joining)
        if need <= leased:
            self._enter(batch, joining)
            return leased, None
        if not may_grow:
            self._requeue(joining)
            return leased, None
        return leased, Growth(self.host.memory, need, joining)

    def _settle(self, batch, growth: Growth, leased: int, may_grow: bool) -> tuple[int, bool]:
        """The answer to a Growth: the newcomers join, or they go back to the front of the queue."""
        if growth.error is not None:
            log.info("no memory for %d more rows on %s now (%s); they wait for the batch to drain",
                     len(growth.joining), self.model, growth.error.message)
            self._requeue(growth.joining)
            return leased, False
        self._enter(batch, growth.joining)
        return max(leased, growth.need), may_grow

    def _enter(self, batch, joining: list[Generation]) -> None:
        self.rows += len(joining)
        try:
            self._admit(batch, joining)
        except BaseException as exc:  # the batch fails as a whole (_busy_period); these were not in it yet
            for g in joining:
                g.fail(exc)
            raise

    # ---- out of memory ------------------------------------------------------------------------------
    def _admit(self, batch, generations: list[Generation]) -> None:
        """Prefill `generations` into the batch; after an out-of-memory error, free the cache and try them in
        halves; a generation that cannot be prefilled alone is refused with insufficient_memory."""
        try:
            batch.admit(generations)
            return
        except Exception as exc:
            if not devices.is_out_of_memory(exc):
                raise
        self.out_of_memory += 1
        self.engine.release_cached_memory()
        if len(generations) == 1:
            log.warning("out of device memory prefilling one request on %s (batch of %d); refused", self.model,
                        len(batch) + 1)
            generations[0].fail(out_of_memory_refusal(len(batch) + 1))
            return
        half = len(generations) // 2
        log.warning("out of device memory prefilling %d requests on %s; retrying them in halves", len(generations),
                    self.model)
        self._admit(batch, generations[:half])
        self._admit(batch, generations[half:])

    def _step(self, batch) -> None:
        """One decode step; after an out-of-memory error, free the cache and retry, then refuse the most
        recently admitted half of the rows and retry with the rest, down to one row."""
        try:
            batch.step()
            return
        except Exception as exc:
            if not devices.is_out_of_memory(exc):
                raise
        self.out_of_memory += 1
        self.engine.release_cached_memory()
        while True:
            try:
                batch.step()
                return
            except Exception as exc:
                if not devices.is_out_of_memory(exc):
                    raise
            self.engine.release_cached_memory()
            rows = len(batch)
            refused = max(1, rows // 2)
            log.warning("out of device memory decoding %d rows on %s after freeing the cache; refusing the %d "
                        "admitted last", rows, self.model, refused)
            batch.evict(refused, out_of_memory_refusal(rows))
            if not len(batch):
                return

    @staticmethod
    def _fail(admitted: list[Generation], batch, exc: BaseException, growth: Growth | None = None) -> None:
        if batch is not None:
            batch.fail_all(exc)
        for g in admitted + (growth.joining if growth is not None else []):
            g.fail(exc)  # those that never made it into the batch (finished ones ignore this)
