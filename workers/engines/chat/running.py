"""One running batch of a chat model, stepped token by token: the rows that join are prefilled together
and appended, every step decodes one token for every row, finished rows leave at once and free their
place for the next request (continuous batching).

The KV cache (a transformers `DynamicCache`), the attention mask, each row's next position and the
sampling state (sampling.BatchSampling) stay aligned row by row. Rows are left-padded to a common
width: a row that joins a wider batch is padded on the left, a wider row that joins pads the others;
columns no row uses any more are trimmed when rows leave. Keys carry their rotary positions from when
they were computed, so moving a row inside the cache changes nothing it attends to.
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from workers.engines.chat.decoding import Row
from workers.engines.chat.generation import Generation
from workers.engines.chat.sampling import BatchSampling

if TYPE_CHECKING:
    from workers.engines.chat.loaded import LoadedModel


def pad_left(tensor: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    """`tensor` with zeros before its entries along `dim` (-1 or -2) up to `width`."""
    extra = width - tensor.shape[dim]
    if extra <= 0:
        return tensor
    return F.pad(tensor, (extra, 0) if dim == -1 else (0, 0, extra, 0))


class RunningBatch:
    def __init__(self, loaded: LoadedModel):
        self.loaded = loaded
        self.device = loaded.model.device
        self.rows: list[Row] = []
        self.cache: Any = None   # the rows' transformers DynamicCache; None while the batch is empty
        self.mask = torch.zeros((0, 0), dtype=torch.long, device=self.device)
        self.positions: list[int] = []   # each row's position of its next input token
        self.last: list[int] = []        # each row's last token: its input at the next step
        self.sampling = BatchSampling(loaded.model.config.vocab_size, self.device)
        self.most = 0                    # the most rows this batch held at once

    def __len__(self) -> int:
        return len(self.rows)

    def admit(self, generations: list[Generation]) -> None:
        """Prefill the prompts of new generations together, pick each one's first token, and append them.
        Nothing of the running rows changes until the prefill has succeeded: an out-of-memory error here
        leaves the batch as it was (the batcher then retries the newcomers in smaller groups)."""
        loaded, count = self.loaded, len(generations)
        started = time.monotonic()
        rows = [Row(g, loaded.tokenizer, loaded.eos_ids, loaded.special_tokens, started) for g in generations]
        width = max(len(r.prompt_ids) for r in rows)
        ids = torch.full((count, width), loaded.pad_id, dtype=torch.long)
        mask = torch.zeros((count, width), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, width - len(row.prompt_ids):] = torch.tensor(row.prompt_ids, dtype=torch.long)
            mask[i, width - len(row.prompt_ids):] = 1
        from transformers import DynamicCache

        cache = DynamicCache(config=loaded.model.config)
        mask = mask.to(self.device)
        # Prompts of one length have no padding: no mask, so transformers builds no rows x width x width mask
        # and SDPA runs causal (plan.attention_mask_bytes counts the mask only for mixed lengths).
        padded = len({len(r.prompt_ids) for r in rows}) > 1
        with torch.inference_mode():
            out = loaded.model(input_ids=ids.to(self.device), attention_mask=mask if padded else None,
                               position_ids=(mask.cumsum(-1) - 1).clamp(min=0), past_key_values=cache,
                               use_cache=True, logits_to_keep=1)
        sampling = self.sampling.adding([g.params for g in generations], [r.prompt_ids for r in rows])
        tokens = sampling.next_tokens(out.logits[:, -1, :], len(self.rows))
        self._merge(out.past_key_values, mask)
        self.sampling = sampling
        start = len(self.rows)
        self.rows += rows
        self.positions += [len(r.prompt_ids) for r in rows]
        self.last += [0] * count
        for g in generations:
            g.started()
        self._advance(start, tokens)
        self._drop_finished()

    def step(self) -> None:
        """One token for every row. A failure in the forward pass or the sampling (an out-of-memory error)
        leaves the batch as it was before the step: layers that already appended this step's keys drop them."""
        count = len(self.rows)
        lengths = [layer.keys.shape[-2] for layer in self.cache.layers]
        mask = torch.cat([self.mask, self.mask.new_ones((count, 1))], dim=1)
        ids = torch.tensor(self.last, dtype=torch.long, device=self.device).view(count, 1)
        positions = torch.tensor(self.positions, dtype=torch.long, device=self.device).view(count, 1)
        try:
            with torch.inference_mode():
                out = self.loaded.model(input_ids=ids, attention_mask=mask, position_ids=positions,
                                        past_key_values=self.cache, use_cache=True)
            tokens = self.sampling.next_tokens(out.logits[:, -1, :])
        except BaseException:
            for layer, length in zip(self.cache.layers, lengths, strict=True):
                layer.keys, layer.values = layer.keys[:, :, :length], layer.values[:, :, :length]
            raise
        self.mask = mask
        self.positions = [p + 1 for p in self.positions]
        self._advance(0, tokens)
        self._drop_finished()

    def evict(self, count: int, error: BaseException) -> None:
        """Take the `count` most recently admitted rows out of the batch, failing their generations with
        `error` (the rows that no longer fit after an out-of-memory error)."""
        for row in self.rows[len(self.rows) - count:]:
            row.generation.fail(error)
        self._keep(list(range(len(self.rows) - count)))

    def finish_all(self, reason: str) -> None:
        now = time.monotonic()
        for row in self.rows:
            row.finish(reason, now)
        self._drop_finished()

    def fail_all(self, error: BaseException) -> None:
        for row in self.rows:
            row.generation.fail(error)
        self.rows = []
        self._reset()

    # ---- bookkeeping ------------------------------------------------------------------------------
    def _advance(self, start: int, tokens: list[int]) -> None:
        now = time.monotonic()
        self.most = max(self.most, len(self.rows))
        for i, token in enumerate(tokens, start):
            row = self.rows[i]
            row.batch_size = max(row.batch_size, len(self.rows))
            self.last[i] = token
            row.step(token, now)

    def _merge(self, cache, mask: torch.Tensor) -> None:
        if self.cache is None:
            self.cache, self.mask = cache, mask
            return
        width = max(self.mask.shape[1], mask.shape[1])
        # Every new tensor is made before any is assigned, so an allocation failure changes nothing.
        merged = [(torch.cat([pad_left(mine.keys, width, -2), pad_left(new.keys, width, -2)]),
                   torch.cat([pad_left(mine.values, width, -2), pad_left(new.values, width, -2)]))
                  for mine, new in zip(self.cache.layers, cache.layers, strict=True)]
        merged_mask = torch.cat([pad_left(self.mask, width, -1), pad_left(mask, width, -1)])
        for layer, (keys, values) in zip(self.cache.layers, merged, strict=True):
            layer.keys, layer.values = keys, values
        self.mask = merged_mask

    def _drop_finished(self) -> None:
        keep = [i for i, row in enumerate(self.rows) if not row.done]
        if len(keep) < len(self.rows):
            self._keep(keep)

    def _keep(self, keep: list[int]) -> None:
        if not keep:
            self.rows = []
            self._reset()
            return
        index = torch.tensor(keep, dtype=torch.long, device=self.device)
        self.rows = [self.rows[i] for i in keep]
        self.positions = [self.positions[i] for i in keep]
        self.last = [self.last[i] for i in keep]
        self.sampling.keep(keep)
        self.mask = self.mask.index_select(0, index)
        unused = int(self.mask.argmax(dim=1).min())  # leading columns that are padding in every row
        self.mask = self.mask[:, unused:]
        for layer in self.cache.layers:
            layer.keys = layer.keys.index_select(0, index)[:, :, unused:]
            layer.values = layer.values.index_select(0, index)[:, :, unused:]

    def _reset(self) -> None:
        self.cache = None
        self.mask = self.mask.new_zeros((0, 0))
        self.positions, self.last = [], []
        self.sampling = BatchSampling(self.sampling.vocab, self.device)
