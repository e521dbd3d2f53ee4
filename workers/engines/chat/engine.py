"""Chat engine: Qwen2.5 base and instruct behind one batched generation function.

Every HTTP route (enhancement, legacy chat, OpenAI chat completions, streaming or not) becomes a
`Generation` handed to `ChatEngine.submit`. One `Batcher` thread per model collects the generations
that arrive while the model is busy (up to CHAT_BATCH_SIZE, waiting up to CHAT_BATCH_WINDOW_MS for
company) and runs them through `ChatEngine.generate`: one left-padded `model.generate` call.

Per-row sampling. `generate` runs greedy search with `_RowSampler` as its last logits processor: the
sampler applies each row's own repetition penalty, temperature, top-k and top-p, draws exactly one
uniform number per step from that row's own seeded CPU generator, and returns logits that are -inf
everywhere except the chosen token. A row's tokens therefore depend only on its own prompt, its own
parameters and its own seed, never on what else is in the batch (up to floating-point differences of
batched matrix products, which on the tested CPU kernels leave the tokens identical; see docs/CHAT.md).
`_RowTracker` (a stopping criterion) turns each new token into text, ends a row at EOS, at its own
max_tokens, at one of its stop strings or when its client went away, streams text deltas and hands
each row its result as soon as that row ends.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import queue
import threading
import time
from pathlib import Path

import torch
from jinja2.exceptions import TemplateError

from configuration import chat_config
from configuration.schemas.common import ValidationFailed, field_error
from workers import devices
from workers.engines.base import Engine
from common.errors import JobFailed, MemoryUnavailable

log = logging.getLogger(__name__)


# Chat templates add role markers (and, for Qwen2.5-Instruct, a default system line) around messages.
TEMPLATE_TOKENS_PER_MESSAGE = 64


class Overloaded(Exception):
    """The model's queue is full; the caller should retry later (503)."""


# ---- pure decisions (unit-tested on CPU) -------------------------------------------------------

def gpu_plan(gpu: dict, device: str, compile_setting: bool) -> dict:
    """Attention kernel, static KV cache and torch.compile for a model. SDPA is used on every device;
    the static cache and compilation only on CUDA (compilation needs the static cache)."""
    cuda = device == "cuda"
    compiled = cuda and (bool(gpu.get("torch_compile")) or compile_setting)
    return {
        "attn_implementation": gpu.get("attention", "sdpa"),
        "static_cache": cuda and (bool(gpu.get("static_cache")) or compiled),
        "torch_compile": compiled,
    }


def generation_options(plan: dict) -> dict:
    """The GenerationConfig fields that carry a GPU plan."""
    return {"cache_implementation": "static" if plan["static_cache"] else None,
            "disable_compile": not plan["torch_compile"]}


def kv_cache_bytes_per_token(model_config: dict, dtype_bytes: int) -> int:
    """KV-cache bytes one token of one row takes, from a model's config.json (keys and values, every layer)."""
    heads = model_config["num_attention_heads"]
    kv_heads = model_config.get("num_key_value_heads") or heads
    head_dim = model_config.get("head_dim") or model_config["hidden_size"] // heads
    return 2 * model_config["num_hidden_layers"] * kv_heads * head_dim * dtype_bytes


def prompt_token_bound(params: dict) -> int:
    """An upper bound of a request's prompt tokens before tokenising it: byte-level BPE never makes
    more tokens than UTF-8 bytes, plus room for the template's markers around each message."""
    if params["text"] is not None:
        return len(params["text"].encode())
    return sum(len(m["content"].encode()) + TEMPLATE_TOKENS_PER_MESSAGE for m in params["messages"]) \
        + TEMPLATE_TOKENS_PER_MESSAGE


def batch_working_bytes(batch: list[dict], per_token: int) -> int:
    """KV cache of a left-padded batch: every row is as wide as the longest prompt plus the largest max_tokens."""
    width = max(prompt_token_bound(p) for p in batch) + max(p["max_tokens"] for p in batch)
    return per_token * len(batch) * width


def render_template(messages: list[dict], template: dict) -> str:
    """A conversation as one string for a model without a chat template (configuration/chat.json)."""
    text = "".join(template[m["role"]].replace("{content}", m["content"]) for m in messages)
    return text + template.get("generation_prompt", "")


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


