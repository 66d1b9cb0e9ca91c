"""pytest-benchmark suites. ``pytest --benchmark-only`` (or ``--benchmark-enable``) times
them; plain ``pytest`` runs each once as a smoke test, as if ``--benchmark-disable`` were given
(it cannot sit in the default options: pytest-benchmark rejects it beside --benchmark-only)."""
import numba
import pytest

from fastopt import config

# back-to-back steps: let OpenMP threads spin briefly between calls (fastopt.config.THREAD_WAIT);
# set before any kernel or torch starts a pool
config.set_thread_wait("bench")


@pytest.hookimpl(trylast=True)   # after pytest-benchmark created its session
def pytest_configure(config):
    config.addinivalue_line("markers", "slow: the 1e7-element cases")
    session = getattr(config, "_benchmarksession", None)
    if session is not None and not (config.getoption("benchmark_only")
                                    or config.getoption("benchmark_enable")):
        session.disabled = True


@pytest.fixture(scope="session")
def roofline_cache():
    return {}


@pytest.fixture(autouse=True)
def _all_threads():
    n = numba.config.NUMBA_NUM_THREADS
    numba.set_num_threads(n)
    yield
