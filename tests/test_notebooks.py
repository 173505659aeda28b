"""The notebooks run top to bottom (with their small CI sizes)."""

import importlib.util
import pathlib

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((pathlib.Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))

# notebook -> text its torch-only part prints. That part runs only where torch is installed (the
# notebook guards the import itself, so without torch it still runs the rest); marked ntk, so CI's
# second step runs it again with torch, and there the part must have run.
TORCH_PART = {"02-ntk.ipynb": "super-panels"}


def _param(path):
    marks = [pytest.mark.ntk] if path.name in TORCH_PART else []
    return pytest.param(path, marks=marks, id=path.name)


@pytest.mark.slow
@pytest.mark.parametrize("path", [_param(p) for p in NOTEBOOKS])
def test_notebook_runs(path, tmp_path, monkeypatch):
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    errors = [o for o in outputs if o.output_type == "error"]
    assert not errors
    if path.name in TORCH_PART and importlib.util.find_spec("torch") is not None:
        printed = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
        assert TORCH_PART[path.name] in printed, "the notebook's torch part did not run although torch is installed"
