"""The thread policy fastopt applies to Numba's OpenMP pool, checked in fresh processes (the
policy is fixed when the pool starts). libgomp prints the settings it actually read when
``OMP_DISPLAY_ENV=VERBOSE`` is set, so these tests read the pool's real spin count, not an
echo of fastopt's configuration. Nothing here is timed."""
import json
import os
import re
import subprocess
import sys

import pytest

from helpers import ROOT

STEP = """
import json, os
import numpy as np
import fastopt
{before}
p = np.ones(fastopt.config.PARALLEL_THRESHOLD + 1, np.float32); g = p.copy()
fastopt.adam_step(fastopt.AdamBuffers.zeros(p, g))     # parallel: starts the pool
print(json.dumps({{"report": fastopt.config.thread_report(),
                  "threshold": fastopt.config.PARALLEL_THRESHOLD,
                  "env": {{v: os.environ.get(v) for v in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}}}}))
"""


def _run(env_extra=None, before=""):
    env = {k: v for k, v in os.environ.items()
           if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "FASTOPT_OMP_SPINCOUNT",
                        "FASTOPT_PARALLEL_THRESHOLD", "NUMBA_THREADING_LAYER")}
    env.update(env_extra or {}, OMP_DISPLAY_ENV="VERBOSE")
    res = subprocess.run([sys.executable, "-c", STEP.format(before=before)], cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    spins = re.findall(r"GOMP_SPINCOUNT = '(\d+)'", res.stderr)
    return json.loads(res.stdout.strip().splitlines()[-1]), spins


def test_default_policy_is_a_short_spin_for_numbas_pool_only():
    out, spins = _run()
    assert spins == ["1000"]                       # what libgomp itself read
    assert out["report"]["set_by"].startswith("fastopt")
    assert out["report"]["gomp_spincount"] == "1000"
    assert out["report"]["layer"] == "omp"
    assert out["env"] == {"GOMP_SPINCOUNT": None, "OMP_WAIT_POLICY": None}   # restored
    assert out["threshold"] == 131072              # the README's default


@pytest.mark.parametrize("env, spin", [({"GOMP_SPINCOUNT": "5000"}, "5000"),
                                       ({"OMP_WAIT_POLICY": "PASSIVE"}, "0")])
def test_the_users_environment_wins(env, spin):
    out, spins = _run(env)
    assert spins == [spin]
    assert out["report"]["set_by"] == "the environment"
    assert out["env"] == {"GOMP_SPINCOUNT": env.get("GOMP_SPINCOUNT"),
                          "OMP_WAIT_POLICY": env.get("OMP_WAIT_POLICY")}


def test_opt_out_keeps_libgomps_defaults():
    out, spins = _run({"FASTOPT_OMP_SPINCOUNT": "keep"})
    assert spins == ["300000"]                     # libgomp's own default
    assert out["threshold"] == 32768               # spinning threads: the lower threshold
    out, spins = _run({"FASTOPT_OMP_SPINCOUNT": "0"})
    assert spins == ["0"]


def test_a_pool_started_before_fastopt_is_left_alone():
    out, spins = _run(before="import numba; numba.get_num_threads()")
    assert spins == ["300000"]
    assert out["report"]["pool"] == "started before fastopt's first parallel step"


def test_bad_spincount_is_a_clear_error(monkeypatch):
    from fastopt import config
    monkeypatch.setenv("FASTOPT_OMP_SPINCOUNT", "lots")
    with pytest.raises(ValueError, match="FASTOPT_OMP_SPINCOUNT"):
        config.reset()
    monkeypatch.delenv("FASTOPT_OMP_SPINCOUNT")
    config.reset()
    for bad in (-1, "x", 1.5, True):
        with pytest.raises(ValueError, match="OMP_SPINCOUNT"):
            config.check_spincount(bad, "OMP_SPINCOUNT")
    assert config.check_spincount(" KEEP ", "x") == "keep"
    assert config.check_spincount("20", "x") == 20
