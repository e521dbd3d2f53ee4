"""`python -m workers.download`: plan, resume, verification and pinning against a local HTTP server that
speaks the hub's API (tree listing, resolve with HEAD/Range, revision info); huggingface_hub is used as is,
pointed at it with HF_ENDPOINT / endpoint=."""
from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlparse

import pytest

from tests.support import REPO
from workers import download

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _blob(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class _HubHandler(BaseHTTPRequestHandler):
    """The hub's HTTP side; its server's `hub` is the LocalHub it serves."""

    protocol_version = "HTTP/1.1"

    def _send(self, status, body=b"", headers=None, head=False):
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        length = (headers or {}).get("Content-Length", str(len(body)))
        self.send_header("Content-Length", length)
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _json(self, data, status=200):
        self._send(status, json.dumps(data).encode(), {"Content-Type": "application/json"})

    def do_HEAD(self):
        self._route(head=True)

    def do_GET(self):
        self._route(head=False)

    def _route(self, head):
        hub = self.server.hub
        url = urlparse(self.path)
        path = unquote(url.path)
        hub.requests.append(("HEAD" if head else "GET", path, self.headers.get("Range")))
        m = re.fullmatch(r"/api/models/([^/]+/[^/]+)/tree/([^/]+)(/.*)?", path)
        if m:
            repo, rev = m.group(1), m.group(2)
            if repo not in hub.repos or rev != COMMIT:
                return self._json({"error": "Revision Not Found"}, 404)
            return self._json(hub.tree(repo))
        m = re.fullmatch(r"/api/models/([^/]+/[^/]+)/revision/([^/]+)", path)
        if m:
            if m.group(1) not in hub.repos:
                return self._json({"error": "Repository Not Found"}, 404)
            return self._json({"id": m.group(1), "sha": hub.main_commit, "siblings": []})
        m = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
        if m:
            return self._resolve(m.group(1), m.group(2), m.group(3), head)
        self._json({"error": "not found"}, 404)

    def _resolve(self, repo, rev, name, head):
        hub = self.server.hub
        files = hub.repos.get(repo, {})
        if rev != COMMIT or name not in files:
            return self._send(404, b"", {"X-Error-Code": "EntryNotFound"}, head)
        real = files[name]
        served = hub.tamper.get(name, real)
        etag = hashlib.sha256(real).hexdigest() if name.endswith(".safetensors") else _blob(real)
        headers = {"X-Repo-Commit": COMMIT, "ETag": f'"{etag}"', "Accept-Ranges": "bytes",
                   "Content-Type": "application/octet-stream"}
        if name.endswith(".safetensors"):
            headers["X-Linked-Etag"] = f'"{etag}"'
            headers["X-Linked-Size"] = str(len(real))
        start = 0
        rng = self.headers.get("Range")
        if rng and not head:
            start = int(re.match(r"bytes=(\d+)-", rng).group(1))
        body = served[start:]
        if head:
            headers["Content-Length"] = str(len(served))
            return self._send(200, b"", headers, head=True)
        if start:
            headers["Content-Range"] = f"bytes {start}-{len(served) - 1}/{len(served)}"
        action = hub.script[name].pop(0) if hub.script.get(name) else None
        if action == "500":
            return self._send(500, b"boom")
        cut = action
        self.send_response(206 if start else 200)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if cut is not None:
            self.wfile.write(body[:cut])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(2)
            return
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class LocalHub:
    """A few repositories at one commit each. `lfs` files (names ending .safetensors) are announced with
    their sha256 like the hub's LFS files; `script[path]` is a list of what the next GETs of that file do
    (an int n: close the connection after n bytes; "500": answer 500); `tamper[path] = bytes` serves other
    bytes than the listing announces."""

    def __init__(self, repos: dict[str, dict[str, bytes]], main_commit: str = COMMIT):
        self.repos = repos
        self.main_commit = main_commit
        self.script: dict[str, list] = {}
        self.tamper: dict[str, bytes] = {}
        self.requests: list[tuple[str, str, str | None]] = []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _HubHandler)
        self.server.hub = self  # read by _HubHandler
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def tree(self, repo: str) -> list[dict]:
        entries, folders = [], set()
        for name, data in sorted(self.repos[repo].items()):
            parts = name.split("/")
            for i in range(1, len(parts)):
                folders.add("/".join(parts[:i]))
            entry = {"type": "file", "oid": _blob(data), "size": len(data), "path": name}
            if name.endswith(".safetensors"):
                entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
            entries.append(entry)
        return [{"type": "directory", "oid": "0" * 40, "size": 0, "path": f} for f in sorted(folders)] + entries

    def close(self):
        self.server.shutdown()
        self.server.server_close()


