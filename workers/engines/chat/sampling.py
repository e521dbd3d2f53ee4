"""Per-row sampling: each row's token depends only on its own logits, its own parameters, its own
token history and its own seeded generator, never on what else is in the batch.

`BatchSampling` keeps one row of state per row of the running batch (tensors stacked along the batch
dimension, rows added and removed as the batch changes): the tokens a row has seen (prompt and output,
for the repetition penalty), how often it generated each token (frequency and presence penalties), its
temperature, top-k, top-p and its generator.
"""
from __future__ import annotations

import torch

from configuration.requests.chat import ChatParams


def penalise(scores: torch.Tensor, seen: torch.Tensor, repetition: torch.Tensor | None, counts: torch.Tensor,
             frequency: torch.Tensor | None, presence: torch.Tensor | None) -> torch.Tensor:
    """(B, V) logits after each row's penalties.

    Repetition penalty (transformers' definition): the logit of every token in the row's prompt or output
    (`seen`) is divided by the penalty when positive, multiplied when negative. Frequency and presence
    penalties (OpenAI's definitions): logit[j] -= counts[j] * frequency + (counts[j] > 0) * presence,
    where counts[j] is how often the row has generated token j so far (its output only)."""
    if repetition is not None:
        factor = repetition[:, None]
        scores = torch.where(seen, torch.where(scores < 0, scores * factor, scores / factor), scores)
    if frequency is not None:
        scores = scores - counts * frequency[:, None]
    if presence is not None:
        scores = scores - (counts > 0).to(scores.dtype) * presence[:, None]
    return scores


def sample_rows(scores: torch.Tensor, temperature: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor,
                uniforms: torch.Tensor, *, any_greedy: bool = True, all_greedy: bool = False, any_top_k: bool = True,
                any_top_p: bool = True) -> torch.Tensor:
    """One token per row from (B, V) float logits (penalties applied). Each row uses only its own values:
    temperature (0: argmax), top-k (0: off), top-p, and its uniform number u in [0, 1) for inverse-CDF
    sampling over the kept tokens sorted by probability. The keyword flags say what no row uses (work
    skipped for the whole batch; every row's token is the same either way)."""
    batch, vocab = scores.shape
    greedy = scores.argmax(dim=-1) if any_greedy or all_greedy else None
    if all_greedy and greedy is not None:
        return greedy
    logits = scores / temperature.clamp(min=1e-5)[:, None]
    sorted_logits, order = logits.sort(dim=-1, descending=True, stable=True)
    if any_top_k:
        ranks = torch.arange(vocab, device=scores.device)[None, :]
        k = torch.where(top_k > 0, top_k, vocab)[:, None]
        sorted_logits = sorted_logits.masked_fill(ranks >= k, float("-inf"))
    probs = sorted_logits.softmax(dim=-1)
    if any_top_p:
        before = probs.cumsum(dim=-1) - probs
        probs = probs.masked_fill((before >= top_p[:, None]) & (top_p[:, None] < 1.0), 0.0)
    cumulative = probs.cumsum(dim=-1)
    target = uniforms.to(cumulative.dtype)[:, None] * cumulative[:, -1:]
    position = torch.searchsorted(cumulative, target, right=True)
    last_kept = (probs > 0).sum(dim=-1, keepdim=True) - 1  # kept tokens are a prefix of the sorted order
    position = torch.minimum(position, last_kept.clamp(min=0))
    sampled = order.gather(1, position).squeeze(1)
    return sampled if greedy is None else torch.where(temperature == 0, greedy, sampled)


