"""Issue 14's CUDA-path defects, each shown on CPU where it can be: fp16 weights stay fp16 after the SDXL
load, production refuses to start without CUDA, a CUDA out-of-memory error is retried once with the
memory-saving modes and then reported as insufficient_memory, the allocator setting reaches the worker
processes, and the CUDA backend flags are decided per worker."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from configuration.settings import Settings
from tests.support import API_KEY, REPO
from workers import devices

AUTH = {"Authorization": f"Bearer {API_KEY}", "X-Callback-Mode": "none"}


# ---- SDXL: one set of fp16 weights for txt2img and img2img -------------------------------------------

def test_sdxl_fp16_load_keeps_every_shared_module_in_fp16(placeholder_dir):
    """diffusers' from_pipe without a dtype casts the shared components to fp32 in place: on a GPU the whole
    fp16 pipeline (UNet, both text encoders, VAE) became fp32 at load. Loaded in fp16 here on CPU."""
    from workers.engines.sdxl import SDXLEngine

    class HalfPrecisionSDXL(SDXLEngine):
        def dtype(self, model):  # what pick_dtype gives on CUDA
            return torch.float16

    engine = HalfPrecisionSDXL(Settings(placeholder_models_dir=placeholder_dir), device="cpu")
    engine.load("sdxl")
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        for pipe in (engine.txt2img, engine.img2img):
            assert {p.dtype for p in pipe.components[name].parameters()} == {torch.float16}, (type(pipe).__name__, name)
        assert engine.img2img.components[name] is engine.txt2img.components[name]
    fp16_bytes = engine.resident_bytes("sdxl")
    assert fp16_bytes == devices.module_bytes(*engine.modules("sdxl"))
    assert fp16_bytes < 0.55 * sum(p.numel() * 4 for m in engine.modules("sdxl") if hasattr(m, "parameters")
                                   for p in m.parameters())


def test_sdxl_uses_the_fp16_fix_vae_instead_of_upcasting_when_one_is_configured():
    from workers.engines.sdxl import gpu_plan

    gpu = {"vae_upcast": True}
    assert gpu_plan(gpu, "cuda", 1, 1, False)["vae_upcast"] is True
    plan = gpu_plan(gpu, "cuda", 1, 1, False, fp16_fix_path="/models/sdxl-vae-fp16-fix")
    assert plan["vae_fp16_fix"]
    assert not plan["vae_upcast"]
    # the out-of-memory retry's modes apply on any device
    saving = gpu_plan(gpu, "cpu", 1, 1, False, memory_saving=True)
    assert saving["vae_slicing"]
    assert saving["vae_tiling"]
    assert not saving["vae_upcast"]


# ---- production needs CUDA -----------------------------------------------------------------------------

def test_production_without_cuda_refuses_to_start_with_a_clear_message(monkeypatch, tmp_path):
    from workers.http.app import serve_app

    with pytest.raises(devices.NoAcceleratorError, match="MODEL_PROFILE=production needs a usable CUDA device"):
        devices.require_accelerator("production", cuda_available=False)
    devices.require_accelerator("production", cuda_available=True)
    devices.require_accelerator("placeholder", cuda_available=False)
    devices.require_accelerator("synthetic", cuda_available=False)

    assert not torch.cuda.is_available()  # this machine: the serving entry itself refuses
    monkeypatch.setenv("MODEL_PROFILE", "production")
    monkeypatch.setenv("SDXL_MODEL_PATH", str(tmp_path / "sdxl.safetensors"))
    monkeypatch.setenv("OUTPUT_DIR", str(tmp_path / "out"))
    with pytest.raises(devices.NoAcceleratorError, match="CPU-only build"):
        serve_app("sdxl")


def test_the_gunicorn_command_serves_the_refusing_entry_and_sets_the_allocator():
    from common.serve import gunicorn_command

    assert gunicorn_command("sdxl", Settings())[-1] == "workers.http.app:serve_app('sdxl')"
    env = {k: v for k, v in os.environ.items() if k != "PYTORCH_CUDA_ALLOC_CONF"}
    probe = "import os, workers.gunicorn_conf; print(os.environ['PYTORCH_CUDA_ALLOC_CONF'])"
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, env=dict(env, PYTHONPATH=str(REPO)),
                         capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "expandable_segments:True", out.stderr
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=60,
                         env=dict(env, PYTHONPATH=str(REPO), PYTORCH_CUDA_ALLOC_CONF="max_split_size_mb:512"))
    assert out.stdout.strip() == "max_split_size_mb:512"


def test_cuda_backend_flags_per_worker():
    assert devices.cuda_backend_settings("cpu", "wan") == {}
    assert devices.cuda_backend_settings("cuda", "sdxl") == {"tf32": True, "cudnn_benchmark": False}
    assert devices.cuda_backend_settings("cuda", "wan") == {"tf32": True, "cudnn_benchmark": True}
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark)
    try:
        devices.apply_cuda_backend_settings({"tf32": True, "cudnn_benchmark": True})
        assert torch.backends.cuda.matmul.allow_tf32
        assert torch.backends.cudnn.allow_tf32
        assert torch.backends.cudnn.benchmark
    finally:
        (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark) = saved


# ---- out of memory ---------------------------------------------------------------------------------------

@pytest.fixture
def sdxl_app(tmp_path, placeholder_dir):
    from workers.http.app import create_app

    settings = Settings(placeholder_models_dir=placeholder_dir, output_dir=tmp_path / "out", api_key=API_KEY)
    app = create_app("sdxl", settings)
    state = app.extensions["worker_state"]
    calls = []
    real_run = state.engine.run

    def run(params, ctx):
        calls.append(bool(getattr(ctx, "memory_saving", False)))
        if len(calls) <= state.ooms:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 79.1 GiB total)")
        return real_run(params, ctx)

    state.engine.run = run  # our engine's own method: a device that runs out of memory on its first tries
    state.ooms = 0
    return app.test_client(), state, calls


def _job(client, job_id):
    body = {"id": job_id, "type": "sdxl_image_fast", "prompt": "a red fox", "user_id": "u",
            "config": {"seed": 3, "steps": 2, "num_images": 1}}
    r = client.post("/generate?wait=60", json=body, headers=AUTH)
    return r.status_code, r.get_json()


def test_out_of_memory_is_retried_once_with_vae_slicing_and_tiling(sdxl_app):
    client, state, calls = sdxl_app
    state.ooms = 1
    status, record = _job(client, "oom-once")
    assert status == 200, record
    assert record["status"] == "completed", record
    assert calls == [False, True]
    metadata = record["assets"][0]["metadata"]
    assert metadata["memory_saving_retry"] is True
    assert {"vae_slicing", "vae_tiling"} <= set(metadata["gpu_settings"])


def test_out_of_memory_twice_fails_as_insufficient_memory_not_internal_error(sdxl_app):
    client, state, calls = sdxl_app
    state.ooms = 2
    status, record = _job(client, "oom-twice")
    assert record["status"] == "failed"
    assert calls == [False, True]
    assert record["error"]["code"] == "insufficient_memory"
    assert "ran out of memory" in record["error"]["message"]
    # the worker keeps serving
    state.ooms = 0
    calls.clear()
    assert _job(client, "after-oom")[1]["status"] == "completed"


def test_out_of_memory_maps_to_409_at_http():
    from common.errors import MemoryUnavailable, http_error

    assert devices.is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory"))
    assert devices.is_out_of_memory(RuntimeError("CUDA out of memory. Tried to allocate 20.00 MiB"))
    assert not devices.is_out_of_memory(RuntimeError("shape mismatch"))
    error = http_error(MemoryUnavailable("the device ran out of memory during the job", {"device": "cuda"}))
    assert (error.status, error.code) == (409, "insufficient_memory")


# ---- WAN: umT5 encodes, shared modules' leases ---------------------------------------------------------

@pytest.fixture(scope="module")
def wan_state(tmp_path_factory, placeholder_dir):
    from workers.http.app import create_app

    settings = Settings(placeholder_models_dir=placeholder_dir, output_dir=tmp_path_factory.mktemp("wan") / "out",
                        api_key=API_KEY)
    return create_app("wan", settings).extensions["worker_state"]


def test_negative_prompt_embeddings_are_encoded_once_and_equal_a_fresh_encode(wan_state):
    wan_state.host.load("wan_t2v")
    prompts = wan_state.engine.loaded("wan_t2v").prompts
    forwards = []
    hook = prompts.text_encoder.register_forward_hook(lambda *a: forwards.append(1))
    try:
        first = prompts.encode_negative("blurry, low quality, watermark", "cpu")
        again = prompts.encode_negative("blurry, low quality, watermark", "cpu")
        assert again is first
        assert len(forwards) == 1
        assert torch.equal(first, prompts.encode("blurry, low quality, watermark", "cpu"))
        assert len(forwards) == 2
        for i in range(12):  # bounded: old entries go
            prompts.encode_negative(f"negative {i}", "cpu")
        assert len(prompts._negatives) == 8
    finally:
        hook.remove()


def test_shared_wan_modules_stay_inside_a_lease_when_the_model_that_loaded_them_unloads(wan_state):
    engine, host, memory = wan_state.engine, wan_state.host, wan_state.memory
    host.load("all")
    t2v, vace = engine.loaded("wan_t2v"), engine.loaded("wan_vace")
    assert vace.prompts is t2v.prompts
    assert vace.pipe.vae is t2v.pipe.vae
    held = memory.status()["held_bytes"]
    assert held["wan_vace"] == devices.module_bytes(vace.pipe.transformer)
    host.unload("wan_t2v")
    held = memory.status()["held_bytes"]
    assert "wan_t2v" not in held
    assert held["wan_vace"] == devices.module_bytes(vace.pipe.transformer, vace.pipe.vae, vace.prompts.text_encoder)


def test_a_second_wan_models_first_lease_does_not_count_the_shared_modules_again(placeholder_dir, tmp_path):
    """Issue 20: before its first load, wan_vace leased its whole configured footprint although umT5 and the
    VAE it will share are already inside wan_t2v's lease."""
    from workers.engines.wan import WanEngine
    from workers.runtime.local_memory import LocalMemory
    from workers.runtime.models import ModelHost

    settings = Settings(placeholder_models_dir=placeholder_dir, output_dir=tmp_path)
    engine = WanEngine(settings)
    host = ModelHost(engine, LocalMemory(settings, engine.device))
    configured = engine.configs["wan_vace"]["memory_bytes"]
    assert engine.memory_estimate("wan_vace") == configured  # nothing loaded: nothing shared yet
    host.load("wan_t2v")
    t2v = engine.loaded("wan_t2v")
    shared = devices.module_bytes(t2v.prompts.text_encoder, t2v.pipe.vae)
    assert shared > 0
    assert engine.memory_estimate("wan_vace") == max(0, configured - shared)


