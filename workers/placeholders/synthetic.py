"""Synthetic full-size models (`MODEL_PROFILE=synthetic`): random weights of the real architectures, in the
real sizes, dtypes and on-disk formats, built where no hub can be reached.

The architectures are data: configuration/architectures/ holds the `config.json` files of the checkpoints
docs/OPERATIONS.md pins. From them this module writes, under `root` (SYNTHETIC_MODELS_DIR):

    sdxl/sd_xl_base_1.0.safetensors  one original-format fp16 file (3.47 B parameters, about 6.9 GB), and
    sdxl/                            beside it the repository's configs and two CLIP tokenizers (SDXL_CONFIG_DIR)
    sdxl-vae-fp16-fix/               AutoencoderKL folder, fp32 (madebyollin/sdxl-vae-fp16-fix's layout)
    wan2.1-t2v/                      WanPipeline folder: transformer (2 fp32 shards), umT5-XXL encoder
                                     (5 fp32 shards, the shipped key set), VAE (fp32), tokenizer, scheduler
    wan2.1-vace/                     WanVACEPipeline folder (family wan_vace): its own transformer (2.15 B, fp32),
                                     the rest hard links to wan2.1-t2v's files (built after the wan family)
    qwen2.5-base/, qwen2.5-instruct/ Qwen2ForCausalLM folders, 4 bf16 shards shared by hard links: base and
                                     instruct use one set of weights; each has its own config, generation config
                                     and tokenizer (the instruct one with the ChatML template)
    manifest.json                    what was built, with which library versions, file sizes

The workers load these with the same code as real weights (from_single_file, from_pretrained); timings
on random weights equal timings on real ones, outputs are noise. Tokenizers are the placeholder recipes
(tokenizer_builders.py); the Qwen one is padded to the real vocabulary (151,643 tokens, specials at their
real ids) so that any generated id decodes.

Models are initialised on the accelerator when there is one, written one shard at a time, and one family
at a time: `build(root, families=[...])` refuses with `InsufficientDisk` before writing a family that the
free disk cannot hold (`remove_family` frees one after use).

    python -m workers.placeholders.synthetic --root DIR [--family sdxl --family wan ...] [--device cuda]
    python -m workers.placeholders.synthetic --counts          # parameter counts vs published, no weights
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from configuration import CONFIG_DIR, model_configs

log = logging.getLogger(__name__)

ARCHITECTURES = CONFIG_DIR / "architectures"
BUILDER_VERSION = 1
MANIFEST = "manifest.json"
FAMILIES = ("sdxl", "wan", "wan_vace", "qwen")
SDXL_FILE = "sd_xl_base_1.0.safetensors"
GB = 1000 ** 3

# Families -> the folders (under root) a family writes.
FAMILY_DIRS = {"sdxl": ("sdxl", "sdxl-vae-fp16-fix"), "wan": ("wan2.1-t2v",), "wan_vace": ("wan2.1-vace",),
               "qwen": ("qwen2.5-base", "qwen2.5-instruct")}

# Shard sizes of the real repositories: Wan's transformer comes in 2 files and its umT5 encoder in 5
# (about 5 GB each), Qwen2.5-7B in 4 (about 4 GB each).
WAN_SHARD = "5GB"
QWEN_SHARD = "4GB"

# Qwen2.5's special tokens, in id order from 151643.
QWEN_VOCAB = 151643
QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
                 "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
                 "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>", "<tool_call>", "</tool_call>",
                 "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>"]


class InsufficientDisk(RuntimeError):
    """The free disk cannot hold the family about to be written."""


# ---- architectures (data) ----------------------------------------------------------------------

def arch_config(rel: str) -> dict:
    """A real config.json from configuration/architectures/ (keys starting with `_` dropped for constructors)."""
    with open(ARCHITECTURES / rel, encoding="utf-8") as fh:
        return json.load(fh)


def _init_args(rel: str) -> dict:
    return {k: v for k, v in arch_config(rel).items() if not k.startswith("_")}


def published_counts() -> dict[str, dict]:
    data = arch_config("published.json")
    return {k: v for k, v in data.items() if not k.startswith("_")}


def _modules() -> dict[str, tuple[Callable[[], Any], str]]:
    """name -> (factory(), dtype name as shipped). Factories build the module under the caller's device context."""
    from diffusers import (
        AutoencoderKL,
        AutoencoderKLWan,
        UNet2DConditionModel,
        WanTransformer3DModel,
        WanVACETransformer3DModel,
    )
    from transformers import (
        CLIPTextConfig,
        CLIPTextModel,
        CLIPTextModelWithProjection,
        Qwen2Config,
        Qwen2ForCausalLM,
        UMT5Config,
        UMT5EncoderModel,
    )

    a = _init_args
    return {
        "sdxl_unet": (lambda: UNet2DConditionModel.from_config(a("sdxl-base-1.0/unet/config.json")), "float16"),
        "sdxl_vae": (lambda: AutoencoderKL.from_config(a("sdxl-base-1.0/vae/config.json")), "float16"),
        "sdxl_text_encoder": (lambda: CLIPTextModel(CLIPTextConfig(**a("sdxl-base-1.0/text_encoder/config.json"))),
                              "float16"),
        "sdxl_text_encoder_2": (lambda: CLIPTextModelWithProjection(
            CLIPTextConfig(**a("sdxl-base-1.0/text_encoder_2/config.json"))), "float16"),
        "sdxl_vae_fp16_fix": (lambda: AutoencoderKL.from_config(a("sdxl-vae-fp16-fix/config.json")), "float32"),
        "wan_transformer": (lambda: WanTransformer3DModel.from_config(a("wan2.1-t2v-1.3b/transformer/config.json")),
                            "float32"),
        "wan_vace_transformer": (lambda: WanVACETransformer3DModel.from_config(
            _init_args("wan2.1-vace-1.3b/transformer/config.json")), "float32"),
        "wan_vae": (lambda: AutoencoderKLWan.from_config(_init_args("wan2.1-t2v-1.3b/vae/config.json")), "float32"),
        "umt5_xxl_encoder": (lambda: UMT5EncoderModel(UMT5Config(**a("wan2.1-t2v-1.3b/text_encoder/config.json"))),
                             "float32"),
        "qwen2.5_7b": (lambda: Qwen2ForCausalLM(Qwen2Config(**_init_args("qwen2.5-7b/config.json"))), "bfloat16"),
    }


