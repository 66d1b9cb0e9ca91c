"""The examples in the public docstrings run and print what they claim."""
import doctest
import importlib

import pytest

MODULES = ["fastopt.adam", "fastopt.rmsprop", "fastopt.momentum", "fastopt.sgd",
           "fastopt.flat"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0
    assert result.failed == 0
