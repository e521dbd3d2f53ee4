"""The output check of the sfw tier: an image-classification model scores what an engine made before
anything is stored.

The model is any transformers image-classification folder whose labels include one of the unsafe
labels named in configuration/policy.json (the published NSFW classifiers use "nsfw", "porn",
"hentai", "sexy"); it is loaded with from_pretrained like every other model (the placeholder profile
builds a tiny one, workers/placeholders/safety.py). The probabilities of the unsafe labels are
summed; an image or any sampled frame of a video scoring above SAFETY_THRESHOLD is flagged.

It runs on the CPU, beside the engine: a ViT-base classifier scores a 224x224 image in tens of
milliseconds there, and it then takes no GPU memory the broker would have to account for.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

from common import policy
from configuration import ConfigurationError
from configuration.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OutputCheck:
    """The outcome of the output check of one job (what the job record notes)."""
    outcome: str                 # "allowed", "refused" or "not_run"
    score: float | None = None   # highest unsafe probability over the images and frames checked
    threshold: float | None = None
    images: int = 0              # images and frames scored
    reason: str | None = None    # why it did not run

    @property
    def flagged(self) -> bool:
        return self.outcome == "refused"

    def public(self) -> dict:
        entry: dict[str, object] = {"check": "output_classifier", "stage": "output", "outcome": self.outcome}
        if self.outcome == "not_run":
            entry["reason"] = self.reason
        else:
            entry.update(score=round(self.score or 0.0, 4), threshold=self.threshold, images=self.images)
        if self.flagged:
            entry["category"] = policy.EXPLICIT
        return entry


NOT_CONFIGURED = OutputCheck("not_run", reason="no output classifier configured (SAFETY_CLASSIFIER_PATH)")


def classifier_path(settings: Settings) -> str:
    """SAFETY_CLASSIFIER_PATH, or in the placeholder profile the built placeholder; "" when none."""
    if settings.safety_classifier_path:
        return settings.safety_classifier_path
    if settings.model_profile == "placeholder":
        from workers.placeholders import placeholder_paths

        return str(placeholder_paths(settings.placeholder_models_dir)["safety_classifier"])
    return ""


class OutputClassifier:
    """Loaded on first use; one process-wide instance per worker (`for_settings`)."""

    def __init__(self, path: str, threshold: float):
        self.path = path
        self.threshold = threshold
        rules = policy.rules().classifier
        self._unsafe_names = {name.lower() for name in rules["unsafe_labels"]}
        self.video_frames = int(rules["video_frames"])
        self._lock = threading.Lock()
        self._model = None
        self._processor = None
        self._unsafe_ids: list[int] = []

    def load(self) -> None:
        with self._lock:
            if self._model is not None:
                return
            import torch
            from transformers import AutoImageProcessor, AutoModelForImageClassification

            processor = AutoImageProcessor.from_pretrained(self.path, local_files_only=True, backend="pil")
            model = AutoModelForImageClassification.from_pretrained(self.path, local_files_only=True,
                                                                    dtype=torch.float32).eval()
            unsafe = [int(i) for i, name in model.config.id2label.items() if str(name).lower() in self._unsafe_names]
            if not unsafe:
                raise ConfigurationError(
                    f"output classifier at {self.path} has no unsafe label (its labels: "
                    f"{sorted(model.config.id2label.values())}; configuration/policy.json classifier.unsafe_labels: "
                    f"{sorted(self._unsafe_names)})")
            self._processor, self._model, self._unsafe_ids = processor, model, unsafe
            log.info("output classifier loaded from %s (unsafe labels %s)", self.path,
                     [model.config.id2label[i] for i in unsafe])

    def scores(self, images: list) -> list[float]:
        """Unsafe probability (summed over the unsafe labels) of each PIL image."""
        import torch

        self.load()
        if self._processor is None or self._model is None:
            raise RuntimeError("the safety classifier is not loaded")
        inputs = self._processor(images=[image.convert("RGB") for image in images], return_tensors="pt")
        with torch.inference_mode():
            probabilities = self._model(**inputs).logits.float().softmax(-1)
        return probabilities[:, self._unsafe_ids].sum(-1).tolist()

    def sample(self, frames: list) -> list:
        """The frames checked: all of a short sequence, else `video_frames` spread evenly, ends included."""
        if len(frames) <= self.video_frames:
            return list(frames)
        last = len(frames) - 1
        picks = sorted({round(i * last / (self.video_frames - 1)) for i in range(self.video_frames)})
        return [frames[i] for i in picks]

    def check(self, outputs: list) -> OutputCheck:
        """Score every image and sampled video frame of an engine's outputs (GeneratedAsset list)."""
        images = [frame for output in outputs for frame in self.sample(output.frames)]
        if not images:
            return OutputCheck("allowed", 0.0, self.threshold, 0)
        score = max(self.scores(images))
        outcome = "refused" if score > self.threshold else "allowed"
        return OutputCheck(outcome, score, self.threshold, len(images))


_instances: dict[tuple[str, float], OutputClassifier] = {}
_instances_lock = threading.Lock()


def for_settings(settings: Settings) -> OutputClassifier | None:
    """The classifier the settings configure (None: none configured), shared within the process."""
    path = classifier_path(settings)
    if not path:
        return None
    key = (path, settings.safety_threshold)
    with _instances_lock:
        if key not in _instances:
            _instances[key] = OutputClassifier(path, settings.safety_threshold)
        return _instances[key]


def check_outputs(settings: Settings, tier: str, outputs: list, job_id: str | None = None) -> OutputCheck | None:
    """The output check of a job in `tier`: None in nsfw (the tier has none), NOT_CONFIGURED when sfw has no
    classifier (the job says so; it never claims a check that did not run), else the scored outcome."""
    if tier != "sfw":
        return None
    classifier = for_settings(settings)
    result = NOT_CONFIGURED if classifier is None else classifier.check(outputs)
    if result.outcome == "not_run":
        log.warning("sfw output check not run for job %s: %s", job_id, result.reason)
    policy.record(policy.Decision(not result.flagged, "output", tier, policy.EXPLICIT if result.flagged else None,
                                  "classifier" if result.flagged else None, ran=result.outcome != "not_run"), job_id)
    return result
