"""Building the whole placeholder tree: lock, build into a temporary folder, swap into place, manifest."""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

from common.logging import Progress

from .manifest import _LAYOUT, LOCK_FILE, MANIFEST, expected_stamp, is_current

log = logging.getLogger(__name__)

# Top-level entries a build owns under root (everything else in root is left alone).
TOP_LEVEL = sorted({rel.split("/")[0] for rel in _LAYOUT.values()})


@contextlib.contextmanager
def _file_lock(path: Path):
    with open(path, "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


@contextlib.contextmanager
def _quiet_libraries():
    """No progress bars or info chatter from diffusers/transformers while saving; restored afterwards."""
    import diffusers.utils.logging as dlog
    import transformers.utils.logging as tlog

    saved = [(m, m.is_progress_bar_enabled(), m.get_verbosity()) for m in (dlog, tlog)]
    for m, _, _ in saved:
        m.disable_progress_bar()
        m.set_verbosity_error()
    try:
        yield
    finally:
        for m, bar, verbosity in saved:
            (m.enable_progress_bar if bar else m.disable_progress_bar)()
            m.set_verbosity(verbosity)


def build_tree(target: Path) -> None:
    """Write every model into `target` (an empty folder). Deterministic: fixed seeds; the caller's global
    torch RNG state is left as it was."""
    import torch

    from . import qwen, safety, sdxl, text_safety, wan

    progress = Progress(log, "building placeholder models", 5, "families", every_s=0.0)
    with _quiet_libraries(), torch.random.fork_rng(devices=[]):
        sdxl.build(target / "sdxl", target / "sdxl-single" / sdxl.SINGLE_FILE_NAME, target / "sdxl-single" / "config")
        progress.advance(note="SDXL (folder and single file)")
        wan.build(target / "wan2.1-t2v", target / "wan2.1-vace")
        progress.advance(note="Wan2.1 T2V and VACE")
        qwen.build(target / "qwen2.5-base", target / "qwen2.5-instruct")
        progress.advance(note="Qwen2.5 base and instruct")
        safety.build(target / "safety-classifier")
        progress.advance(note="output safety classifier")
        text_safety.build(target / "text-safety-classifier")
        progress.advance(note="text safety classifier")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _hash_and_dedupe(target: Path) -> dict[str, dict]:
    """sha256 and size of every file; byte-identical files (the VAE/text encoder/tokenizer shared by the two
    Wan folders, the SDXL configs copied next to the single file) become hard links to one copy."""
    files: dict[str, dict] = {}
    first_by_hash: dict[str, Path] = {}
    for path in sorted(p for p in target.rglob("*") if p.is_file()):
        digest = _sha256(path)
        rel = path.relative_to(target).as_posix()
        files[rel] = {"sha256": digest, "bytes": path.stat().st_size}
        original = first_by_hash.setdefault(digest, path)
        if original != path:
            try:
                tmp = path.with_name(path.name + ".link")
                os.link(original, tmp)
                os.replace(tmp, path)
            except OSError:  # filesystems without hard links keep the copy
                pass
    return files


def _disk_bytes(root: Path) -> int:
    seen, total = set(), 0
    for path in root.rglob("*"):
        st = path.lstat()
        if path.is_file() and (st.st_dev, st.st_ino) not in seen:
            seen.add((st.st_dev, st.st_ino))
            total += st.st_size
    return total


def build_locked(root: Path, force: bool = False) -> bool:
    """Build under the lock unless another process finished a current build meanwhile. True if built here."""
    root.mkdir(parents=True, exist_ok=True)
    with _file_lock(root / LOCK_FILE):
        if not force and is_current(root):
            return False
        for stale in root.glob(".build-*"):  # left by a process killed mid-build
            shutil.rmtree(stale, ignore_errors=True)
        for stale in root.glob(".old-*"):
            shutil.rmtree(stale, ignore_errors=True)

        started = time.monotonic()
        log.info("building placeholder models in %s", root)
        build_dir = Path(tempfile.mkdtemp(prefix=".build-", dir=root))
        try:
            build_tree(build_dir)
            files = _hash_and_dedupe(build_dir)
            manifest = dict(expected_stamp(), build_id=uuid.uuid4().hex,
                            built_at=datetime.now(UTC).isoformat(timespec="seconds"),
                            build_seconds=round(time.monotonic() - started, 2),
                            paths=dict(_LAYOUT), disk_bytes=_disk_bytes(build_dir), files=files)
            # Swap: manifest out first (concurrent callers then wait on the lock), folders in, manifest last.
            with contextlib.suppress(FileNotFoundError):
                os.unlink(root / MANIFEST)
            old_dir = Path(tempfile.mkdtemp(prefix=".old-", dir=root))
            for name in TOP_LEVEL:
                if (root / name).exists() or (root / name).is_symlink():
                    os.rename(root / name, old_dir / name)
                os.rename(build_dir / name, root / name)
            tmp_manifest = build_dir / MANIFEST
            tmp_manifest.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
            os.replace(tmp_manifest, root / MANIFEST)
            shutil.rmtree(old_dir, ignore_errors=True)
        finally:
            shutil.rmtree(build_dir, ignore_errors=True)
        log.info("placeholder models built in %.1f s (%.1f MB on disk)", manifest["build_seconds"],
                 manifest["disk_bytes"] / 1e6)
        return True