WEIGHTS = os.urandom(24 * 1024 * 1024 + 17)  # over huggingface_hub's 10 MiB write chunk
REPOS = {
    "acme/image-model": {"model_index.json": b'{"_class_name": "X"}\n', "unet/config.json": b"{}\n",
                         "model.safetensors": WEIGHTS, "README.md": b"# not wanted\n"},
    "acme/chat-model": {"config.json": b'{"a": 1}\n', "model-00001-of-00001.safetensors": os.urandom(4096)},
}


@pytest.fixture
def hub():
    h = LocalHub(REPOS)
    yield h
    h.close()


def checkpoints(**overrides) -> dict:
    data = {
        "image": {"repo": "acme/image-model", "revision": COMMIT, "dir": "image",
                  "include": ["model_index.json", "unet/*", "*.safetensors"],
                  "settings": {"IMAGE_PATH": "model.safetensors"}},
        "chat": {"repo": "acme/chat-model", "revision": COMMIT, "dir": "chat", "include": ["*.json", "*.safetensors"],
                 "settings": {"CHAT_PATH": "."}},
        "later": {"repo": "acme/chat-model", "revision": None, "optional": True, "dir": "later", "include": ["*"]},
    }
    data.update(overrides)
    return data


def test_plan_is_the_listing_of_the_pinned_commit_filtered(hub):
    files = download.plan(["image", "chat"], checkpoints(), hub.url)
    assert [(f.checkpoint, f.path, f.size) for f in files] == [
        ("image", "model.safetensors", len(WEIGHTS)), ("image", "model_index.json", 21),
        ("image", "unet/config.json", 3), ("chat", "config.json", 9),
        ("chat", "model-00001-of-00001.safetensors", 4096)]
    assert files[0].sha256 == hashlib.sha256(WEIGHTS).hexdigest()
    assert files[1].sha256 is None
    assert files[1].blob_id == _blob(REPOS["acme/image-model"]["model_index.json"])
    assert download.selected(checkpoints(), None) == ["image", "chat"]  # optional entries only when named


def test_a_pattern_matching_nothing_or_an_unpinned_entry_fails_loudly(hub):
    with pytest.raises(download.DownloadError, match="matches 'vae/\\*'"):
        download.plan(["image"], checkpoints(image=dict(checkpoints()["image"], include=["vae/*"])), hub.url)
    with pytest.raises(download.DownloadError, match="no pinned commit.*pin later"):
        download.plan(["later"], checkpoints(), hub.url)
    with pytest.raises(download.DownloadError, match="cannot list"):
        download.plan(["image"], checkpoints(image=dict(checkpoints()["image"], revision="f" * 40)), hub.url)


def test_download_resumes_an_interrupted_file_then_verifies_and_records(hub, tmp_path):
    # the connection drops after 12 MiB; huggingface_hub's own retry then meets a server error: the run fails
    hub.script["model.safetensors"] = [12 * 1024 * 1024, "500"]
    with pytest.raises(download.DownloadError, match="run the command again to resume"):
        download.download(["image"], checkpoints(), tmp_path, hub.url)
    partial = list((tmp_path / "image").rglob("*.part"))
    assert len(partial) == 1
    assert 0 < partial[0].stat().st_size < len(WEIGHTS)
    kept = partial[0].stat().st_size

    lines = []
    records = download.download(["image", "chat"], checkpoints(), tmp_path, hub.url,
                                out=type("W", (), {"write": lambda self, s: lines.append(s)})())
    gets = [r[2] for r in hub.requests if r[0] == "GET" and r[1].endswith("model.safetensors")]
    assert gets == [None, f"bytes={kept}-", f"bytes={kept}-"]  # the next run continued the part, not restarted
    assert (tmp_path / "image" / "model.safetensors").read_bytes() == WEIGHTS
    assert not (tmp_path / "image" / "README.md").exists()
    assert records["image"]["revision"] == COMMIT
    assert records["image"]["bytes"] == len(WEIGHTS) + 21 + 3
    assert download.verify(["image", "chat"], checkpoints(), tmp_path) == []

    # corrupt a file behind the record's back: offline verify names it
    with open(tmp_path / "image" / "model.safetensors", "r+b") as fh:
        fh.seek(100)
        fh.write(b"\0\1\2")
    damaged = hashlib.sha256((tmp_path / "image" / "model.safetensors").read_bytes()).hexdigest()
    assert download.verify(["image"], checkpoints(), tmp_path) == [
        f"image: model.safetensors: sha256 {damaged[:16]}..., expected {hashlib.sha256(WEIGHTS).hexdigest()[:16]}..."]
    # a new download run finds the damage and fetches the file again
    sink = type("W", (), {"write": lambda self, s: lines.append(s)})()
    download.download(["image"], checkpoints(), tmp_path, hub.url, out=sink)
    assert any("fetching it again" in line for line in lines)
    assert download.verify(["image"], checkpoints(), tmp_path) == []


