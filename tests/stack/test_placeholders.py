"""Placeholder models: built offline, cached, rebuilt on version change, and loadable with the exact
production loading calls (from_pretrained / from_single_file) and runnable end to end on CPU."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from workers.placeholders import (
    BUILDER_VERSION,
    ensure_placeholder_models,
    installed_versions,
    is_current,
    placeholder_paths,
    read_manifest,
)

REPO = Path(__file__).resolve().parents[2]
SEEDED = dict(num_inference_steps=2, output_type="np")


@pytest.fixture(scope="session")
def models_root(tmp_path_factory) -> Path:
    root = os.environ.get("PLACEHOLDER_MODELS_DIR") or tmp_path_factory.mktemp("placeholder-models")
    return ensure_placeholder_models(root)


@pytest.fixture(scope="session")
def paths(models_root) -> dict[str, Path]:
    return placeholder_paths(models_root)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _python(code: str, timeout: float = 120) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=dict(os.environ, PYTHONPATH=str(REPO)))


# ---------------------------------------------------------------------------------------- build / cache
def test_layout_and_keys(tmp_path):
    p = placeholder_paths(tmp_path)
    assert {"sdxl", "sdxl_single_file", "wan_t2v", "wan_vace", "qwen_base", "qwen_instruct"} <= set(p)
    assert p["sdxl"] == tmp_path / "sdxl"
    assert p["wan_t2v"] == tmp_path / "wan2.1-t2v"
    assert p["wan_vace"] == tmp_path / "wan2.1-vace"
    assert p["qwen_base"] == tmp_path / "qwen2.5-base"
    assert p["qwen_instruct"] == tmp_path / "qwen2.5-instruct"
    assert p["sdxl_single_file"].suffix == ".safetensors"
    # The SDXL engine looks for a config folder named `config` next to a single-file checkpoint.
    assert p["sdxl_single_file_config"] == p["sdxl_single_file"].parent / "config"
    assert not is_current(tmp_path)


@pytest.fixture(scope="module")
def concurrent_root(tmp_path_factory):
    """A fresh root built by two processes calling ensure_placeholder_models at the same time."""
    root = tmp_path_factory.mktemp("concurrent")
    code = ("import json, sys; from workers.placeholders import ensure_placeholder_models, read_manifest;"
            f"r = ensure_placeholder_models({str(root)!r}); print(json.dumps(read_manifest(r)['build_id']))")
    procs = [_python(code) for _ in range(2)]
    outs = [p.communicate(timeout=180) for p in procs]
    for p, (_out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-3000:]
    return root, [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]


def test_concurrent_callers_build_once(concurrent_root):
    root, build_ids = concurrent_root
    assert build_ids[0] == build_ids[1]  # the second caller waited for the lock and found a current build
    assert is_current(root)
    assert not list(root.glob(".build-*"))
    assert not list(root.glob(".old-*"))
    manifest = read_manifest(root)
    assert manifest["builder_version"] == BUILDER_VERSION
    assert manifest["versions"] == installed_versions()
    assert set(manifest["versions"]) == {"torch", "diffusers", "transformers", "tokenizers", "sentencepiece"}
    for rel, info in manifest["files"].items():
        assert (root / rel).stat().st_size == info["bytes"]
    assert manifest["disk_bytes"] < 25e6


def test_cached_call_is_fast_and_does_not_rebuild(concurrent_root):
    root, _ = concurrent_root
    manifest_path = root / "manifest.json"
    before = manifest_path.stat().st_mtime_ns
    started = time.perf_counter()
    assert ensure_placeholder_models(root) == root.resolve()
    assert time.perf_counter() - started < 0.5
    assert manifest_path.stat().st_mtime_ns == before
    # A fresh process checks the cache without importing torch / diffusers / transformers.
    code = ("import sys, time; t = time.perf_counter(); from workers.placeholders import ensure_placeholder_models;"
            f"ensure_placeholder_models({str(root)!r}); dt = time.perf_counter() - t;"
            "heavy = [m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules]; print(dt, heavy)")
    proc = _python(code)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    seconds, heavy = out.split(" ", 1)
    assert heavy.strip() == "[]"
    assert float(seconds) < 0.5
    assert manifest_path.stat().st_mtime_ns == before


def test_cli_prints_paths(concurrent_root):
    root, _ = concurrent_root
    proc = subprocess.run([sys.executable, "-m", "workers.placeholders", "--root", str(root)], cwd=REPO,
                          capture_output=True, text=True, timeout=60, env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["paths"] == {k: str(v) for k, v in placeholder_paths(root.resolve()).items()}
    assert out["build_id"] == read_manifest(root)["build_id"]


def test_rebuild_on_version_mismatch_is_deterministic(concurrent_root):
    root, _ = concurrent_root
    manifest_path = root / "manifest.json"
    old = read_manifest(root)

    stale = dict(old, builder_version=BUILDER_VERSION - 1)
    manifest_path.write_text(json.dumps(stale))
    assert not is_current(root)
    manifest_path.write_text(json.dumps(old))
    assert is_current(root)
    shutil.rmtree(root / "qwen2.5-base")  # an incomplete tree is not current either
    assert not is_current(root)
    stale = dict(old, versions=dict(old["versions"], diffusers="0.0.1"))
    manifest_path.write_text(json.dumps(stale))

    assert ensure_placeholder_models(root) == root.resolve()
    new = read_manifest(root)
    assert new["build_id"] != old["build_id"]
    assert new["versions"] == installed_versions()
    assert is_current(root)
    assert (root / "qwen2.5-base" / "model.safetensors").exists()
    # Fixed seeds: the rebuild writes byte-identical files.
    assert {k: v["sha256"] for k, v in new["files"].items()} == {k: v["sha256"] for k, v in old["files"].items()}
    assert not list(root.glob(".build-*"))
    assert not list(root.glob(".old-*"))


# ------------------------------------------------------------------------------------------------ SDXL
@pytest.fixture(scope="module")
def sdxl_pipe(paths):
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline.from_pretrained(paths["sdxl"], local_files_only=True, dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_sdxl_folder_layout_and_classes(paths, sdxl_pipe):
    index = json.loads((paths["sdxl"] / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionXLPipeline"
    assert index["unet"] == ["diffusers", "UNet2DConditionModel"]
    assert index["vae"] == ["diffusers", "AutoencoderKL"]
    assert index["text_encoder"] == ["transformers", "CLIPTextModel"]
    assert index["text_encoder_2"] == ["transformers", "CLIPTextModelWithProjection"]
    assert index["scheduler"] == ["diffusers", "EulerDiscreteScheduler"]
    for name in ("unet", "vae"):
        assert (paths["sdxl"] / name / "diffusion_pytorch_model.safetensors").exists()
    for name in ("text_encoder", "text_encoder_2"):
        assert (paths["sdxl"] / name / "model.safetensors").exists()
    assert sdxl_pipe.vae_scale_factor == 8
    assert sdxl_pipe.unet.config.sample_size * sdxl_pipe.vae_scale_factor == 64
    assert sdxl_pipe.default_sample_size == 8
    assert sdxl_pipe.unet.config.cross_attention_dim == (sdxl_pipe.text_encoder.config.hidden_size
                                                         + sdxl_pipe.text_encoder_2.config.hidden_size)


def test_sdxl_tokenizers(paths, sdxl_pipe, tmp_path):
    from transformers import CLIPTokenizer

    tok, tok2 = sdxl_pipe.tokenizer, sdxl_pipe.tokenizer_2
    assert tok.model_max_length == tok2.model_max_length == 77
    assert tok.pad_token == "<|endoftext|>"
    assert tok2.pad_token == "!"
    assert tok2.pad_token_id == 0
    assert tok.eos_token_id == len(tok) - 1
    assert tok.bos_token_id == len(tok) - 2
    ids = tok("a photograph of a red fox").input_ids
    assert ids[0] == tok.bos_token_id
    assert ids[-1] == tok.eos_token_id
    assert len(ids) < 10  # real merges, not one token per byte
    assert len(tok) == sdxl_pipe.text_encoder.config.vocab_size == sdxl_pipe.text_encoder_2.config.vocab_size
    # The real SDXL repos ship vocab.json + merges.txt only: loading from those gives the same ids.
    legacy = tmp_path / "tokenizer_2"
    shutil.copytree(paths["sdxl"] / "tokenizer_2", legacy)
    (legacy / "tokenizer.json").unlink()
    reloaded = CLIPTokenizer.from_pretrained(legacy)
    text = "Watercolor painting of a quiet village, spring flowers!"
    assert reloaded(text, padding="max_length", max_length=77).input_ids == tok2(
        text, padding="max_length", max_length=77).input_ids


def test_sdxl_txt2img_img2img_and_compel(sdxl_pipe):
    from compel import Compel, CompelForSDXL, ReturnedEmbeddingsType
    from diffusers import StableDiffusionXLImg2ImgPipeline

    image = sdxl_pipe("a red fox in the snow", generator=gen(), **SEEDED).images
    assert image.shape == (1, 64, 64, 3)
    assert np.isfinite(image).all()
    other = sdxl_pipe("a blue whale in the ocean", generator=gen(), **SEEDED).images
    assert np.abs(image - other).mean() > 1e-3  # the prompt matters

    img2img = StableDiffusionXLImg2ImgPipeline(**sdxl_pipe.components)
    img2img.set_progress_bar_config(disable=True)
    init = Image.fromarray((np.random.RandomState(0).rand(64, 64, 3) * 255).astype(np.uint8))
    out = img2img("a red fox", image=init, strength=0.5, num_inference_steps=4, generator=gen(),
                  output_type="np").images
    grey = img2img("a red fox", image=Image.new("RGB", (64, 64), (128, 128, 128)), strength=0.5,
                   num_inference_steps=4, generator=gen(), output_type="np").images
    assert out.shape == (1, 64, 64, 3)
    assert np.abs(out - grey).mean() > 1e-3
    from_pipe = StableDiffusionXLImg2ImgPipeline.from_pipe(sdxl_pipe)  # the engine's way: same weights
    from_pipe.set_progress_bar_config(disable=True)
    again = from_pipe("a red fox", image=init, strength=0.5, num_inference_steps=4, generator=gen(),
                      output_type="np").images
    np.testing.assert_array_equal(again, out)

    # The two-encoder form (the SDXL engine's): both tokenizers/encoders, pooled output from the second.
    compel = Compel(tokenizer=[sdxl_pipe.tokenizer, sdxl_pipe.tokenizer_2],
                    text_encoder=[sdxl_pipe.text_encoder, sdxl_pipe.text_encoder_2],
                    returned_embeddings_type=ReturnedEmbeddingsType.PENULTIMATE_HIDDEN_STATES_NON_NORMALIZED,
                    requires_pooled=[False, True], truncate_long_prompts=False)
    embeds, pooled = compel("a (red)1.5 fox++ in the snow")
    negative, negative_pooled = compel("blurry")
    embeds, negative = compel.pad_conditioning_tensors_to_same_length([embeds, negative])
    assert embeds.shape == negative.shape == (1, 77, 96)
    assert pooled.shape == (1, 32)
    weighted = sdxl_pipe(prompt_embeds=embeds, pooled_prompt_embeds=pooled, negative_prompt_embeds=negative,
                         negative_pooled_prompt_embeds=negative_pooled, generator=gen(), **SEEDED).images
    assert weighted.shape == (1, 64, 64, 3)
    assert np.isfinite(weighted).all()

    # Prompts over 77 tokens: compel 2.5.1's two-encoder form cannot pad tensors of different lengths
    # (EmbeddingsProviderMulti has no empty_z); its CompelForSDXL wrapper can.
    labelled = CompelForSDXL(sdxl_pipe)("a (red)1.5 fox++ in the snow, " + "highly detailed, " * 30,
                                        negative_prompt="blurry")
    assert labelled.embeds.shape == labelled.negative_embeds.shape
    assert labelled.embeds.shape[1] > 77
    long = sdxl_pipe(prompt_embeds=labelled.embeds, pooled_prompt_embeds=labelled.pooled_embeds,
                     negative_prompt_embeds=labelled.negative_embeds,
                     negative_pooled_prompt_embeds=labelled.negative_pooled_embeds, generator=gen(), **SEEDED).images
    assert long.shape == (1, 64, 64, 3)
    assert np.isfinite(long).all()


# ------------------------------------------------------------------------------------ SDXL single file
def test_single_file_is_original_sdxl_format(paths):
    from diffusers.loaders.single_file_utils import infer_diffusers_model_type
    from safetensors import safe_open

    with safe_open(str(paths["sdxl_single_file"]), "pt") as f:
        keys = set(f.keys())
        checkpoint = {k: f.get_tensor(k) for k in keys}
    assert infer_diffusers_model_type(checkpoint) == "xl_base"
    prefixes = {k.split(".")[0] if not k.startswith("conditioner") else ".".join(k.split(".")[:3]) for k in keys}
    assert prefixes == {"model", "first_stage_model", "conditioner.embedders.0", "conditioner.embedders.1"}
    assert all(k.startswith("model.diffusion_model.") for k in keys if k.startswith("model."))
    assert "conditioner.embedders.1.model.text_projection" in keys
    assert "conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight" in keys
    assert "conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight" in keys
    assert "first_stage_model.encoder.mid.attn_1.q.weight" in keys
    assert {t.dtype for t in checkpoint.values()} == {torch.float16}  # as community checkpoints ship
    # The config folder next to it has no weights, so everything must come from the checkpoint.
    assert not list(paths["sdxl_single_file_config"].rglob("*.safetensors"))


def test_single_file_loads_offline_and_matches_folder(paths, sdxl_pipe):
    from diffusers import StableDiffusionXLPipeline

    for config in (paths["sdxl_single_file_config"], paths["sdxl"]):
        single = StableDiffusionXLPipeline.from_single_file(str(paths["sdxl_single_file"]), config=str(config),
                                                            local_files_only=True, dtype=torch.float32)
        single.set_progress_bar_config(disable=True)
        for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
            a, b = getattr(sdxl_pipe, name).state_dict(), getattr(single, name).state_dict()
            assert a.keys() == b.keys(), name
            assert all(torch.equal(a[k], b[k]) for k in a), name
    expected = sdxl_pipe("a red fox", generator=gen(7), **SEEDED).images
    got = single("a red fox", generator=gen(7), **SEEDED).images
    np.testing.assert_array_equal(got, expected)


def test_ldm_conversion_round_trips_through_diffusers_loader():
    """Our diffusers->original conversion is the inverse of diffusers' own loader conversion, also for shapes
    other than the placeholder's (SDXL's layers_per_block 2 and three UNet levels)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint

    from workers.placeholders import ldm_convert, sdxl

    unet = UNet2DConditionModel(**dict(
        sdxl.UNET, layers_per_block=2, block_out_channels=(32, 32, 64), attention_head_dim=(2, 2, 4),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"), transformer_layers_per_block=(1, 1,
                                                                                                                2)))
    vae = AutoencoderKL(**dict(sdxl.VAE, block_out_channels=(8, 16, 16, 32), layers_per_block=1))
    for model, to_ldm, back in ((unet, ldm_convert.unet_to_ldm, convert_ldm_unet_checkpoint),
                                (vae, ldm_convert.vae_to_ldm, convert_ldm_vae_checkpoint)):
        state = model.state_dict()
        restored = back(to_ldm(state, model.config), model.config)
        assert restored.keys() == state.keys()
        assert all(torch.equal(restored[k], state[k]) for k in state)


