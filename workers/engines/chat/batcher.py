"""Collects the generations for one model and runs them through `ChatEngine.generate` in batches."""
from __future__ import annotations

import logging
import queue
import threading
import time

from common.errors import OVERLOADED, JobFailed, MemoryUnavailable, Unavailable
from workers.engines.chat.generation import Generation

log = logging.getLogger(__name__)


class Overloaded(Unavailable):
    """The model's queue is full; the caller should retry later (503)."""

    code = OVERLOADED

    def __init__(self, message: str):
        super().__init__(message, retry_after_s=1)


class Batcher:
    """The first generation waits up to `window_s` for company; generations that arrive while a batch
    runs form the next batch at once. One thread per model, so `generate` calls on a model never overlap.
    `host` loads the model on demand and keeps it resident while a batch runs.

    Generations arrive validated (`ChatEngine.prepare`): what can still fail here is the model or the
    memory, never the request, and every waiting generation is answered either way."""

    def __init__(self, engine, host, model: str, batch_size: int, window_s: float, max_queue: int):
        self.engine, self.host, self.model = engine, host, model
        self.batch_size, self.window_s = batch_size, window_s
        self._queue: queue.Queue[Generation] = queue.Queue(maxsize=max_queue)
        self.batches = self.rows = 0
        self._thread = threading.Thread(target=self._loop, name=f"chat-batcher-{model}", daemon=True)
        self._thread.start()

    def submit(self, generation: Generation) -> None:
        try:
            self._queue.put_nowait(generation)
        except queue.Full:
            raise Overloaded(f"{self._queue.maxsize} requests are already waiting for {self.model}") from None

    def depth(self) -> int:
        return self._queue.qsize()

    def _collect(self) -> list[Generation]:
        batch = [self._queue.get()]
        deadline = time.monotonic() + self.window_s
        while len(batch) < self.batch_size:
            remaining = deadline - time.monotonic()
            try:
                batch.append(self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait())
            except queue.Empty:
                break
        return batch

    def _loop(self) -> None:
        while True:
            batch = self._collect()
            self.batches += 1
            self.rows += len(batch)
            try:
                working = self.engine.batch_working_bytes([g.params for g in batch])
                with self.host.use([self.model], working):
                    self.engine.generate(batch)
            except (MemoryUnavailable, JobFailed) as exc:
                log.warning("chat batch on %s failed: %s", self.model, exc)
                for g in batch:
                    g.fail(exc)
            except Exception as exc:  # noqa: BLE001 - every waiting request must get an answer
                log.exception("chat batch on %s failed", self.model)
                for g in batch:
                    g.fail(exc)