class BatchSampling:
    """Sampling state of the rows of a running batch, in batch order."""

    def __init__(self, vocab: int, device):
        self.vocab, self.device = vocab, device
        self.generators: list[torch.Generator] = []
        self.sampled: list[bool] = []
        self.values: list[tuple[float, int, float, float, float, float]] = []  # python copies, for the flags
        empty = torch.zeros(0, device=device)
        self.temperature = self.top_p = self.repetition = self.frequency = self.presence = empty
        self.top_k = torch.zeros(0, dtype=torch.long, device=device)
        self.seen = torch.zeros((0, vocab), dtype=torch.bool, device=device)
        self.counts = torch.zeros((0, vocab), device=device)

    def __len__(self) -> int:
        return len(self.generators)

    def adding(self, params: list[ChatParams], prompts: list[list[int]]) -> BatchSampling:
        """A new state with rows (their parameters and prompt tokens) after the current ones; this one is
        left unchanged (a prefill that fails leaves the running rows' state as it was)."""
        def column(name: str, dtype=torch.float32) -> torch.Tensor:
            return torch.tensor([p[name] for p in params], dtype=dtype, device=self.device)  # type: ignore[literal-required]

        seen = torch.zeros((len(params), self.vocab), dtype=torch.bool, device=self.device)
        for i, ids in enumerate(prompts):
            seen[i, torch.tensor(ids, dtype=torch.long, device=self.device)] = True
        new = BatchSampling(self.vocab, self.device)
        new.generators = self.generators + [torch.Generator(device="cpu").manual_seed(int(p["seed"])) for p in params]
        new.sampled = self.sampled + [p["temperature"] > 0 for p in params]
        new.values = self.values + [(p["temperature"], p["top_k"], p["top_p"], p["repetition_penalty"],
                                     p["frequency_penalty"], p["presence_penalty"]) for p in params]
        new.temperature = torch.cat([self.temperature, column("temperature")])
        new.top_p = torch.cat([self.top_p, column("top_p")])
        new.top_k = torch.cat([self.top_k, column("top_k", torch.long)])
        new.repetition = torch.cat([self.repetition, column("repetition_penalty")])
        new.frequency = torch.cat([self.frequency, column("frequency_penalty")])
        new.presence = torch.cat([self.presence, column("presence_penalty")])
        new.seen = torch.cat([self.seen, seen])
        new.counts = torch.cat([self.counts, torch.zeros((len(params), self.vocab), device=self.device)])
        return new

    def keep(self, indices: list[int]) -> None:
        """Keep only these rows, in this order (finished rows leave the batch)."""
        index = torch.tensor(indices, dtype=torch.long, device=self.device)
        self.generators = [self.generators[i] for i in indices]
        self.sampled = [self.sampled[i] for i in indices]
        self.values = [self.values[i] for i in indices]
        for name in ("temperature", "top_p", "top_k", "repetition", "frequency", "presence", "seen", "counts"):
            setattr(self, name, getattr(self, name).index_select(0, index))

    def next_tokens(self, logits: torch.Tensor, start: int = 0) -> list[int]:
        """The next token of rows start.. from their (B - start, V) logits; the tokens join their histories."""
        rows = slice(start, len(self))
        values = self.values[rows]
        temperature, top_k, top_p, repetition, frequency, presence = (list(c) for c in zip(*values, strict=True))
        # One draw per sampled row per step, from the row's own generator, whatever the batch holds.
        uniforms = torch.tensor([float(torch.rand((), generator=g, dtype=torch.float64)) if s else 0.0
                                 for g, s in zip(self.generators[rows], self.sampled[rows], strict=True)],
                                dtype=torch.float64)
        seen, counts = self.seen[rows], self.counts[rows]
        penalised = penalise(logits.float(), seen, self.repetition[rows] if any(v != 1.0 for v in repetition) else None,
                             counts, self.frequency[rows] if any(v != 0.0 for v in frequency) else None,
                             self.presence[rows] if any(v != 0.0 for v in presence) else None)
        tokens = sample_rows(penalised, self.temperature[rows], self.top_k[rows], self.top_p[rows],
                             uniforms.to(self.device), any_greedy=any(t == 0 for t in temperature),
                             all_greedy=all(t == 0 for t in temperature), any_top_k=any(k > 0 for k in top_k),
                             any_top_p=any(p < 1.0 for p in top_p))
        index = torch.arange(len(tokens), device=self.device)
        seen[index, tokens] = True      # views: the batch's own tensors are updated
        counts[index, tokens] += 1
        return tokens.tolist()