FAMILY_MODULES = {"sdxl": ("sdxl_unet", "sdxl_vae", "sdxl_text_encoder", "sdxl_text_encoder_2", "sdxl_vae_fp16_fix"),
                  "wan": ("wan_transformer", "wan_vae", "umt5_xxl_encoder"), "wan_vace": ("wan_vace_transformer",),
                  "qwen": ("qwen2.5_7b",)}
_DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}


def parameter_counts() -> dict[str, int]:
    """Unique parameters of every module, built on the meta device (no memory, about 10 s of CPU).

    `torch.device("meta")` rather than accelerate's `init_empty_weights`: the latter registers parameters
    one by one and so unties umT5's `encoder.embed_tokens` from `shared` (counting the 1.05 B embedding twice)."""
    import torch

    counts = {}
    with torch.device("meta"):
        for name, (factory, _dtype) in _modules().items():
            counts[name] = sum(p.numel() for p in factory().parameters())
    return counts


def family_bytes(counts: dict[str, int] | None = None) -> dict[str, int]:
    """Bytes each family's weights take on disk (parameters x the shipped dtype's width; qwen counted once)."""
    counts = counts or parameter_counts()
    dtypes = {name: dtype for name, (_f, dtype) in _modules().items()}
    return {family: sum(counts[m] * _DTYPE_BYTES[dtypes[m]] for m in modules)
            for family, modules in FAMILY_MODULES.items()}


# ---- layout (models.json `paths.synthetic`) ----------------------------------------------------------

def synthetic_paths(root: str | os.PathLike) -> dict[str, dict[str, Path]]:
    """model name -> {"path": ..., "config_path": ...} under `root`, from models.json's `paths.synthetic`."""
    root = Path(root)
    out = {}
    for name, cfg in model_configs().items():
        entry = cfg.get("paths", {}).get("synthetic")
        if entry:
            out[name] = {key: root / rel for key, rel in entry.items()}
    return out