# ------------------------------------------------------------------------------------------------- Wan
@pytest.fixture(scope="module")
def wan_pipes(paths):
    from diffusers import WanPipeline, WanVACEPipeline

    t2v = WanPipeline.from_pretrained(paths["wan_t2v"], local_files_only=True, dtype=torch.float32)
    vace = WanVACEPipeline.from_pretrained(paths["wan_vace"], local_files_only=True, dtype=torch.float32)
    for pipe in (t2v, vace):
        pipe.set_progress_bar_config(disable=True)
    return t2v, vace


WAN_SMALL = dict(height=32, width=32, num_frames=5, num_inference_steps=2, output_type="np")


def test_wan_folders_layout(paths, wan_pipes, models_root):
    t2v, vace = wan_pipes
    for key, transformer in (("wan_t2v", "WanTransformer3DModel"), ("wan_vace", "WanVACETransformer3DModel")):
        index = json.loads((paths[key] / "model_index.json").read_text())
        assert index["transformer"] == ["diffusers", transformer]
        assert index["vae"] == ["diffusers", "AutoencoderKLWan"]
        assert index["text_encoder"] == ["transformers", "UMT5EncoderModel"]
        assert index["scheduler"] == ["diffusers", "UniPCMultistepScheduler"]
        assert (paths[key] / "tokenizer" / "spiece.model").exists()
        assert (paths[key] / "tokenizer" / "tokenizer.json").exists()
    sched = t2v.scheduler.config
    assert sched.prediction_type == "flow_prediction"
    assert sched.use_flow_sigmas
    assert sched.flow_shift == 3.0
    assert t2v.vae.config.z_dim == 16
    assert t2v.vae_scale_factor_spatial == 8
    assert t2v.vae_scale_factor_temporal == 4
    # The VAE and text encoder (and tokenizer) are the same weights in both folders: shareable components.
    files = read_manifest(models_root)["files"]
    for rel in ("vae/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors",
                "tokenizer/spiece.model", "tokenizer/tokenizer.json"):
        assert files[f"wan2.1-t2v/{rel}"]["sha256"] == files[f"wan2.1-vace/{rel}"]["sha256"]
    tok = t2v.tokenizer
    ids = tok("A red fox, highly detailed").input_ids
    assert ids[-1] == tok.eos_token_id == 1
    assert tok.pad_token_id == 0
    assert tok.unk_token_id == 2
    assert tok.unk_token_id not in ids
    assert len(tok) <= t2v.text_encoder.config.vocab_size


