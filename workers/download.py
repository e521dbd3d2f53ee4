"""`python -m workers.download`: fetch the production checkpoints once, before serving.

    python -m workers.download models --root /workspace/models            # plan, download, verify
    python -m workers.download models --root DIR --plan                    # list files, sizes, disk; fetch nothing
    python -m workers.download verify --root DIR                           # re-check sizes and hashes, offline
    python -m workers.download pin wan_vace                                # record a commit for an unpinned entry

What is fetched is data (configuration/checkpoints.json): for each checkpoint a hub repository, a pinned
commit, the file patterns the workers read and the folder under `--root` they go to. The plan is the hub's
listing of that commit (sizes, sha256 of every LFS file, git blob id of the others); each file is fetched
from the hub's resolve URL for that commit with huggingface_hub's `http_get` into `<file>.part`, which a
later run continues with a Range request (an interrupted pod start loses nothing); then every file is
checked against the listing (size, and sha256 or git blob sha1), a file that fails is fetched again
once, and the result is written to
`<folder>/ourvidz-download.json`, which `verify` re-checks without the network. Nothing is fetched at serve
time: the workers load with `local_files_only=True`, and docs/OPERATIONS.md sets HF_HUB_OFFLINE=1 for them.

The hub endpoint is huggingface_hub's (HF_ENDPOINT, or `--endpoint`); HF_TOKEN is used when set.
"""
from __future__ import annotations

import argparse
import fnmatch
import hashlib
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from configuration import CONFIG_DIR

CHECKPOINTS = CONFIG_DIR / "checkpoints.json"
RECORD = "ourvidz-download.json"
COMMIT = 40  # hex digits of a pinned git commit


class DownloadError(RuntimeError):
    """The plan, a download or a verification failed; the message says which file and why."""


@dataclass(frozen=True)
class PlannedFile:
    checkpoint: str
    path: str             # inside the repository (and inside the checkpoint's folder)
    size: int
    sha256: str | None    # LFS files
    blob_id: str          # git blob sha1 (for non-LFS files the content hash)

    def to_json(self) -> dict:
        return {"path": self.path, "bytes": self.size, "sha256": self.sha256, "git_blob": self.blob_id}


def load_checkpoints(path: Path = CHECKPOINTS) -> dict[str, dict]:
    with open(path, encoding="utf-8") as fh:
        data = json.load(fh)
    return {k: v for k, v in data.items() if not k.startswith("_")}


def selected(checkpoints: dict[str, dict], names: list[str] | None) -> list[str]:
    """The named checkpoints, or every non-optional one."""
    if not names:
        return [n for n, c in checkpoints.items() if not c.get("optional")]
    unknown = [n for n in names if n not in checkpoints]
    if unknown:
        raise DownloadError(f"unknown checkpoint(s) {unknown}; known: {sorted(checkpoints)}")
    return list(names)


def _pinned(name: str, entry: dict) -> str:
    revision = entry.get("revision") or ""
    if len(revision) != COMMIT or any(c not in "0123456789abcdef" for c in revision):
        raise DownloadError(f"{name}: no pinned commit recorded for {entry['repo']} (revision={revision!r}); "
                            f"run `python -m workers.download pin {name}` on a machine that reaches the hub, "
                            "review the commit and commit configuration/checkpoints.json")
    return revision


def _api(endpoint: str | None):
    from huggingface_hub import HfApi

    return HfApi(endpoint=endpoint)


def plan(names: list[str], checkpoints: dict[str, dict], endpoint: str | None = None) -> list[PlannedFile]:
    """The hub's listing of each pinned commit, filtered by the entry's patterns. Every pattern must match
    at least one file (a renamed file upstream fails here, not at load time)."""
    api = _api(endpoint)
    files: list[PlannedFile] = []
    for name in names:
        entry = checkpoints[name]
        revision = _pinned(name, entry)
        try:
            listing = [f for f in api.list_repo_tree(entry["repo"], revision=revision, recursive=True)
                       if hasattr(f, "blob_id")]
        except Exception as exc:  # huggingface_hub's HTTP/network errors, reported with the checkpoint's name
            raise DownloadError(f"{name}: cannot list {entry['repo']}@{revision[:12]}: {exc}") from exc
        matched: set[str] = set()
        for pattern in entry["include"]:
            hits = [f for f in listing if fnmatch.fnmatchcase(f.path, pattern)]
            if not hits:
                raise DownloadError(f"{name}: no file of {entry['repo']}@{revision[:12]} matches {pattern!r}")
            matched.update(f.path for f in hits)
        for f in sorted((f for f in listing if f.path in matched), key=lambda f: f.path):
            files.append(PlannedFile(name, f.path, int(f.size), f.lfs.sha256 if f.lfs else None, f.blob_id))
    return files


