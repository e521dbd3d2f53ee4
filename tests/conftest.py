import os
from pathlib import Path

import pytest

from tests.support import REPO, CallbackReceiver


@pytest.fixture(scope="session")
def placeholder_dir() -> Path:
    """Placeholder models, built once per machine and cached (rebuilt when library versions change)."""
    from workers.placeholders import ensure_placeholder_models

    root = Path(os.environ.get("PLACEHOLDER_MODELS_DIR", REPO / ".cache" / "placeholder-models"))
    return ensure_placeholder_models(root)


@pytest.fixture
def settings(tmp_path, placeholder_dir):
    from configuration.settings import Settings

    return Settings(placeholder_models_dir=placeholder_dir, output_dir=tmp_path / "outputs",
                    fetch_allow_private=True, callback_backoff_s=0.05)


@pytest.fixture
def receiver():
    r = CallbackReceiver()
    yield r
    r.close()


@pytest.fixture(scope="module")
def redis_server():
    """A real redis-server on a free port for the module (fails, not skips, where none is installed)."""
    from tests.redis_support import RedisServer

    server = RedisServer().start()
    yield server
    server.close()
