"""A chat model as loaded: the causal LM, its tokenizer and the token ids decoding needs.

The engine (engine.py) builds one per loaded model; a running batch (running.py) reads it. It lives
apart from both so the two need not import each other.
"""
from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass
class LoadedModel:
    model: Any       # a transformers causal LM (PreTrainedModel)
    tokenizer: Any   # its tokenizer (PreTrainedTokenizerBase)
    eos_ids: list[int]
    pad_id: int
    special_tokens: list[str]
