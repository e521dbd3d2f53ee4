"""Offline tokenizer recipes: CLIP (SDXL), UMT5/T5 sentencepiece (Wan), Qwen2 byte-level BPE (chat).

Each tokenizer is trained on the small built-in corpus below, then laid out the way the real one is
(special-token ids, vocab order, files on disk) and saved with the real transformers class, so
`AutoTokenizer.from_pretrained` / the pipelines load them through the production code paths.
"""
from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

# Prompt-like English text, a few hundred words: enough for BPE/unigram merges that are not just bytes.
CORPUS = """\
a photograph of a red fox sitting in a snowy forest at dawn, soft golden light, highly detailed
portrait of an old fisherman with a grey beard, dramatic lighting, cinematic, 85mm lens
a futuristic city skyline at night with neon signs, rain on the streets, reflections, cyberpunk style
watercolor painting of a quiet village by the river, spring flowers, gentle morning mist
a cute corgi puppy running on the beach, waves in the background, sunny summer afternoon
an astronaut riding a horse on the moon, stars, earth rising over the horizon, digital art
close up of a hummingbird drinking nectar from a purple flower, macro photography, bokeh
a cozy reading room with a fireplace, wooden shelves full of books, warm lamp light
mountain landscape with a crystal clear lake, pine trees, snow covered peaks, blue sky
a bowl of fresh fruit on a kitchen table, apples, oranges, grapes, still life, oil painting
a woman walking through a field of sunflowers, wearing a white dress, wind in her hair
a dragon flying over a medieval castle, fire and smoke, epic fantasy illustration
the camera slowly pans across a busy market street, people walking, vendors selling food
a cat sleeping on a windowsill while rain falls outside, calm and peaceful atmosphere
a sailing boat on the open ocean during a storm, huge waves, lightning in the dark clouds
a robot playing chess with a child in a park, autumn leaves falling, friendly mood
aerial view of a winding road through green hills, drone shot, late afternoon sun
a steaming cup of coffee on a wooden desk next to a notebook and a pen, morning light
an ancient temple hidden in the jungle, vines, moss covered stones, rays of sunlight
a group of friends laughing around a campfire under the night sky, the milky way above
you are a helpful assistant. answer the question clearly and briefly.
please describe the scene in more detail, adding lighting, colors, mood and camera angle.
the user wants a short story about a brave little mouse who explores the big kitchen.
write a better prompt for an image generator: a house on a hill, sunset, realistic.
what is the capital of france? the capital of france is paris.
high quality, best quality, sharp focus, ultra detailed, masterpiece, trending on artstation
low quality, blurry, watermark, text, deformed hands, extra fingers, bad anatomy, jpeg artifacts
slow motion video of water drops splashing into a glass, studio lighting, black background
a timelapse of clouds moving over a desert canyon, red rocks, long shadows, wide angle
the quick brown fox jumps over the lazy dog. 0 1 2 3 4 5 6 7 8 9 10 100 2024 16:9 4k 8k
"""

CLIP_MAX_LENGTH = 77


def corpus_lines() -> list[str]:
    """The corpus, plus a sentence-case copy and every printable ASCII character (so the unigram model
    covers capitals, digits and punctuation instead of mapping them to <unk>)."""
    lines = [line for line in CORPUS.splitlines() if line.strip()]
    printable = "".join(chr(c) for c in range(33, 127))
    return lines + [line[:1].upper() + line[1:] for line in lines] + [printable, " ".join(printable)]


def _trained_bpe_merges(normalizer, pre_tokenizer, num_merges: int, end_of_word_suffix: str = "",
                        min_frequency: int = 2) -> list[tuple[str, str]]:
    """BPE merges learnt from the corpus, words split by the real tokenizer's normalizer and pre-tokenizer.

    A small pure-Python trainer rather than `tokenizers.trainers.BpeTrainer`: that one breaks ties between
    equally frequent pairs by hash-map order, so two builds would give different vocabularies. Here ties go
    to the lexicographically smallest pair: the same merges every time."""
    from collections import Counter

    words: Counter = Counter()
    for line in corpus_lines():
        text = normalizer.normalize_str(line) if normalizer else line
        for word, _ in pre_tokenizer.pre_tokenize_str(text):
            symbols = list(word)
            if end_of_word_suffix:
                symbols[-1] += end_of_word_suffix
            words[tuple(symbols)] += 1
    return _bpe(words, num_merges, min_frequency)


