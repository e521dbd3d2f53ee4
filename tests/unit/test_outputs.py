"""The output pipeline (workers/runtime/outputs.py) on its own: the files and assets it stores, and that a
delivery that fails leaves nothing stored. The executor's use of it is tests/unit/test_runtime.py's."""
import json
import threading
from pathlib import Path

import pytest
from PIL import Image

from common.errors import JobFailed
from common.jobs import JobRecord
from common.metrics import StageTimer
from configuration.settings import Settings
from workers.engines.base import GeneratedAsset
from workers.runtime.outputs import MadeBy, OutputPipeline, made_by
from workers.runtime.storage import LocalStorage, StorageError

# nsfw: the solid-colour outputs skip the sfw output classifier (tests/app/test_policy_output.py covers it)
SETTINGS = Settings(content_tier_default="nsfw", provenance_sidecar=True)
NOTHING = MadeBy(models=[], pipeline={})


class Stages:
    """The job context's part the pipeline uses: the stages it enters, timed."""

    def __init__(self) -> None:
        self.timer = StageTimer()
        self.entered: list[str] = []

    def stage(self, name: str) -> None:
        self.entered.append(name)
        self.timer.enter(name)


class RefusingStorage(LocalStorage):
    """A local storage that refuses the `refuse_at`-th file it is given (1-based), as a full bucket would."""

    def __init__(self, root: Path, refuse_at: int):
        super().__init__(root)
        self.refuse_at = refuse_at
        self.puts = 0

    def put(self, path: str, data: bytes, content_type: str) -> str:
        self.puts += 1
        if self.puts == self.refuse_at:
            raise StorageError("HTTP 413 (payload too large)")
        return super().put(path, data, content_type)


def image(value: int) -> GeneratedAsset:
    return GeneratedAsset("image", [Image.new("RGB", (300, 150), (value, 0, 0))], {"seed": value})


def files_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def pipeline(storage: LocalStorage, settings: Settings = SETTINGS) -> OutputPipeline:
    return OutputPipeline("test", settings, "cpu", storage, threading.RLock())


def test_each_output_is_stored_with_thumbnail_and_sidecar(tmp_path):
    record = JobRecord(job_id="j1", type="t", user_id="u1", params={"seed": 5, "caller_metadata": {"x": 1}})
    stages = Stages()
    delivered = pipeline(LocalStorage(tmp_path)).deliver(record, [image(1), image(2)], NOTHING, stages)
    assert stages.entered == ["encoding", "storing"]
    assert [a["url"] for a in delivered.assets] == ["u1/j1/0.png", "u1/j1/1.png"]
    assert [a["thumbnail_url"] for a in delivered.assets] == ["u1/j1/0.thumb.webp", "u1/j1/1.thumb.webp"]
    assert [a["provenance_url"] for a in delivered.assets] == ["u1/j1/0.json", "u1/j1/1.json"]
    assert sorted(delivered.stored) == files_under(tmp_path)
    assert len(delivered.stored) == 6
    sidecar = json.loads((tmp_path / "u1/j1/1.json").read_text())
    assert sidecar == delivered.assets[1]["metadata"]["provenance"]
    assert sidecar["asset_index"] == 1
    assert sidecar["seed"] == 2  # the seed the engine used, not the requested one
    assert "caller_metadata" not in sidecar["parameters"]["requested"]
    assert "storing" not in sidecar["timings_s"]


@pytest.mark.parametrize("refuse_at", [1, 2, 3, 4])  # 0.png, 0.thumb.webp, 1.png, 1.thumb.webp
def test_a_refused_file_fails_the_job_and_removes_what_was_stored(tmp_path, refuse_at):
    storage = RefusingStorage(tmp_path, refuse_at)
    record = JobRecord(job_id="j2", type="t", user_id="u1", params={})
    with pytest.raises(JobFailed, match="storing the outputs failed") as raised:
        pipeline(storage, SETTINGS.replace(provenance_sidecar=False)).deliver(
            record, [image(1), image(2)], NOTHING, Stages())
    assert raised.value.code == "storage_failed"
    assert files_under(tmp_path) == []


def test_a_refused_sidecar_is_skipped_not_a_failure(tmp_path):
    storage = RefusingStorage(tmp_path, refuse_at=3)  # 0.png, 0.thumb.webp, then the sidecar
    record = JobRecord(job_id="j3", type="t", user_id="u1", params={})
    delivered = pipeline(storage).deliver(record, [image(1)], NOTHING, Stages())
    assert delivered.assets[0]["provenance_url"] is None
    assert delivered.assets[0]["metadata"]["provenance"]["asset_index"] == 0
    assert files_under(tmp_path) == ["u1/j3/0.png", "u1/j3/0.thumb.webp"]


def test_a_video_without_playback_rate_fails_before_anything_is_stored(tmp_path):
    video = GeneratedAsset("video", [Image.new("RGB", (64, 64))] * 3, {})
    record = JobRecord(job_id="j4", type="t", user_id="u1", params={})
    with pytest.raises(JobFailed, match="without a playback rate"):
        pipeline(LocalStorage(tmp_path)).deliver(record, [image(1), video], NOTHING, Stages())
    assert files_under(tmp_path) == []


def test_made_by_lists_the_weight_files_of_the_models_used():
    fingerprints = {"a": [{"sha256": "1"}], "b": [{"sha256": "2"}, {"sha256": "3"}], "c": [{"sha256": "4"}]}
    made = made_by(["b", "a", "missing"], fingerprints, None)
    assert made == MadeBy(models=[{"sha256": "2"}, {"sha256": "3"}, {"sha256": "1"}], pipeline={})