def test_wan_offload_is_chosen_with_its_own_footprint_and_refused_without_cuda(placeholder_dir, tmp_path):
    from workers.engines.wan import WanEngine

    settings = Settings(placeholder_models_dir=placeholder_dir, output_dir=tmp_path, wan_offload=True)
    with pytest.raises(ValueError, match="WAN_OFFLOAD needs a CUDA device"):
        WanEngine(settings, device="cpu")
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark)
    try:
        engine = WanEngine(settings, device="cuda")  # constructing touches no device; the lease is decided here
        for model in ("wan_t2v", "wan_vace"):
            cfg = engine.configs[model]
            assert engine.memory_estimate(model) == cfg["offload_memory_bytes"] < cfg["memory_bytes"]
        production = Settings(model_profile="synthetic", wan_offload=True)
        assert WanEngine(production, device="cuda").memory_estimate("wan_t2v") == 3000 * 2**20  # vs 14100 MiB
    finally:
        (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark) = saved


# ---- NVML: the device by UUID -------------------------------------------------------------------------

class TwoGPUsNVML:
    """pynvml's functions over two GPUs whose NVML index order is not their PCI order; the second (by PCI
    bus) is in MIG mode with one slice. The binding stands in for a driver, not for torch."""

    GPUS = {0: ("0000:B1:00.0", "GPU-bbbb", False), 1: ("0000:3B:00.0", "GPU-aaaa", True)}

    def nvmlDeviceGetCount(self):
        return 2

    def nvmlDeviceGetHandleByIndex(self, i):
        return ("gpu", i)

    def nvmlDeviceGetPciInfo(self, handle):
        from types import SimpleNamespace
        return SimpleNamespace(busId=self.GPUS[handle[1]][0].encode())

    def nvmlDeviceGetMigMode(self, handle):
        if handle[0] != "gpu" or not self.GPUS[handle[1]][2]:
            raise RuntimeError("NVMLError_NotSupported")
        return (1, 1)

    def nvmlDeviceGetMigDeviceHandleByIndex(self, handle, i):
        return ("mig", handle[1], i)

    def nvmlDeviceGetUUID(self, handle):
        return f"MIG-slice-of-{self.GPUS[handle[1]][1]}" if handle[0] == "mig" else self.GPUS[handle[1]][1]