def _bpe(words, num_merges: int, min_frequency: int) -> list[tuple[str, str]]:
    """Incremental BPE: pair counts kept up to date per merge, a heap ordered by (-count, pair)."""
    import heapq
    from collections import defaultdict
    from itertools import pairwise

    symbols_of = [list(w) for w in words]
    counts = list(words.values())
    pair_count: dict = defaultdict(int)
    where: dict = defaultdict(set)
    for i, symbols in enumerate(symbols_of):
        for pair in pairwise(symbols):
            pair_count[pair] += counts[i]
            where[pair].add(i)
    heap = [(-c, pair) for pair, c in pair_count.items()]
    heapq.heapify(heap)
    merges: list[tuple[str, str]] = []
    while heap and len(merges) < num_merges:
        neg, pair = heapq.heappop(heap)
        if pair_count.get(pair, 0) != -neg:
            continue  # stale entry
        if -neg < min_frequency:
            break
        merges.append(pair)
        a, b = pair
        touched = set()
        for i in where.pop(pair, ()):
            symbols, c = symbols_of[i], counts[i]
            for q in pairwise(symbols):
                pair_count[q] -= c
                touched.add(q)
            out, j = [], 0
            while j < len(symbols):
                if j + 1 < len(symbols) and symbols[j] == a and symbols[j + 1] == b:
                    out.append(a + b)
                    j += 2
                else:
                    out.append(symbols[j])
                    j += 1
            for q in pairwise(out):
                pair_count[q] += c
                where[q].add(i)
                touched.add(q)
            symbols_of[i] = out
        for q in touched:
            if pair_count[q] > 0:
                heapq.heappush(heap, (-pair_count[q], q))
    return merges


def _byte_symbols() -> list[str]:
    """The 256 byte-level symbols in `bytes_to_unicode()` order (GPT-2 / CLIP / Qwen vocab.json: "!" is id 0)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def _vocab_from_merges(base: list[str], merges: list[tuple[str, str]],
                       specials: list[str]) -> tuple[dict[str, int], list[Any]]:
    """(vocab, merges kept): merges as (a, b) tuples, which the tokenizers take though transformers annotates
    them as strings."""
    vocab: dict[str, int] = {}
    for token in base:
        vocab.setdefault(token, len(vocab))
    kept = []
    for a, b in merges:
        if a in vocab and b in vocab:
            vocab.setdefault(a + b, len(vocab))
            kept.append((a, b))
    for token in specials:
        vocab.setdefault(token, len(vocab))
    return vocab, kept


# ----------------------------------------------------------------------------------------------- CLIP
def clip_tokenizer(pad_token: str = "<|endoftext|>"):  # noqa: S107 (a tokenizer's pad token, not a password)
    """A CLIPTokenizer laid out like openai/clip-vit-large-patch14's: 256 byte symbols, the same with `</w>`,
    one token per merge, then `<|startoftext|>`, `<|endoftext|>` last; model_max_length 77."""
    from tokenizers import Regex, normalizers, pre_tokenizers
    from transformers import CLIPTokenizer

    # CLIPTokenizer's own normalizer and pre-tokenizer (transformers/models/clip/tokenization_clip.py).
    normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()])
    pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|"""
                                   r"""[^\s\p{L}\p{N}]+"""), behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False),
    ])
    merges = _trained_bpe_merges(normalizer, pre_tokenizer, num_merges=1000, end_of_word_suffix="</w>")
    symbols = _byte_symbols()
    vocab, kept = _vocab_from_merges(symbols + [s + "</w>" for s in symbols], merges,
                                     ["<|startoftext|>", "<|endoftext|>"])
    return CLIPTokenizer(vocab=vocab, merges=kept, pad_token=pad_token, model_max_length=CLIP_MAX_LENGTH)


def save_clip_tokenizer(tokenizer, directory: Path) -> None:
    """Saved like the real SDXL repos' tokenizer folders (vocab.json + merges.txt + configs); tokenizer.json too."""
    tokenizer.save_pretrained(directory)
    _write_vocab_and_merges(tokenizer, directory, merges_header="#version: 0.2\n")


