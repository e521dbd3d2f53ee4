import os
from pathlib import Path

import pytest

from tests.support import REPO, CallbackReceiver

TIERS = ("unit", "app", "stack", "e2e")  # the folders under tests/, each a marker of pytest.ini


def pytest_collection_modifyitems(config, items):
    """Every test carries the marker of its tier, the folder it stands in (`-m "unit or app"` selects by
    it); a test module outside the four folders is a collection error naming it, not an unmarked test."""
    tests_dir = Path(__file__).resolve().parent
    for item in items:
        parts = item.path.resolve().relative_to(tests_dir).parts
        if len(parts) < 2 or parts[0] not in TIERS:
            raise pytest.UsageError(f"{item.nodeid}: a test module belongs in one of tests/{{{','.join(TIERS)}}}/ "
                                    "(unit: pure logic; app: in-process apps and tiny models; stack: real "
                                    "processes; e2e: fuzz, browser, README, the GPU suite script)")
        item.add_marker(getattr(pytest.mark, parts[0]))


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