def test_wan_t2v_runs(wan_pipes):
    t2v, _ = wan_pipes
    frames = t2v("a red fox running through snow", generator=gen(), **WAN_SMALL).frames
    assert frames.shape == (1, 5, 32, 32, 3)
    assert np.isfinite(frames).all()
    image = t2v("a red fox", generator=gen(), **dict(WAN_SMALL, num_frames=1)).frames
    assert image.shape == (1, 1, 32, 32, 3)


def test_wan_vace_reference_frames_change_output(wan_pipes):
    _, vace = wan_pipes
    rng = np.random.RandomState(0)
    ref = Image.fromarray((rng.rand(32, 32, 3) * 255).astype(np.uint8))
    ref2 = Image.fromarray((rng.rand(32, 32, 3) * 255).astype(np.uint8))
    grey = Image.new("RGB", (32, 32), (128, 128, 128))
    keep, generate = Image.new("L", (32, 32), 0), Image.new("L", (32, 32), 255)

    base = vace("a red fox", generator=gen(), **WAN_SMALL).frames
    first = vace("a red fox", video=[ref] + [grey] * 4, mask=[keep] + [generate] * 4, generator=gen(),
                 **WAN_SMALL).frames
    assert base.shape == first.shape == (1, 5, 32, 32, 3)
    assert np.abs(first - base).max() > 0.02  # visible after 8-bit quantisation
    last = vace("a red fox", video=[grey] * 4 + [ref2], mask=[generate] * 4 + [keep], generator=gen(),
                **WAN_SMALL).frames
    both = vace("a red fox", video=[ref] + [grey] * 3 + [ref2], mask=[keep] + [generate] * 3 + [keep],
                generator=gen(), **WAN_SMALL).frames
    assert np.abs(last - base).max() > 0.02
    assert np.abs(both - first).max() > 0.02
    with_reference = vace("a red fox", reference_images=[ref], generator=gen(), **WAN_SMALL).frames
    assert with_reference.shape[-1] == 3
    assert np.isfinite(with_reference).all()