def test_a_server_that_serves_other_bytes_fails_verification(hub, tmp_path):
    hub.tamper["model-00001-of-00001.safetensors"] = os.urandom(4096)
    with pytest.raises(download.DownloadError, match="still fails verification.*sha256"):
        download.download(["chat"], checkpoints(), tmp_path, hub.url, out=open(os.devnull, "w"))


def test_command_line_plan_download_verify_and_pin_with_hf_endpoint(hub, tmp_path):
    table = tmp_path / "checkpoints.json"
    table.write_text(json.dumps(checkpoints()))
    env = dict(os.environ, HF_ENDPOINT=hub.url, HF_HUB_DISABLE_TELEMETRY="1", PYTHONPATH=str(REPO),
               HF_HOME=str(tmp_path / "hf-home"))

    def run(*args):
        return subprocess.run([sys.executable, "-m", "workers.download", *args, "--checkpoints", str(table)],
                              cwd=REPO, env=env, capture_output=True, text=True, timeout=120)

    planned = run("models", "--root", str(tmp_path / "models"), "--plan")
    assert planned.returncode == 0, planned.stderr
    assert "total 0.03 GB in 5 files" in planned.stdout
    assert not (tmp_path / "models" / "image").exists()
    fetched = run("models", "--root", str(tmp_path / "models"))
    assert fetched.returncode == 0, fetched.stderr
    assert f"IMAGE_PATH={(tmp_path / 'models' / 'image' / 'model.safetensors').resolve()}" in fetched.stdout
    assert f"CHAT_PATH={(tmp_path / 'models' / 'chat').resolve()}" in fetched.stdout
    checked = run("verify", "--root", str(tmp_path / "models"))
    assert checked.returncode == 0
    assert "verified image, chat" in checked.stdout
    (tmp_path / "models" / "chat" / "config.json").write_text('{"a": 2}\n')
    checked = run("verify", "--root", str(tmp_path / "models"))
    assert checked.returncode == 1
    assert "chat: config.json: git blob" in checked.stderr
    unpinned = run("models", "--root", str(tmp_path / "models"), "--only", "later")
    assert unpinned.returncode == 1
    assert "no pinned commit" in unpinned.stderr

    pinned = subprocess.run([sys.executable, "-m", "workers.download", "pin", "later", "--checkpoints", str(table)],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert pinned.returncode == 0, pinned.stderr
    assert json.loads(table.read_text())["later"]["revision"] == COMMIT


def test_the_production_table_pins_every_required_checkpoint():
    table = download.load_checkpoints()
    for name in download.selected(table, None):
        assert len(table[name]["revision"]) == 40, name
    assert {"sdxl", "wan_t2v", "qwen_base", "qwen_instruct"} <= set(download.selected(table, None))


def test_the_production_table_pins_both_content_classifiers():
    table = download.load_checkpoints()
    required = download.selected(table, None)
    assert {"safety_classifier", "text_safety_classifier"} <= set(required)  # fetched with the models
    assert table["safety_classifier"]["settings"] == {"SAFETY_CLASSIFIER_PATH": "."}
    assert table["text_safety_classifier"]["settings"] == {"TEXT_SAFETY_CLASSIFIER_PATH": "."}


def _classifier_repos(placeholder_dir) -> dict[str, dict[str, bytes]]:
    """The two classifier repositories with the file names their pinned commits list on the hub, holding the
    placeholder classifiers' bytes (the text one as pytorch_model.bin, as the production repository has it)."""
    import io

    import torch
    from transformers import AutoModelForSequenceClassification

    from workers.placeholders import placeholder_paths

    paths = placeholder_paths(placeholder_dir)
    image, text = paths["safety_classifier"], paths["text_safety_classifier"]
    weights = io.BytesIO()  # transformers writes only safetensors now; the pinned commit has a torch pickle
    torch.save(AutoModelForSequenceClassification.from_pretrained(text, local_files_only=True).state_dict(), weights)
    specials = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "sep_token": "</s>",
                "pad_token": "<pad>", "cls_token": "<s>", "mask_token": "<mask>"}
    return {
        "Falconsai/nsfw_image_detection": {
            ".gitattributes": b"*.bin filter=lfs\n", "README.md": b"# model card\n", "optimizer.pt": b"not wanted",
            "pytorch_model.bin": b"not wanted", "config.json": (image / "config.json").read_bytes(),
            "model.safetensors": (image / "model.safetensors").read_bytes(),
            "preprocessor_config.json": (image / "preprocessor_config.json").read_bytes()},
        "bstrai/multilingual-toxic-xlm-roberta": {
            ".gitattributes": b"*.bin filter=lfs\n", "config.json": (text / "config.json").read_bytes(),
            "pytorch_model.bin": weights.getvalue(),
            "tokenizer.json": (text / "tokenizer.json").read_bytes(),
            "tokenizer_config.json": (text / "tokenizer_config.json").read_bytes(),
            "special_tokens_map.json": json.dumps(specials).encode()},
    }


