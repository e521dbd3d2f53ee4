"""Tiny text safety classifier: an XLMRobertaForSequenceClassification folder laid out like the production
one (bstrai/multilingual-toxic-xlm-roberta, configuration/checkpoints.json `text_safety_classifier`:
config.json with the same 16 labels, toxicity ... sexual_explicit then LABEL_7 ... LABEL_15, the weights, and
an XLM-R tokenizer saved as tokenizer.json + tokenizer_config.json), loaded by workers/runtime/text_safety.py
with the same from_pretrained code as the real one.

Its weights are random except the head's bias, set so the sigmoid of every label stays in a narrow band
around LABEL_PROBABILITY for any text: at the default TEXT_SAFETY_THRESHOLD (0.5) every text passes, so the
placeholder pod behaves as it does without the check; a test that sets the threshold below the band (0.01)
makes every text flag.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

SEED = 5678
LABEL_PROBABILITY = 0.1
MAX_POSITIONS = 130  # 128 tokens per window + the two padding offsets XLM-R's position ids start after
MODEL: dict = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                   hidden_act="gelu", max_position_embeddings=MAX_POSITIONS, type_vocab_size=1,
                   layer_norm_eps=1e-5, pad_token_id=1, bos_token_id=0, eos_token_id=2)
# The production model's labels (Detoxify's multilingual head; the last nine are unnamed in its config).
LABELS = ["toxicity", "severe_toxicity", "obscene", "identity_attack", "insult", "threat", "sexual_explicit",
          *[f"LABEL_{i}" for i in range(7, 16)]]
# A few sentences per script so the tokenizer has pieces beyond ASCII (everything else becomes <unk>).
MULTILINGUAL = [
    "una fiesta de cumpleaños en el jardín", "une maison au bord de la mer", "ein Hund spielt im Park",
    "uma praia ensolarada ao entardecer", "un gatto dorme sul divano", "een fiets bij de gracht",
    "kot śpi na parapecie", "кошка спит на окне", "кіт спить на вікні", "deniz kenarında bir ev",
    "قطة نائمة على النافذة", "खिड़की पर सोती बिल्ली", "kucing tidur di jendela", "con mèo ngủ bên cửa sổ",
    "แมวนอนอยู่ที่หน้าต่าง", "猫在窗户上睡觉", "窓辺で眠る猫", "창가에서 자는 고양이", "γάτα κοιμάται στο παράθυρο",
]


def build_tokenizer():
    """An XLMRobertaTokenizer (the class XLM-R's tokenizer.json loads as) from a sentencepiece unigram model
    trained here, in XLM-R's id layout: <s> 0, <pad> 1, </s> 2, <unk> 3, the pieces, <mask> last."""
    import io

    import sentencepiece as spm
    from transformers import XLMRobertaTokenizer

    from .tokenizer_builders import _spm_precompiled_charsmap, corpus_lines

    writer = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus_lines() + MULTILINGUAL), model_writer=writer, model_type="unigram",
        vocab_size=800, hard_vocab_limit=False, character_coverage=1.0, unk_id=0, bos_id=-1, eos_id=-1,
        pad_id=-1, num_threads=1, minloglevel=2, normalization_rule_name="nmt_nfkc",
        seed_sentencepiece_size=100000, shuffle_input_sentence=False)
    model_bytes = writer.getvalue()
    processor = spm.SentencePieceProcessor(model_proto=model_bytes)
    pieces = [(processor.id_to_piece(i), processor.get_score(i)) for i in range(1, processor.get_piece_size())]
    vocab = [("<s>", 0.0), ("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), *pieces, ("<mask>", 0.0)]
    # The precompiled normaliser map goes in as the bytes sentencepiece wrote (transformers' hint says str).
    charsmap: Any = _spm_precompiled_charsmap(model_bytes)
    return XLMRobertaTokenizer(vocab=vocab, _spm_precompiled_charsmap=charsmap, model_max_length=MAX_POSITIONS - 2)


def build_model(vocab_size: int):
    import torch
    from transformers import XLMRobertaConfig, XLMRobertaForSequenceClassification

    id2label = dict(enumerate(LABELS))
    config = XLMRobertaConfig(vocab_size=vocab_size, id2label=id2label,
                              label2id={name: i for i, name in id2label.items()}, **MODEL)
    torch.manual_seed(SEED)
    model = XLMRobertaForSequenceClassification(config).eval()
    generator = torch.Generator().manual_seed(SEED)
    with torch.no_grad():
        # The head reads tanh(dense(<s>)), within [-1, 1]: out_proj weights of std 0.02 over 32 features move
        # each logit by about +-0.1 around the bias, so each label's sigmoid stays within about 0.09-0.11.
        head = model.classifier.out_proj
        head.weight.copy_(torch.randn(head.weight.shape, generator=generator) * 0.02)
        head.bias.fill_(math.log(LABEL_PROBABILITY / (1 - LABEL_PROBABILITY)))
    return model


def build(directory: Path) -> None:
    tokenizer = build_tokenizer()
    model = build_model(len(tokenizer))
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
