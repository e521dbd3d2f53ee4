import os
from pathlib import Path

import pytest

from tests.support import REPO, CallbackReceiver, PodFactory

if os.environ.get("PYTEST_XDIST_WORKER"):
    # A parallel run: several pytest processes, and the workers and pods they start, share the cores. One torch
    # thread each (inherited by the processes started with tests.support.base_env's environment), so that no
    # thread spins waiting for a core another process holds. A serial run keeps torch's default.
    os.environ.setdefault("OMP_NUM_THREADS", "1")

TIERS = ("unit", "app", "stack", "e2e")  # the folders under tests/, each a marker of pytest.ini


# The modules on the session's shared pod (`shared_pod` below), in the order they run. Listed because a
# parallel run's controller groups them before any test is collected (pytest_xdist_make_scheduler); collection
# checks the list. The fuzzing runs last: the jobs it submits may be any size the schemas allow, and some may
# still be running on the pod when it ends, behind which no other module's job should wait.
SHARED_POD_MODULES = ("tests/stack/test_connections.py", "tests/stack/test_chat_nulls.py",
                      "tests/e2e/test_ops_page.py", "tests/e2e/test_fuzz.py")
# The modules that take longest (serial wall time, benchmarks/RESULTS.md, "the test suite"), handed out first in a
# parallel run so that none of them starts near its end. Only the order depends on this list.
LONGEST_FIRST = ("tests/stack/test_faults.py", "tests/stack/test_job_deadlines.py",
                 "tests/stack/test_routing_monitor.py", "tests/e2e/test_gpu_suite.py",
                 "tests/stack/test_queue_worker.py", "tests/stack/test_orchestrator_stack.py",
                 "tests/stack/test_registration.py", "tests/stack/test_app_contract.py",
                 "tests/stack/test_faults_queue.py", "tests/stack/test_hardening_http.py",
                 "tests/e2e/test_gpu_suite_environment.py")


# The project's packages, imported by every process a test starts (see pytest_configure).
PROJECT_PACKAGES = ("configuration", "common", "workers", "orchestrator", "benchmarks", "tests")


def pytest_configure(config):
    """The project's modules compiled to bytecode once, before any test starts a process. Every worker,
    orchestrator and command-line process a test starts imports them, and where PYTHONDONTWRITEBYTECODE is
    set (this machine's environment sets it) none of them writes what it compiled, so each compiled the
    project again: about 0.3 s of CPU per worker start. Files whose bytecode is current are left as they are;
    git ignores __pycache__/."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        return  # the controller compiled them
    import compileall

    for package in PROJECT_PACKAGES:
        if not compileall.compile_dir(REPO / package, quiet=1):
            raise pytest.UsageError(f"{package}/ does not compile (python -m compileall {package})")


def pytest_collection_modifyitems(config, items):
    """Every test carries the marker of its tier, the folder it stands in (`-m "unit or app"` selects by
    it); a test module outside the four folders is a collection error naming it, not an unmarked test.
    Serial: the tiers run in order, unit first; the modules on the shared pod run last, together, in the
    order of SHARED_POD_MODULES, so that pod is up only while they run (pytest ends a session fixture with
    the session). Parallel (`-n N`, an xdist worker): the shared pod's modules (in that order) and the
    longest ones first, the short tiers last, to fill in."""
    tests_dir = Path(__file__).resolve().parent
    tier = {}
    for item in items:
        parts = item.path.resolve().relative_to(tests_dir).parts
        if len(parts) < 2 or parts[0] not in TIERS:
            raise pytest.UsageError(f"{item.nodeid}: a test module belongs in one of tests/{{{','.join(TIERS)}}}/ "
                                    "(unit: pure logic; app: in-process apps and tiny models; stack: real "
                                    "processes; e2e: fuzz, browser, README, the GPU suite script)")
        item.add_marker(getattr(pytest.mark, parts[0]))
        tier[item] = TIERS.index(parts[0])
    on_shared_pod = {module_of(item.nodeid) for item in items if "shared_pod" in item.fixturenames}
    unlisted = on_shared_pod - set(SHARED_POD_MODULES)
    if unlisted:
        raise pytest.UsageError(f"{sorted(unlisted)} use the shared pod: add them to SHARED_POD_MODULES "
                                "(tests/conftest.py)")
    if os.environ.get("PYTEST_XDIST_WORKER"):
        items.sort(key=lambda item: _parallel_rank(module_of(item.nodeid), tier[item]))
    else:
        items.sort(key=lambda item: (module_of(item.nodeid) in on_shared_pod, _shared_rank(module_of(item.nodeid)),
                                     tier[item]))  # stable within


def module_of(nodeid: str) -> str:
    return nodeid.split("::", 1)[0]


def _shared_rank(module: str) -> int:
    return SHARED_POD_MODULES.index(module) if module in SHARED_POD_MODULES else 0


def _parallel_rank(module: str, tier: int) -> tuple:
    if module in SHARED_POD_MODULES:
        return (0, _shared_rank(module))
    if module in LONGEST_FIRST:
        return (1, LONGEST_FIRST.index(module))
    return (2, -tier)  # e2e, stack, app, unit


def pytest_xdist_make_scheduler(config, log):
    """`pytest -n N` hands out whole modules (their module-scoped pods and receivers start once), the
    modules on the shared pod as one unit (one shared pod, not one per process), in the order the workers
    collected them (above), each process asking for the next unit as it runs out."""
    from xdist.scheduler import LoadScopeScheduling

    class ModuleScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = module_of(nodeid)
            return "shared-pod" if module in SHARED_POD_MODULES else module

    config.option.loadscopereorder = False  # keep the collected order: longest first
    return ModuleScheduling(config, log)


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
    """A callback receiver for one test (tests.support.CallbackReceiver)."""
    r = CallbackReceiver()
    yield r
    r.close()


@pytest.fixture(scope="module")
def module_receiver():
    """A callback receiver for the module's processes (a pod's own: start_pod(callbacks=True))."""
    r = CallbackReceiver()
    yield r
    r.close()


@pytest.fixture(scope="module")
def standin():
    """The module's stand-in for the app's Supabase (tests/supabase_standin.py): storage, functions, the
    `jobs` table and the signed job-callback it checks."""
    from tests.supabase_standin import SupabaseStandIn

    with SupabaseStandIn() as server:
        yield server


@pytest.fixture(scope="module")
def redis_server():
    """A real redis-server on a free port for the module (fails, not skips, where none is installed)."""
    from tests.redis_support import RedisServer

    server = RedisServer().start()
    yield server
    server.close()


@pytest.fixture(scope="module")
def start_pod(tmp_path_factory, placeholder_dir):
    """The pod factory: start_pod(name, workers=(...), callbacks=True, ready=True, SETTING=value, env={...})
    starts `python -m orchestrator` with its workers (tests.support.PodFactory); every pod the module
    started and left running is stopped after its last test."""
    factory = PodFactory(tmp_path_factory, placeholder_dir)
    yield factory.start
    factory.close()


@pytest.fixture(scope="session")
def shared_pod(tmp_path_factory, placeholder_dir):
    """One pod (SDXL, WAN and chat workers, FETCH_TIMEOUT_S=2) for the read-only modules of the session:
    they may submit jobs and open connections but never stop, restart or reconfigure it, and never
    count on the records or metrics being theirs alone. Modules that kill or restart processes, need
    other settings or count what the pod holds start their own with `start_pod`."""
    factory = PodFactory(tmp_path_factory, placeholder_dir)
    yield factory.start("shared-pod", FETCH_TIMEOUT_S=2)
    factory.close()
