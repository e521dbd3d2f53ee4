"""Comparing model folders, so that byte-identical components are loaded once."""
from __future__ import annotations

import functools
import os
from pathlib import Path


def _file_signature(folder: Path) -> tuple:
    entries = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        st = path.stat()
        entries.append((str(path.relative_to(folder)), st.st_size, st.st_mtime_ns, st.st_ino))
    return tuple(entries)


@functools.lru_cache(maxsize=32)
def _same_files(a: str, b: str, _signature: tuple) -> bool:
    folder_a, folder_b = Path(a), Path(b)
    names_a = sorted(str(p.relative_to(folder_a)) for p in folder_a.rglob("*") if p.is_file())
    names_b = sorted(str(p.relative_to(folder_b)) for p in folder_b.rglob("*") if p.is_file())
    if not names_a or names_a != names_b:
        return False
    for name in names_a:
        pa, pb = folder_a / name, folder_b / name
        if os.path.samefile(pa, pb):
            continue
        if pa.stat().st_size != pb.stat().st_size or not _same_bytes(pa, pb):
            return False
    return True


def _same_bytes(a: Path, b: Path, chunk: int = 16 * 1024 * 1024) -> bool:
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            block = fa.read(chunk)
            if block != fb.read(chunk):
                return False
            if not block:
                return True


def same_files(folder_a: str | Path, folder_b: str | Path) -> bool:
    """True when two folders hold the same file names with byte-identical contents (hard links and
    symlinks short-cut the comparison). Cached per process while the files are unchanged."""
    folder_a, folder_b = Path(folder_a).resolve(), Path(folder_b).resolve()
    if folder_a == folder_b:
        return True
    if not folder_a.is_dir() or not folder_b.is_dir():
        return False
    signature = (_file_signature(folder_a), _file_signature(folder_b))
    return _same_files(str(folder_a), str(folder_b), signature)