def test_a_numeric_cuda_visible_devices_is_resolved_by_pci_order_and_mig_to_its_slice():
    from orchestrator.device_memory import resolve_device_uuid

    nvml = TwoGPUsNVML()
    # CUDA device 0 under PCI_BUS_ID order is bus 3B (NVML index 1), which is in MIG mode: its slice is read
    assert resolve_device_uuid(nvml, "0") == "MIG-slice-of-GPU-aaaa"
    assert resolve_device_uuid(nvml, None) == "MIG-slice-of-GPU-aaaa"
    assert resolve_device_uuid(nvml, "1,0") == "GPU-bbbb"  # bus B1 is NVML index 0



def test_a_uuid_in_cuda_visible_devices_is_found_as_cuda_reads_it():
    """Issue 20: CUDA takes a full UUID, a unique prefix of one, a MIG slice's UUID or the older
    MIG-GPU-<uuid>/<gi>/<ci> form; NVML's handle lookup takes only a full UUID of what it reads."""
    from orchestrator.device_memory import resolve_device_uuid

    nvml = TwoGPUsNVML()
    assert resolve_device_uuid(nvml, "GPU-bbbb") == "GPU-bbbb"
    assert resolve_device_uuid(nvml, " GPU-bb ,0") == "GPU-bbbb"            # a unique prefix, spaces
    assert resolve_device_uuid(nvml, "GPU-aaaa") == "MIG-slice-of-GPU-aaaa"  # a GPU in MIG mode: its slice
    assert resolve_device_uuid(nvml, "MIG-slice-of-GPU-aaaa") == "MIG-slice-of-GPU-aaaa"
    assert resolve_device_uuid(nvml, "MIG-GPU-aaaa/0/0") == "MIG-slice-of-GPU-aaaa"
    assert resolve_device_uuid(nvml, "GPU-cccc") == "GPU-cccc"  # not enumerated: NVML's lookup decides at read
    with pytest.raises(LookupError, match="several"):
        resolve_device_uuid(nvml, "GPU-")


