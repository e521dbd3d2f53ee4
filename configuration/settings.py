"""Every environment variable the pod reads, in one place.

`Settings.from_env()` is the only function that looks at `os.environ`; everything else receives a
`Settings` instance. docs/CONFIGURATION.md's settings table is generated from `_ENV`, `ALIASES` and the
fields' defaults (`setting_reference()`, written by `python -m common.reference`).
"""
from __future__ import annotations

import dataclasses
import ipaddress
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
NOMINAL_BUDGET_BYTES = 48 * 1024**3  # the memory budget without a GPU and without VRAM_BUDGET_MB
# JOB_DEADLINE_*_S left at 0: production sizes near the previous worker's limits (180 s image, 500 s video);
# placeholder jobs take seconds, but tests run them on loaded 2-core machines.
DEADLINE_DEFAULTS_S = {"production": {"image": 180.0, "video": 500.0},
                       "placeholder": {"image": 120.0, "video": 240.0}}
MIN_PUBLIC_KEY_CHARS = 16  # every API key on a public BIND_HOST: a short key is guessable
# Other names of a setting (what the app and the previous pod call it) -> the name read below.
ALIASES = {"CALLBACK_SECRET": "JOB_CALLBACK_SECRET", "SUPABASE_SERVICE_ROLE_KEY": "SUPABASE_SERVICE_KEY"}


class SettingsError(ValueError):
    """A setting has an invalid value; the process refuses to start."""


