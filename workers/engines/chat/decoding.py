"""Token ids -> text: incremental detokenising, stop strings, streaming hold-back, and cleaning an
enhancement out of a generation. `Row` is one generation's decoding state inside a batch."""
from __future__ import annotations

import logging
import time

from workers.engines.chat.generation import Generation, GenerationResult

log = logging.getLogger(__name__)


def find_stop(text: str, stops: list[str], start: int = 0) -> int | None:
    """Index of the earliest stop string in text[start:], or None."""
    hits = [i for i in (text.find(s, start) for s in stops) if i >= 0]
    return min(hits) if hits else None


def held_back(text: str, stops: list[str]) -> int:
    """How many trailing characters could be the start of a stop string (not streamed yet)."""
    longest = 0
    for stop in stops:
        for k in range(min(len(text), len(stop) - 1), longest, -1):
            if text.endswith(stop[:k]):
                longest = k
                break
    return longest


def _same_text(a: str, b: str) -> bool:
    return " ".join(a.split()).casefold() == " ".join(b.split()).casefold()


def clean_enhancement(text: str, original: str, special_tokens, quote_pairs) -> str:
    """The enhanced prompt in a generation: special-token text removed, an echoed copy of the prompt on
    its own first line removed, one pair of surrounding quotes removed. Returns "" when nothing but the
    original prompt (or nothing at all) is left, which the caller reports as an error."""
    for token in special_tokens:
        text = text.replace(token, "")
    text = text.strip()
    prompt = original.strip()
    first_line, newline, rest = text.partition("\n")
    if newline and prompt and _same_text(first_line, prompt):
        text = rest.strip()
    for opening, closing in quote_pairs:
        if len(text) >= len(opening) + len(closing) and text.startswith(opening) and text.endswith(closing):
            text = text[len(opening):len(text) - len(closing)].strip()
            break
    if not text or _same_text(text, prompt):
        return ""
    return text


class Detokenizer:
    """Token ids -> text deltas whose concatenation is the decoded text. A delta is released only when
    it does not end inside a multi-byte character."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.prefix = self.read = 0

    def _decode(self, ids) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def push(self, token: int) -> str:
        self.ids.append(token)
        before = self._decode(self.ids[self.prefix:self.read])
        now = self._decode(self.ids[self.prefix:])
        if len(now) > len(before) and not now.endswith("\ufffd"):
            self.prefix, self.read = self.read, len(self.ids)
            return now[len(before):]
        return ""

    def flush(self) -> str:
        before = self._decode(self.ids[self.prefix:self.read])
        now = self._decode(self.ids[self.prefix:])
        self.prefix = self.read = len(self.ids)
        return now[len(before):]


class Row:
    """Decoding state of one generation inside a batch: its text so far, what was streamed, why it ended.
    `batch_size` is the most rows it ran together with (itself included)."""

    def __init__(self, generation: Generation, tokenizer, eos_ids: list[int], special_tokens: list[str],
                 started: float):
        p = generation.params
        self.generation = generation
        self.prompt_ids = generation.prompt_ids
        self.max_tokens = p["max_tokens"]
        self.stops = p["stop"]
        self.max_stop = max((len(s) for s in self.stops), default=0)
        self.eos = eos_ids
        self.special_tokens = special_tokens
        self.detokenizer = Detokenizer(tokenizer)
        self.started = started
        self.batch_size = 1
        self.tokens = 0
        self.first_token_at: float | None = None
        self.text = ""
        self.emitted = 0
        self.done = False
        self.hit_stop_string = False

    def step(self, token: int, now: float) -> None:
        self.tokens += 1
        if self.first_token_at is None:
            self.first_token_at = now
        if token in self.eos:
            self.finish("stop", now)
            return
        self._append(self.detokenizer.push(token))
        if self.done:
            return
        if self.tokens >= self.max_tokens:
            self.finish("length", now)
        elif self.generation.cancelled:
            self.finish("cancelled", now)
        else:
            self._emit(len(self.text) - held_back(self.text, self.stops))

    def _append(self, delta: str) -> None:
        if not delta:
            return
        start = max(0, len(self.text) - self.max_stop + 1)
        self.text += delta
        cut = find_stop(self.text, self.stops, start)
        if cut is not None:
            self.text = self.text[:cut]
            self.hit_stop_string = True
            self.finish("stop", time.monotonic())

    def _emit(self, upto: int) -> None:
        if upto > self.emitted:
            self.generation.deliver(self.text[self.emitted:upto])
            self.emitted = upto

    def finish(self, reason: str, now: float) -> None:
        if self.done:
            return
        self.done = True
        if not self.hit_stop_string:
            # Bytes of an unfinished character still held by the detokenizer are part of the output.
            start = max(0, len(self.text) - self.max_stop + 1)
            self.text += self.detokenizer.flush()
            cut = find_stop(self.text, self.stops, start)
            if cut is not None:
                self.text, reason = self.text[:cut], "stop"
        self._emit(len(self.text))
        if reason == "cancelled":
            log.info("client went away: generation cancelled after %d tokens", self.tokens)
        g = self.generation
        g.finish(GenerationResult(
            text=self.text, finish_reason=reason, prompt_tokens=len(self.prompt_ids), completion_tokens=self.tokens,
            queue_time=self.started - g.submitted, generation_time=now - self.started, batch_size=self.batch_size,
            special_tokens=tuple(self.special_tokens),
            first_token_time=None if self.first_token_at is None else self.first_token_at - g.submitted))