# ------------------------------------------------------------------------------------------------ Qwen
@pytest.fixture(scope="module")
def qwen(paths):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return {name: (AutoModelForCausalLM.from_pretrained(paths[name], dtype=torch.float32),
                   AutoTokenizer.from_pretrained(paths[name])) for name in ("qwen_base", "qwen_instruct")}


def test_qwen_files_and_tokenizers(paths, qwen):
    for name in ("qwen_base", "qwen_instruct"):
        for f in ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
                  "tokenizer_config.json", "vocab.json", "merges.txt"):
            assert (paths[name] / f).exists(), (name, f)
        model, tok = qwen[name]
        assert type(model).__name__ == "Qwen2ForCausalLM"
        assert type(tok).__name__ == "Qwen2Tokenizer"
        assert model.config.vocab_size == len(tok)
        assert tok.pad_token == "<|endoftext|>"
        assert tok.bos_token is None
        ids = tok.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
        assert ids == list(range(len(tok) - 3, len(tok)))  # 256 bytes, merges, then the three specials
        assert len(tok("a photograph of a red fox").input_ids) < 10  # trained merges, not bytes
        assert tok.decode(tok("Héllo wörld ✓").input_ids) == "Héllo wörld ✓"  # byte-level: no unknowns
    base_tok, inst_tok = qwen["qwen_base"][1], qwen["qwen_instruct"][1]
    assert base_tok.eos_token == "<|endoftext|>"
    assert inst_tok.eos_token == "<|im_end|>"
    assert qwen["qwen_instruct"][0].generation_config.eos_token_id[0] == inst_tok.eos_token_id
    assert qwen["qwen_base"][0].generation_config.eos_token_id == base_tok.eos_token_id


