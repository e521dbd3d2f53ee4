"""The synthetic full-size profile: the architecture configs match the published parameter counts, the
SDXL single-file conversion covers the full-size modules, and one real-size component (the SDXL VAE,
83.7 M parameters) is written in the shipped format and loaded back with the production loader."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from workers.placeholders import synthetic


@pytest.fixture(scope="module")
def counts():
    return synthetic.parameter_counts()


def test_parameter_counts_match_the_published_ones(counts):
    lines, ok = synthetic.counts_report()
    print("\n".join(lines))
    assert ok, "\n".join(lines)
    published = synthetic.published_counts()
    assert set(published) <= set(counts)
    # the two figures the issue names by size
    assert 2.55e9 < counts["sdxl_unet"] < 2.58e9
    assert 7.6e9 < counts["qwen2.5_7b"] < 7.62e9
    assert 5.6e9 < counts["umt5_xxl_encoder"] < 5.7e9  # shared/encoder.embed_tokens counted once


def test_family_bytes_are_the_shipped_sizes(counts):
    sizes = synthetic.family_bytes(counts)
    assert abs(sizes["sdxl"] - (6.94e9 + 0.335e9)) < 0.05e9     # fp16 single file + fp32 fp16-fix VAE
    assert abs(sizes["wan"] - (5.676e9 + 22.724e9 + 0.508e9)) < 0.05e9  # fp32 transformer, umT5, VAE
    assert abs(sizes["qwen"] - 15.23e9) < 0.05e9               # bf16, one set for base and instruct


def test_sdxl_single_file_conversion_covers_the_full_size_modules():
    """Every full-size UNet/VAE/CLIP key gets an original-format name, and diffusers recognises the result
    as an SDXL base checkpoint (meta tensors: names and shapes only)."""
    from diffusers.loaders.single_file_utils import infer_diffusers_model_type

    from workers.placeholders.ldm_convert import sdxl_to_original

    modules = synthetic._modules()
    with torch.device("meta"):
        parts = [modules[name][0]() for name in ("sdxl_unet", "sdxl_vae", "sdxl_text_encoder", "sdxl_text_encoder_2")]
    state = sdxl_to_original(*parts)
    assert infer_diffusers_model_type(state) == "xl_base"
    total = sum(t.numel() for t in state.values())
    expected = sum(sum(p.numel() for p in m.parameters()) for m in parts)
    assert total == expected  # every parameter once (OpenCLIP's fused in_proj included)


def test_full_size_sdxl_vae_is_written_sharded_and_loads_with_the_production_loader(tmp_path, counts):
    from diffusers import AutoencoderKL

    factory, dtype = synthetic._modules()["sdxl_vae"]
    real = synthetic.arch_config("sdxl-base-1.0/vae/config.json")
    folder = tmp_path / "vae"
    synthetic.write_diffusers_component(factory, dtype, folder, real, "cpu", max_shard_size="60MB")
    index = json.loads((folder / "diffusion_pytorch_model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) >= 2
    assert json.loads((folder / "config.json").read_text()) == real  # the repository's own config text
    on_disk = sum(p.stat().st_size for p in folder.glob("*.safetensors"))
    assert abs(on_disk - 2 * counts["sdxl_vae"]) < 1e6  # fp16, as shipped

    vae = AutoencoderKL.from_pretrained(folder, dtype=torch.float16, local_files_only=True)
    assert {p.dtype for p in vae.parameters()} == {torch.float16}
    assert sum(p.numel() for p in vae.parameters()) == counts["sdxl_vae"]
    vae = vae.to(torch.float32)
    with torch.no_grad():
        image = vae.decode(torch.randn(1, 4, 8, 8)).sample
    assert image.shape == (1, 3, 64, 64)
    assert torch.isfinite(image).all()


def test_qwen_tokenizer_is_padded_to_the_real_vocabulary():
    tokenizer = synthetic.qwen_padded_tokenizer(instruct=True)
    assert len(tokenizer) == 151665
    assert tokenizer.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>"]) == [151643, 151644, 151645]
    assert tokenizer.eos_token_id == 151645
    assert tokenizer.pad_token_id == 151643
    assert tokenizer.decode([120000]).strip()  # any id the model can produce decodes to text
    assert "<|im_start|>assistant" in tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                                                     add_generation_prompt=True)
    assert synthetic.qwen_padded_tokenizer(instruct=False).chat_template is None


def test_a_family_that_does_not_fit_on_disk_is_refused_before_anything_is_written(tmp_path):
    with pytest.raises(synthetic.InsufficientDisk, match="build one family at a time"):
        synthetic.build(tmp_path, ["wan"], device="cpu", headroom_bytes=10**16)
    assert not (tmp_path / "wan2.1-t2v").exists()


def test_the_synthetic_profile_points_the_workers_at_the_built_tree_with_production_sizes(tmp_path):
    from configuration import model_config, preset_defaults
    from configuration.settings import Settings

    settings = Settings.from_env({"MODEL_PROFILE": "synthetic", "SYNTHETIC_MODELS_DIR": str(tmp_path)})
    production = Settings(model_profile="production")
    sdxl = model_config("sdxl", settings)
    assert sdxl["path"] == str(tmp_path / "sdxl" / synthetic.SDXL_FILE)
    assert sdxl["config_path"] == str(tmp_path / "sdxl")
    assert sdxl["vae_fp16_fix_path"] == str(tmp_path / "sdxl-vae-fp16-fix")
    for name in ("sdxl", "wan_t2v", "wan_vace", "qwen_base", "qwen_instruct"):
        cfg = model_config(name, settings)
        assert cfg["memory_bytes"] == model_config(name, production)["memory_bytes"]
        assert cfg["limits"] == model_config(name, production)["limits"]
        assert cfg["path"] == str(synthetic.synthetic_paths(tmp_path)[name]["path"])
        folders = {d for ds in synthetic.FAMILY_DIRS.values() for d in ds}
        assert Path(cfg["path"]).relative_to(tmp_path).parts[0] in folders
    assert preset_defaults("video_fast", settings) == preset_defaults("video_fast", production)
