"""pytest-benchmark suites. ``pytest --benchmark-only`` times them; plain ``pytest`` runs
each once as a smoke test (``--benchmark-disable`` is in the default options)."""
import numba
import pytest


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: the 1e7-element cases")


@pytest.fixture(scope="session")
def roofline_cache():
    return {}


@pytest.fixture(autouse=True)
def _all_threads():
    n = numba.config.NUMBA_NUM_THREADS
    numba.set_num_threads(n)
    yield
