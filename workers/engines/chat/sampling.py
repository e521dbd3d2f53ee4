"""Per-row sampling inside a batched `generate`: each row's token depends only on its own logits,
its own parameters and its own seeded generator, never on what else is in the batch."""
from __future__ import annotations

import torch


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


class RowSampler:
    """Last logits processor of a batched greedy `generate`: picks each row's token with that row's
    own sampling parameters and seeded generator (see `sample_rows`) and leaves only that token
    selectable. `params[i]` and `generators[i]` belong to row i."""

    def __init__(self, params: list, generators: list[torch.Generator], offsets: torch.Tensor, device):
        self.generators = generators
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
        uniforms = torch.tensor([float(torch.rand((), generator=g, dtype=torch.float64)) if s else 0.0
                                 for g, s in zip(self.generators, self.sampled)], dtype=torch.float64)
        tokens = sample_rows(scores.float(), input_ids, self.offsets, self.temperature, self.top_k, self.top_p,
                             self.penalty, uniforms.to(scores.device))
        chosen = torch.full_like(scores, float("-inf"))
        return chosen.scatter_(1, tokens[:, None], 0.0)
