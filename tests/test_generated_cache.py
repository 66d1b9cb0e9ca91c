"""Generated drivers (grouped steps, 8-bit state) are cached on disk like the kernels: a fresh
process with a warm cache compiles nothing new and steps to the same bits."""
import json
import os
import subprocess
import sys

import numpy as np

from fastopt.kernels import decorators

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CODE = """
import hashlib, json, time
import numpy as np, fastopt
rng = np.random.default_rng(0)
n = 5000
out = {}
for name, kw, state in (("groups", {"groups": fastopt.Groups(n, [
        {"range": (0, 3000), "weight_decay": 0.01}, {"range": (3000, n), "lr": 2e-3}])}, None),
        ("int8", {"max_grad_norm": 1.0}, "int8")):
    p = rng.standard_normal(n).astype(np.float32)
    g = rng.standard_normal(n).astype(np.float32)
    b = (fastopt.AdamBuffers.zeros(p, g, state_dtype=state, min_8bit_size=0) if state
         else fastopt.AdamBuffers.zeros(p, g))
    t0 = time.perf_counter()
    for _ in range(3):
        fastopt.adam_step(b, **kw)
    out[name + "_s"] = time.perf_counter() - t0
    out[name] = hashlib.sha256(b.param.tobytes() + b.exp_avg.tobytes()).hexdigest()
print(json.dumps(out))
"""


def _run(cache_dir):
    env = dict(os.environ, NUMBA_CACHE_DIR=str(cache_dir))
    out = subprocess.run([sys.executable, "-c", CODE], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=600, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_a_warm_cache_compiles_no_driver_again(tmp_path):
    cache = tmp_path / "numba-cache"
    cold = _run(cache)
    generated = sorted(p.name for p in (cache / "fastopt-generated").glob("*.py"))
    assert any(n.startswith("grouped_") for n in generated), generated
    assert any(n.startswith("q8_driver_") for n in generated), generated
    objects = sorted(p.name for p in cache.rglob("*.nbc"))
    sources = {p: p.read_bytes() for p in (cache / "fastopt-generated").glob("*.py")}
    warm = _run(cache)
    assert sorted(p.name for p in cache.rglob("*.nbc")) == objects    # nothing compiled anew
    assert {p: p.read_bytes() for p in sources} == sources              # nor rewritten
    assert (warm["groups"], warm["int8"]) == (cold["groups"], cold["int8"])


def test_drivers_calling_other_kernels_get_their_own_file(tmp_path, monkeypatch):
    """The same generated source around different callees: two files, two functions (Numba
    keys its cache by the file, not by the functions a driver calls)."""
    monkeypatch.setattr(decorators, "generated_dir", lambda: str(tmp_path))
    from numba import njit

    @njit
    def one(x):
        return x + 1.0

    @njit
    def two(x):
        return x + 2.0
    src = "def drive(x):\n    return body(x)\n"
    f1 = decorators.compile_generated(src, "drive", {"body": one}, False, (one,))
    f2 = decorators.compile_generated(src, "drive", {"body": two}, False, (two,))
    assert (f1(1.0), f2(1.0)) == (2.0, 3.0)
    files = sorted(tmp_path.glob("drive_*.py"))
    assert len(files) == 2
    assert f1.py_func.__code__.co_filename != f2.py_func.__code__.co_filename
    again = decorators.compile_generated(src, "drive", {"body": one}, False, (one,))
    assert again.py_func.__code__.co_filename == f1.py_func.__code__.co_filename
    assert sorted(tmp_path.glob("drive_*.py")) == files


def test_an_unwritable_place_compiles_from_memory(tmp_path, monkeypatch):
    blocked = tmp_path / "file"
    blocked.write_text("not a directory")
    monkeypatch.setattr(decorators, "generated_dir", lambda: str(blocked / "sub"))
    fn = decorators.compile_generated("def f(x):\n    return x * 2.0\n", "f", {}, False)
    assert fn(np.float64(2.0)) == 4.0
    assert fn.py_func.__code__.co_filename.startswith("<fastopt generated")
