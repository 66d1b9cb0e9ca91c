"""The examples in the public docstrings run and print what they claim. Every module of the
package is found by walking it (a new module's examples run with no edit here), and every
registered optimizer's module must have examples."""
import doctest
import importlib
import pkgutil
import re

import numpy as np
import pytest

import fastopt
from fastopt import registry

MODULES = sorted(m.name for m in pkgutil.walk_packages(fastopt.__path__, "fastopt.")
                 if not m.name.endswith("__main__"))
MUST_HAVE_EXAMPLES = {spec.step_fn.__module__ for spec in registry.REGISTRY.values()}
MUST_HAVE_EXAMPLES.add("fastopt.flat")
OPTIONAL = {"fastopt.torch"}        # modules of an optional extra (torch)


def test_every_optimizer_module_is_found():
    assert MUST_HAVE_EXAMPLES <= set(MODULES) | {m for m in MUST_HAVE_EXAMPLES
                                                 if not m.startswith("fastopt.")}


@pytest.mark.parametrize("name", sorted(set(MODULES) | MUST_HAVE_EXAMPLES))
def test_docstring_examples(name):
    try:
        module = importlib.import_module(name)
    except ImportError as e:
        if name in OPTIONAL:
            pytest.skip(f"{name} needs an optional dependency: {e}")
        raise
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    if name in MUST_HAVE_EXAMPLES:
        assert result.attempted > 0, f"{name} has no docstring example"
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


def _help(command):
    from fastopt.__main__ import build_parser
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices[command]
    return " ".join(sub.format_help().split())


@pytest.mark.parametrize("command", ["compare", "profile"])
def test_cli_help_names_every_registered_optimizer(command):
    """The ``--optimizers`` help of ``compare`` and ``profile`` lists what they accept: every
    registered optimizer (a new one is named there with no edit of the CLI)."""
    from fastopt.experiment import OPTIMIZERS
    words = set(re.findall(r"\w+", _help(command)))
    names = OPTIMIZERS if command == "compare" else registry.REGISTRY
    assert len(names) >= len(registry.REGISTRY)
    assert set(names) <= words, sorted(set(names) - words)


def test_every_tunable_is_in_the_readme_and_the_config_docstring():
    """Each of ``fastopt.config``'s tunables has a row in the README's configuration table,
    with its environment variable and default, and a row in the module's docstring table."""
    import os
    from fastopt import config
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(root, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    section = readme[readme.index("## Configuration"):]
    section = section[:section.index("\n## ", 1)]
    rows = {m.group(1): (m.group(2), m.group(3))
            for m in re.finditer(r"^\| `(\w+)` \| `(\w+)` \| ([^|]+) \|", section, re.M)}
    for name, (var, default) in config._DEFAULTS.items():
        assert name in rows, f"config.{name} has no row in the README's configuration table"
        assert rows[name][0] == var
        if isinstance(default, int):
            assert rows[name][1].strip().startswith(str(default)), (name, rows[name][1])
        assert f"``{name}``" in config.__doc__ and f"``{var}``" in config.__doc__, name
    assert set(rows) == set(config._DEFAULTS)