def test_qwen_instruct_chat_template_and_base_has_none(qwen):
    model, tok = qwen["qwen_instruct"]
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Describe a fox."}]
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nDescribe a fox.<|im_end|>\n"
                    "<|im_start|>assistant\n")
    default = tok.apply_chat_template(messages[1:], tokenize=False, add_generation_prompt=True)
    assert default.startswith("<|im_start|>system\nYou are Qwen")
    encoded = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    ids = encoded["input_ids"][0].tolist()
    assert ids.count(tok.convert_tokens_to_ids("<|im_start|>")) == 3
    assert ids.count(tok.eos_token_id) == 2
    assert tok.decode(ids) == text
    out = model.generate(**encoded, max_new_tokens=4, do_sample=False)
    assert out.shape[1] <= encoded["input_ids"].shape[1] + 4

    base_tok = qwen["qwen_base"][1]
    assert base_tok.chat_template is None
    with pytest.raises(ValueError, match="tokenizer.chat_template is not set"):  # transformers' own refusal
        base_tok.apply_chat_template(messages, tokenize=False)


def test_qwen_batched_left_padded_generation(qwen):
    for name in ("qwen_base", "qwen_instruct"):
        model, tok = qwen[name]
        tok.padding_side = "left"
        prompts = ["Hello", "Write a better prompt for an image generator: a house on a hill"]
        batch = tok(prompts, return_tensors="pt", padding=True)
        assert batch["attention_mask"][0, 0].item() == 0  # left padding
        out = model.generate(**batch, max_new_tokens=6, do_sample=False, pad_token_id=tok.pad_token_id)
        alone = model.generate(**tok(prompts[:1], return_tensors="pt"), max_new_tokens=6, do_sample=False,
                               pad_token_id=tok.pad_token_id)
        new = out[0, batch["input_ids"].shape[1]:]
        assert torch.equal(new, alone[0, -new.shape[0]:])
    base, inst = qwen["qwen_base"][0], qwen["qwen_instruct"][0]
    assert not torch.equal(base.lm_head.weight, inst.lm_head.weight)  # two different models


