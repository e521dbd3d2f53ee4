"""The second opinion on text: a transformers sequence-classification model reads the texts the word rules
(common/policy.py) read, at the stages named in configuration/text_classifier.json (a generation prompt at
the SDXL/WAN workers' admission, which for a routed job is the enhanced prompt; chat and enhancement input
and output on the chat worker). Word lists miss paraphrase and languages they do not list; a model
trained on sexual content in many languages does not depend on the words.

The model is any folder at TEXT_SAFETY_CLASSIFIER_PATH whose labels match one of the label schemes in
configuration/text_classifier.json (the placeholder profile builds a tiny one,
workers/placeholders/text_safety.py); it is loaded with from_pretrained like every other model and runs on
the CPU. Each label of the scheme counts for a policy category. A text is read in segments as long as the
word rules' window for its stage; per segment:

- a `sexual_minors` label above TEXT_SAFETY_THRESHOLD is refused as the floor, in every tier;
- a sexual label (either category) above it, in a segment where the rules see a minor (a minor word or
  an age under 18, `common.policy.minor_indicated`), is refused as the floor, in every tier: the model
  reads the sexual part however it is worded, the rules supply who it is about;
- in the sfw tier, a `sexual_explicit` label above it is refused as `sexual_explicit`.

With no classifier configured (production without TEXT_SAFETY_CLASSIFIER_PATH) every check is recorded as
`not_run`, never as a pass.
"""
from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from common import policy
from configuration import CONFIG_DIR, ConfigurationError
from configuration.settings import Settings

log = logging.getLogger(__name__)
SCORE_CACHE_SIZE = 4096  # segments whose scores are kept (about a hundred long conversations)


@cache
def config() -> dict:
    with open(CONFIG_DIR / "text_classifier.json", encoding="utf-8") as fh:
        return {k: v for k, v in json.load(fh).items() if not k.startswith("_")}


@dataclass(frozen=True)
class TextCheck:
    """The outcome of one classifier check (what a job record or a chat answer notes)."""
    outcome: str                      # "allowed", "refused" or "not_run"
    stage: str
    tier: str
    category: str | None = None       # when refused
    rule: str | None = None           # classifier_label, classifier_minor_context or classifier_explicit
    scores: dict[str, float] = field(default_factory=dict)  # category -> highest probability over the segments
    threshold: float | None = None
    segments: int = 0
    reason: str | None = None         # why it did not run

    @property
    def flagged(self) -> bool:
        return self.outcome == "refused"

    def decision(self) -> policy.Decision:
        return policy.Decision(not self.flagged, self.stage, self.tier, self.category, self.rule,
                               ran=self.outcome != "not_run")

    def public(self) -> dict:
        entry: dict[str, object] = {"check": "text_classifier", "stage": self.stage, "tier": self.tier,
                                    "outcome": self.outcome}
        if self.outcome == "not_run":
            entry["reason"] = self.reason
        else:
            entry.update(scores={k: round(v, 4) for k, v in sorted(self.scores.items())}, threshold=self.threshold,
                         segments=self.segments)
        if self.flagged:
            entry.update(category=self.category, rule=self.rule)
        return entry


NOT_CONFIGURED_REASON = "no text classifier configured (TEXT_SAFETY_CLASSIFIER_PATH)"


def classifier_path(settings: Settings) -> str:
    """TEXT_SAFETY_CLASSIFIER_PATH, or in the placeholder profile the built placeholder; "" when none."""
    if settings.text_safety_classifier_path:
        return settings.text_safety_classifier_path
    if settings.model_profile == "placeholder":
        from workers.placeholders import placeholder_paths

        return str(placeholder_paths(settings.placeholder_models_dir)["text_safety_classifier"])
    return ""