def _bool(value: str, name: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise SettingsError(f"{name} must be a boolean (true/false), got {value!r}")


def _int(value: str, name: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise SettingsError(f"{name} must be an integer, got {value!r}") from None


def _float(value: str, name: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise SettingsError(f"{name} must be a number, got {value!r}") from None


# name -> (field, parser, description). The description is what docs/CONFIGURATION.md shows (generated, one table
# line); the default is the field's default in Settings below (written there only).
_ENV: dict[str, tuple[str, Callable[..., Any], str]] = {
    "BIND_HOST": ("bind_host", str, "Address every process binds to (RunPod sets 0.0.0.0)."),
    "ORCHESTRATOR_PORT": ("orchestrator_port", _int, "Orchestrator port."),
    "SDXL_PORT": ("sdxl_port", _int, "SDXL worker port."),
    "WAN_PORT": ("wan_port", _int, "WAN worker port."),
    "CHAT_PORT": ("chat_port", _int, "Chat worker port."),
    "WORKER_API_KEY": ("api_key", str, "Bearer token required on every endpoint but /health and /ready (the pod's own "
                                       "processes send it)."),
    "WORKER_API_KEYS": ("api_keys_extra", str, "Comma-separated further keys for callers holding different keys; any "
                                               "configured key works on every process. On a public BIND_HOST every key "
                                               "must be at least 16 characters."),
    "MODEL_PROFILE": ("model_profile", str, "`placeholder`, `synthetic` (full-size random weights, for "
                                            "benchmarks) or `production`; default: placeholder unless a "
                                            "production model path is set. Production refuses to start without a "
                                            "usable CUDA device."),
    "PLACEHOLDER_MODELS_DIR": ("placeholder_models_dir", Path, "Where placeholder models are built and cached."),
    "SYNTHETIC_MODELS_DIR": ("synthetic_models_dir", Path, "Where `python -m workers.placeholders.synthetic` writes "
                                                           "the synthetic full-size models (MODEL_PROFILE=synthetic)."),
    "SDXL_MODEL_PATH": ("sdxl_model_path", str, "Production SDXL checkpoint: a diffusers directory or a single "
                                                ".safetensors file."),
    "SDXL_CONFIG_DIR": ("sdxl_config_dir", str, "Local diffusers SDXL config directory used by single-file checkpoints "
                                                "(never a hub lookup); when empty, a `config/` folder next to the "
                                                "checkpoint; neither: `configuration.check` fails."),
    "SDXL_VAE_FP16_FIX_PATH": ("sdxl_vae_fp16_fix_path", str, "Production: a local fp16-fix SDXL VAE folder "
                                                              "(madebyollin/sdxl-vae-fp16-fix); with it the VAE "
                                                              "decodes in fp16 without the fp32 upcast."),
    "WAN_T2V_MODEL_PATH": ("wan_t2v_model_path", str, "Production Wan2.1 text-to-video diffusers directory."),
    "WAN_VACE_MODEL_PATH": ("wan_vace_model_path", str, "Production Wan2.1 VACE diffusers directory (reference-frame "
                                                        "modes)."),
    "QWEN_BASE_MODEL_PATH": ("qwen_base_model_path", str, "Production Qwen2.5 base model directory."),
    "QWEN_INSTRUCT_MODEL_PATH": ("qwen_instruct_model_path", str, "Production Qwen2.5 instruct model directory."),
    "OUTPUT_DIR": ("output_dir", Path, "Root of the local storage backend."),
    "STATE_DIR": ("state_dir", Path, "Job journal directory (default: OUTPUT_DIR/.jobs)."),
    "STORAGE_BACKEND": ("storage_backend", str, "`local` (files under OUTPUT_DIR) or `supabase` (Supabase Storage)."),
    "SUPABASE_URL": ("supabase_url", str, "Supabase project URL (storage, callbacks, registration)."),
    "SUPABASE_SERVICE_KEY": ("supabase_service_key", str, "Service key: bearer for storage, callbacks and "
                                                          "registration."),
    "SUPABASE_BUCKET": ("supabase_bucket", str, "Storage bucket for outputs."),
    "CALLBACK_URL": ("callback_url", str, "Terminal job callbacks; default ${SUPABASE_URL}/functions/v1/job-callback."),
    "JOB_CALLBACK_SECRET": ("callback_secret", str, "The app's callback secret: callbacks carry X-Callback-Signature: "
                                                    "sha256=<hex HMAC-SHA256 of the body>. "
                                                    "MODEL_PROFILE=production with REDIS_URL or a callback URL "
                                                    "refuses to start without it (the app answers 401 to unsigned "
                                                    "callbacks)."),
    "CALLBACK_PROCESSING": ("callback_processing", _bool, "Also send a `processing` callback when a job starts (one "
                                                          "attempt, never after the terminal one)."),
    "REDIS_URL": ("redis_url", str, "`redis://` or `rediss://` (TLS) with the password: the SDXL and WAN workers take "
                                    "the app's jobs from Redis."),
    "SDXL_QUEUE": ("sdxl_queue", str, "Redis list of the SDXL worker's jobs."),
    "WAN_QUEUE": ("wan_queue", str, "Redis list of the WAN worker's jobs."),
    "QUEUE_CONSUMER_ID": ("queue_consumer_id", str, "Prefix of this pod's queue consumer ids (default RUNPOD_POD_ID, "
                                                    "else the hostname)."),
    "QUEUE_HEARTBEAT_TTL_S": ("queue_heartbeat_ttl_s", _float, "Lifetime of a consumer's heartbeat; the entries of a "
                                                               "consumer silent this long go back to the queue."),
    "QUEUE_REAP_INTERVAL_S": ("queue_reap_interval_s", _float, "How often a consumer looks for consumers without a "
                                                               "heartbeat."),
    "QUEUE_BLOCK_S": ("queue_block_s", _float, "How long one BLMOVE waits for an entry."),
    "QUEUE_MAX_DELIVERIES": ("queue_max_deliveries", _int, "Takes of one queued job (its takers died) before it is "
                                                           "failed instead of run again."),
    "CALLBACK_MAX_ATTEMPTS": ("callback_max_attempts", _int, "Cap on delivery attempts per callback; 0: none, "
                                                             "CALLBACK_RETRY_HORIZON_S decides."),
    "CALLBACK_BACKOFF_S": ("callback_backoff_s", _float, "First retry delay; doubles per attempt up to "
                                                         "CALLBACK_BACKOFF_MAX_S."),
    "CALLBACK_BACKOFF_MAX_S": ("callback_backoff_max_s", _float, "Longest delay between two attempts of one callback."),
    "CALLBACK_RETRY_HORIZON_S": ("callback_retry_horizon_s", _float, "How long a callback is retried after the job "
                                                                     "ended (across restarts: the journal keeps it) "
                                                                     "before it is given up."),
    "JOB_RETENTION_DAYS": ("job_retention_days", _float, "Finished jobs older than this are removed from memory and "
                                                         "the journal (0: kept forever)."),
    "CALLBACK_TIMEOUT_S": ("callback_timeout_s", _float, "Timeout of one callback POST."),
    "JOB_DEADLINE_IMAGE_S": ("job_deadline_image_s", _float, "Execution deadline of an image job, from its start "
                                                             "(memory lease and model load included): past it the "
                                                             "job is stopped at the next step and fails `timeout`. "
                                                             "0: the profile's default (production and synthetic "
                                                             "180, placeholder 120)."),
    "JOB_DEADLINE_VIDEO_S": ("job_deadline_video_s", _float, "Execution deadline of a video job, as "
                                                             "JOB_DEADLINE_IMAGE_S. 0: the profile's default "
                                                             "(production and synthetic 500, placeholder 240)."),
    "JOB_DEADLINE_GRACE_S": ("job_deadline_grace_s", _float, "How long an engine may take to stop after its job's "
                                                             "deadline; past it the job fails `timeout` and the "
                                                             "worker's process exits so that gunicorn starts a "
                                                             "fresh one (docs/OPERATIONS.md)."),
    "APP_CANCEL_CHECK": ("app_cancel_check", _bool, "Read each queued job's status in the app's `jobs` table "
                                                    "(SUPABASE_URL, service key) before it starts and while it "
                                                    "runs: a job the app marked `cancelled` is not run or is "
                                                    "stopped. Off, or without SUPABASE_URL and the service key: "
                                                    "never read."),
    "APP_CANCEL_CHECK_INTERVAL_S": ("app_cancel_check_interval_s", _float, "Seconds between two reads of a "
                                                                           "running job's status (at least 1)."),
    "MAX_BODY_MB": ("max_body_mb", _float, "Request body cap; larger bodies get 413."),
    "APP_VIDEO_SIZE": ("app_video_size", str, "`native`: the app's video `resolution` (1024x576, 576x1024, "
                                              "1024x1024) is an aspect request, rendered at the WAN checkpoint's "
                                              "native size class: `native_size` of `wan_t2v`/`wan_vace` in "
                                              "configuration/models.json (landscape), its transpose for a portrait "
                                              "request, a square of the same pixel budget (nearest multiple of 16) "
                                              "for a square one: 832x480, 480x832, 624x624 in production, 112x64, "
                                              "64x112, 80x80 on the placeholder profile. `requested`: rendered at "
                                              "the requested size (scaled down by 4 on the placeholder profile). "
                                              "Both sizes are in the job's `size`."),
    "FETCH_ALLOW_PRIVATE": ("fetch_allow_private", _bool, "Allow reference URLs on loopback/private/link-local "
                                                          "addresses (tests only)."),
    "FETCH_MAX_MB": ("fetch_max_mb", _float, "Size cap of a fetched reference image."),
    "FETCH_TIMEOUT_S": ("fetch_timeout_s", _float, "Total time allowed to fetch a reference image: one deadline "
                                                         "for the whole fetch, held on every read; connecting to an "
                                                         "address waits at most 5 s of it."),
    "ENABLED_WORKERS": ("enabled_workers", str, "Workers the orchestrator starts (comma-separated; an unknown "
                                                 "name stops the start)."),
    "ORCHESTRATOR_URL": ("orchestrator_url", str, "Memory broker a worker leases from (set by the orchestrator for its "
                                                  "children)."),
    "VRAM_BUDGET_MB": ("vram_budget_mb", _int, "Memory budget on a machine without a GPU (0: 48 GB nominal)."),
    "VRAM_RESERVE_MB": ("vram_reserve_mb", _int, "Memory kept free for activations."),
    "LEASE_TIMEOUT_S": ("lease_timeout_s", _float, "How long a lease request waits for busy workers."),
    "LEASE_LOAD_TIMEOUT_S": ("lease_load_timeout_s", _float, "A lease granted for a load that has not finished after "
                                                             "this long is dropped."),
    "BROKER_TOKEN": ("broker_token", str, "Set by the orchestrator for its workers: their credential on its internal "
                                          "memory-broker port (never the public key)."),
    "SHUTDOWN_GRACE_S": ("shutdown_grace_s", _float, "How long running jobs may finish after SIGTERM."),
    "WORKER_READY_TIMEOUT_S": ("worker_ready_timeout_s", _float, "How long the orchestrator waits for a worker's "
                                                                 "/ready."),
    "RESTART_LIMIT": ("restart_limit", _int, "Restarts of a dying worker before it is marked failed."),
    "RESTART_BACKOFF_S": ("restart_backoff_s", _float, "First restart delay; doubles per restart."),
    "RESTART_BACKOFF_MAX_S": ("restart_backoff_max_s", _float, "Cap on the restart delay."),
    "RESTART_RESET_S": ("restart_reset_s", _float, "A worker that stays ready this long has its count of consecutive "
                                                   "failures reset."),
    "ENHANCE_TIMEOUT_S": ("enhance_timeout_s", _float, "How long the orchestrator waits for the chat worker to enhance "
                                                       "a prompt."),
    "ORCHESTRATOR_THREADS": ("orchestrator_threads", _int, "HTTP threads of the orchestrator's public port; requests "
                                                           "waiting with ?wait= may hold all but 8 (the memory broker "
                                                           "has threads of its own)."),
    "GUNICORN_THREADS": ("gunicorn_threads", _int, "HTTP threads per worker process; requests waiting with ?wait= may "
                                                   "hold all but 8."),
    "CHAT_BATCH_SIZE": ("chat_batch_size", _int, "Most chat requests generated together in one batch; also the "
                                                 "most prompt enhancements the orchestrator has in flight at once."),
    "CHAT_BATCH_WINDOW_MS": ("chat_batch_window_ms", _int, "How long the chat batcher waits to fill a batch."),
    "CHAT_MAX_QUEUE": ("chat_max_queue", _int, "Chat requests waiting per model before new ones get 503."),
    "CHAT_BATCHING": ("chat_batching", str, "`continuous` (requests join a running batch as rows finish) or `static` "
                                            "(a batch runs until its longest row ends)."),
    "TORCH_COMPILE": ("torch_compile", _bool, "torch.compile the UNet/transformer on CUDA."),
    "WAN_OFFLOAD": ("wan_offload", _bool, "Run the WAN pipelines with model CPU offload (one component on the GPU at a "
                                          "time, umT5 on the CPU), leasing each model's `offload_memory_mb` "
                                          "(models.json): for cards smaller than a WAN model's footprint. CUDA "
                                          "only: a WAN worker on a CPU-only machine refuses to start with it."),
    "REGISTER_WITH_SUPABASE": ("register_with_supabase", _bool, "Register worker URLs with Supabase when SUPABASE_URL "
                                                                "is set."),
    "RUNPOD_POD_ID": ("runpod_pod_id", str, "Set by RunPod; the default public URL of a worker is "
                                            "https://{pod_id}-{port}.proxy.runpod.net."),
    "PUBLIC_URL_TEMPLATE": ("public_url_template", str, "Public URL of a registered worker on hosts other than "
                                                        "RunPod, with `{worker}`, `{port}` and `{pod_id}` "
                                                        "(RUNPOD_POD_ID) filled in; empty: the RunPod proxy form "
                                                        "when RUNPOD_POD_ID is set, else none."),
    "WAN_PUBLIC_URL": ("wan_public_url", str, "The WAN worker's public URL as registered with `update-worker-url` "
                                              "(wins over PUBLIC_URL_TEMPLATE)."),
    "CHAT_PUBLIC_URL": ("chat_public_url", str, "The chat worker's public URL as registered with "
                                                "`register-chat-worker` (wins over PUBLIC_URL_TEMPLATE)."),
    "REGISTRATION_BACKOFF_S": ("registration_backoff_s", _float, "First delay between two registration attempts; "
                                                                 "doubles per attempt up to "
                                                                 "REGISTRATION_BACKOFF_MAX_S. Attempts go on until "
                                                                 "the worker is registered."),
    "REGISTRATION_BACKOFF_MAX_S": ("registration_backoff_max_s", _float, "Longest delay between two registration "
                                                                         "attempts."),
    "REGISTRATION_REFRESH_S": ("registration_refresh_s", _float, "A registered worker registers again this often "
                                                                 "(the app's row may be overwritten or lost; 0: "
                                                                 "only at each worker start)."),
    "HEALTH_CHECK_WORKERS_S": ("health_check_workers_s", _float, "How often the orchestrator invokes the app's "
                                                                 "`health-check-workers` function (service key) so "
                                                                 "the chat worker's health entry stays fresh without "
                                                                 "a browser; only while a chat worker is registered "
                                                                 "(0: never)."),
    "LOG_LEVEL": ("log_level", str, "Python log level."),
    "LOG_FORMAT": ("log_format", str, "`json` (one JSON object per line: time, level, logger, process, worker, job_id, "
                                      "stage, request_id) or `text` (the same, readable in a terminal)."),
    "METRICS_PUBLIC": ("metrics_public", _bool, "Serve `GET /metrics` without the bearer key (a Prometheus scraper "
                                                "inside the pod's network); every other route keeps it."),
    "PROVENANCE_SIDECAR": ("provenance_sidecar", _bool, "Store each asset's provenance as a `{i}.json` file next to "
                                                        "it (`application/json`); off, the provenance is only in the "
                                                        "asset's `metadata.provenance` and `provenance_url` is null. "
                                                        "Unset: on with STORAGE_BACKEND=local, off with `supabase` "
                                                        "(the app's `workspace-temp` bucket refuses "
                                                        "application/json). A sidecar the "
                                                        "storage refuses is skipped with a warning, never a failed "
                                                        "job."),
    "CONTENT_TIER_DEFAULT": ("content_tier_default", str, "Content tier (`sfw` or `nsfw`) of a request that names none "
                                                          "(docs/POLICY.md); the hard floor applies in both."),
    "SAFETY_CLASSIFIER_PATH": ("safety_classifier_path", str, "Output image classifier (a transformers "
                                                              "image-classification folder) for sfw image and video "
                                                              "jobs; placeholder profile: the built placeholder."),
    "SAFETY_THRESHOLD": ("safety_threshold", _float, "An sfw output whose unsafe-label probability exceeds this is not "
                                                     "stored; the job fails (0-1)."),
    "TEXT_SAFETY_CLASSIFIER_PATH": ("text_safety_classifier_path", str, "Text classifier (a transformers "
                                                                        "sequence-classification folder) that reads "
                                                                        "prompts and chat text next to the word "
                                                                        "rules; placeholder profile: the built "
                                                                        "placeholder; empty in production: checks "
                                                                        "are recorded as not_run."),
    "TEXT_SAFETY_THRESHOLD": ("text_safety_threshold", _float, "A text whose sexual-label probability exceeds this "
                                                               "is refused: as the floor where the rules see a "
                                                               "minor, in sfw also alone (0-1)."),
}


@dataclass(frozen=True)
class Settings:
    bind_host: str = "127.0.0.1"
    orchestrator_port: int = 7858
    sdxl_port: int = 7859
    wan_port: int = 7860
    chat_port: int = 7861
    api_key: str = field(default="", repr=False)
    api_keys_extra: str = field(default="", repr=False)
    model_profile: str = "placeholder"
    placeholder_models_dir: Path = REPO_ROOT / ".cache" / "placeholder-models"
    synthetic_models_dir: Path = REPO_ROOT / ".cache" / "synthetic-models"
    sdxl_model_path: str = ""
    sdxl_config_dir: str = ""
    sdxl_vae_fp16_fix_path: str = ""
    wan_t2v_model_path: str = ""
    wan_vace_model_path: str = ""
    qwen_base_model_path: str = ""
    qwen_instruct_model_path: str = ""
    output_dir: Path = Path("./outputs")
    state_dir: Path = Path("")
    storage_backend: str = "local"
    supabase_url: str = ""
    supabase_service_key: str = field(default="", repr=False)
    supabase_bucket: str = "workspace-temp"
    callback_url: str = ""
    callback_secret: str = field(default="", repr=False)
    callback_processing: bool = False
    redis_url: str = field(default="", repr=False)  # carries the password
    sdxl_queue: str = "sdxl_queue"
    wan_queue: str = "wan_queue"
    queue_consumer_id: str = ""
    queue_heartbeat_ttl_s: float = 30.0
    queue_reap_interval_s: float = 15.0
    queue_block_s: float = 1.0
    queue_max_deliveries: int = 3
    callback_max_attempts: int = 0
    callback_backoff_s: float = 1.0
    callback_backoff_max_s: float = 60.0
    callback_retry_horizon_s: float = 86400.0
    job_retention_days: float = 14.0
    callback_timeout_s: float = 10.0
    job_deadline_image_s: float = 0.0   # 0: DEADLINE_DEFAULTS_S of the profile
    job_deadline_video_s: float = 0.0
    job_deadline_grace_s: float = 30.0
    app_cancel_check: bool = True
    app_cancel_check_interval_s: float = 5.0
    max_body_mb: float = 10.0
    app_video_size: str = "native"
    fetch_allow_private: bool = False
    fetch_max_mb: float = 20.0
    fetch_timeout_s: float = 15.0
    enabled_workers: str = "sdxl,chat,wan"
    orchestrator_url: str = ""
    vram_budget_mb: int = 0
    vram_reserve_mb: int = 2048
    lease_timeout_s: float = 120.0
    lease_load_timeout_s: float = 1800.0
    broker_token: str = field(default="", repr=False)
    shutdown_grace_s: float = 60.0
    worker_ready_timeout_s: float = 300.0
    restart_limit: int = 5
    restart_backoff_s: float = 1.0
    restart_backoff_max_s: float = 30.0
    restart_reset_s: float = 600.0
    enhance_timeout_s: float = 300.0
    orchestrator_threads: int = 128
    gunicorn_threads: int = 16
    chat_batch_size: int = 8
    chat_batch_window_ms: int = 10
    chat_max_queue: int = 256
    chat_batching: str = "continuous"
    torch_compile: bool = False
    wan_offload: bool = False
    register_with_supabase: bool = True
    runpod_pod_id: str = ""
    public_url_template: str = ""
    wan_public_url: str = ""
    chat_public_url: str = ""
    registration_backoff_s: float = 2.0
    registration_backoff_max_s: float = 60.0
    registration_refresh_s: float = 600.0
    health_check_workers_s: float = 60.0
    log_level: str = "INFO"
    log_format: str = "json"
    metrics_public: bool = False
    provenance_sidecar: bool | None = None  # None: by STORAGE_BACKEND (stores_provenance_sidecar)
    content_tier_default: str = "sfw"
    safety_classifier_path: str = ""
    safety_threshold: float = 0.5
    text_safety_classifier_path: str = ""
    text_safety_threshold: float = 0.5

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Settings:
        env = _resolve_aliases(os.environ if environ is None else environ)
        values: dict[str, Any] = {}
        for name, (attr, parse, _doc) in _ENV.items():
            raw = env.get(name)
            if raw is None or (raw == "" and parse is not str):
                continue
            values[attr] = parse(raw, name) if parse not in (str, Path) else parse(raw)
        if not values.get("model_profile"):
            production_paths = ("sdxl_model_path", "wan_t2v_model_path", "qwen_base_model_path",
                                "qwen_instruct_model_path")
            values["model_profile"] = "production" if any(values.get(p) for p in production_paths) else "placeholder"
        settings = cls(**values)
        settings.check()
        return settings

    def replace(self, **changes: Any) -> Settings:
        # Any: each keyword takes its own field's type, which one annotation cannot say.
        return dataclasses.replace(self, **changes)

    def check(self) -> None:
        """Refuse settings that cannot work, in this order: the values, the keys, the queue and
        registration timings, the public URLs, then what production or a public interface needs."""
        self._check_values()
        self._check_keys()
        self._check_timings()
        self._check_public_urls()
        self._check_exposure()

    def _check_values(self) -> None:
        if self.model_profile not in ("placeholder", "synthetic", "production"):
            raise SettingsError(f"MODEL_PROFILE must be 'placeholder', 'synthetic' or 'production', got "
                                f"{self.model_profile!r}")
        if self.storage_backend not in ("local", "supabase"):
            raise SettingsError(f"STORAGE_BACKEND must be 'local' or 'supabase', got {self.storage_backend!r}")
        if self.storage_backend == "supabase" and not (self.supabase_url and self.supabase_service_key):
            raise SettingsError("STORAGE_BACKEND=supabase needs SUPABASE_URL and SUPABASE_SERVICE_KEY")
        if self.chat_batch_size < 1 or self.chat_batch_window_ms < 0 or self.chat_max_queue < 1:
            raise SettingsError("CHAT_BATCH_SIZE and CHAT_MAX_QUEUE must be >= 1 and CHAT_BATCH_WINDOW_MS >= 0")
        if self.chat_batching not in ("continuous", "static"):
            raise SettingsError(f"CHAT_BATCHING must be 'continuous' or 'static', got {self.chat_batching!r}")
        if self.log_format not in ("json", "text"):
            raise SettingsError(f"LOG_FORMAT must be 'json' or 'text', got {self.log_format!r}")
        if self.app_video_size not in ("native", "requested"):
            raise SettingsError(f"APP_VIDEO_SIZE must be 'native' or 'requested', got {self.app_video_size!r}")
        if self.content_tier_default not in ("sfw", "nsfw"):
            raise SettingsError(f"CONTENT_TIER_DEFAULT must be 'sfw' or 'nsfw', got {self.content_tier_default!r}")
        if not 0.0 <= self.safety_threshold <= 1.0:
            raise SettingsError(f"SAFETY_THRESHOLD must be between 0 and 1, got {self.safety_threshold}")
        if not 0.0 <= self.text_safety_threshold <= 1.0:
            raise SettingsError(f"TEXT_SAFETY_THRESHOLD must be between 0 and 1, got {self.text_safety_threshold}")
        if not 0 < self.callback_backoff_s <= self.callback_backoff_max_s or self.callback_retry_horizon_s <= 0:
            raise SettingsError("CALLBACK_BACKOFF_S must be > 0 and <= CALLBACK_BACKOFF_MAX_S, "
                                "CALLBACK_RETRY_HORIZON_S > 0")
        if self.job_retention_days < 0 or self.lease_load_timeout_s <= 0:
            raise SettingsError("JOB_RETENTION_DAYS must be >= 0 and LEASE_LOAD_TIMEOUT_S > 0")

    def _check_keys(self) -> None:
        if self.api_key != self.api_key.strip():
            # A key of spaces would pass "is set" and match a bearer header of spaces; surrounding
            # whitespace can never be sent in a header (it is trimmed), so such a key is a mistake.
            raise SettingsError("WORKER_API_KEY is blank or has leading/trailing whitespace")
        if self.api_keys_extra and not self.api_key:
            raise SettingsError("WORKER_API_KEYS adds keys to WORKER_API_KEY: set WORKER_API_KEY too "
                                "(the pod's own processes authenticate with it)")
        if any(k != k.strip() or not k for k in self.api_keys_extra.split(",") if self.api_keys_extra):
            raise SettingsError("WORKER_API_KEYS has an empty key or one with surrounding whitespace")
        short = [i for i, k in enumerate(self.api_keys) if len(k) < MIN_PUBLIC_KEY_CHARS]
        if short and not self.bind_is_loopback:
            raise SettingsError(
                f"BIND_HOST={self.bind_host} is public and {len(short)} configured key(s) are shorter than "
                f"{MIN_PUBLIC_KEY_CHARS} characters (WORKER_API_KEY / WORKER_API_KEYS): refusing to start")

    def _check_timings(self) -> None:
        if self.queue_heartbeat_ttl_s <= 0 or self.queue_reap_interval_s <= 0 or self.queue_block_s <= 0:
            raise SettingsError("QUEUE_HEARTBEAT_TTL_S, QUEUE_REAP_INTERVAL_S and QUEUE_BLOCK_S must be > 0")
        if self.queue_max_deliveries < 1:
            raise SettingsError("QUEUE_MAX_DELIVERIES must be >= 1")
        if self.job_deadline_image_s < 0 or self.job_deadline_video_s < 0 or self.job_deadline_grace_s <= 0:
            raise SettingsError("JOB_DEADLINE_IMAGE_S and JOB_DEADLINE_VIDEO_S must be >= 0 (0: the profile's "
                                "default) and JOB_DEADLINE_GRACE_S > 0")
        if self.app_cancel_check_interval_s < 1.0:
            raise SettingsError("APP_CANCEL_CHECK_INTERVAL_S must be at least 1 (the app's database is read at "
                                "most that often per running job)")
        if self.redis_url and not self.redis_url.startswith(("redis://", "rediss://")):
            raise SettingsError("REDIS_URL must be a redis:// or rediss:// URL")
        if not 0 < self.registration_backoff_s <= self.registration_backoff_max_s:
            raise SettingsError("REGISTRATION_BACKOFF_S must be > 0 and <= REGISTRATION_BACKOFF_MAX_S")
        if self.registration_refresh_s < 0 or self.health_check_workers_s < 0:
            raise SettingsError("REGISTRATION_REFRESH_S and HEALTH_CHECK_WORKERS_S must be >= 0 (0: off)")

    def _check_exposure(self) -> None:
        if (self.model_profile == "production" and not self.callback_secret
                and (self.redis_url or self.effective_callback_url)):
            configured = ("REDIS_URL (queue intake)" if self.redis_url
                          else "a callback URL (SUPABASE_URL or CALLBACK_URL)")
            raise SettingsError(
                f"MODEL_PROFILE=production with {configured} needs JOB_CALLBACK_SECRET: the app's job-callback "
                "refuses unsigned callbacks (401), so every job's result would be lost; refusing to start")
        if not self.api_key and not self.bind_is_loopback:
            raise SettingsError(
                f"WORKER_API_KEY is not set and BIND_HOST={self.bind_host} is not a loopback address: "
                "refusing to serve unauthenticated endpoints on a public interface")

    def _check_public_urls(self) -> None:
        for name, url in (("WAN_PUBLIC_URL", self.wan_public_url), ("CHAT_PUBLIC_URL", self.chat_public_url),
                          ("PUBLIC_URL_TEMPLATE", self.public_url_template)):
            if url and not url.startswith(("https://", "http://")):
                raise SettingsError(f"{name} must be an http:// or https:// URL, got {url!r}")
        if not self.public_url_template:
            return
        try:
            self.public_url_template.format(worker="wan", port=1, pod_id="pod")
        except (KeyError, IndexError, ValueError) as exc:
            raise SettingsError(f"PUBLIC_URL_TEMPLATE may use {{worker}}, {{port}} and {{pod_id}} only ({exc!r})"
                                ) from None
        if "{pod_id}" in self.public_url_template and not self.runpod_pod_id:
            raise SettingsError("PUBLIC_URL_TEMPLATE uses {pod_id} and RUNPOD_POD_ID is not set")

    def public_url(self, worker: str) -> str | None:
        """The worker's public URL (what registration sends the app): its own setting, else
        PUBLIC_URL_TEMPLATE, else RunPod's proxy form when RUNPOD_POD_ID is set; None without any."""
        explicit = {"wan": self.wan_public_url, "chat": self.chat_public_url}.get(worker, "")
        if explicit:
            return explicit.rstrip("/")
        template = self.public_url_template or (
            "https://{pod_id}-{port}.proxy.runpod.net" if self.runpod_pod_id else "")
        if not template:
            return None
        return template.format(worker=worker, port=self.port_of(worker), pod_id=self.runpod_pod_id).rstrip("/")

    @property
    def stores_provenance_sidecar(self) -> bool:
        """PROVENANCE_SIDECAR, or by backend when unset: the app's Supabase bucket refuses application/json."""
        if self.provenance_sidecar is not None:
            return self.provenance_sidecar
        return self.storage_backend != "supabase"

    def job_deadline_s(self, output: str) -> float:
        """The execution deadline of a job whose output is `output` ("image" or "video"): its setting, or
        the profile's default when that is 0."""
        configured = self.job_deadline_video_s if output == "video" else self.job_deadline_image_s
        if configured > 0:
            return configured
        return DEADLINE_DEFAULTS_S["placeholder" if self.model_profile == "placeholder" else "production"][output]

    @property
    def reads_app_job_status(self) -> bool:
        """APP_CANCEL_CHECK with the means to read the app's `jobs` table (SUPABASE_URL and the service key)."""
        return self.app_cancel_check and bool(self.supabase_url and self.supabase_service_key)

    @property
    def api_keys(self) -> tuple[str, ...]:
        """Every key a caller may present: WORKER_API_KEY, then WORKER_API_KEYS."""
        extra = [k for k in self.api_keys_extra.split(",") if k] if self.api_keys_extra else []
        return tuple(dict.fromkeys(k for k in [self.api_key, *extra] if k))

    @property
    def bind_is_loopback(self) -> bool:
        if self.bind_host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.bind_host).is_loopback
        except ValueError:
            return False

    @property
    def effective_callback_url(self) -> str:
        if self.callback_url:
            return self.callback_url
        if self.supabase_url:
            return self.supabase_url.rstrip("/") + "/functions/v1/job-callback"
        return ""

    @property
    def effective_state_dir(self) -> Path:
        return self.state_dir if str(self.state_dir) not in ("", ".") else self.output_dir / ".jobs"

    @property
    def budget_bytes_without_device(self) -> int:
        """The memory budget where no device can be measured: VRAM_BUDGET_MB, else a nominal 48 GB card."""
        return self.vram_budget_mb * 1024 * 1024 if self.vram_budget_mb > 0 else NOMINAL_BUDGET_BYTES

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * 1024 * 1024)

    def port_of(self, worker: str) -> int:
        return {"orchestrator": self.orchestrator_port, "sdxl": self.sdxl_port,
                "wan": self.wan_port, "chat": self.chat_port}[worker]


def settings_for_command() -> Settings | None:
    """For command-line entry points: the settings from the environment, or None after printing to stderr
    why they are invalid (the command then exits with status 2)."""
    try:
        return Settings.from_env()
    except SettingsError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return None


def _resolve_aliases(env: Mapping[str, str]) -> Mapping[str, str]:
    """`env` with each alias's value under its canonical name; both set to different values is an error."""
    resolved = dict(env)
    for alias, canonical in ALIASES.items():
        value = env.get(alias)
        if value is None or value == "":
            continue
        if env.get(canonical) not in (None, "", value):
            raise SettingsError(f"{alias} and {canonical} are the same setting and are set to different values")
        resolved[canonical] = value
    return resolved


@dataclass(frozen=True)
class SettingReference:
    """One setting as the generated reference shows it: its variable, the other names read for it, its
    default (the field's default in `Settings`) and its description."""

    name: str
    aliases: tuple[str, ...]
    default: object
    description: str


def setting_reference() -> list[SettingReference]:
    """Every setting in declaration order, for the generated table in docs/CONFIGURATION.md."""
    defaults = {f.name: f.default for f in dataclasses.fields(Settings)}
    return [SettingReference(name, tuple(alias for alias, canonical in ALIASES.items() if canonical == name),
                             defaults[attr], doc)
            for name, (attr, _parse, doc) in _ENV.items()]


def documented_variables() -> dict[str, tuple[object, str]]:
    """name -> (default, description), for docs and the docs-sync test (aliases included)."""
    defaults = {f.name: f.default for f in dataclasses.fields(Settings)}
    documented = {name: (defaults[attr], doc) for name, (attr, _p, doc) in _ENV.items()}
    documented.update({alias: ("", f"Alias of `{canonical}`.") for alias, canonical in ALIASES.items()})
    return documented
