"""The examples in the package's docstrings are run, so they stay true."""

import doctest
import importlib
import pkgutil

import pytest

import hemoprofile

MODULES = sorted(m.name for m in pkgutil.walk_packages(hemoprofile.__path__, "hemoprofile.")
                 if not m.name.endswith("__main__"))


@pytest.mark.parametrize("module_name", MODULES)
def test_docstring_examples(module_name):
    module = importlib.import_module(module_name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} docstring examples failed in {module_name}"
