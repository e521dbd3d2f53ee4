"""Chat engine: Qwen2.5 base and instruct, their lifecycle, and the requests they run.

Every HTTP route (enhancement, legacy chat, OpenAI chat completions, streaming or not) turns its
normalised parameters into a `Generation` with `ChatEngine.prepare` (tokenised and checked against the
model's prompt limit in the caller's thread, so a bad request is a 400 before anything is queued) and
hands it to `ChatEngine.submit`. One `Batcher` thread per model (started by the app factory through
`start`) runs the generations in a `RunningBatch` (running.py): continuous batching, rows joining and
leaving at every step. Per-row sampling (sampling.py) makes a row's tokens depend only on its own
prompt, parameters and seed; what floating-point arithmetic of a batch can still change is in docs/ENGINES.md.
"""
from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from jinja2.exceptions import TemplateError

from common.errors import CANCELLED, MODEL_MISCONFIGURED, MODEL_NOT_CONFIGURED, JobFailed
from configuration import chat_config, requests
from configuration.requests.chat import ChatParams
from configuration.requests.common import field_error
from workers import devices
from workers.engines.base import Engine
from workers.engines.chat.batcher import Batcher
from workers.engines.chat.generation import Generation
from workers.engines.chat.loaded import LoadedModel
from workers.engines.chat.plan import (
    batch_working_bytes,
    gpu_plan,
    kv_cache_bytes_per_token,
    prefill_bytes_per_token,
    sampling_bytes_per_row,
)
from workers.engines.chat.prompts import prompt_text
from workers.engines.chat.running import RunningBatch


