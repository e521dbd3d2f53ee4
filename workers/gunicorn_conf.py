"""gunicorn settings for every worker: one process (the executor and its models live in it), threads
for HTTP, no --preload (CUDA does not survive a fork), and a graceful stop that lets jobs finish."""
import os

from configuration.settings import Settings

# Before any worker imports torch: the CUDA caching allocator grows segments instead of fragmenting into
# blocks it cannot return (less reserved-but-unallocated memory between jobs of different sizes). A value
# the operator set is kept.
os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")

_settings = Settings.from_env()

workers = 1
worker_class = "gthread"
threads = _settings.gunicorn_threads
preload_app = False
timeout = 120
graceful_timeout = int(_settings.shutdown_grace_s + 15)
keepalive = 5
accesslog = None
loglevel = _settings.log_level.lower()
# Every worker would otherwise share one default control socket path ($HOME/.gunicorn/gunicorn.ctl).
control_socket_disable = True


def worker_exit(server, worker):
    """Runs in the worker process as it stops (SIGTERM): let running and queued jobs finish."""
    from workers.http.app import current_state

    state = current_state()
    if state is not None:
        state.shutdown(_settings.shutdown_grace_s)
