"""Figures that ``plot()`` makes itself keep their labels inside the figure when saved as they are.

A user saved ``r.plot().figure.savefig(path, dpi=120)`` (no ``bbox_inches="tight"``) and the
x-axis label was cut off at the bottom edge: the default subplot margins are too small for
tick labels plus an axis label at the default figure size.
"""

import numpy as np
import pytest

import bigspec
from bigspec.spectra.laws import MarchenkoPastur

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")


def _bounds(box):
    return tuple(round(float(v), 1) for v in box.bounds)


def _assert_inside(ax, path):
    import matplotlib.pyplot as plt

    fig = ax.figure
    try:
        fig.savefig(path, dpi=120)  # plain savefig: the layout is whatever the figure itself has
        renderer = fig.canvas.get_renderer()
        inside = fig.bbox.padded(0.5)  # half a pixel of rounding

        def within(box):
            return inside.x0 <= box.x0 and box.x1 <= inside.x1 and inside.y0 <= box.y0 and box.y1 <= inside.y1

        for name, label in (("x", ax.xaxis.label), ("y", ax.yaxis.label)):
            assert label.get_text(), f"the {name}-axis has no label"
            box = label.get_window_extent(renderer)
            assert within(box), (f"{name}-label {label.get_text()!r} at {_bounds(box)} (x, y, width, height) "
                                 f"is outside the figure {_bounds(fig.bbox)}")
        box = ax.get_tightbbox(renderer)  # tick labels, title and legend too
        assert within(box), f"the axes' artists span {_bounds(box)}, outside the figure {_bounds(fig.bbox)}"
        assert path.stat().st_size > 0
    finally:
        plt.close(fig)


@pytest.fixture(scope="module")
def spectrum_result():
    return bigspec.free_decompress(MarchenkoPastur(0.1).eigenvalues(400, seed=1), size=1600)


@pytest.mark.parametrize("log", [False, True], ids=["linear", "log"])
def test_spectrum_plot_labels_inside_saved_figure(spectrum_result, log, tmp_path):
    ax = spectrum_result.plot(log=log)
    assert ax.get_xlabel() == ("log10 eigenvalue" if log else "eigenvalue")
    _assert_inside(ax, tmp_path / "spectrum.png")


def test_spectrum_plot_with_atom_labels_inside_saved_figure(tmp_path):
    r = bigspec.free_decompress(MarchenkoPastur(0.5).eigenvalues(400, seed=1), size=1600)
    assert r.atoms  # rank deficient: the plot annotates the atom
    _assert_inside(r.plot(), tmp_path / "atom.png")


def test_logdet_plot_labels_inside_saved_figure(tmp_path):
    rng = np.random.default_rng(0)
    G = rng.standard_normal((60, 60))
    res = bigspec.logdet(G @ G.T + 60 * np.eye(60))
    ax = res.plot()
    assert ax.get_title()
    _assert_inside(ax, tmp_path / "logdet.png")


def test_plot_into_given_axes_leaves_the_figure_alone():
    """An ``ax`` passed in is drawn into; its figure's layout stays the caller's."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    try:
        engine = fig.get_layout_engine()
        r = bigspec.free_decompress(MarchenkoPastur(0.1).eigenvalues(200, seed=0), size=400)
        assert r.plot(ax=ax) is ax
        assert fig.get_layout_engine() is engine
    finally:
        plt.close(fig)