def test_the_pod_gives_its_workers_the_device_by_uuid(monkeypatch):
    from orchestrator import device_memory, pod

    class Resolved(device_memory.DeviceMemory):
        def __init__(self, settings):
            super().__init__(settings, nvml=TwoGPUsNVML(), nvidia_present=True)

    monkeypatch.setattr(pod, "DeviceMemory", Resolved)  # our class, with the two-GPU binding above
    the_pod = pod.Pod(Settings(enabled_workers="sdxl"), environ={"CUDA_VISIBLE_DEVICES": "0"})
    assert the_pod.device.uuid == "MIG-slice-of-GPU-aaaa"
    assert the_pod.supervisors["sdxl"].env["CUDA_VISIBLE_DEVICES"] == "MIG-slice-of-GPU-aaaa"


# ---- chat: working memory beyond the KV cache, a refused batch split ------------------------------------

def test_chat_working_memory_counts_prefill_activations_and_the_attention_mask():
    from workers.engines.chat.plan import (
        attention_mask_bytes,
        batch_working_bytes,
        kv_cache_bytes_per_token,
        prefill_bytes_per_token,
    )
    from workers.placeholders.synthetic import arch_config

    qwen = arch_config("qwen2.5-7b-instruct/config.json")
    kv, prefill = kv_cache_bytes_per_token(qwen, 2), prefill_bytes_per_token(qwen, 2)
    assert kv == 57344
    assert prefill == 144384
    rows = [(8000, 256)] * 8
    kv_only = batch_working_bytes(rows, kv)
    full = batch_working_bytes(rows, kv, prefill)
    assert full - kv_only == prefill * 8 * 8000  # one prompt length: no padding, no mask
    assert full > 3 * kv_only  # 8 rows of 8k tokens: 13.0 GB, the KV cache alone 3.8 GB
    mixed = [(8000, 256)] + [(4000, 256)] * 7
    assert batch_working_bytes(mixed, kv, prefill) - full == attention_mask_bytes([8000] + [4000] * 7) == 8 * 8000**2
    # issue 20: a 28k-token prompt is leased its token count's memory (5.4 GiB), not 44.6 GiB from UTF-8 bytes
    assert batch_working_bytes([(28672, 256)], kv, prefill) < 5.5 * 2**30


