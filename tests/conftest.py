import os
import sys

sys.path.insert(0, os.path.dirname(__file__))

import pytest  # noqa: E402


@pytest.fixture
def no_wait_policy(monkeypatch):
    """No thread wait policy in the environment (the variables blanked, which counts as unset),
    and config.PARALLEL_THRESHOLD recorded: whatever the code under test sets (the CLI sets a
    policy, which can move the threshold) is undone after the test. monkeypatch.delenv of an
    absent variable would not undo a later assignment, hence setenv(""). Returns a function
    that blanks them again."""
    from fastopt import config
    monkeypatch.setattr(config, "PARALLEL_THRESHOLD", config.PARALLEL_THRESHOLD)

    def blank():
        for var in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT"):
            monkeypatch.setenv(var, "")
    blank()
    return blank