def test_the_classifiers_download_and_load_from_the_settings_the_download_prints(placeholder_dir, tmp_path):
    """Plan, fetch and verify the two classifier entries as configured (their pins replaced by the local hub's
    commit), then load each from the path the printed settings name, with the workers' own loading code."""
    from configuration.settings import Settings
    from workers.engines.base import GeneratedAsset
    from workers.runtime import safety, text_safety

    hub = LocalHub(_classifier_repos(placeholder_dir))
    try:
        table = download.load_checkpoints()
        names = ["safety_classifier", "text_safety_classifier"]
        local = {name: dict(table[name], revision=COMMIT) for name in names}
        files = download.plan(names, local, hub.url)
        assert sorted((f.checkpoint, f.path) for f in files) == [
            ("safety_classifier", "config.json"), ("safety_classifier", "model.safetensors"),
            ("safety_classifier", "preprocessor_config.json"),
            ("text_safety_classifier", "config.json"), ("text_safety_classifier", "pytorch_model.bin"),
            ("text_safety_classifier", "special_tokens_map.json"), ("text_safety_classifier", "tokenizer.json"),
            ("text_safety_classifier", "tokenizer_config.json")]
        download.download(names, local, tmp_path / "models", hub.url, out=open(os.devnull, "w"))
        assert download.verify(names, local, tmp_path / "models") == []
    finally:
        hub.close()
    lines = dict(line.split("=", 1) for line in download.settings_lines(names, local, tmp_path / "models"))
    settings = Settings(model_profile="production", safety_classifier_path=lines["SAFETY_CLASSIFIER_PATH"],
                        text_safety_classifier_path=lines["TEXT_SAFETY_CLASSIFIER_PATH"])
    from PIL import Image

    image_check = safety.check_outputs(settings, "sfw", [GeneratedAsset("image", [Image.new("RGB", (40, 40))], {})])
    assert image_check is not None
    assert image_check.outcome == "allowed"
    text_check = text_safety.check_text(settings, "un faro al atardecer", tier="sfw", stage="prompt")
    assert text_check.outcome == "allowed"
    assert text_check.scores


def test_the_classifier_pins_are_refused_when_missing(tmp_path):
    table = download.load_checkpoints()
    unpinned = {"text_safety_classifier": dict(table["text_safety_classifier"], revision=None)}
    with pytest.raises(download.DownloadError, match="no pinned commit.*pin text_safety_classifier"):
        download.plan(["text_safety_classifier"], unpinned, "http://127.0.0.1:9")
    short = {"safety_classifier": dict(table["safety_classifier"], revision="63e0a06")}  # a short id is no pin
    with pytest.raises(download.DownloadError, match="no pinned commit"):
        download.plan(["safety_classifier"], short, "http://127.0.0.1:9")