class TextClassifier:
    """Loaded on first use; one process-wide instance per worker (`for_settings`). Tokenising and the forward
    pass run under one lock: a fast tokenizer's truncation state is not safe to share between threads, and
    the CPU the model runs on is used best by one batch at a time."""

    def __init__(self, path: str, threshold: float):
        self.path = path
        self.threshold = threshold
        self._lock = threading.Lock()
        self._model: Any = None
        self._tokenizer: Any = None
        self.scheme: dict = {}
        self._label_ids: dict[str, list[int]] = {}   # category -> label ids
        self.max_tokens = 0
        self._cache: dict[str, dict[str, float]] = {}  # segment -> scores (`scores`)

    def load(self) -> None:
        with self._lock:
            if self._model is not None:
                return
            import torch
            from transformers import AutoModelForSequenceClassification, AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(self.path, local_files_only=True)
            model = AutoModelForSequenceClassification.from_pretrained(self.path, local_files_only=True,
                                                                       dtype=torch.float32).eval()
            labels = {str(name): int(i) for i, name in model.config.id2label.items()}
            scheme = next((s for s in config()["label_schemes"] if set(s["labels"]) <= set(labels)), None)
            if scheme is None:
                raise ConfigurationError(
                    f"text classifier at {self.path} matches no label scheme of configuration/text_classifier.json "
                    f"(its labels: {sorted(labels)})")
            ids: dict[str, list[int]] = {}
            for label, category in scheme["labels"].items():
                ids.setdefault(category, []).append(labels[label])
            limits = [model.config.max_position_embeddings - 2, 512]
            if isinstance(tokenizer.model_max_length, int) and tokenizer.model_max_length > 0:
                limits.append(tokenizer.model_max_length)
            self.max_tokens = min(limits)
            self._tokenizer, self._model, self.scheme, self._label_ids = tokenizer, model, scheme, ids
            log.info("text classifier loaded from %s (scheme %s, %d tokens per window)", self.path, scheme["name"],
                     self.max_tokens)

    def scores(self, segments: list[str]) -> list[dict[str, float]]:
        """Per segment, each category's probability (the highest over the segment's token windows). Scores are
        cached per segment: a conversation's history comes back with every turn, and its segments (counted
        from the first word) are the same strings each time."""
        self.load()
        with self._lock:
            missing = [s for s in dict.fromkeys(segments) if s not in self._cache]
            fresh = dict(zip(missing, self._score(missing), strict=True)) if missing else {}
            result = [dict(fresh[s] if s in fresh else self._cache[s]) for s in segments]
            if len(self._cache) + len(fresh) > SCORE_CACHE_SIZE:
                self._cache.clear()
            self._cache.update(fresh)
        return result

    def clear_cache(self) -> None:
        with self._lock:
            self._cache.clear()

    def _score(self, segments: list[str]) -> list[dict[str, float]]:
        """The model on every token window of `segments`, shortest windows batched together (less padding)."""
        import torch

        cfg = config()
        stride = min(int(cfg["stride_tokens"]), self.max_tokens // 4)
        encoded = self._tokenizer(segments, truncation=True, max_length=self.max_tokens, stride=stride,
                                  return_overflowing_tokens=True)
        windows, owners = encoded["input_ids"], encoded["overflow_to_sample_mapping"]
        order = sorted(range(len(windows)), key=lambda i: len(windows[i]))
        result: list[dict[str, float]] = [dict.fromkeys(self._label_ids, 0.0) for _ in segments]
        batch = int(cfg["batch"])
        with torch.inference_mode():
            for start in range(0, len(order), batch):
                rows = order[start:start + batch]
                padded = self._tokenizer.pad({"input_ids": [windows[i] for i in rows]}, return_tensors="pt")
                logits = self._model(**padded).logits.float()
                probabilities = logits.sigmoid() if self.scheme["activation"] == "sigmoid" else logits.softmax(-1)
                for row, i in enumerate(rows):
                    scored = result[owners[i]]
                    for category, ids in self._label_ids.items():
                        scored[category] = max(scored[category], float(probabilities[row, ids].max()))
        return result

    def check(self, text: str, tier: str, stage: str) -> TextCheck:
        """The classifier's decision on one text read at `stage` in `tier` (nothing recorded)."""
        parts = segments(text, policy.window_words(stage))
        if not parts:
            return TextCheck("allowed", stage, tier, threshold=self.threshold)
        per_segment = self.scores(parts)
        top = {category: max(s[category] for s in per_segment) for category in per_segment[0]}
        over = self.threshold
        if top.get(policy.FLOOR, 0.0) > over:
            return TextCheck("refused", stage, tier, policy.FLOOR, "classifier_label", top, over, len(parts))
        for part, scored in zip(parts, per_segment, strict=True):
            if max(scored.values()) > over and policy.minor_indicated(part, stage):
                return TextCheck("refused", stage, tier, policy.FLOOR, "classifier_minor_context", top, over,
                                 len(parts))
        if tier == "sfw" and top.get(policy.EXPLICIT, 0.0) > over:
            return TextCheck("refused", stage, tier, policy.EXPLICIT, "classifier_explicit", top, over, len(parts))
        return TextCheck("allowed", stage, tier, None, None, top, over, len(parts))


def segments(text: str, window: int) -> list[str]:
    """`text` in segments of `window` words, each starting half a window after the previous one (the last
    one reaching the end); one segment when the text is shorter."""
    words = text.split()
    if len(words) <= window:
        return [" ".join(words)] if words else []
    step = max(1, window // 2)
    starts = list(range(0, len(words) - window + 1, step))
    if starts[-1] + window < len(words):
        starts.append(len(words) - window)
    return [" ".join(words[s:s + window]) for s in starts]


_instances: dict[tuple[str, float], TextClassifier] = {}
_instances_lock = threading.Lock()
_warned_not_configured = False


def for_settings(settings: Settings) -> TextClassifier | None:
    """The classifier the settings configure (None: none configured), shared within the process."""
    path = classifier_path(settings)
    if not path:
        return None
    key = (path, settings.text_safety_threshold)
    with _instances_lock:
        if key not in _instances:
            _instances[key] = TextClassifier(path, settings.text_safety_threshold)
        return _instances[key]


def check_text(settings: Settings, texts: str | Iterable[str | None], *, tier: str, stage: str,
               job_id: str | None = None) -> TextCheck:
    """Check one text, or several read together (joined by line breaks, as common.policy.check_text joins
    them), record the decision (counted and logged like the rules' decisions, without the text) and return
    it. Not configured: `not_run` (warned once per process)."""
    global _warned_not_configured
    if stage not in config()["stages"]:
        raise ValueError(f"the text classifier does not run at stage {stage!r}")
    text = texts if isinstance(texts, str) else "\n".join(t for t in texts if t)
    classifier = for_settings(settings)
    if classifier is None:
        if not _warned_not_configured:
            _warned_not_configured = True
            log.warning("text classifier not run: %s; checks are recorded as not_run", NOT_CONFIGURED_REASON)
        result = TextCheck("not_run", stage, tier, reason=NOT_CONFIGURED_REASON)
    else:
        result = classifier.check(text, tier, stage)
    policy.record(result.decision(), job_id)
    return result


def require(result: TextCheck) -> TextCheck:
    """`result` unless it refused (then ContentPolicyRefused: 422 at HTTP, a failed queued job)."""
    policy.require(result.decision())
    return result