def git_blob_sha1(path: Path) -> str:
    h = hashlib.sha1(usedforsecurity=False)  # git's blob id, as the hub lists it
    h.update(f"blob {path.stat().st_size}\0".encode())
    _update(h, path)
    return h.hexdigest()


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    _update(h, path)
    return h.hexdigest()


def _update(h, path: Path) -> None:
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(8 << 20), b""):
            h.update(chunk)


def check_file(folder: Path, planned: PlannedFile) -> str | None:
    """None when the local file matches the plan, else why not."""
    path = folder / planned.path
    if not path.is_file():
        return "missing"
    size = path.stat().st_size
    if size != planned.size:
        return f"{size} bytes, expected {planned.size}"
    if planned.sha256:
        got = sha256_of(path)
        return None if got == planned.sha256 else f"sha256 {got[:16]}..., expected {planned.sha256[:16]}..."
    got = git_blob_sha1(path)
    return None if got == planned.blob_id else f"git blob {got[:12]}, expected {planned.blob_id[:12]}"


PART = ".part"


def _fetch(entry: dict, planned: PlannedFile, folder: Path, endpoint: str | None, force: bool) -> None:
    """One file over the hub's resolve URL into `<file>.part`, continued with a Range request when a previous
    run left a part behind (huggingface_hub's `http_get` also resumes within a run after a dropped connection;
    `hf_hub_download` itself deletes partial files on failure), then renamed into place."""
    from huggingface_hub import hf_hub_url
    from huggingface_hub.file_download import http_get
    from huggingface_hub.utils import build_hf_headers

    final = folder / planned.path
    if not force and final.is_file() and final.stat().st_size == planned.size:
        return
    final.parent.mkdir(parents=True, exist_ok=True)
    part = final.with_name(final.name + PART)
    resume = part.stat().st_size if part.is_file() else 0
    if force or resume > planned.size:
        part.unlink(missing_ok=True)
        resume = 0
    url = hf_hub_url(entry["repo"], planned.path, revision=entry["revision"], endpoint=endpoint)
    try:
        with open(part, "ab") as fh:
            http_get(url, fh, resume_size=resume, headers=build_hf_headers(), expected_size=planned.size,
                     displayed_filename=planned.path)
    except Exception as exc:  # network or HTTP error: the part stays for the next run to continue
        raise DownloadError(f"{planned.checkpoint}: {planned.path}: {exc}; run the command again to resume") from exc
    os.replace(part, final)


def download(names: list[str], checkpoints: dict[str, dict], root: Path, endpoint: str | None = None,
             out=sys.stdout) -> dict[str, dict]:
    """Plan, check the disk, fetch (resuming), verify (one re-fetch of a bad file), record. Returns the records."""
    files = plan(names, checkpoints, endpoint)
    root.mkdir(parents=True, exist_ok=True)
    missing_bytes = sum(f.size for f in files if not _complete(root / checkpoints[f.checkpoint]["dir"], f))
    free = shutil.disk_usage(root).free
    if missing_bytes > free:
        raise DownloadError(f"{missing_bytes / 1e9:.1f} GB still to fetch and {root} has {free / 1e9:.1f} GB free")
    records = {}
    for name in names:
        entry = checkpoints[name]
        folder = root / entry["dir"]
        mine = [f for f in files if f.checkpoint == name]
        started = time.monotonic()
        for f in mine:
            _fetch(entry, f, folder, endpoint, force=False)
        bad = {f.path: why for f in mine if (why := check_file(folder, f))}
        for f in mine:
            if f.path in bad:
                print(f"{name}: {f.path}: {bad[f.path]}; fetching it again", file=out)
                _fetch(entry, f, folder, endpoint, force=True)
                if (why := check_file(folder, f)):
                    raise DownloadError(f"{name}: {f.path} still fails verification after a fresh download: {why}")
        record = {"name": name, "repo": entry["repo"], "revision": entry["revision"],
                  "files": [f.to_json() for f in mine], "bytes": sum(f.size for f in mine)}
        (folder / RECORD).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        records[name] = record
        print(f"{name}: {entry['repo']}@{entry['revision'][:12]} {len(mine)} files, {record['bytes'] / 1e9:.2f} GB, "
              f"verified ({time.monotonic() - started:.0f} s)", file=out)
    return records


