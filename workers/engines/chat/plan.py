"""Pure decisions about running a chat model: device settings and KV-cache memory (unit-tested on CPU)."""
from __future__ import annotations

from workers.engines.chat.prompts import prompt_token_bound


def gpu_plan(gpu: dict) -> dict:
    """How a chat model runs on the device: its attention kernel (SDPA unless configured otherwise). There is
    no static KV cache and no torch.compile: a continuous batch changes shape at every step."""
    return {"attn_implementation": gpu.get("attention", "sdpa")}


def kv_cache_bytes_per_token(model_config: dict, dtype_bytes: int) -> int:
    """KV-cache bytes one token of one row takes, from a model's config.json (keys and values, every layer)."""
    heads = model_config["num_attention_heads"]
    kv_heads = model_config.get("num_key_value_heads") or heads
    head_dim = model_config.get("head_dim") or model_config["hidden_size"] // heads
    return 2 * model_config["num_hidden_layers"] * kv_heads * head_dim * dtype_bytes


def batch_working_bytes(batch: list, per_token: int) -> int:
    """KV cache of a left-padded batch: every row is as wide as the longest prompt plus the largest max_tokens."""
    width = max(prompt_token_bound(p) for p in batch) + max(p["max_tokens"] for p in batch)
    return per_token * len(batch) * width
