"""Collection rules shared by tests/ and the doctests in bigspec/.

A doctest that needs an optional extra is skipped, with the reason, where the extra is not
installed, and marked like the tests that need it, so CI can run those again after
installing the extra (``python -m pytest -q -m ntk``).
"""

import importlib.util

import pytest

# module of a doctest -> (import it needs, marker, extra that installs it)
NEEDS = {"bigspec.kernels.ntk": ("torch", "ntk", "ntk")}


@pytest.hookimpl(tryfirst=True)  # mark before -m deselects, whatever the plugin order
def pytest_collection_modifyitems(config, items):
    for item in items:
        if type(item).__name__ != "DoctestItem":
            continue
        for prefix, (package, mark, extra) in NEEDS.items():
            if item.name == prefix or item.name.startswith(prefix + "."):
                item.add_marker(getattr(pytest.mark, mark))
                if importlib.util.find_spec(package) is None:
                    item.add_marker(pytest.mark.skip(reason=f"needs {package}: pip install '.[{extra}]'"))