def sample_rows(scores: torch.Tensor, input_ids: torch.Tensor, offsets: torch.Tensor, temperature: torch.Tensor,
                top_k: torch.Tensor, top_p: torch.Tensor, penalty: torch.Tensor | None,
                uniforms: torch.Tensor) -> torch.Tensor:
    """One token per row from (B, V) float logits. Each row uses only its own values: repetition
    penalty over its own (unpadded) tokens, temperature (0: argmax), top-k (0: off), top-p, and its
    uniform number u in [0, 1) for inverse-CDF sampling over the kept tokens sorted by probability."""
    batch, vocab = scores.shape
    if penalty is not None:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        first_real = input_ids.gather(1, offsets[:, None])
        ids = torch.where(positions[None, :] >= offsets[:, None], input_ids, first_real)  # pads -> a real token
        picked = scores.gather(1, ids)
        factor = penalty[:, None]
        scores = scores.scatter(1, ids, torch.where(picked < 0, picked * factor, picked / factor))
    greedy = scores.argmax(dim=-1)
    logits = scores / temperature.clamp(min=1e-5)[:, None]
    sorted_logits, order = logits.sort(dim=-1, descending=True, stable=True)
    ranks = torch.arange(vocab, device=scores.device)[None, :]
    k = torch.where(top_k > 0, top_k, vocab)[:, None]
    sorted_logits = sorted_logits.masked_fill(ranks >= k, float("-inf"))
    probs = sorted_logits.softmax(dim=-1)
    before = probs.cumsum(dim=-1) - probs
    probs = probs.masked_fill((before >= top_p[:, None]) & (top_p[:, None] < 1.0), 0.0)
    cumulative = probs.cumsum(dim=-1)
    target = uniforms.to(cumulative.dtype)[:, None] * cumulative[:, -1:]
    position = torch.searchsorted(cumulative, target, right=True)
    last_kept = (probs > 0).sum(dim=-1, keepdim=True) - 1  # kept tokens are a prefix of the sorted order
    position = torch.minimum(position, last_kept.clamp(min=0))
    sampled = order.gather(1, position).squeeze(1)
    return torch.where(temperature == 0, greedy, sampled)


# ---- one request's life ------------------------------------------------------------------------

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
    """One request handed to the engine: its parameters, its streamed deltas, its result or error.

    The batcher thread writes (`started`, `deliver`, `finish`, `fail`); the HTTP thread reads
    (`wait`, `next_event`) and may `cancel` (a streaming client that went away)."""

    def __init__(self, params: dict):
        self.params = params
        self.submitted = time.monotonic()
        self.result: GenerationResult | None = None
        self.error: BaseException | None = None
        self.cancelled = False
        self._done = threading.Event()
        self._events: queue.Queue | None = queue.Queue() if params.get("stream") else None

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
        return self.result

    def next_event(self, timeout: float | None = None) -> tuple[str, object]:
        """("started" | "delta" | "done" | "error", payload), for streaming generations."""
        return self._events.get(timeout=timeout)


class _Detokenizer:
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


class _Row:
    """Decoding state of one generation inside a batch."""

    def __init__(self, generation: Generation, prompt_ids: list[int], loaded: "_LoadedModel", started: float):
        p = generation.params
        self.generation = generation
        self.prompt_ids = prompt_ids
        self.max_tokens = p["max_tokens"]
        self.stops = p["stop"]
        self.max_stop = max((len(s) for s in self.stops), default=0)
        self.eos = loaded.eos_ids
        self.special_tokens = loaded.special_tokens
        self.generator = torch.Generator(device="cpu").manual_seed(int(p["seed"]))
        self.detokenizer = _Detokenizer(loaded.tokenizer)
        self.started = started
        self.batch_size = 1
        self.tokens = 0
        self.text = ""
        self.emitted = 0
        self.done = False
        self.hit_stop_string = False

    def step(self, token: int, now: float) -> None:
        self.tokens += 1
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
            special_tokens=tuple(self.special_tokens)))


class _RowSampler:
    """Last logits processor of a batched greedy `generate`: picks each row's token with that row's
    own sampling parameters and seed (see `sample_rows`) and leaves only that token selectable."""

    def __init__(self, rows: list[_Row], offsets: torch.Tensor, device):
        params = [r.generation.params for r in rows]
        self.rows = rows
        self.offsets = offsets
        self.temperature = torch.tensor([p["temperature"] for p in params], dtype=torch.float32, device=device)
        self.top_k = torch.tensor([p["top_k"] for p in params], dtype=torch.long, device=device)
        self.top_p = torch.tensor([p["top_p"] for p in params], dtype=torch.float32, device=device)
        penalties = [p["repetition_penalty"] for p in params]
        self.penalty = (torch.tensor(penalties, dtype=torch.float32, device=device)
                        if any(v != 1.0 for v in penalties) else None)
        self.sampled = [p["temperature"] > 0 for p in params]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        # One draw per sampled row per step, from the row's own generator, whatever the batch holds.
        uniforms = torch.tensor([float(torch.rand((), generator=r.generator, dtype=torch.float64)) if s else 0.0
                                 for r, s in zip(self.rows, self.sampled)], dtype=torch.float64)
        tokens = sample_rows(scores.float(), input_ids, self.offsets, self.temperature, self.top_k, self.top_p,
                             self.penalty, uniforms.to(scores.device))
        chosen = torch.full_like(scores, float("-inf"))
        return chosen.scatter_(1, tokens[:, None], 0.0)


