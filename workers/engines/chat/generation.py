"""One chat request handed to the engine: its trusted parameters and prompt tokens, its streamed
deltas, its result or its error."""
from __future__ import annotations

import dataclasses
import logging
import queue
import threading
import time

from common.logging import current_request_id, describe_text, log_context
from common.metrics import process_metrics
from configuration.requests.chat import ChatParams

log = logging.getLogger(__name__)


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
    first_token_time: float | None = None   # submitted -> its first token (time to first token)


class Generation:
    """Made by `ChatEngine.prepare` once the prompt is tokenised and within the model's limits, so
    nothing about the request itself can fail later. The batcher thread writes (`started`, `deliver`,
    `finish`, `fail`); the HTTP thread reads (`wait`, `next_event`) and may `cancel` (a streaming
    client that went away)."""

    def __init__(self, params: ChatParams, prompt_ids: list[int]):
        self.params = params
        self.prompt_ids = prompt_ids
        self.submitted = time.monotonic()
        self.request_id = current_request_id()   # the HTTP request's; the batcher thread logs with it
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

    @property
    def kind(self) -> str:
        return "enhance" if "original_prompt" in self.params else "chat"

    def finish(self, result: GenerationResult) -> None:
        if self._done.is_set():
            return
        self.result = result
        self._observe(result)
        self._done.set()
        if self._events is not None:
            self._events.put(("done", result))

    def fail(self, error: BaseException) -> None:
        if self._done.is_set():
            return
        self.error = error
        self._observe(None)
        self._done.set()
        if self._events is not None:
            self._events.put(("error", error))

    def _observe(self, result: GenerationResult | None) -> None:
        """Metrics and the log line of the request's end (lengths and hashes, never the messages)."""
        model, kind = self.params["model"], self.kind
        metrics = process_metrics()
        metrics.chat_requests.labels(model, kind, result.finish_reason if result else "error").inc()
        with log_context(request_id=self.request_id):
            if result is None:
                log.warning("chat %s on %s failed: %s", kind, model, type(self.error).__name__)
                return
            metrics.chat_prompt_tokens.labels(model).inc(result.prompt_tokens)
            metrics.chat_completion_tokens.labels(model).inc(result.completion_tokens)
            metrics.chat_batch_size.labels(model).observe(result.batch_size)
            if result.first_token_time is not None:
                metrics.chat_ttft.labels(model).observe(result.first_token_time)
            if result.generation_time > 0:
                metrics.chat_tokens_per_second.labels(model).observe(result.completion_tokens / result.generation_time)
            log.info("chat %s on %s: %d prompt tokens -> %d tokens (%s) in %.3fs, batch of %d; output %s", kind, model,
                     result.prompt_tokens, result.completion_tokens, result.finish_reason,
                     result.queue_time + result.generation_time, result.batch_size, describe_text(result.text),
                     extra={"chat_kind": kind, "model": model, "prompt_tokens": result.prompt_tokens,
                            "completion_tokens": result.completion_tokens, "finish_reason": result.finish_reason,
                            "time_to_first_token_s": result.first_token_time, "batch_size": result.batch_size})

    def wait(self, timeout: float | None = None) -> GenerationResult:
        if not self._done.wait(timeout):
            raise TimeoutError("generation still running")
        if self.error is not None:
            raise self.error
        if self.result is None:
            raise RuntimeError("a generation ended with neither a result nor an error")
        return self.result

    def next_event(self, timeout: float | None = None) -> tuple[str, object]:
        """("started" | "delta" | "done" | "error", payload), for streaming generations."""
        if self._events is None:
            raise TypeError("not a streaming generation")
        return self._events.get(timeout=timeout)
