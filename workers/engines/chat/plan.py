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


def prefill_bytes_per_token(model_config: dict, dtype_bytes: int) -> int:
    """Activation bytes one prompt token holds at the prefill's widest point (one decoder layer at a time):
    the residual, normalised hidden states and attention output (3 x hidden), q/k/v (hidden + 2 x the KV
    width), and the SwiGLU MLP's gate, up and activated intermediate (3 x intermediate). Qwen2.5-7B in bf16:
    about 134 KiB a token, more than twice its 56 KiB of KV cache."""
    heads = model_config["num_attention_heads"]
    kv_heads = model_config.get("num_key_value_heads") or heads
    head_dim = model_config.get("head_dim") or model_config["hidden_size"] // heads
    hidden, intermediate = model_config["hidden_size"], model_config["intermediate_size"]
    return dtype_bytes * (3 * hidden + hidden + 2 * kv_heads * head_dim + 3 * intermediate)


def attention_mask_bytes(rows: int, width: int, dtype_bytes: int) -> int:
    """The 4D mask a left-padded batch carries into attention: rows x 1 x width x width (8 rows of 8k
    tokens: 1 GiB in bf16)."""
    return rows * width * width * dtype_bytes


def batch_working_bytes(batch: list, per_token: int, prefill_per_token: int = 0, mask_dtype_bytes: int = 0) -> int:
    """Working memory of a left-padded batch: its KV cache (every row as wide as the longest prompt plus the
    largest max_tokens), the prefill's activations over every row's prompt, and the batch's attention mask.
    At long prompts the last two are several times the KV cache."""
    prompt = max(prompt_token_bound(p) for p in batch)
    width = prompt + max(p["max_tokens"] for p in batch)
    rows = len(batch)
    return (per_token * rows * width + prefill_per_token * rows * prompt
            + attention_mask_bytes(rows, width, mask_dtype_bytes))
