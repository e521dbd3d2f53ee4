"""Every environment variable the pod reads, declared once: one field of `Settings` per setting.

Each field holds the setting's type, default, description (the text of the generated table in
docs/CONFIGURATION.md: `setting_reference()`, written by `python -m common.reference`) and its variable names
(`validation_alias`: the name, then the legacy names the app and the previous pod use). The checks are the
fields' validators and a few cross-field validators named after what they guard; they refuse what a process
cannot start with, under `from_env()` and `Settings.check()`. `Settings.from_env()` is the only function that
reads `os.environ`; everything else receives an instance, and `Settings(field=value, ...)` sees only its
keywords and the defaults.
"""
from __future__ import annotations

import ipaddress
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import AliasChoices, BaseModel, Field, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parent.parent
NOMINAL_BUDGET_BYTES = 48 * 1024**3  # the memory budget without a GPU and without VRAM_BUDGET_MB
# JOB_DEADLINE_*_S left at 0: production sizes near the previous worker's limits (180 s image, 500 s video);
# placeholder jobs take seconds, but tests run them on loaded 2-core machines.
DEADLINE_DEFAULTS_S = {"production": {"image": 180.0, "video": 500.0},
                       "placeholder": {"image": 120.0, "video": 240.0}}
MIN_PUBLIC_KEY_CHARS = 16  # every API key on a public BIND_HOST: a short key is guessable
# A production model path set and MODEL_PROFILE unset: the operator means production.
_PRODUCTION_PATHS = ("sdxl_model_path", "wan_t2v_model_path", "qwen_base_model_path", "qwen_instruct_model_path")

# Messages several fields' checks share (variables checked together, in the operator's words).
_RETENTION_MESSAGE = "JOB_RETENTION_DAYS must be >= 0 and LEASE_LOAD_TIMEOUT_S > 0"
_DEADLINES_MESSAGE = ("JOB_DEADLINE_IMAGE_S and JOB_DEADLINE_VIDEO_S must be >= 0 (0: the profile's default) and "
                      "JOB_DEADLINE_GRACE_S > 0")
_CHAT_MESSAGE = "CHAT_BATCH_SIZE and CHAT_MAX_QUEUE must be >= 1 and CHAT_BATCH_WINDOW_MS >= 0"


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


# A field's type -> how its text (from the environment) is read: operators get these words and messages,
# not pydantic's (which refuses an empty boolean and words its errors for programmers).
_PARSERS: dict[object, Callable[[str, str], object]] = {bool: _bool, bool | None: _bool, int: _int, float: _float}


def _setting(name: str, default: Any, *legacy: str, doc: str, secret: bool = False) -> Any:
    """One setting's field: its variable `name` (then the `legacy` names still read for it), its default and
    the description the docs table shows; a `secret` stays out of repr (logs, tracebacks). Any: the field's
    own annotation types it, as with pydantic's `Field`."""
    alias = AliasChoices(name, *legacy) if legacy else name
    return Field(default, validation_alias=alias, description=doc, repr=not secret)


# The validation context under which the checks run: a process starting (`from_env`) or `Settings.check()`.
# `Settings(field=value, ...)` builds what it is given, typed but unchecked: tests build settings no
# process would start with (production without a callback secret, say) to exercise one part.
_STARTING = {"refuse": "settings a process cannot start with"}


def _starting(info: ValidationInfo) -> bool:
    return info.context is _STARTING


def _require(fields: tuple[str, ...], holds: Callable[[Any], bool], message: str) -> Any:
    """A field validator refusing a value of `fields` for which `holds` is false with `message` (formatted
    with the `value`), under `_STARTING`: the one-field checks, each one line beside the others. Any:
    pydantic's decorator proxy, which only the class body uses."""
    def check(value: Any, info: ValidationInfo) -> Any:
        if _starting(info) and not holds(value):
            raise SettingsError(message.format(value=value))
        return value
    return field_validator(*fields)(staticmethod(check))


def _one_of(field: str, name: str, choices: tuple[str, ...]) -> Any:
    """`_require` for a setting that takes one of a few words."""
    spoken = ", ".join(repr(c) for c in choices[:-1]) + f" or {choices[-1]!r}"
    return _require((field,), lambda value: value in choices, f"{name} must be {spoken}, got {{value!r}}")


def _env_names(field: FieldInfo) -> tuple[str, ...]:
    """A field's variable names: its own, then its legacy ones."""
    alias = field.validation_alias
    return tuple(str(c) for c in alias.choices) if isinstance(alias, AliasChoices) else (str(alias),)