# ------------------------------------------------------------------------------------------------ dtype
def test_explicit_dtype_reaches_every_component(paths):
    """transformers 5 loads with the dtype stored in config.json unless told otherwise: passing `dtype`
    explicitly must give every model component that dtype (folder and single-file loads)."""
    from diffusers import StableDiffusionXLPipeline, WanPipeline, WanVACEPipeline
    from transformers import AutoModelForCausalLM

    dtype = torch.bfloat16
    pipes = [StableDiffusionXLPipeline.from_pretrained(paths["sdxl"], local_files_only=True, dtype=dtype),
             StableDiffusionXLPipeline.from_single_file(str(paths["sdxl_single_file"]),
                                                        config=str(paths["sdxl_single_file_config"]),
                                                        local_files_only=True, dtype=dtype),
             WanPipeline.from_pretrained(paths["wan_t2v"], local_files_only=True, dtype=dtype),
             WanVACEPipeline.from_pretrained(paths["wan_vace"], local_files_only=True, dtype=dtype)]
    for pipe in pipes:
        modules = {k: v for k, v in pipe.components.items() if isinstance(v, torch.nn.Module)}
        assert len(modules) >= 3
        assert {k: v.dtype for k, v in modules.items()} == {k: dtype for k in modules}, type(pipe).__name__
    for name in ("qwen_base", "qwen_instruct"):
        model = AutoModelForCausalLM.from_pretrained(paths[name], dtype=dtype)
        assert {p.dtype for p in model.parameters()} == {dtype}