class _RowTracker:
    """Stopping criterion of a batched `generate`: advances every live row by its new token."""

    def __init__(self, rows: list[_Row], eos_ids: list[int]):
        self.rows = rows
        self.eos_token_id = eos_ids  # marks this as an EOS criterion: generate pads finished rows

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        tokens = input_ids[:, -1].tolist()
        now = time.monotonic()
        for row, token in zip(self.rows, tokens):
            if not row.done:
                row.step(token, now)
        return torch.tensor([row.done for row in self.rows], dtype=torch.bool, device=input_ids.device)


# ---- engine --------------------------------------------------------------------------------------

@dataclasses.dataclass
class _LoadedModel:
    model: object
    tokenizer: object
    eos_ids: list[int]
    pad_id: int
    plan: dict
    special_tokens: list[str]


class ChatEngine(Engine):
    worker = "chat"

    def __init__(self, settings, device=None):
        super().__init__(settings, device)
        self.chat = chat_config()
        self._loaded: dict[str, _LoadedModel] = {}
        self._generate_locks = {m: threading.Lock() for m in self.configs}
        self._batchers: dict[str, Batcher] = {}
        self._kv_per_token: dict[str, int] = {}

    # model lifecycle
    def modules(self, model: str) -> list:
        loaded = self._loaded.get(model)
        return [loaded.model] if loaded else []

    def is_loaded(self, model: str) -> bool:
        return model in self._loaded

    def load(self, model: str) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

        cfg = self.configs[model]
        if not cfg["path"]:
            raise JobFailed(f"no path configured for {model} (QWEN_*_MODEL_PATH)", code="model_not_configured")
        plan = gpu_plan(cfg["gpu"], self.device, self.settings.torch_compile)
        tokenizer = AutoTokenizer.from_pretrained(cfg["path"], local_files_only=True)
        rendering = self.chat["models"][model]["rendering"]
        if rendering == "chat_template" and not tokenizer.chat_template:
            raise JobFailed(f"{model} is configured to use its chat template but its tokenizer has none",
                            code="model_misconfigured")
        lm = AutoModelForCausalLM.from_pretrained(cfg["path"], local_files_only=True, dtype=self.dtype(model),
                                                  attn_implementation=plan["attn_implementation"])
        lm.eval()
        if self.device != "cpu":
            lm.to(self.device)
        eos = lm.generation_config.eos_token_id
        eos_ids = sorted({*([eos] if isinstance(eos, int) else (eos or [])), tokenizer.eos_token_id} - {None})
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_ids[0]
        # The checkpoint's own sampling defaults are never used: every parameter comes with the request.
        lm.generation_config = GenerationConfig(bos_token_id=lm.generation_config.bos_token_id,
                                                eos_token_id=eos_ids, pad_token_id=pad_id)
        self._loaded[model] = _LoadedModel(lm, tokenizer, eos_ids, pad_id, plan, list(tokenizer.all_special_tokens))

    def unload(self, model: str) -> None:
        self._loaded.pop(model, None)
        devices.empty_cache(self.device)

    def required_models(self, params: dict) -> list[str]:
        return [params["model"]]

    def working_bytes(self, params: dict) -> int:
        return self.batch_working_bytes([params])

    def batch_working_bytes(self, batch: list[dict]) -> int:
        """Memory a batch needs beyond the weights (its KV cache), part of the memory lease."""
        model = batch[0]["model"]
        if model not in self._kv_per_token:
            config_file = Path(self.configs[model]["path"]) / "config.json"
            try:
                config = json.loads(config_file.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise JobFailed(f"cannot read {config_file}: {exc}", code="model_not_configured") from None
            self._kv_per_token[model] = kv_cache_bytes_per_token(config, self.dtype(model).itemsize)
        return batch_working_bytes(batch, self._kv_per_token[model])

    def model_info(self, model: str) -> dict:
        plan = gpu_plan(self.configs[model]["gpu"], self.device, self.settings.torch_compile)
        return {"name": model, "short_name": self.chat["models"][model]["short_name"],
                "profile": self.settings.model_profile, "device": self.device,
                "dtype": str(self.dtype(model)).removeprefix("torch."), **plan}

    # batching
    def start(self, host) -> None:
        """Start one batcher thread per model; `host` loads models on demand and keeps them resident
        while a batch runs."""
        window_s = self.settings.chat_batch_window_ms / 1000.0
        for model in self.configs:
            if model not in self._batchers:
                self._batchers[model] = Batcher(self, host, model, self.settings.chat_batch_size, window_s,
                                                self.settings.chat_max_queue)

    def submit(self, params: dict) -> Generation:
        generation = Generation(params)
        self._batchers[params["model"]].submit(generation)
        return generation

    # generation
    def prompt_ids(self, loaded: _LoadedModel, params: dict) -> list[int]:
        if params["text"] is not None:
            text = params["text"]
        elif self.chat["models"][params["model"]]["rendering"] == "chat_template":
            text = loaded.tokenizer.apply_chat_template(params["messages"], add_generation_prompt=True, tokenize=False)
        else:
            text = render_template(params["messages"], self.chat["models"][params["model"]]["template"])
        return loaded.tokenizer(text, add_special_tokens=False).input_ids

    def generate(self, generations: list[Generation]) -> None:
        """Run generations for one model as one left-padded batch. Each generation gets its result (or
        its own error, e.g. a prompt too long) as soon as its row ends. The model must be resident
        (callers hold `ModelHost.use`)."""
        model = generations[0].params["model"]
        if any(g.params["model"] != model for g in generations):
            raise ValueError("one batch, one model")
        with self._generate_locks[model]:
            loaded = self._loaded.get(model)
            if loaded is None:
                raise RuntimeError(f"{model} is not loaded")
            started = time.monotonic()
            limit = self.configs[model]["limits"]["max_prompt_tokens"]
            rows = []
            for g in generations:
                if g.cancelled:
                    g.fail(JobFailed("cancelled before it started", code="cancelled"))
                    continue
                try:
                    ids = self.prompt_ids(loaded, g.params)
                except TemplateError as exc:
                    g.fail(field_error("/messages", f"the model's chat template rejected the conversation: {exc}"))
                    continue
                if len(ids) > limit:
                    path = "/prompt" if g.params["messages"] is None else "/messages"
                    g.fail(field_error(path, f"the prompt is {len(ids)} tokens; {model} accepts at most {limit}"))
                    continue
                rows.append(_Row(g, ids, loaded, started))
            if rows:
                self._generate_rows(loaded, rows)

    def _generate_rows(self, loaded: _LoadedModel, rows: list[_Row]) -> None:
        from transformers import GenerationConfig, LogitsProcessorList, StoppingCriteriaList

        device = loaded.model.device
        width = max(len(r.prompt_ids) for r in rows)
        input_ids = torch.full((len(rows), width), loaded.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            n = len(row.prompt_ids)
            input_ids[i, width - n:] = torch.tensor(row.prompt_ids, dtype=torch.long)
            attention_mask[i, width - n:] = 1
            row.batch_size = len(rows)
        offsets = torch.tensor([width - len(r.prompt_ids) for r in rows], dtype=torch.long, device=device)
        config = GenerationConfig(do_sample=False, num_beams=1, max_new_tokens=max(r.max_tokens for r in rows),
                                  repetition_penalty=1.0, eos_token_id=loaded.eos_ids, pad_token_id=loaded.pad_id,
                                  **generation_options(loaded.plan))
        for row in rows:
            row.generation.started()
        try:
            with torch.inference_mode():
                loaded.model.generate(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device),
                                      generation_config=config,
                                      logits_processor=LogitsProcessorList([_RowSampler(rows, offsets, device)]),
                                      stopping_criteria=StoppingCriteriaList([_RowTracker(rows, loaded.eos_ids)]))
        finally:
            now = time.monotonic()
            for row in rows:  # rows still open when generate returns reached the batch's token limit
                if not row.done:
                    row.finish("length", now)


class Batcher:
    """Collects generations for one model and runs them through `ChatEngine.generate` in batches.

    The first generation waits up to `window_s` for company; generations that arrive while a batch runs
    form the next batch at once. One thread per model, so `generate` calls on a model never overlap."""

    def __init__(self, engine: ChatEngine, host, model: str, batch_size: int, window_s: float, max_queue: int):
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
            except (MemoryUnavailable, JobFailed, ValidationFailed) as exc:
                log.warning("chat batch on %s failed: %s", self.model, exc)
                for g in batch:
                    g.fail(exc)
            except Exception as exc:  # noqa: BLE001 - every waiting request must get an answer
                log.exception("chat batch on %s failed", self.model)
                for g in batch:
                    g.fail(exc)
