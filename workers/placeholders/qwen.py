"""Tiny Qwen2.5 Base and Instruct: Qwen2ForCausalLM folders laid out like Qwen/Qwen2.5-7B and
Qwen/Qwen2.5-7B-Instruct (config.json, generation_config.json, model.safetensors, tokenizer files).
The instruct tokenizer carries the ChatML chat template; the base one has none.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from .tokenizer_builders import qwen_tokenizer, save_qwen_tokenizer

SEED = 3456
MODEL: dict[str, Any] = dict(
    hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
    max_position_embeddings=32768, rms_norm_eps=1e-6, rope_theta=1000000.0, hidden_act="silu",
    tie_word_embeddings=False, use_sliding_window=False, sliding_window=131072, max_window_layers=28,
    attention_dropout=0.0, initializer_range=0.02, use_cache=True
)


def build_model(instruct: bool):
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    tokenizer = qwen_tokenizer(instruct)
    endoftext = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    config = Qwen2Config(vocab_size=len(tokenizer), bos_token_id=endoftext,
                         eos_token_id=im_end if instruct else endoftext, **MODEL)
    torch.manual_seed(SEED + int(instruct))  # different weights, as for the real pair
    model = Qwen2ForCausalLM(config).eval()
    if instruct:  # Qwen/Qwen2.5-7B-Instruct/generation_config.json
        model.generation_config = GenerationConfig(
            bos_token_id=endoftext, pad_token_id=endoftext, eos_token_id=[im_end, endoftext], do_sample=True,
            repetition_penalty=1.05, temperature=0.7, top_p=0.8, top_k=20)
    else:  # Qwen/Qwen2.5-7B/generation_config.json
        model.generation_config = GenerationConfig(bos_token_id=endoftext, eos_token_id=endoftext, do_sample=False,
                                                   max_new_tokens=2048)
    return model, tokenizer


def build(base_dir: Path, instruct_dir: Path) -> None:
    for directory, instruct in ((base_dir, False), (instruct_dir, True)):
        model, tokenizer = build_model(instruct)
        model.save_pretrained(directory, safe_serialization=True)
        save_qwen_tokenizer(tokenizer, directory)