def _settings_error(exc: ValidationError, settings_cls: type[BaseModel]) -> SettingsError:
    """The first refusal as the SettingsError a validator raised; pydantic's own (a keyword of the wrong type
    or an unknown keyword, from code rather than the environment) under the setting's variable name."""
    first = exc.errors()[0]
    raised = first.get("ctx", {}).get("error")
    if isinstance(raised, SettingsError):
        return raised
    where = str(first["loc"][0]) if first["loc"] else ""
    field = settings_cls.model_fields.get(where)
    return SettingsError(f"{_env_names(field)[0] if field else where}: {first['msg']}")


class Settings(BaseSettings):
    """The pod's settings, frozen: hashable and compared by value (an lru_cache key of the schemas)."""

    model_config = SettingsConfigDict(frozen=True, extra="forbid", validate_by_name=True, validate_by_alias=True,
                                      validate_default=False)  # the declared defaults are valid

    bind_host: str = _setting("BIND_HOST", "127.0.0.1", doc="Address every process binds to (RunPod sets 0.0.0.0).")
    orchestrator_port: int = _setting("ORCHESTRATOR_PORT", 7858, doc="Orchestrator port.")
    sdxl_port: int = _setting("SDXL_PORT", 7859, doc="SDXL worker port.")
    wan_port: int = _setting("WAN_PORT", 7860, doc="WAN worker port.")
    chat_port: int = _setting("CHAT_PORT", 7861, doc="Chat worker port.")
    api_key: str = _setting("WORKER_API_KEY", "", secret=True,
        doc="Bearer token required on every endpoint but /health and /ready (the pod's own processes send it).")
    api_keys_extra: str = _setting("WORKER_API_KEYS", "", secret=True,
        doc="Comma-separated further keys for callers holding different keys; any configured key works on every "
            "process. On a public BIND_HOST every key must be at least 16 characters.")
    model_profile: str = _setting("MODEL_PROFILE", "placeholder",
        doc="`placeholder`, `synthetic` (full-size random weights, for benchmarks) or `production`; default: "
            "placeholder unless a production model path is set. Production refuses to start without a usable CUDA "
            "device.")
    placeholder_models_dir: Path = _setting("PLACEHOLDER_MODELS_DIR", REPO_ROOT / ".cache" / "placeholder-models",
        doc="Where placeholder models are built and cached.")
    synthetic_models_dir: Path = _setting("SYNTHETIC_MODELS_DIR", REPO_ROOT / ".cache" / "synthetic-models",
        doc="Where `python -m workers.placeholders.synthetic` writes the synthetic full-size models "
            "(MODEL_PROFILE=synthetic).")
    sdxl_model_path: str = _setting("SDXL_MODEL_PATH", "",
        doc="Production SDXL checkpoint: a diffusers directory or a single .safetensors file.")
    sdxl_config_dir: str = _setting("SDXL_CONFIG_DIR", "",
        doc="Local diffusers SDXL config directory used by single-file checkpoints (never a hub lookup); when "
            "empty, a `config/` folder next to the checkpoint; neither: `configuration.check` fails.")
    sdxl_vae_fp16_fix_path: str = _setting("SDXL_VAE_FP16_FIX_PATH", "",
        doc="Production: a local fp16-fix SDXL VAE folder (madebyollin/sdxl-vae-fp16-fix); with it the VAE decodes "
            "in fp16 without the fp32 upcast.")
    wan_t2v_model_path: str = _setting("WAN_T2V_MODEL_PATH", "",
        doc="Production Wan2.1 text-to-video diffusers directory.")
    wan_vace_model_path: str = _setting("WAN_VACE_MODEL_PATH", "",
        doc="Production Wan2.1 VACE diffusers directory (reference-frame modes).")
    qwen_base_model_path: str = _setting("QWEN_BASE_MODEL_PATH", "", doc="Production Qwen2.5 base model directory.")
    qwen_instruct_model_path: str = _setting("QWEN_INSTRUCT_MODEL_PATH", "",
        doc="Production Qwen2.5 instruct model directory.")
    output_dir: Path = _setting("OUTPUT_DIR", Path("outputs"), doc="Root of the local storage backend.")
    state_dir: Path = _setting("STATE_DIR", Path(""), doc="Job journal directory (default: OUTPUT_DIR/.jobs).")
    storage_backend: str = _setting("STORAGE_BACKEND", "local",
        doc="`local` (files under OUTPUT_DIR) or `supabase` (Supabase Storage).")
    supabase_url: str = _setting("SUPABASE_URL", "", doc="Supabase project URL (storage, callbacks, registration).")
    supabase_service_key: str = _setting("SUPABASE_SERVICE_KEY", "", "SUPABASE_SERVICE_ROLE_KEY", secret=True,
        doc="Service key: bearer for storage, callbacks and registration.")
    supabase_bucket: str = _setting("SUPABASE_BUCKET", "workspace-temp", doc="Storage bucket for outputs.")
    callback_url: str = _setting("CALLBACK_URL", "",
        doc="Terminal job callbacks; default ${SUPABASE_URL}/functions/v1/job-callback.")
    callback_secret: str = _setting("JOB_CALLBACK_SECRET", "", "CALLBACK_SECRET", secret=True,
        doc="The app's callback secret: callbacks carry X-Callback-Signature: sha256=<hex HMAC-SHA256 of the "
            "body>. MODEL_PROFILE=production with REDIS_URL or a callback URL refuses to start without it (the app "
            "answers 401 to unsigned callbacks).")
    callback_processing: bool = _setting("CALLBACK_PROCESSING", False,
        doc="Also send a `processing` callback when a job starts (one attempt, never after the terminal one).")
    redis_url: str = _setting("REDIS_URL", "", secret=True,
        doc="`redis://` or `rediss://` (TLS) with the password: the SDXL and WAN workers take the app's jobs from "
            "Redis.")
    sdxl_queue: str = _setting("SDXL_QUEUE", "sdxl_queue", doc="Redis list of the SDXL worker's jobs.")
    wan_queue: str = _setting("WAN_QUEUE", "wan_queue", doc="Redis list of the WAN worker's jobs.")
    queue_consumer_id: str = _setting("QUEUE_CONSUMER_ID", "",
        doc="Prefix of this pod's queue consumer ids (default RUNPOD_POD_ID, else the hostname).")
    queue_heartbeat_ttl_s: float = _setting("QUEUE_HEARTBEAT_TTL_S", 30.0,
        doc="Lifetime of a consumer's heartbeat; the entries of a consumer silent this long go back to the queue.")
    queue_reap_interval_s: float = _setting("QUEUE_REAP_INTERVAL_S", 15.0,
        doc="How often a consumer looks for consumers without a heartbeat.")
    queue_block_s: float = _setting("QUEUE_BLOCK_S", 1.0, doc="How long one BLMOVE waits for an entry.")
    queue_max_deliveries: int = _setting("QUEUE_MAX_DELIVERIES", 3,
        doc="Takes of one queued job (its takers died) before it is failed instead of run again.")
    callback_max_attempts: int = _setting("CALLBACK_MAX_ATTEMPTS", 0,
        doc="Cap on delivery attempts per callback; 0: none, CALLBACK_RETRY_HORIZON_S decides.")
    callback_backoff_s: float = _setting("CALLBACK_BACKOFF_S", 1.0,
        doc="First retry delay; doubles per attempt up to CALLBACK_BACKOFF_MAX_S.")
    callback_backoff_max_s: float = _setting("CALLBACK_BACKOFF_MAX_S", 60.0,
        doc="Longest delay between two attempts of one callback.")
    callback_retry_horizon_s: float = _setting("CALLBACK_RETRY_HORIZON_S", 86400.0,
        doc="How long a callback is retried after the job ended (across restarts: the journal keeps it) before it "
            "is given up.")
    job_retention_days: float = _setting("JOB_RETENTION_DAYS", 14.0,
        doc="Finished jobs older than this are removed from memory and the journal (0: kept forever).")
    callback_timeout_s: float = _setting("CALLBACK_TIMEOUT_S", 10.0, doc="Timeout of one callback POST.")
    job_deadline_image_s: float = _setting("JOB_DEADLINE_IMAGE_S", 0.0,
        doc="Execution deadline of an image job, from its start (memory lease and model load included): past it "
            "the job is stopped at the next step and fails `timeout`. 0: the profile's default (production and "
            "synthetic 180, placeholder 120).")
    job_deadline_video_s: float = _setting("JOB_DEADLINE_VIDEO_S", 0.0,
        doc="Execution deadline of a video job, as JOB_DEADLINE_IMAGE_S. 0: the profile's default (production and "
            "synthetic 500, placeholder 240).")
    job_deadline_grace_s: float = _setting("JOB_DEADLINE_GRACE_S", 30.0,
        doc="How long an engine may take to stop after its job's deadline; past it the job fails `timeout` and the "
            "worker's process exits so that gunicorn starts a fresh one (docs/OPERATIONS.md).")
    app_cancel_check: bool = _setting("APP_CANCEL_CHECK", True,
        doc="Read each queued job's status in the app's `jobs` table (SUPABASE_URL, service key) before it starts "
            "and while it runs: a job the app marked `cancelled` is not run or is stopped. Off, or without "
            "SUPABASE_URL and the service key: never read.")
    app_cancel_check_interval_s: float = _setting("APP_CANCEL_CHECK_INTERVAL_S", 5.0,
        doc="Seconds between two reads of a running job's status (at least 1).")
    max_body_mb: float = _setting("MAX_BODY_MB", 10.0, doc="Request body cap; larger bodies get 413.")
    app_video_size: str = _setting("APP_VIDEO_SIZE", "native",
        doc="`native`: the app's video `resolution` (1024x576, 576x1024, 1024x1024) is an aspect request, rendered "
            "at the WAN checkpoint's native size class: `native_size` of `wan_t2v`/`wan_vace` in "
            "configuration/models.json (landscape), its transpose for a portrait request, a square of the same "
            "pixel budget (nearest multiple of 16) for a square one: 832x480, 480x832, 624x624 in production, "
            "112x64, 64x112, 80x80 on the placeholder profile. `requested`: rendered at the requested size (scaled "
            "down by 4 on the placeholder profile). Both sizes are in the job's `size`.")
    fetch_allow_private: bool = _setting("FETCH_ALLOW_PRIVATE", False,
        doc="Allow reference URLs on loopback/private/link-local addresses (tests only).")
    fetch_max_mb: float = _setting("FETCH_MAX_MB", 20.0, doc="Size cap of a fetched reference image.")
    fetch_timeout_s: float = _setting("FETCH_TIMEOUT_S", 15.0,
        doc="Total time allowed to fetch a reference image: one deadline for the whole fetch, held on every read; "
            "connecting to an address waits at most 5 s of it.")
    enabled_workers: str = _setting("ENABLED_WORKERS", "sdxl,chat,wan",
        doc="Workers the orchestrator starts (comma-separated; an unknown name stops the start).")
    orchestrator_url: str = _setting("ORCHESTRATOR_URL", "",
        doc="Memory broker a worker leases from (set by the orchestrator for its children).")
    vram_budget_mb: int = _setting("VRAM_BUDGET_MB", 0,
        doc="Memory budget on a machine without a GPU (0: 48 GB nominal).")
    vram_reserve_mb: int = _setting("VRAM_RESERVE_MB", 2048, doc="Memory kept free for activations.")
    lease_timeout_s: float = _setting("LEASE_TIMEOUT_S", 120.0, doc="How long a lease request waits for busy workers.")
    lease_load_timeout_s: float = _setting("LEASE_LOAD_TIMEOUT_S", 1800.0,
        doc="A lease granted for a load that has not finished after this long is dropped.")
    broker_token: str = _setting("BROKER_TOKEN", "", secret=True,
        doc="Set by the orchestrator for its workers: their credential on its internal memory-broker port (never "
            "the public key).")
    shutdown_grace_s: float = _setting("SHUTDOWN_GRACE_S", 60.0, doc="How long running jobs may finish after SIGTERM.")
    worker_ready_timeout_s: float = _setting("WORKER_READY_TIMEOUT_S", 300.0,
        doc="How long the orchestrator waits for a worker's /ready.")
    restart_limit: int = _setting("RESTART_LIMIT", 5, doc="Restarts of a dying worker before it is marked failed.")
    restart_backoff_s: float = _setting("RESTART_BACKOFF_S", 1.0, doc="First restart delay; doubles per restart.")
    restart_backoff_max_s: float = _setting("RESTART_BACKOFF_MAX_S", 30.0, doc="Cap on the restart delay.")
    restart_reset_s: float = _setting("RESTART_RESET_S", 600.0,
        doc="A worker that stays ready this long has its count of consecutive failures reset.")
    enhance_timeout_s: float = _setting("ENHANCE_TIMEOUT_S", 300.0,
        doc="How long the orchestrator waits for the chat worker to enhance a prompt.")
    orchestrator_threads: int = _setting("ORCHESTRATOR_THREADS", 128,
        doc="HTTP threads of the orchestrator's public port; requests waiting with ?wait= may hold all but 8 (the "
            "memory broker has threads of its own).")
    gunicorn_threads: int = _setting("GUNICORN_THREADS", 16,
        doc="HTTP threads per worker process; requests waiting with ?wait= may hold all but 8.")
    chat_batch_size: int = _setting("CHAT_BATCH_SIZE", 8,
        doc="Most chat requests generated together in one batch; also the most prompt enhancements the "
            "orchestrator has in flight at once.")
    chat_batch_window_ms: int = _setting("CHAT_BATCH_WINDOW_MS", 10,
        doc="How long the chat batcher waits to fill a batch.")
    chat_max_queue: int = _setting("CHAT_MAX_QUEUE", 256,
        doc="Chat requests waiting per model before new ones get 503.")
    chat_batching: str = _setting("CHAT_BATCHING", "continuous",
        doc="`continuous` (requests join a running batch as rows finish) or `static` (a batch runs until its "
            "longest row ends).")
    torch_compile: bool = _setting("TORCH_COMPILE", False, doc="torch.compile the UNet/transformer on CUDA.")
    wan_offload: bool = _setting("WAN_OFFLOAD", False,
        doc="Run the WAN pipelines with model CPU offload (one component on the GPU at a time, umT5 on the CPU), "
            "leasing each model's `offload_memory_mb` (models.json): for cards smaller than a WAN model's "
            "footprint. CUDA only: a WAN worker on a CPU-only machine refuses to start with it.")
    register_with_supabase: bool = _setting("REGISTER_WITH_SUPABASE", True,
        doc="Register worker URLs with Supabase when SUPABASE_URL is set.")
    runpod_pod_id: str = _setting("RUNPOD_POD_ID", "",
        doc="Set by RunPod; the default public URL of a worker is https://{pod_id}-{port}.proxy.runpod.net.")
    public_url_template: str = _setting("PUBLIC_URL_TEMPLATE", "",
        doc="Public URL of a registered worker on hosts other than RunPod, with `{worker}`, `{port}` and "
            "`{pod_id}` (RUNPOD_POD_ID) filled in; empty: the RunPod proxy form when RUNPOD_POD_ID is set, else "
            "none.")
    wan_public_url: str = _setting("WAN_PUBLIC_URL", "",
        doc="The WAN worker's public URL as registered with `update-worker-url` (wins over PUBLIC_URL_TEMPLATE).")
    chat_public_url: str = _setting("CHAT_PUBLIC_URL", "",
        doc="The chat worker's public URL as registered with `register-chat-worker` (wins over "
            "PUBLIC_URL_TEMPLATE).")
    registration_backoff_s: float = _setting("REGISTRATION_BACKOFF_S", 2.0,
        doc="First delay between two registration attempts; doubles per attempt up to REGISTRATION_BACKOFF_MAX_S. "
            "Attempts go on until the worker is registered.")
    registration_backoff_max_s: float = _setting("REGISTRATION_BACKOFF_MAX_S", 60.0,
        doc="Longest delay between two registration attempts.")
    registration_refresh_s: float = _setting("REGISTRATION_REFRESH_S", 600.0,
        doc="A registered worker registers again this often (the app's row may be overwritten or lost; 0: only at "
            "each worker start).")
    health_check_workers_s: float = _setting("HEALTH_CHECK_WORKERS_S", 60.0,
        doc="How often the orchestrator invokes the app's `health-check-workers` function (service key) so the "
            "chat worker's health entry stays fresh without a browser; only while a chat worker is registered (0: "
            "never).")
    log_level: str = _setting("LOG_LEVEL", "INFO", doc="Python log level.")
    log_format: str = _setting("LOG_FORMAT", "json",
        doc="`json` (one JSON object per line: time, level, logger, process, worker, job_id, stage, request_id) or "
            "`text` (the same, readable in a terminal).")
    metrics_public: bool = _setting("METRICS_PUBLIC", False,
        doc="Serve `GET /metrics` without the bearer key (a Prometheus scraper inside the pod's network); every "
            "other route keeps it.")
    provenance_sidecar: bool | None = _setting("PROVENANCE_SIDECAR", None,
        doc="Store each asset's provenance as a `{i}.json` file next to it (`application/json`); off, the "
            "provenance is only in the asset's `metadata.provenance` and `provenance_url` is null. Unset: on with "
            "STORAGE_BACKEND=local, off with `supabase` (the app's `workspace-temp` bucket refuses "
            "application/json). A sidecar the storage refuses is skipped with a warning, never a failed job.")
    content_tier_default: str = _setting("CONTENT_TIER_DEFAULT", "sfw",
        doc="Content tier (`sfw` or `nsfw`) of a request that names none (docs/POLICY.md); the hard floor applies "
            "in both.")
    safety_classifier_path: str = _setting("SAFETY_CLASSIFIER_PATH", "",
        doc="Output image classifier (a transformers image-classification folder) for sfw image and video jobs; "
            "placeholder profile: the built placeholder.")
    safety_threshold: float = _setting("SAFETY_THRESHOLD", 0.5,
        doc="An sfw output whose unsafe-label probability exceeds this is not stored; the job fails (0-1).")
    text_safety_classifier_path: str = _setting("TEXT_SAFETY_CLASSIFIER_PATH", "",
        doc="Text classifier (a transformers sequence-classification folder) that reads prompts and chat text next "
            "to the word rules; placeholder profile: the built placeholder; empty in production: checks are "
            "recorded as not_run.")
    text_safety_threshold: float = _setting("TEXT_SAFETY_THRESHOLD", 0.5,
        doc="A text whose sexual-label probability exceeds this is refused: as the floor where the rules see a "
            "minor, in sfw also alone (0-1).")

    @field_validator("*", mode="before")
    @classmethod
    def read_text(cls, value: Any, info: ValidationInfo) -> Any:
        """A setting given as text (the environment's form) is read with the operator's words and messages
        (`_PARSERS`); other values are left to the field's type."""
        if not isinstance(value, str):
            return value
        field = cls.model_fields[info.field_name or ""]
        parse = _PARSERS.get(field.annotation)
        return parse(value, _env_names(field)[0]) if parse else value

    # One-field checks. pydantic reports the first failing field in the order the fields are declared.
    check_model_profile = _one_of("model_profile", "MODEL_PROFILE", ("placeholder", "synthetic", "production"))
    check_storage_backend = _one_of("storage_backend", "STORAGE_BACKEND", ("local", "supabase"))
    check_app_video_size = _one_of("app_video_size", "APP_VIDEO_SIZE", ("native", "requested"))
    check_chat_batching = _one_of("chat_batching", "CHAT_BATCHING", ("continuous", "static"))
    check_log_format = _one_of("log_format", "LOG_FORMAT", ("json", "text"))
    check_content_tier = _one_of("content_tier_default", "CONTENT_TIER_DEFAULT", ("sfw", "nsfw"))
    # A key of spaces would pass "is set" and match a bearer header of spaces; surrounding whitespace can
    # never be sent in a header (it is trimmed), so such a key is a mistake.
    check_api_key = _require(("api_key",), lambda key: key == key.strip(),
                             "WORKER_API_KEY is blank or has leading/trailing whitespace")
    check_extra_keys = _require(("api_keys_extra",),
                                lambda keys: not keys or all(k and k == k.strip() for k in keys.split(",")),
                                "WORKER_API_KEYS has an empty key or one with surrounding whitespace")
    check_redis_url = _require(("redis_url",), lambda url: not url or url.startswith(("redis://", "rediss://")),
                               "REDIS_URL must be a redis:// or rediss:// URL")
    check_queue_timings = _require(("queue_heartbeat_ttl_s", "queue_reap_interval_s", "queue_block_s"),
                                   lambda seconds: seconds > 0,
                                   "QUEUE_HEARTBEAT_TTL_S, QUEUE_REAP_INTERVAL_S and QUEUE_BLOCK_S must be > 0")
    check_queue_max_deliveries = _require(("queue_max_deliveries",), lambda takes: takes >= 1,
                                          "QUEUE_MAX_DELIVERIES must be >= 1")
    check_retention = _require(("job_retention_days",), lambda days: days >= 0, _RETENTION_MESSAGE)
    check_lease_load_timeout = _require(("lease_load_timeout_s",), lambda seconds: seconds > 0, _RETENTION_MESSAGE)
    check_deadlines = _require(("job_deadline_image_s", "job_deadline_video_s"), lambda seconds: seconds >= 0,
                               _DEADLINES_MESSAGE)
    check_deadline_grace = _require(("job_deadline_grace_s",), lambda seconds: seconds > 0, _DEADLINES_MESSAGE)
    check_cancel_interval = _require(("app_cancel_check_interval_s",), lambda seconds: seconds >= 1.0,
                                     "APP_CANCEL_CHECK_INTERVAL_S must be at least 1 (the app's database is read at "
                                     "most that often per running job)")
    check_chat_counts = _require(("chat_batch_size", "chat_max_queue"), lambda count: count >= 1, _CHAT_MESSAGE)
    check_chat_window = _require(("chat_batch_window_ms",), lambda ms: ms >= 0, _CHAT_MESSAGE)
    check_periodic_calls = _require(("registration_refresh_s", "health_check_workers_s"), lambda seconds: seconds >= 0,
                                    "REGISTRATION_REFRESH_S and HEALTH_CHECK_WORKERS_S must be >= 0 (0: off)")
    check_safety_threshold = _require(("safety_threshold",), lambda p: 0.0 <= p <= 1.0,
                                      "SAFETY_THRESHOLD must be between 0 and 1, got {value}")
    check_text_safety_threshold = _require(("text_safety_threshold",), lambda p: 0.0 <= p <= 1.0,
                                           "TEXT_SAFETY_THRESHOLD must be between 0 and 1, got {value}")

    @field_validator("wan_public_url", "chat_public_url", "public_url_template")
    @classmethod
    def check_public_url(cls, url: str, info: ValidationInfo) -> str:
        """A public URL the app is sent at registration: http(s), and a template with known fields only."""
        if not _starting(info):
            return url
        name = _env_names(cls.model_fields[info.field_name or ""])[0]
        if url and not url.startswith(("https://", "http://")):
            raise SettingsError(f"{name} must be an http:// or https:// URL, got {url!r}")
        if info.field_name == "public_url_template" and url:
            try:
                url.format(worker="wan", port=1, pod_id="pod")
            except (KeyError, IndexError, ValueError) as exc:
                raise SettingsError(f"PUBLIC_URL_TEMPLATE may use {{worker}}, {{port}} and {{pod_id}} only "
                                    f"({exc!r})") from None
        return url

    # Cross-field checks, in the order they are reported.
    @model_validator(mode="after")
    def supabase_storage_has_credentials(self, info: ValidationInfo) -> Settings:
        if _starting(info) and self.storage_backend == "supabase" and not (
                self.supabase_url and self.supabase_service_key):
            raise SettingsError("STORAGE_BACKEND=supabase needs SUPABASE_URL and SUPABASE_SERVICE_KEY")
        return self

    @model_validator(mode="after")
    def callback_retries_are_bounded(self, info: ValidationInfo) -> Settings:
        if _starting(info) and (not 0 < self.callback_backoff_s <= self.callback_backoff_max_s
                                or self.callback_retry_horizon_s <= 0):
            raise SettingsError("CALLBACK_BACKOFF_S must be > 0 and <= CALLBACK_BACKOFF_MAX_S, "
                                "CALLBACK_RETRY_HORIZON_S > 0")
        return self

    @model_validator(mode="after")
    def extra_keys_have_the_pod_key(self, info: ValidationInfo) -> Settings:
        if _starting(info) and self.api_keys_extra and not self.api_key:
            raise SettingsError("WORKER_API_KEYS adds keys to WORKER_API_KEY: set WORKER_API_KEY too "
                                "(the pod's own processes authenticate with it)")
        return self

    @model_validator(mode="after")
    def public_keys_are_long(self, info: ValidationInfo) -> Settings:
        short = [k for k in self.api_keys if len(k) < MIN_PUBLIC_KEY_CHARS] if _starting(info) else []
        if short and not self.bind_is_loopback:
            raise SettingsError(
                f"BIND_HOST={self.bind_host} is public and {len(short)} configured key(s) are shorter than "
                f"{MIN_PUBLIC_KEY_CHARS} characters (WORKER_API_KEY / WORKER_API_KEYS): refusing to start")
        return self

    @model_validator(mode="after")
    def registration_backoff_is_ordered(self, info: ValidationInfo) -> Settings:
        if _starting(info) and not 0 < self.registration_backoff_s <= self.registration_backoff_max_s:
            raise SettingsError("REGISTRATION_BACKOFF_S must be > 0 and <= REGISTRATION_BACKOFF_MAX_S")
        return self

    @model_validator(mode="after")
    def url_template_pod_id_is_known(self, info: ValidationInfo) -> Settings:
        if _starting(info) and "{pod_id}" in self.public_url_template and not self.runpod_pod_id:
            raise SettingsError("PUBLIC_URL_TEMPLATE uses {pod_id} and RUNPOD_POD_ID is not set")
        return self

    @model_validator(mode="after")
    def production_callbacks_are_signed(self, info: ValidationInfo) -> Settings:
        if (_starting(info) and self.model_profile == "production" and not self.callback_secret
                and (self.redis_url or self.effective_callback_url)):
            configured = ("REDIS_URL (queue intake)" if self.redis_url
                          else "a callback URL (SUPABASE_URL or CALLBACK_URL)")
            raise SettingsError(
                f"MODEL_PROFILE=production with {configured} needs JOB_CALLBACK_SECRET: the app's job-callback "
                "refuses unsigned callbacks (401), so every job's result would be lost; refusing to start")
        return self

    @model_validator(mode="after")
    def public_bind_has_a_key(self, info: ValidationInfo) -> Settings:
        if _starting(info) and not self.api_key and not self.bind_is_loopback:
            raise SettingsError(
                f"WORKER_API_KEY is not set and BIND_HOST={self.bind_host} is not a loopback address: "
                "refusing to serve unauthenticated endpoints on a public interface")
        return self

    if not TYPE_CHECKING:  # mypy keeps the keyword signature pydantic derives from the fields
        def __init__(self, **values: Any) -> None:
            """The keywords and the defaults only, typed, unchecked (`_STARTING`): BaseSettings' own __init__
            would gather the process environment (and .env files) at every construction, which tests (they
            build Settings often) must not see; `from_env` is the one reader of the environment. Marked as
            pydantic's base __init__ so that `model_validate` (with its context) does not go through here."""
            try:
                BaseModel.__init__(self, **values)
            except ValidationError as exc:
                raise _settings_error(exc, type(self)) from None

        __init__.__pydantic_base_init__ = True

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """The settings from `environ` (default: the process environment), by each field's variable names
        (`validation_alias`). An empty variable means the default, except for a text setting (empty is a
        value there); a legacy name and the name both set to different values is refused."""
        env = os.environ if environ is None else environ
        raw: dict[str, Any] = {}  # Any: text, read by each field's validators
        for names, is_text in _VARIABLES:
            found = _variable(env, names)
            if found and (found[1] != "" or is_text):
                raw[found[0]] = found[1]
        if not raw.get("MODEL_PROFILE"):
            production = any(raw.get(_env_names(cls.model_fields[p])[0]) for p in _PRODUCTION_PATHS)
            raw["MODEL_PROFILE"] = "production" if production else "placeholder"
        return cls._checked(raw)  # by the variables' names: pydantic takes a field's first name given

    @classmethod
    def _checked(cls, values: Mapping[str, Any]) -> Settings:
        """`values` typed and refused by every check, as a starting process needs them."""
        try:
            return cls.model_validate(values, context=_STARTING)
        except ValidationError as exc:
            raise _settings_error(exc, cls) from None

    def replace(self, **changes: Any) -> Settings:
        """A copy with `changes`, typed as a new instance is. Any: each keyword takes its own field's type,
        which one annotation cannot say."""
        return type(self)(**{**self._values(), **changes})

    def _values(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in type(self).model_fields}

    def check(self) -> None:
        """Refuse these values if a process could not start with them (what `from_env` refuses): for
        settings built with keywords, which are typed but not checked."""
        self._checked(self._values())

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



