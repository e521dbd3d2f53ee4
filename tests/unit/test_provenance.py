"""Provenance: weight hashes (computed once per path, size and mtime) and, for a real job, the sidecar
next to every asset, recomputed independently here."""
from __future__ import annotations

import hashlib
import json
import os

import pytest

from workers.runtime.provenance import WeightHashes, combined_sha256, weight_files


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_weight_files_of_a_directory_skip_configs_and_hidden_caches(tmp_path):
    (tmp_path / "unet").mkdir()
    (tmp_path / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"u" * 10)
    (tmp_path / "unet" / "config.json").write_text("{}")
    (tmp_path / "text_encoder").mkdir()
    (tmp_path / "text_encoder" / "model.safetensors").write_bytes(b"t" * 5)
    (tmp_path / ".cache").mkdir()
    (tmp_path / ".cache" / "partial.safetensors").write_bytes(b"x")
    assert [p.relative_to(tmp_path).as_posix() for p in weight_files(tmp_path)] == [
        "text_encoder/model.safetensors", "unet/diffusion_pytorch_model.safetensors"]
    with pytest.raises(FileNotFoundError):
        weight_files(tmp_path / "unet" / "missing")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="no weight files"):
        weight_files(empty)


def test_fingerprint_matches_an_independent_hash_and_is_computed_once_per_size_and_mtime(tmp_path):
    model = tmp_path / "model"
    (model / "unet").mkdir(parents=True)
    unet = model / "unet" / "diffusion_pytorch_model.safetensors"
    vae = model / "vae.safetensors"
    unet.write_bytes(os.urandom(3 * 1024 * 1024 + 7))
    vae.write_bytes(os.urandom(1000))
    cache = tmp_path / "state" / "weight-hashes.json"
    hashes = WeightHashes(cache)
    first = hashes.fingerprint("sdxl", model)
    files = {f["file"]: f["sha256"] for f in first["files"]}
    assert files == {"unet/diffusion_pytorch_model.safetensors": _sha(unet), "vae.safetensors": _sha(vae)}
    expected = hashlib.sha256("".join(f"{f}\0{h}\n" for f, h in sorted(files.items())).encode()).hexdigest()
    assert first["sha256"] == expected == combined_sha256(first["files"])
    assert hashes.computed == 2

    assert hashes.fingerprint("sdxl", model) == first
    assert hashes.computed == 2
    restarted = WeightHashes(cache)
    assert restarted.fingerprint("sdxl", model) == first
    assert restarted.computed == 0

    vae.write_bytes(os.urandom(1000))            # same size, new content and mtime
    os.utime(vae, ns=(vae.stat().st_atime_ns, vae.stat().st_mtime_ns + 1_000_000))
    changed = restarted.fingerprint("sdxl", model)
    assert restarted.computed == 1
    assert {f["file"]: f["sha256"] for f in changed["files"]}["vae.safetensors"] == _sha(vae)
    assert changed["sha256"] != first["sha256"]


def test_a_corrupt_cache_file_is_ignored_and_rewritten(tmp_path):
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"abc")
    cache = tmp_path / "cache.json"
    cache.write_text("{not json")
    hashes = WeightHashes(cache)
    assert hashes.fingerprint("m", weights)["files"] == [{"file": "w.safetensors", "bytes": 3, "sha256": _sha(weights)}]
    assert json.loads(cache.read_text())[str(weights.resolve())]["sha256"] == _sha(weights)

