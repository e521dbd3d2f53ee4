"""The chat engine as a package: `prompts` (messages -> prompt text), `sampling` (per-row token choice),
`decoding` (tokens -> text, stop strings, streaming), `generation` (one request's handle), `batcher`
(one queue and thread per model), `plan` (GPU settings, KV-cache memory) and `engine` (model lifecycle,
request preparation, one batched generate)."""
from workers.engines.chat.batcher import Batcher, Overloaded
from workers.engines.chat.decoding import clean_enhancement
from workers.engines.chat.engine import ChatEngine
from workers.engines.chat.generation import Generation, GenerationResult

__all__ = ["Batcher", "ChatEngine", "Generation", "GenerationResult", "Overloaded", "clean_enhancement"]