def _variable(env: Mapping[str, str], names: tuple[str, ...]) -> tuple[str, str] | None:
    """The variable a setting is read from: the first of its `names` set to a non-empty value, else its own
    name when set (empty); None when unset. Two of them set to different values is refused."""
    if len(names) == 1:
        value = env.get(names[0])
        return None if value is None else (names[0], value)
    given = [(name, env[name]) for name in names if env.get(name)]
    if len({value for _name, value in given}) > 1:
        raise SettingsError(f"{given[-1][0]} and {names[0]} are the same setting and are set to different values")
    if given:
        return given[0]
    return (names[0], env[names[0]]) if names[0] in env else None


# Each field's variable names and whether it is text (empty is a value there), for `from_env`.
_VARIABLES = tuple((_env_names(field), field.annotation is str) for field in Settings.model_fields.values())

# variable -> (field, type, description), derived from the fields in declaration order: what the generated
# table lists (`setting_reference`).
_ENV: dict[str, tuple[str, object, str]] = {
    _env_names(field)[0]: (attr, field.annotation, field.description or "")
    for attr, field in Settings.model_fields.items()}


@dataclass(frozen=True)
class SettingReference:
    """One setting as the generated reference shows it: its variable, the other names read for it, its
    default (the field's default in `Settings`) and its description."""

    name: str
    aliases: tuple[str, ...]
    default: object
    description: str


def _legacy_names(name: str, attr: str) -> tuple[str, ...]:
    names = _env_names(Settings.model_fields[attr])
    return names[1:] if names[0] == name else ()


def setting_reference() -> list[SettingReference]:
    """Every setting in declaration order, for the generated table in docs/CONFIGURATION.md."""
    return [SettingReference(name, _legacy_names(name, attr), Settings.model_fields[attr].default, doc)
            for name, (attr, _type, doc) in _ENV.items()]


def documented_variables() -> dict[str, tuple[object, str]]:
    """name -> (default, description), for docs and the docs-sync test (legacy names included)."""
    documented: dict[str, tuple[object, str]] = {}
    for s in setting_reference():
        documented[s.name] = (s.default, s.description)
        documented.update({alias: ("", f"Alias of `{s.name}`.") for alias in s.aliases})
    return documented
