"""Issue 9's proof: an optimizer registered at test time (``tests/toy_optimizer.py``) is
covered by the parity, bad-input, checkpoint, convergence, docstring, CUDA simulator, PTX and
benchmark smoke suites with no edit anywhere else. Runs those suites, restricted to the toy, in
a fresh pytest process."""
import os
import re
import subprocess
import sys

from helpers import ROOT

SUITES = ["tests/test_parity.py", "tests/test_bad_inputs.py", "tests/test_api.py",
          "tests/test_hostile.py",
          "tests/test_cuda.py", "tests/test_torch_parity.py", "tests/toy_optimizer.py",
          "bench/test_bench_optimizers.py"]


def test_a_toy_optimizer_registered_at_test_time_is_covered_everywhere():
    env = dict(os.environ,
               PYTHONPATH=os.pathsep.join([os.path.join(ROOT, "tests"),
                                           os.environ.get("PYTHONPATH", "")]),
               # nested pytest runs (the CUDA simulator suite) load the toy too
               PYTEST_ADDOPTS="-p toy_optimizer -k 'toy or simulator_suite'")
    res = subprocess.run([sys.executable, "-m", "pytest", "-v", "-p", "no:cacheprovider",
                          "--doctest-modules", "-o", "addopts=", *SUITES],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    out = res.stdout
    assert res.returncode == 0, out[-4000:] + res.stderr[-2000:]
    passed = set(re.findall(r"^(\S+) PASSED", out, re.M))

    def ran(pattern):
        return [t for t in passed if re.search(pattern, t)]
    assert ran(r"test_parity\.py::test_cpu_equals_numpy.*toy"), out[-3000:]
    assert ran(r"test_bad_inputs\.py::test_invalid_hyperparameter\[toy-scale")
    assert ran(r"test_bad_inputs\.py::test_bad_arrays\[toy-")
    assert ran(r"test_api\.py::test_checkpoint_resume_is_bitwise\[toy\]")
    assert ran(r"test_api\.py::test_repeated_call_picks_up_replaced_arrays.*toy")
    assert ran(r"test_cuda\.py::test_simulator_suite")
    assert ran(r"test_cuda\.py::test_float32_ptx_has_no_float64_arithmetic.*toy") or \
        "NVVM not available" in out
    assert ran(r"toy_optimizer\.py::.*toy_step")                    # its doctest
    assert ran(r"test_bench_optimizers\.py::test_step\[toy-")
    assert ran(r"test_hostile\.py::test_d18_buffers_zeros_validates_its_options\[toy-")
