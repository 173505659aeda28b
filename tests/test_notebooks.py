"""The notebooks run top to bottom (with their small CI sizes), label every panel and leave no files behind."""

import importlib.util
import json
import pathlib
import re
import tempfile

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((pathlib.Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))

# notebook -> text its torch-only part prints. That part runs only where torch is installed (the
# notebook guards the import itself, so without torch it still runs the rest); marked ntk, so CI's
# second step runs it again with torch, and there the part must have run.
TORCH_PART = {"02-ntk.ipynb": "super-panels"}

# Run before the notebook's first cell: keep every matplotlib figure it makes, closed or not, so
# the check below sees them all whatever the backend (the inline one closes figures after a cell).
TRACK_FIGURES = """\
import matplotlib.figure as _mpl_figure
_bigspec_figures = []
_bigspec_figure_init = _mpl_figure.Figure.__init__
def _bigspec_track(self, *args, **kwargs):
    _bigspec_figure_init(self, *args, **kwargs)
    _bigspec_figures.append(self)
_mpl_figure.Figure.__init__ = _bigspec_track
"""

# Run after its last cell: one line per axes of every figure, as JSON.
REPORT_AXES = """\
import json as _json
for _i, _fig in enumerate(_bigspec_figures):
    for _ax in _fig.axes:
        print('BIGSPEC-AXES ' + _json.dumps({
            'figure': _i, 'title': _ax.get_title(), 'xlabel': _ax.get_xlabel(), 'ylabel': _ax.get_ylabel(),
            'colorbar': _ax.get_label() == '<colorbar>', 'shown': bool(_ax.get_visible() and _ax.axison)}))
"""


def _param(path):
    marks = [pytest.mark.ntk] if path.name in TORCH_PART else []
    return pytest.param(path, marks=marks, id=path.name)


def _unlabelled(axes):
    """Axes whose x or y label is missing (a colorbar needs only the label along its bar)."""
    bad = []
    for a in axes:
        if not a["shown"]:
            continue                       # hidden, or axis('off'): no axis to label
        labels = (a["xlabel"].strip(), a["ylabel"].strip())
        if not (any(labels) if a["colorbar"] else all(labels)):
            bad.append(a)
    return bad


def test_unlabelled_axes_are_caught():
    """The label check itself: a panel without its y label, or a bare colorbar, is reported."""
    ok = {"figure": 0, "title": "", "xlabel": "rank", "ylabel": "eigenvalue", "colorbar": False, "shown": True}
    assert not _unlabelled([ok, {**ok, "xlabel": "", "ylabel": "K", "colorbar": True}, {**ok, "xlabel": "", "shown": False}])
    assert _unlabelled([{**ok, "ylabel": " "}]) and _unlabelled([{**ok, "xlabel": "", "ylabel": "", "colorbar": True}])


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_committed_without_outputs(path):
    """The committed notebooks carry no outputs or execution counts (a run must not be committed)."""
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"cell {cell.id} of {path.name} has outputs"


BIGSPEC_SOURCE = "\n".join(p.read_text() for p in (NOTEBOOKS[0].parent.parent / "bigspec").rglob("*.py")).lower()

# Names in the notebooks' text that are not bigspec's and need not be: what they are.
NOT_BIGSPEC = {"CI": "continuous integration", "USSR": "in a citation (Math. USSR-Sbornik)"}

# Methods bigspec does not implement, which the notebooks must not offer (FLODANCE was one until
# bigspec had it); remove a name once bigspec has it.
NOT_IMPLEMENTED = ()


def _resolves(dotted: str) -> bool:
    parts = dotted.split(".")
    obj = importlib.import_module(parts[0])
    for i, part in enumerate(parts[1:], 2):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            try:
                obj = importlib.import_module(".".join(parts[:i]))
            except ImportError:
                return False
    return True


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_names_only_what_bigspec_has(path):
    """Every ``bigspec.x.y`` a notebook uses or mentions exists, and every method or acronym its text
    names (two or more capitals: NTK, ReLU, FLODANCE) is named in bigspec's own code or is listed above."""
    nb = nbformat.read(path, as_version=4)
    every = "\n".join(c.source for c in nb.cells)
    missing = sorted({d for d in re.findall(r"\bbigspec(?:\.\w+)+", every) if not _resolves(d)})
    assert not missing, f"{path.name} names what bigspec does not have: {missing}"
    text = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    words = set(re.findall(r"\b[A-Za-z]*[A-Z][a-z]*[A-Z][A-Za-z]*\b", text))
    unknown = sorted(w for w in words if w not in NOT_BIGSPEC and w.lower() not in BIGSPEC_SOURCE)
    assert not unknown, f"{path.name} names methods bigspec does not implement: {unknown}"
    offered = [name for name in NOT_IMPLEMENTED if name.lower() in every.lower()]
    assert not offered, f"{path.name} offers {offered}, which bigspec does not implement"


@pytest.mark.slow
@pytest.mark.parametrize("path", [_param(p) for p in NOTEBOOKS])
def test_notebook_runs(path, tmp_path, monkeypatch):
    # a fresh, empty temporary directory for the kernel (TMPDIR) and for this process
    # (tempfile.tempdir); the notebook runs in its own empty folder
    tmp, cwd = tmp_path / "tmp", tmp_path / "cwd"
    tmp.mkdir()
    cwd.mkdir()
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("TMPDIR", str(tmp))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    nb = nbformat.read(path, as_version=4)
    nb.cells.insert(0, nbformat.v4.new_code_cell(TRACK_FIGURES))
    nb.cells.append(nbformat.v4.new_code_cell(REPORT_AXES))
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    errors = [o for o in outputs if o.output_type == "error"]
    assert not errors, "\n".join(f"{o.ename}: {o.evalue}" for o in errors)
    printed = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    if path.name in TORCH_PART and importlib.util.find_spec("torch") is not None:
        assert TORCH_PART[path.name] in printed, "the notebook's torch part did not run although torch is installed"

    # every panel has both axis labels
    axes = [json.loads(line.split(" ", 1)[1]) for line in printed.splitlines() if line.startswith("BIGSPEC-AXES ")]
    assert axes, f"{path.name} drew no figure (or the figure check did not run)"
    assert not _unlabelled(axes), f"{path.name}: panels without axis labels: {_unlabelled(axes)}"

    # and the run left nothing behind: not in the temporary directory (stores, Dask's scratch
    # space), not where it ran (the kernel has shut down by now). The one exception is torch's:
    # importing torch.func creates TorchInductor's per-user cache directory, by default
    # $TMPDIR/torchinductor_$USER, shared by every torch process of the user and reused from run
    # to run; it may be there, but empty (this notebook compiles nothing into it).
    torch_cache = [p for p in tmp.glob("torchinductor_*") if p.is_dir() and not any(p.iterdir())]
    left = sorted(str(p.relative_to(tmp_path)) for d in (tmp, cwd) for p in d.rglob("*") if p not in torch_cache)
    assert not left, f"{path.name} left {len(left)} files behind: {left[:20]}"