def _complete(folder: Path, planned: PlannedFile) -> bool:
    path = folder / planned.path
    return path.is_file() and path.stat().st_size == planned.size


def verify(names: list[str], checkpoints: dict[str, dict], root: Path) -> list[str]:
    """Offline: every file of each checkpoint's record against its size and hash. Returns the problems."""
    problems = []
    for name in names:
        entry = checkpoints[name]
        folder = root / entry["dir"]
        try:
            record = json.loads((folder / RECORD).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            problems.append(f"{name}: {folder / RECORD} is missing or unreadable (not downloaded?)")
            continue
        if record.get("revision") != entry.get("revision"):
            problems.append(f"{name}: downloaded at {record.get('revision')}, "
                            f"configuration pins {entry.get('revision')}")
        for f in record["files"]:
            planned = PlannedFile(name, f["path"], f["bytes"], f["sha256"], f["git_blob"])
            if (why := check_file(folder, planned)):
                problems.append(f"{name}: {f['path']}: {why}")
    return problems


def settings_lines(names: list[str], checkpoints: dict[str, dict], root: Path) -> list[str]:
    """KEY=value lines pointing the workers at the downloaded folders (for the production settings file)."""
    lines = []
    for name in names:
        entry = checkpoints[name]
        for key, rel in entry.get("settings", {}).items():
            lines.append(f"{key}={(root / entry['dir'] / rel).resolve()}")
    return lines


def pin(name: str, checkpoints_path: Path, endpoint: str | None = None, branch: str = "main") -> str:
    """Record the commit `branch` of an entry's repository points at now (for an entry without one)."""
    data = json.loads(checkpoints_path.read_text(encoding="utf-8"))
    if name not in data or name.startswith("_"):
        raise DownloadError(f"unknown checkpoint {name!r}")
    sha = _api(endpoint).model_info(data[name]["repo"], revision=branch).sha
    if not sha or len(sha) != COMMIT:
        raise DownloadError(f"the hub gave no commit for {data[name]['repo']}@{branch}")
    data[name]["revision"] = sha
    checkpoints_path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    return sha


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workers.download", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    models = sub.add_parser("models", help="plan, download and verify the checkpoints")
    check = sub.add_parser("verify", help="re-check downloaded files offline")
    for p in (models, check):
        p.add_argument("--root", type=Path, required=True, help="the models volume, e.g. /workspace/models")
        p.add_argument("--only", action="append", help="a checkpoint name (repeatable); default: all non-optional")
        p.add_argument("--checkpoints", type=Path, default=CHECKPOINTS, help=argparse.SUPPRESS)
    models.add_argument("--plan", action="store_true", help="print the files and sizes; fetch nothing")
    models.add_argument("--endpoint", default=None, help="hub endpoint (default: HF_ENDPOINT or huggingface_hub's)")
    pinning = sub.add_parser("pin", help="record the current commit of an entry without one")
    pinning.add_argument("name")
    pinning.add_argument("--endpoint", default=None)
    pinning.add_argument("--checkpoints", type=Path, default=CHECKPOINTS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    try:
        if args.command == "pin":
            print(f"{args.name}: pinned at {pin(args.name, args.checkpoints, args.endpoint)}")
            return 0
        checkpoints = load_checkpoints(args.checkpoints)
        names = selected(checkpoints, args.only)
        if args.command == "verify":
            problems = verify(names, checkpoints, args.root)
            for problem in problems:
                print(f"verify: {problem}", file=sys.stderr)
            if not problems:
                print(f"verified {', '.join(names)} under {args.root}")
            return 1 if problems else 0
        if args.plan:
            files = plan(names, checkpoints, args.endpoint)
            for f in files:
                print(f"{f.checkpoint:14s} {f.size:>14,d}  {f.path}")
            print(f"total {sum(f.size for f in files) / 1e9:.2f} GB in {len(files)} files; "
                  f"{shutil.disk_usage(args.root if args.root.exists() else Path('.')).free / 1e9:.1f} GB free")
            return 0
        download(names, checkpoints, args.root, args.endpoint)
        print("settings for the production settings file:")
        print("\n".join(settings_lines(names, checkpoints, args.root)))
        return 0
    except DownloadError as exc:
        print(f"download error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
