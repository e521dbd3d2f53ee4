"""The sfw output check (workers/runtime/safety.py) with the placeholder classifier, loaded by the same
from_pretrained code as a real one."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from common import policy
from configuration import ConfigurationError
from configuration.settings import Settings
from tests.standin_engine import StandInEngine
from workers.engines.base import GeneratedAsset
from workers.runtime import safety


def _images(n: int, seed: int = 0) -> list:
    rng = np.random.default_rng(seed)
    pictures = [Image.fromarray(rng.integers(0, 256, (48, 40, 3), dtype=np.uint8)) for _ in range(n - 2)]
    return pictures + [Image.new("RGB", (64, 64), (0, 0, 0)), Image.new("L", (64, 64), 255)]


@pytest.fixture
def placeholder_settings(placeholder_dir) -> Settings:
    return Settings(placeholder_models_dir=placeholder_dir)


def test_placeholder_classifier_passes_outputs_at_the_default_threshold_and_flags_at_a_low_one(placeholder_settings):
    outputs = [GeneratedAsset("image", [image], {}) for image in _images(6)]
    passed = safety.check_outputs(placeholder_settings, "sfw", outputs, job_id="j-pass")
    assert passed is not None
    assert passed.outcome == "allowed"
    assert passed.images == 6
    assert 0.0 < passed.score < placeholder_settings.safety_threshold
    flagged = safety.check_outputs(placeholder_settings.replace(safety_threshold=0.01), "sfw", outputs)
    assert flagged is not None
    assert flagged.flagged
    assert flagged.public() == {"check": "output_classifier", "stage": "output", "outcome": "refused",
                                "score": round(flagged.score, 4), "threshold": 0.01, "images": 6,
                                "category": policy.EXPLICIT}


def test_the_nsfw_tier_has_no_output_check(placeholder_settings):
    assert safety.check_outputs(placeholder_settings.replace(safety_threshold=0.0), "nsfw",
                                [GeneratedAsset("image", _images(2), {})]) is None


def test_sfw_without_a_classifier_says_the_check_did_not_run():
    settings = Settings(model_profile="production")
    assert safety.classifier_path(settings) == ""
    before = policy.decision_counts().get(("not_run", "none", "output", "sfw"), 0)
    result = safety.check_outputs(settings, "sfw", [GeneratedAsset("image", _images(2), {})], job_id="j-none")
    assert result is safety.NOT_CONFIGURED
    assert not result.flagged
    assert result.public() == {"check": "output_classifier", "stage": "output", "outcome": "not_run",
                               "reason": "no output classifier configured (SAFETY_CLASSIFIER_PATH)"}
    assert policy.decision_counts()[("not_run", "none", "output", "sfw")] == before + 1


def test_a_video_is_checked_on_frames_spread_over_it_ends_included(placeholder_settings):
    classifier = safety.for_settings(placeholder_settings)
    frames = list(range(33))
    assert classifier.sample(frames) == [0, 11, 21, 32]
    assert classifier.sample(frames[:3]) == [0, 1, 2]
    video = GeneratedAsset("video", _images(9, seed=3), {}, fps=16.0)
    result = classifier.check([video])
    assert result.images == classifier.video_frames
    assert result.outcome == "allowed"


def test_the_setting_points_at_any_folder_and_one_without_an_unsafe_label_is_refused(placeholder_dir, tmp_path):
    import shutil

    from workers.placeholders import placeholder_paths

    folder = tmp_path / "classifier"
    shutil.copytree(placeholder_paths(placeholder_dir)["safety_classifier"], folder)
    settings = Settings(model_profile="production", safety_classifier_path=str(folder))
    assert safety.classifier_path(settings) == str(folder)
    assert safety.check_outputs(settings, "sfw", [GeneratedAsset("image", _images(2), {})]).outcome == "allowed"

    config = json.loads((folder / "config.json").read_text())
    config["id2label"], config["label2id"] = {"0": "cat", "1": "dog"}, {"cat": 0, "dog": 1}
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigurationError, match="no unsafe label"):
        safety.OutputClassifier(str(folder), 0.5).load()


class _PictureEngine(StandInEngine):
    """Makes one noise picture per job (the runner's contract: run(params, ctx) -> [GeneratedAsset])."""

    def run(self, params, ctx):
        return [GeneratedAsset("image", _images(3, seed=params["seed"])[:1], {"seed": params["seed"]})]


def test_a_flagged_sfw_output_is_not_stored_and_the_job_fails_while_nsfw_completes(placeholder_dir, tmp_path):
    from common.callbacks import CallbackSender
    from common.jobs import JobJournal
    from tests.support import CallbackReceiver
    from workers.runtime.jobs import JobRunner
    from workers.runtime.local_memory import LocalMemory
    from workers.runtime.models import ModelHost
    from workers.runtime.storage import LocalStorage

    receiver = CallbackReceiver()
    settings = Settings(placeholder_models_dir=placeholder_dir, safety_threshold=0.01, callback_url=receiver.url,
                        callback_backoff_s=0.05)
    engine = _PictureEngine(settings)
    out = tmp_path / "out"
    runner = JobRunner("test", engine, ModelHost(engine, LocalMemory(settings, "cpu")), LocalStorage(out),
                       CallbackSender(settings), JobJournal(tmp_path / "journal"))
    try:
        for job_id, tier in (("flagged", "sfw"), ("allowed", "nsfw")):
            runner.submit(job_id, "t", "u1", {"seed": 1, "content_tier": tier},
                          {"content_policy": policy.prompt_entry(tier)})
            assert runner.wait(job_id, 60)
        flagged, allowed = runner.get("flagged"), runner.get("allowed")
        assert flagged.status == "failed"
        assert allowed.status == "completed"
        assert flagged.error == {"code": "content_policy", "message": "content policy: sexual_explicit"}
        assert not (out / "u1" / "flagged").exists()
        assert flagged.assets == []
        assert (out / "u1" / "allowed" / "0.png").exists()
        checks = flagged.metadata["content_policy"]["checks"]
        assert [c["stage"] for c in checks] == ["prompt", "output"]
        assert checks[1]["outcome"] == "refused"
        assert allowed.metadata["content_policy"] == policy.prompt_entry("nsfw")  # nsfw: no output check
        [callback] = receiver.wait_for(1, "flagged")
        assert callback["error_message"] == "content policy: sexual_explicit"
        assert callback["metadata"]["content_policy"]["checks"][1]["category"] == policy.EXPLICIT
    finally:
        receiver.close()