def test_a_batch_refused_for_memory_is_split_and_every_request_answered(placeholder_dir, tmp_path):
    import threading

    from configuration import requests as request_models
    from workers.engines.chat import Batcher, ChatEngine
    from workers.runtime.local_memory import LocalMemory
    from workers.runtime.models import ModelHost

    settings = Settings(placeholder_models_dir=placeholder_dir, output_dir=tmp_path)
    probe = ChatEngine(settings)
    requests = [request_models.normalise("chat.chat", {"model": "qwen_instruct", "messages": [
        {"role": "user", "content": "y" * 1500}], "max_tokens": 4, "seed": i}, settings) for i in range(4)]
    rows = [(len(probe.prompt_ids(p)), p["max_tokens"]) for p in requests]
    one, four = probe.batch_working_bytes("qwen_instruct", rows[:1]), probe.batch_working_bytes("qwen_instruct", rows)
    weights = probe.memory_estimate("qwen_instruct")
    budget_mb = (weights + one + (four - one) // 4) // 2**20 + 1  # one row fits, four do not
    assert weights + four > budget_mb * 2**20 >= weights + one
    tight = settings.replace(vram_budget_mb=budget_mb, vram_reserve_mb=0)
    engine = ChatEngine(tight)
    host = ModelHost(engine, LocalMemory(tight, engine.device))
    batcher = Batcher(engine, host, "qwen_instruct", batch_size=4, window_s=0.3, max_queue=16, continuous=False)
    generations = [engine.prepare(p) for p in requests]
    threads = [threading.Thread(target=batcher.submit, args=(g,)) for g in generations]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    results = [g.wait(60) for g in generations]  # raises if a request failed
    assert all(r.completion_tokens > 0 for r in results)
    assert max(r.batch_size for r in results) < 4
    assert batcher.rows == 4


# ---- warm-up at load ----------------------------------------------------------------------------------

def test_every_engine_warms_up_at_load_on_cuda_only_and_its_warm_up_runs(placeholder_dir, tmp_path):
    from workers.engines.chat import ChatEngine
    from workers.engines.sdxl import SDXLEngine
    from workers.engines.wan import WanEngine

    settings = Settings(placeholder_models_dir=placeholder_dir, output_dir=tmp_path)
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark)
    try:
        for cls in (SDXLEngine, WanEngine, ChatEngine):
            assert cls(settings, device="cuda").warm_up_at_load is True
    finally:
        (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark) = saved
    # on CPU no warm-up at load; the warm-up itself runs the engine's real path (preset size, placeholder)
    for cls, model in ((SDXLEngine, "sdxl"), (WanEngine, "wan_t2v"), (ChatEngine, "qwen_instruct")):
        engine = cls(settings)
        assert engine.warm_up_at_load is False
        engine.load(model)
        engine.warm_up(model)
