"""One chat request handed to the engine: its trusted parameters and prompt tokens, its streamed
deltas, its result or its error."""
from __future__ import annotations

import dataclasses
import queue
import threading
import time

from configuration.params.chat import ChatParams


@dataclasses.dataclass
class GenerationResult:
    text: str
    finish_reason: str          # stop | length | cancelled
    prompt_tokens: int
    completion_tokens: int
    queue_time: float           # submitted -> its batch started (includes loading the model)
    generation_time: float      # its batch started -> this row ended
    batch_size: int             # rows generated together with this one (itself included)
    special_tokens: tuple = ()


class Generation:
    """Made by `ChatEngine.prepare` once the prompt is tokenised and within the model's limits, so
    nothing about the request itself can fail later. The batcher thread writes (`started`, `deliver`,
    `finish`, `fail`); the HTTP thread reads (`wait`, `next_event`) and may `cancel` (a streaming
    client that went away)."""

    def __init__(self, params: ChatParams, prompt_ids: list[int]):
        self.params = params
        self.prompt_ids = prompt_ids
        self.submitted = time.monotonic()
        self.result: GenerationResult | None = None
        self.error: BaseException | None = None
        self.cancelled = False
        self._done = threading.Event()
        self._events: queue.Queue | None = queue.Queue() if params["stream"] else None

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def cancel(self) -> None:
        self.cancelled = True

    def started(self) -> None:
        if self._events is not None:
            self._events.put(("started", None))

    def deliver(self, delta: str) -> None:
        if self._events is not None and delta:
            self._events.put(("delta", delta))

    def finish(self, result: GenerationResult) -> None:
        if self._done.is_set():
            return
        self.result = result
        self._done.set()
        if self._events is not None:
            self._events.put(("done", result))

    def fail(self, error: BaseException) -> None:
        if self._done.is_set():
            return
        self.error = error
        self._done.set()
        if self._events is not None:
            self._events.put(("error", error))

    def wait(self, timeout: float | None = None) -> GenerationResult:
        if not self._done.wait(timeout):
            raise TimeoutError("generation still running")
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result

    def next_event(self, timeout: float | None = None) -> tuple[str, object]:
        """("started" | "delta" | "done" | "error", payload), for streaming generations."""
        assert self._events is not None, "not a streaming generation"
        return self._events.get(timeout=timeout)
