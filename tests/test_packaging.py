"""The wheel installs kernels/ as fastopt.kernels and nothing named kernels at the top."""
import os
import subprocess
import sys
import zipfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.packaging
def test_wheel_layout_and_import(tmp_path):
    wheels = tmp_path / "wheels"
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w",
                          str(wheels), ROOT], capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        pytest.fail(f"pip wheel failed:\n{out.stdout}\n{out.stderr}")
    (wheel,) = wheels.glob("fastopt-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "fastopt/kernels/cpu.py" in names
    assert "fastopt/kernels/record.py" in names and "fastopt/kernels/adam.py" in names
    assert not [n for n in names if n.startswith("kernels/")]
    assert not [n for n in names if n.startswith(("tests/", "bench/"))]
    target = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(target)
    env = dict(os.environ, PYTHONPATH=str(target))
    check = ("import fastopt, fastopt.kernels.cpu as c, numpy as np\n"
             f"assert c.__file__.startswith({str(target)!r}), c.__file__\n"
             "p = np.ones(3); b = fastopt.SGDBuffers.zeros(p, np.ones(3))\n"
             "fastopt.sgd_step(b, lr=0.5); assert (p == 0.5).all()\n"
             "try:\n    import kernels\nexcept ImportError:\n    print('no-top-level')\n")
    res = subprocess.run([sys.executable, "-c", check], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "no-top-level" in res.stdout
