"""The chat working-memory bound (workers/engines/chat/plan.py) against the tensor bytes a prefill and a few
decode steps of Qwen2.5-7B really allocate, at the real shapes, on the CPU:

    .venv/bin/python benchmarks/chat_memory_bound.py            # --decode 16 --rows-case 8192,4096,2048,1024

No GPU and no 15 GB of weights are needed: the model is built from the real config.json
(configuration/architectures/qwen2.5-7b-instruct) in bfloat16 under torch's FakeTensorMode (tensors with
shapes, dtypes and storages but no data, every op dispatched to the CPU kernels' shape functions), and a
TorchDispatchMode counts the bytes of every storage an op allocates and frees (by weak reference): the
peak of live bytes over the weights is the measured working memory. The model is called as
RunningBatch calls it (DynamicCache, explicit position ids, logits_to_keep=1, no mask for rows of one
length, a 2D mask growing by one column per decode step). What this does not see: kernels' internal
workspaces (cuBLAS, the CUDA SDPA kernels' scratch) and the allocator's rounding and fragmentation.

Prints, for single prompts of 1k, 8k and 28k tokens and one padded batch of mixed lengths, the bound, the
measured peak, and their ratio (the issue's target: within 25 %).
"""
from __future__ import annotations

import argparse
import sys
import time
import weakref
from pathlib import Path

import torch
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from workers.engines.chat.plan import (
    attention_mask_bytes,
    batch_working_bytes,
    kv_cache_bytes_per_token,
    prefill_bytes_per_token,
    sampling_bytes_per_row,
)
from workers.placeholders.synthetic import arch_config

CONFIG = "qwen2.5-7b-instruct/config.json"


class LiveBytes(TorchDispatchMode):
    """Bytes of the storages ops allocate, live now and at the peak; a storage counts once (views share it)
    and leaves the count when it is freed."""

    def __init__(self):
        super().__init__()
        self.live = self.peak = 0
        self._refs: dict[int, weakref.ref] = {}

    def _freed(self, key: int, nbytes: int) -> None:
        self.live -= nbytes
        self._refs.pop(key, None)

    def _on_free(self, key: int, nbytes: int):
        def freed(_ref) -> None:
            self._freed(key, nbytes)
        return freed

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in pytree.tree_leaves(out):
            if not isinstance(tensor, torch.Tensor):
                continue
            storage = tensor.untyped_storage()
            key = id(storage)
            if key in self._refs:
                continue
            nbytes = storage.nbytes()
            self.live += nbytes
            self._refs[key] = weakref.ref(storage, self._on_free(key, nbytes))
            self.peak = max(self.peak, self.live)
        return out


def measure(model, config, prompts: list[int], decode: int) -> int:
    """Peak live bytes of a left-padded prefill of `prompts` and `decode` steps after it."""
    from transformers import DynamicCache

    rows, width = len(prompts), max(prompts)
    mask = torch.zeros((rows, width), dtype=torch.long)
    for i, length in enumerate(prompts):
        mask[i, width - length:] = 1
    ids = torch.zeros((rows, width), dtype=torch.long)
    padded = len(set(prompts)) > 1
    cache = DynamicCache(config=config)
    counter = LiveBytes()
    with counter, torch.inference_mode():
        out = model(input_ids=ids, attention_mask=mask if padded else None,
                    position_ids=(mask.cumsum(-1) - 1).clamp(min=0), past_key_values=cache, use_cache=True,
                    logits_to_keep=1)
        logits = out.logits.float()  # what BatchSampling reads
        del out
        positions = list(prompts)
        for _ in range(decode):
            mask = torch.cat([mask, mask.new_ones((rows, 1))], dim=1)
            step = model(input_ids=torch.zeros((rows, 1), dtype=torch.long), attention_mask=mask,
                         position_ids=torch.tensor(positions).view(rows, 1), past_key_values=cache, use_cache=True)
            logits = step.logits[:, -1, :].float()
            del step
            positions = [p + 1 for p in positions]
        del logits, cache
    return counter.peak


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", default="1024,8192,28672", help="single-row prompt lengths (tokens)")
    parser.add_argument("--rows-case", default="8192,4096,2048,1024", help="one padded batch: its prompt lengths")
    parser.add_argument("--decode", type=int, default=16, help="decode steps after the prefill (= max_tokens)")
    args = parser.parse_args(argv)

    from torch._subclasses.fake_tensor import FakeTensorMode
    from transformers import AutoModelForCausalLM, Qwen2Config

    raw = arch_config(CONFIG)
    config = Qwen2Config(**{k: v for k, v in raw.items() if not k.startswith("_")})
    dtype = torch.bfloat16
    kv, prefill, per_row = (kv_cache_bytes_per_token(raw, dtype.itemsize), prefill_bytes_per_token(raw, dtype.itemsize),
                            sampling_bytes_per_row(raw))
    print(f"Qwen2.5-7B ({CONFIG}) in bfloat16, fake tensors on the CPU device; torch {torch.__version__}")
    print(f"bound = KV {kv} B/token x rows x (longest prompt + max_tokens) + prefill {prefill} B/token x rows x "
          f"longest prompt + mask (padded only: rows x longest^2 x 1 B) + sampling {per_row} B/row")
    started = time.monotonic()
    cases = [[int(p)] for p in args.prompts.split(",")]
    if args.rows_case:
        cases.append([int(p) for p in args.rows_case.split(",")])
    results = []
    with FakeTensorMode(allow_non_fake_inputs=True):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation="sdpa").eval()
        for prompts in cases:
            measured = measure(model, config, prompts, args.decode)
            bound = batch_working_bytes([(p, args.decode) for p in prompts], kv, prefill, per_row)
            results.append((prompts, bound, measured, attention_mask_bytes(prompts)))
    header = (f"{'prompt tokens':>26s} {'rows':>4s} {'bound MiB':>10s} {'measured MiB':>13s} {'bound/measured':>15s} "
              f"{'mask MiB':>9s}  within 25 %")
    print(header)
    worst = 0.0
    for prompts, bound, measured, mask in results:
        ratio = bound / measured
        worst = max(worst, abs(ratio - 1))
        label = ",".join(str(p) for p in prompts)
        print(f"{label:>26s} {len(prompts):4d} {bound / 2**20:10.1f} {measured / 2**20:13.1f} {ratio:15.3f} "
              f"{mask / 2**20:9.1f}  {'yes' if abs(ratio - 1) <= 0.25 else 'NO'}")
    print(f"max_tokens {args.decode}; worst deviation {worst:.1%}; {time.monotonic() - started:.0f} s")
    return 0 if worst <= 0.25 else 1


if __name__ == "__main__":
    raise SystemExit(main())