class ChatEngine(Engine[ChatParams]):
    worker = "chat"

    def __init__(self, settings, device=None):
        super().__init__(settings, device)
        self.chat = chat_config()
        self._loaded: dict[str, LoadedModel] = {}
        # Tokenizers stay in host memory across model unloads: requests are checked with them before queuing.
        self._tokenizers: dict[str, Any] = {}
        self._tokenizer_locks = {m: threading.Lock() for m in self.configs}
        self._generate_locks = {m: threading.Lock() for m in self.configs}
        self._batchers: dict[str, Batcher] = {}
        self._memory_terms: dict[str, tuple[int, int, int]] = {}  # model -> KV, prefill per token, per row
        self.cache_releases = 0  # busy periods and out-of-memory errors after which the cache was released

    # model lifecycle
    def modules(self, model: str) -> list:
        loaded = self._loaded.get(model)
        return [loaded.model] if loaded else []

    def is_loaded(self, model: str) -> bool:
        return model in self._loaded

    def tokenizer(self, model: str):
        """The model's tokenizer, loaded on first use (needs no model weights)."""
        with self._tokenizer_locks[model]:
            if model not in self._tokenizers:
                from transformers import AutoTokenizer

                tokenizer = AutoTokenizer.from_pretrained(self._path(model), local_files_only=True)
                if self.chat["models"][model]["rendering"] == "chat_template" and not tokenizer.chat_template:
                    raise JobFailed(f"{model} is configured to use its chat template but its tokenizer has none",
                                    code=MODEL_MISCONFIGURED)
                self._tokenizers[model] = tokenizer
            return self._tokenizers[model]

    def _path(self, model: str) -> str:
        path = self.configs[model]["path"]
        if not path:
            raise JobFailed(f"no path configured for {model} (QWEN_*_MODEL_PATH)", code=MODEL_NOT_CONFIGURED)
        return path

    def load(self, model: str) -> None:
        from transformers import AutoModelForCausalLM, GenerationConfig

        tokenizer = self.tokenizer(model)
        plan = gpu_plan(self.configs[model]["gpu"])
        # Any: transformers types PreTrainedModel.to through a decorator mypy cannot read
        lm: Any = AutoModelForCausalLM.from_pretrained(self._path(model), local_files_only=True,
                                                       dtype=self.dtype(model),
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
        self._loaded[model] = LoadedModel(lm, tokenizer, eos_ids, pad_id, list(tokenizer.all_special_tokens))

    def warm_up(self, model: str) -> None:
        """A 4-token answer right after the load (lazy CUDA init, cuBLAS and attention kernel selection), so
        the first request does not pay for it. ModelHost runs it inside the model's lease."""
        generation = self.prepare(self._warm_up_params(model))
        self.generate([generation])
        generation.wait(0)
        devices.release_cached_memory(self.device)

    def _warm_up_params(self, model: str) -> ChatParams:
        return requests.normalise("chat.chat", {"model": model, "max_tokens": 4, "seed": 0,
                                                "messages": [{"role": "user", "content": "hello"}]}, self.settings)

    def warm_up_working_bytes(self, model: str) -> int:
        return self.working_bytes(self._warm_up_params(model))

    def unload(self, model: str) -> None:
        self._loaded.pop(model, None)
        devices.empty_cache(self.device)

    def release_cached_memory(self) -> None:
        """After a busy period or an out-of-memory error: the allocator's cached blocks go back to the
        device (CUDA only; devices.release_cached_memory)."""
        self.cache_releases += 1
        devices.release_cached_memory(self.device)

    def required_models(self, params: ChatParams) -> list[str]:
        return [params["model"]]

    def working_bytes(self, params: ChatParams) -> int:
        return self.batch_working_bytes(params["model"], [(len(self.prompt_ids(params)), params["max_tokens"])])

    def batch_working_bytes(self, model: str, rows: list[tuple[int, int]]) -> int:
        """Memory a batch needs beyond the weights, from each row's (prompt tokens, max_tokens): KV cache,
        prefill activations, the padded prefill's mask, sampling state (plan.batch_working_bytes)."""
        if model not in self._memory_terms:
            config_file = Path(self._path(model)) / "config.json"
            try:
                config = json.loads(config_file.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise JobFailed(f"cannot read {config_file}: {exc}", code=MODEL_NOT_CONFIGURED) from None
            itemsize = self.dtype(model).itemsize
            self._memory_terms[model] = (kv_cache_bytes_per_token(config, itemsize),
                                         prefill_bytes_per_token(config, itemsize), sampling_bytes_per_row(config))
        return batch_working_bytes(rows, *self._memory_terms[model])

    def model_info(self, model: str) -> dict:
        plan = gpu_plan(self.configs[model]["gpu"])
        return {"name": model, "short_name": self.chat["models"][model]["short_name"],
                "profile": self.settings.model_profile, "device": self.device,
                "dtype": str(self.dtype(model)).removeprefix("torch."), **plan}

    # requests
    def prompt_ids(self, params: ChatParams) -> list[int]:
        tokenizer = self.tokenizer(params["model"])
        rendering = self.chat["models"][params["model"]]
        with self._tokenizer_locks[params["model"]]:  # a Rust tokenizer is not to be used by two threads at once
            return tokenizer(prompt_text(params, tokenizer, rendering), add_special_tokens=False).input_ids

    def prepare(self, params: ChatParams) -> Generation:
        """A generation whose prompt is tokenised and within the model's limit; a conversation the chat
        template rejects or a prompt that is too long raises ValidationFailed here, in the caller's thread."""
        model = params["model"]
        try:
            ids = self.prompt_ids(params)
        except TemplateError as exc:
            raise field_error("/messages", f"the model's chat template rejected the conversation: {exc}") from None
        limit = self.configs[model]["limits"]["max_prompt_tokens"]
        if len(ids) > limit:
            path = "/prompt" if params["messages"] is None else "/messages"
            raise field_error(path, f"the prompt is {len(ids)} tokens; {model} accepts at most {limit}")
        return Generation(params, ids)

    # batching
    def start(self, host) -> None:
        """Start one batcher thread per model (called once by the app factory)."""
        window_s = self.settings.chat_batch_window_ms / 1000.0
        for model in self.configs:
            if model not in self._batchers:
                self._batchers[model] = Batcher(self, host, model, self.settings.chat_batch_size, window_s,
                                                self.settings.chat_max_queue,
                                                continuous=self.settings.chat_batching == "continuous")

    def submit(self, generation: Generation) -> Generation:
        self._batchers[generation.params["model"]].submit(generation)
        return generation

    def queue_depth(self) -> int:
        return sum(b.depth() for b in self._batchers.values())

    # generation
    @contextlib.contextmanager
    def running(self, model: str) -> Iterator[RunningBatch]:
        """A batch on a resident model (callers hold `ModelHost.use`); batches of one model never overlap."""
        with self._generate_locks[model]:
            loaded = self._loaded.get(model)
            if loaded is None:
                raise RuntimeError(f"{model} is not loaded")
            yield RunningBatch(loaded)

    def generate(self, generations: list[Generation]) -> None:
        """Run prepared generations of one model together until every one has ended (a static batch:
        nothing joins). Each gets its result as soon as its row ends."""
        model = generations[0].params["model"]
        if any(g.params["model"] != model for g in generations):
            raise ValueError("one batch, one model")
        live = [g for g in generations if not g.cancelled]
        for g in generations:
            if g.cancelled:
                g.fail(JobFailed("cancelled before it started", code=CANCELLED))
        with self.running(model) as batch:
            if live:
                batch.admit(live)
            while len(batch):
                batch.step()