def read_manifest(root: str | os.PathLike) -> dict:
    try:
        return json.loads((Path(root) / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {"builder_version": BUILDER_VERSION, "families": {}}


def is_built(root: str | os.PathLike, family: str) -> bool:
    from . import installed_versions

    entry = read_manifest(root).get("families", {}).get(family)
    return bool(entry) and entry.get("builder_version") == BUILDER_VERSION \
        and entry.get("versions") == installed_versions() \
        and all((Path(root) / d).is_dir() for d in FAMILY_DIRS[family])


# ---- writing -------------------------------------------------------------------------------------

def pick_build_device(requested: str | None = None) -> str:
    import torch

    if requested:
        return requested
    return "cuda" if torch.cuda.is_available() else "cpu"


@contextlib.contextmanager
def _module_on(factory, dtype_name: str, device: str):
    """Build a module directly on `device` (default init there: milliseconds on a GPU), cast to the shipped
    dtype, hand it over, then free it."""
    import torch

    with torch.device(device), torch.no_grad():
        module = factory().eval()
        module.to(getattr(torch, dtype_name))
    try:
        yield module
    finally:
        del module
        if device.startswith("cuda"):
            torch.cuda.empty_cache()


def write_diffusers_component(factory, dtype_name: str, directory: Path, real_config: dict, device: str,
                              max_shard_size: str | None = None) -> None:
    """A diffusers model folder (`config.json` + `diffusion_pytorch_model[-0000N-of-0000M].safetensors`),
    its config.json replaced by the repository's own text."""
    with _module_on(factory, dtype_name, device) as module:
        kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
        module.save_pretrained(directory, safe_serialization=True, **kwargs)
    _write_json(directory / "config.json", real_config)


def write_transformers_model(factory, dtype_name: str, directory: Path, real_config: dict, device: str,
                             max_shard_size: str, generation_config: dict | None = None) -> None:
    """A transformers model folder (sharded safetensors + index); tied weights are written once, as the real
    repositories ship them (umT5: `shared.weight` only)."""
    with _module_on(factory, dtype_name, device) as module:
        module.save_pretrained(directory, safe_serialization=True, max_shard_size=max_shard_size)
    _write_json(directory / "config.json", real_config)
    if generation_config is not None:
        _write_json(directory / "generation_config.json", generation_config)
    elif (directory / "generation_config.json").exists():
        (directory / "generation_config.json").unlink()


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def _copy_arch(rel_dir: str, target: Path, names: tuple[str, ...]) -> None:
    for name in names:
        src = ARCHITECTURES / rel_dir / name
        (target / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, target / name)


def qwen_padded_tokenizer(instruct: bool):
    """The placeholder Qwen2 BPE padded with filler tokens to Qwen2.5's 151,643 regular tokens, then its 22
    special tokens at their real ids (151643 <|endoftext|>, 151644 <|im_start|>, 151645 <|im_end|>, ...)."""
    from transformers import Qwen2Tokenizer

    from .tokenizer_builders import QWEN_CHAT_TEMPLATE, qwen_tokenizer

    small = qwen_tokenizer(instruct)
    model = json.loads(small.backend_tokenizer.to_str())["model"]
    regular = sorted(((t, i) for t, i in model["vocab"].items() if t not in QWEN_SPECIALS), key=lambda kv: kv[1])
    vocab = {t: n for n, (t, _i) in enumerate(regular)}
    n = 0
    while len(vocab) < QWEN_VOCAB:  # "Ġt123" decodes to " t123"
        vocab.setdefault(f"\u0120t{n}", len(vocab))
        n += 1
    for token in QWEN_SPECIALS:
        vocab[token] = len(vocab)
    merges: list[Any] = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    kwargs = {k: v for k, v in small.init_kwargs.items() if k not in ("backend", "vocab", "merges", "chat_template")}
    if instruct:
        kwargs["chat_template"] = QWEN_CHAT_TEMPLATE
    return Qwen2Tokenizer(vocab=vocab, merges=merges, **kwargs)


def build_sdxl(root: Path, device: str) -> None:
    from safetensors.torch import save_file

    from .ldm_convert import sdxl_to_original
    from .tokenizer_builders import clip_tokenizer, save_clip_tokenizer

    target = root / "sdxl"
    _copy_arch("sdxl-base-1.0", target, ("model_index.json", "unet/config.json", "vae/config.json",
                                         "text_encoder/config.json", "text_encoder_2/config.json",
                                         "scheduler/scheduler_config.json"))
    save_clip_tokenizer(clip_tokenizer(), target / "tokenizer")
    save_clip_tokenizer(clip_tokenizer(pad_token="!"), target / "tokenizer_2")  # noqa: S106 (a tokenizer's pad token, not a password)
    modules = _modules()
    with contextlib.ExitStack() as stack:
        parts = [stack.enter_context(_module_on(*modules[name], device))
                 for name in ("sdxl_unet", "sdxl_vae", "sdxl_text_encoder", "sdxl_text_encoder_2")]
        state = sdxl_to_original(*parts)
        save_file(state, str(target / SDXL_FILE), metadata={"format": "pt"})
        del state
    factory, dtype = modules["sdxl_vae_fp16_fix"]
    write_diffusers_component(factory, dtype, root / "sdxl-vae-fp16-fix", arch_config("sdxl-vae-fp16-fix/config.json"),
                              device)


def build_wan(root: Path, device: str) -> None:
    from .tokenizer_builders import save_umt5_tokenizer, umt5_tokenizer

    target = root / "wan2.1-t2v"
    modules = _modules()
    _copy_arch("wan2.1-t2v-1.3b", target, ("model_index.json", "scheduler/scheduler_config.json"))
    tokenizer, spiece = umt5_tokenizer()
    save_umt5_tokenizer(tokenizer, spiece, target / "tokenizer")
    for name, sub, shard in (("wan_transformer", "transformer", WAN_SHARD), ("wan_vae", "vae", None)):
        write_diffusers_component(*modules[name], target / sub, arch_config(f"wan2.1-t2v-1.3b/{sub}/config.json"),
                                  device, shard)
    write_transformers_model(*modules["umt5_xxl_encoder"], target / "text_encoder",
                             arch_config("wan2.1-t2v-1.3b/text_encoder/config.json"), device, WAN_SHARD)


def _link_or_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:  # filesystems without hard links get a copy
        shutil.copyfile(src, dst)


def build_wan_vace(root: Path, device: str) -> None:
    t2v, target = root / "wan2.1-t2v", root / "wan2.1-vace"
    if not (t2v / "text_encoder").is_dir():
        raise RuntimeError("the wan_vace family shares the wan family's VAE, text encoder and tokenizer: "
                           "build wan first")
    for sub in ("text_encoder", "tokenizer", "vae", "scheduler"):
        for path in (t2v / sub).rglob("*"):
            if path.is_file():
                _link_or_copy(path, target / path.relative_to(t2v))
    _copy_arch("wan2.1-vace-1.3b", target, ("model_index.json",))
    write_diffusers_component(*_modules()["wan_vace_transformer"], target / "transformer",
                              arch_config("wan2.1-vace-1.3b/transformer/config.json"), device, WAN_SHARD)


def build_qwen(root: Path, device: str) -> None:
    from .tokenizer_builders import save_qwen_tokenizer

    base, instruct = root / "qwen2.5-base", root / "qwen2.5-instruct"
    write_transformers_model(*_modules()["qwen2.5_7b"], base, arch_config("qwen2.5-7b/config.json"), device,
                             QWEN_SHARD, arch_config("qwen2.5-7b/generation_config.json"))
    for path in base.iterdir():  # one set of weights: hard links
        if path.suffix == ".safetensors" or path.name.endswith(".index.json"):
            _link_or_copy(path, instruct / path.name)
    _write_json(instruct / "config.json", arch_config("qwen2.5-7b-instruct/config.json"))
    _write_json(instruct / "generation_config.json", arch_config("qwen2.5-7b-instruct/generation_config.json"))
    save_qwen_tokenizer(qwen_padded_tokenizer(False), base)
    save_qwen_tokenizer(qwen_padded_tokenizer(True), instruct)


_BUILDERS = {"sdxl": build_sdxl, "wan": build_wan, "wan_vace": build_wan_vace, "qwen": build_qwen}


def _folder_files(root: Path, family: str) -> dict[str, int]:
    files = {}
    for d in FAMILY_DIRS[family]:
        for path in sorted((root / d).rglob("*")):
            if path.is_file():
                files[path.relative_to(root).as_posix()] = path.stat().st_size
    return files


def remove_family(root: str | os.PathLike, family: str) -> None:
    root = Path(root)
    manifest = read_manifest(root)
    manifest.get("families", {}).pop(family, None)
    _write_json(root / MANIFEST, manifest)
    for d in FAMILY_DIRS[family]:
        shutil.rmtree(root / d, ignore_errors=True)


def build(root: str | os.PathLike, families=FAMILIES, device: str | None = None, force: bool = False,
          headroom_bytes: int = 2 * GB) -> dict:
    """Write each family not already built (with these library versions) under `root`; returns the manifest.
    Checks the free disk before each family and raises InsufficientDisk instead of filling it."""
    from . import installed_versions

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    device = pick_build_device(device)
    needed = None
    for family in families:
        if family not in _BUILDERS:
            raise ValueError(f"unknown family {family!r}; known: {', '.join(FAMILIES)}")
        if not force and is_built(root, family):
            log.info("synthetic %s: already built", family)
            continue
        remove_family(root, family)
        needed = needed or family_bytes()
        free = shutil.disk_usage(root).free
        if free < needed[family] + headroom_bytes:
            raise InsufficientDisk(
                f"synthetic {family} needs {needed[family] / GB:.1f} GB (+{headroom_bytes / GB:.0f} GB headroom) and "
                f"{root} has {free / GB:.1f} GB free: build one family at a time (--family) and remove_family() "
                "what is no longer measured")
        started = time.monotonic()
        log.info("synthetic %s: writing about %.1f GB into %s (initialised on %s)", family, needed[family] / GB,
                 root, device)
        try:
            _BUILDERS[family](root, device)
        except BaseException:
            remove_family(root, family)
            raise
        files = _folder_files(root, family)
        manifest = read_manifest(root)
        manifest.setdefault("families", {})[family] = {
            "builder_version": BUILDER_VERSION, "versions": installed_versions(), "device": device,
            "built_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "seconds": round(time.monotonic() - started, 1), "bytes": sum(files.values()), "files": files}
        _write_json(root / MANIFEST, manifest)
        log.info("synthetic %s: %.1f GB in %.1f s", family, sum(files.values()) / GB, time.monotonic() - started)
    return read_manifest(root)


# ---- command line --------------------------------------------------------------------------------

def default_root() -> Path:
    env = os.environ.get("SYNTHETIC_MODELS_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[2] / ".cache" / "synthetic-models"


def counts_report() -> tuple[list[str], bool]:
    """Lines comparing each config's parameter count with the published one; ok when all within 1 %."""
    counts, published = parameter_counts(), published_counts()
    lines, ok = [], True
    for name, entry in published.items():
        got, want = counts[name], entry["params"]
        deviation = abs(got - want) / want
        ok &= deviation <= 0.01
        lines.append(f"{name:22s} {got:>15,d}  published {want:>15,d}  {deviation * 100:6.3f} %  "
                     f"{'ok' if deviation <= 0.01 else 'OFF BY MORE THAN 1 %'}")
    return lines, ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workers.placeholders.synthetic",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=None,
                        help="default: $SYNTHETIC_MODELS_DIR or <repo>/.cache/synthetic-models")
    parser.add_argument("--family", action="append", choices=FAMILIES, help="repeatable; default: all")
    parser.add_argument("--device", default=None, help="where to initialise (default: cuda when available)")
    parser.add_argument("--force", action="store_true")
    parser.add_argument("--counts", action="store_true",
                        help="print parameter counts against the published ones and exit")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    if args.counts:
        lines, ok = counts_report()
        print("\n".join(lines))
        return 0 if ok else 1
    manifest = build(args.root or default_root(), args.family or FAMILIES, args.device, args.force)
    built = {f: {"bytes": e["bytes"], "seconds": e["seconds"]} for f, e in manifest["families"].items()}
    print(json.dumps(built, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
