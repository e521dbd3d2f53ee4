"""Pure decisions about running a chat model: device settings and KV-cache memory (unit-tested on CPU)."""
from __future__ import annotations


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
    141 KiB a token (144,384 bytes), two and a half times its 56 KiB of KV cache; the accounting of every
    tensor a prefill allocates (benchmarks/chat_memory_bound.py) measures 139.5-140.5 KiB."""
    heads = model_config["num_attention_heads"]
    kv_heads = model_config.get("num_key_value_heads") or heads
    head_dim = model_config.get("head_dim") or model_config["hidden_size"] // heads
    hidden, intermediate = model_config["hidden_size"], model_config["intermediate_size"]
    return dtype_bytes * (3 * hidden + hidden + 2 * kv_heads * head_dim + 3 * intermediate)


def sampling_bytes_per_row(model_config: dict) -> int:
    """Per-row state beside the model: the last position's logits in float32, the row's seen-token flags
    (bool) and generated-token counts (float32) over the vocabulary (sampling.BatchSampling)."""
    return model_config["vocab_size"] * (4 + 1 + 4)


def attention_mask_bytes(prompts: list[int]) -> int:
    """The boolean 4D mask transformers builds for SDPA when a prefill has padding (prompts of different
    lengths): rows x 1 x longest x longest, one byte each, alive through the whole forward. Rows of one
    length are prefilled without a mask (SDPA's is_causal; RunningBatch.admit passes none), and the mask's
    transient copies at its creation come before any activation exists, so they never make the peak."""
    if len(set(prompts)) <= 1:
        return 0
    return len(prompts) * max(prompts) ** 2


def batch_working_bytes(rows: list[tuple[int, int]], per_token: int, prefill_per_token: int = 0,
                        per_row: int = 0) -> int:
    """Working memory of a left-padded batch, from each row's (prompt tokens, max_tokens): its KV cache (every
    row as wide as the longest prompt plus the largest max_tokens), the prefill's activations over every
    row's prompt at the widest (prefill_per_token x rows x longest prompt), the padded prefill's attention
    mask, and each row's sampling state."""
    prompt = max(p for p, _ in rows)
    width = prompt + max(m for _, m in rows)
    count = len(rows)
    return (per_token * count * width + prefill_per_token * count * prompt
            + attention_mask_bytes([p for p, _ in rows]) + per_row * count)
