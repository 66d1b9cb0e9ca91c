"""The examples in the public docstrings run and print what they claim."""
import doctest
import importlib

import numpy as np
import pytest

MODULES = ["fastopt.adam", "fastopt.rmsprop", "fastopt.momentum", "fastopt.sgd",
           "fastopt.flat"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0
    assert result.failed == 0


def test_readme_quickstart_runs(monkeypatch, tmp_path):
    import os
    import warnings
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setenv("FASTOPT_MNIST_MIRRORS", "http://127.0.0.1:9/")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    text = open(os.path.join(root, "README.md")).read()
    start = text.index("```python\nimport numpy as np\nimport fastopt\nfrom fastopt.datasets")
    code = text[start + len("```python\n"):]
    code = code[:code.index("```\n")]
    scope = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exec(compile(code, "README quickstart", "exec"), scope)
    assert scope["buffers"].step == 200
    assert scope["fp"].params["W"][0, 0] == np.float32(0.01)
