"""Cold compile and warm-cache first call, each in a fresh process with its own cache dir."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CODE = """
import time, json
t0 = time.perf_counter()
import numpy as np, fastopt
t1 = time.perf_counter()
p = np.zeros(1000, np.float32); b = fastopt.AdamBuffers.zeros(p, np.ones_like(p))
fastopt.adam_step(b)
t2 = time.perf_counter()
fastopt.adam_step(b)
t3 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "first_call_s": t2 - t1, "second_call_s": t3 - t2}))
"""


def _run(cache_dir):
    env = dict(os.environ, NUMBA_CACHE_DIR=str(cache_dir))
    out = subprocess.run([sys.executable, "-c", CODE], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=600, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("state", ["cold", "warm"])
def test_first_call_latency(benchmark, state, tmp_path):
    cache = tmp_path / "numba-cache"
    result = {}
    if state == "warm":
        _run(cache)  # populate the on-disk cache
        result["_files_before"] = sorted(p.name for p in cache.rglob("*.nbc"))

    def once():
        if state == "cold" and cache.exists():
            import shutil
            shutil.rmtree(cache)
        result.update(_run(cache))
    benchmark.group = "first-call"
    benchmark.name = f"adam float32, {state} cache (fresh process)"
    benchmark.pedantic(once, rounds=1, iterations=1)
    benchmark.extra_info.update({k: round(v, 4) for k, v in result.items()
                                 if isinstance(v, float)})
    index = sorted(p.name for p in cache.rglob("*.nbi"))
    assert index, "the first call wrote no Numba cache index: nothing was cached on disk"
    if state == "warm":
        # loaded from the cache the warm-up wrote: no new compiled object
        before = result.pop("_files_before")
        assert sorted(p.name for p in cache.rglob("*.nbc")) == before
