"""gunicorn settings for every worker: one process (the executor and its models live in it), threads
for HTTP, no --preload (CUDA does not survive a fork), and a graceful stop that lets jobs finish."""
import logging
import os
import sys

from common.logging import gunicorn_logconfig
from common.serve import CONNECTION_LIMIT, KEEPALIVE_S, ensure_open_files_limit
from configuration.settings import Settings

# Before any worker imports torch: the CUDA caching allocator grows segments instead of fragmenting into
# blocks it cannot return (less reserved-but-unallocated memory between jobs of different sizes). A value
# the operator set is kept.
os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")

_settings = Settings.from_env()

workers = 1
# gthread whose accepting loop reads each request's head: an idle or slow connection holds no thread
worker_class = "workers.gunicorn_worker.HeadBufferingWorker"
threads = _settings.gunicorn_threads
worker_connections = CONNECTION_LIMIT
ensure_open_files_limit(CONNECTION_LIMIT)  # the master's limit, inherited by its worker process
preload_app = False
timeout = 120
graceful_timeout = int(_settings.shutdown_grace_s + 15)
keepalive = KEEPALIVE_S
accesslog = None
loglevel = _settings.log_level.lower()


def _worker_name(argv: list[str]) -> str:
    """The worker this gunicorn serves, from its `--name ourvidz-<worker>` (common/serve.py)."""
    name = argv[argv.index("--name") + 1] if "--name" in argv[:-1] else "gunicorn"
    return name.removeprefix("ourvidz-")


# The master's own lines (booting, signals, worker exits) in the worker's log format.
logconfig_dict = gunicorn_logconfig(_worker_name(sys.argv), _settings.log_level, _settings.log_format)
# Every worker would otherwise share one default control socket path ($HOME/.gunicorn/gunicorn.ctl).
control_socket_disable = True


def worker_exit(server, worker):
    """Runs in the worker process as it stops (SIGTERM): let running and queued jobs finish. After a clean stop
    the process ends here, with status 0, without the interpreter's finalization: tearing down the modules of
    torch and the model libraries costs about a second of CPU per stop and settles nothing. By then the jobs
    have ended and their callbacks are delivered or journaled (every journal write is a whole-file replace),
    the Redis intake is closed, and the logs are flushed just below. A stop that is not clean (a boot error,
    an exception in the loop) leaves through gunicorn as before, with its own status."""
    from workers.http.app import current_state

    state = current_state()
    if state is not None:
        state.shutdown(_settings.shutdown_grace_s)
    if getattr(worker, "stopped_cleanly", False):
        logging.getLogger("workers.gunicorn_conf").info("worker process %d stopped cleanly; exiting with status 0",
                                                        os.getpid())
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