def _write_vocab_and_merges(tokenizer, directory: Path, merges_header: str = "") -> None:
    model = json.loads(tokenizer.backend_tokenizer.to_str())["model"]
    merges = [" ".join(m) if not isinstance(m, str) else m for m in model["merges"]]
    vocab = dict(sorted(model["vocab"].items(), key=lambda kv: kv[1]))
    (directory / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (directory / "merges.txt").write_text(merges_header + "\n".join(merges) + "\n", encoding="utf-8")


# ------------------------------------------------------------------------------------------ UMT5 / T5
def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def _proto_fields(buf: bytes):
    """Minimal protobuf wire-format reader: yields (field_number, wire_type, value)."""
    pos = 0
    while pos < len(buf):
        key, pos = _read_varint(buf, pos)
        field, wire = key >> 3, key & 7
        value: int | bytes
        if wire == 0:
            value, pos = _read_varint(buf, pos)
        elif wire == 1:
            value, pos = buf[pos:pos + 8], pos + 8
        elif wire == 2:
            length, pos = _read_varint(buf, pos)
            value, pos = buf[pos:pos + length], pos + length
        elif wire == 5:
            value, pos = buf[pos:pos + 4], pos + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        yield field, wire, value


def _spm_precompiled_charsmap(model_proto: bytes) -> bytes | None:
    """ModelProto.normalizer_spec (field 3) -> NormalizerSpec.precompiled_charsmap (field 2), without protobuf."""
    for field, wire, value in _proto_fields(model_proto):
        if field == 3 and wire == 2:
            for sub_field, sub_wire, sub_value in _proto_fields(value):
                if sub_field == 2 and sub_wire == 2:
                    return bytes(sub_value)
    return None


def umt5_tokenizer(vocab_size: int = 600):
    """A T5Tokenizer (the class the Wan repos' `tokenizer/` resolves to) from a sentencepiece unigram model
    trained here: pad 0, eos 1, unk 2, no bos, nmt_nfkc normalisation like google/umt5-xxl.
    Returns (tokenizer, spiece.model bytes)."""
    import sentencepiece as spm
    from transformers import T5Tokenizer

    # Trained from an iterator into memory: the model proto then records no temporary file names, so the
    # bytes of spiece.model are the same on every build.
    writer = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus_lines()), model_writer=writer, model_type="unigram",
        vocab_size=vocab_size, hard_vocab_limit=False, character_coverage=1.0,
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, num_threads=1, minloglevel=2,
        normalization_rule_name="nmt_nfkc", seed_sentencepiece_size=100000, shuffle_input_sentence=False)
    model_bytes = writer.getvalue()
    processor = spm.SentencePieceProcessor(model_proto=model_bytes)
    vocab = [(processor.id_to_piece(i), processor.get_score(i)) for i in range(processor.get_piece_size())]
    tokenizer = T5Tokenizer(vocab=vocab, extra_ids=0, _spm_precompiled_charsmap=_spm_precompiled_charsmap(model_bytes))
    return tokenizer, model_bytes


def save_umt5_tokenizer(tokenizer, model_bytes: bytes, directory: Path) -> None:
    """Like Wan-AI/Wan2.1-*-Diffusers/tokenizer: spiece.model + tokenizer.json + configs."""
    tokenizer.save_pretrained(directory)
    (directory / "spiece.model").write_bytes(model_bytes)


# --------------------------------------------------------------------------------------------- Qwen2
QWEN_SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

# Qwen2.5-Instruct's ChatML template without the tool-calling branches (same text for plain conversations,
# including the default system prompt).
QWEN_CHAT_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if not (message['role'] == 'system' and loop.first) %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def qwen_tokenizer(instruct: bool):
    """A Qwen2Tokenizer laid out like Qwen2.5's: 256 byte symbols, one token per merge, then
    `<|endoftext|>`, `<|im_start|>`, `<|im_end|>`. Instruct: eos `<|im_end|>` and the ChatML template;
    base: eos `<|endoftext|>` and no chat template. pad `<|endoftext|>`, no bos."""
    from tokenizers import Regex, normalizers, pre_tokenizers
    from transformers import Qwen2Tokenizer
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    # Qwen2Tokenizer's own normalizer and pre-tokenizer.
    pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    merges = _trained_bpe_merges(normalizers.NFC(), pre_tokenizer, num_merges=1000)
    vocab, merges = _vocab_from_merges(_byte_symbols(), merges, QWEN_SPECIAL_TOKENS)
    kwargs: dict[str, Any] = dict(vocab=vocab, merges=merges, eos_token="<|im_end|>" if instruct else "<|endoftext|>",
                  pad_token="<|endoftext|>", unk_token=None, bos_token=None, model_max_length=131072,  # noqa: S106 (a tokenizer's pad token, not a password)
                  errors="replace", clean_up_tokenization_spaces=False, split_special_tokens=False,
                  additional_special_tokens=["<|im_start|>", "<|im_end|>"])
    if instruct:
        kwargs["chat_template"] = QWEN_CHAT_TEMPLATE
    return Qwen2Tokenizer(**kwargs)


def save_qwen_tokenizer(tokenizer, directory: Path) -> None:
    """Like Qwen/Qwen2.5-*: tokenizer.json, tokenizer_config.json, vocab.json, merges.txt."""
    tokenizer.save_pretrained(directory)
    _write_vocab_and_merges(tokenizer, directory)


__all__ = ["CORPUS", "clip_tokenizer", "save_clip_tokenizer", "umt5_tokenizer", "save_umt5_tokenizer",
           "qwen_tokenizer", "save_qwen_tokenizer", "QWEN_CHAT_TEMPLATE", "QWEN_SPECIAL_TOKENS"]
