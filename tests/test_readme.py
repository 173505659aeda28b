"""README.md as a user runs it: its Python blocks verbatim, in order, and its command lines."""

from __future__ import annotations

import json
import re
import shlex
import warnings
from pathlib import Path

import numpy as np
import pytest
import zarr

import bigspec
from bigspec.cli import main
from bigspec.store import open_matrix
from bigspec.testing import make_spd

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def fenced_blocks(text):
    """(info string, body) of every fenced code block, in order."""
    blocks, info, body = [], None, []
    for line in text.splitlines():
        if line.startswith("```"):
            if info is None:
                info, body = line[3:].strip(), []
            else:
                blocks.append((info, "\n".join(body) + "\n"))
                info = None
        elif info is not None:
            body.append(line)
    return blocks


BLOCKS = fenced_blocks(README)
PYTHON_BLOCKS = [b for info, b in BLOCKS if info == "python"]
PLAIN_BLOCKS = [b for info, b in BLOCKS if info == ""]


def needs_torch(block):
    return re.search(r"^import .*\btorch\b", block, re.M) is not None


def run_blocks(blocks, namespace):
    with warnings.catch_warnings():
        warnings.simplefilter("error")       # the README's examples run without a warning
        for i, block in enumerate(blocks):
            exec(compile(block, f"README.md python block {i}", "exec"), namespace)


def test_setup_block_has_the_two_commands():
    lines = PLAIN_BLOCKS[0].strip().splitlines()
    assert lines == ['pip install ".[examples]" && bigspec demo', 'pip install ".[test]" && python -m pytest -q']


def test_python_blocks(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib").use("Agg")
    monkeypatch.chdir(tmp_path)
    blocks = [b for b in PYTHON_BLOCKS if not needs_torch(b)]
    assert len(blocks) == 3
    ns = {}
    run_blocks(blocks, ns)
    A, res = ns["A"], ns["res"]
    sign, logabsdet = np.linalg.slogdet(A)
    assert (res.sign, res.logabsdet) == (sign, pytest.approx(logabsdet, rel=1e-12))
    assert res.super_panels >= 2 and res.memory_budget < A.nbytes          # out of core, as it says
    assert res.prefix_logdet[999] == pytest.approx(np.linalg.slogdet(A[:1000, :1000])[1], rel=1e-10) or \
        np.isnan(res.prefix_logdet[999])
    dens = ns["dens"]                                                       # the spectrum of K + 0.1 I
    assert dens.settings["shift"] == 0.1 and dens.support[0] >= 0.1
    K = open_matrix("k.zarr")
    assert dens.trace == pytest.approx(2000 * (np.mean(np.diag(K.read(0, 500, 0, 500))) + 0.1), rel=1e-12)
    assert ns["rho"].size == 32_000
    est = ns["est"]                                                         # the spectral estimate of A
    assert est.method == "spectrum" and est.covers(logabsdet)


@pytest.mark.ntk
def test_torch_block(tmp_path, monkeypatch):
    torch = pytest.importorskip("torch")
    monkeypatch.chdir(tmp_path)
    blocks = [b for b in PYTHON_BLOCKS if needs_torch(b)]
    assert len(blocks) == 1
    ns = {}
    run_blocks(blocks, ns)
    assert ns["res"].n == 3000 and ns["K"].n == 3000
    # the NTK's trace from torch's own per-sample gradients of the first image
    x = torch.as_tensor(ns["images"][:1])
    grads = [torch.autograd.grad(ns["net"](x)[0, o], ns["net"].parameters()) for o in range(10)]
    trace0 = sum(float(sum((g.double() ** 2).sum() for g in gs)) for gs in grads)
    stored = open_matrix("entk.zarr")
    perm = np.asarray(zarr.open_group("entk.zarr", mode="r")["permutation"][:])
    first = int(np.flatnonzero(perm == 0)[0])                      # where image 0 went in the shuffled order
    block = stored.read(first * 10, first * 10 + 10, first * 10, first * 10 + 10)
    assert np.trace(block) == pytest.approx(trace0, rel=1e-5)


def cli_lines():
    block = next(b for b in PLAIN_BLOCKS if b.lstrip().startswith("bigspec form"))
    out = []
    for line in block.strip().splitlines():
        command = line.split("  #")[0].strip()
        if "..." in command or "--scheduler" in command:
            continue                            # a placeholder, and a line that needs a running scheduler
        out.append(command)
    return out


def test_cli_block(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    X = np.random.default_rng(0).uniform(size=(2000, 2))
    np.save("data.npy", X)
    A = make_spd(1500, seed=3)
    np.save("A.npy", A)
    U = zarr.create_array("ntk_upper.zarr", shape=(600, 600), chunks=(200, 200), dtype="float64")
    for i in range(3):
        for j in range(i, 3):
            U[200 * i:200 * i + 200, 200 * j:200 * j + 200] = A[200 * i:200 * i + 200, 200 * j:200 * j + 200]
    lines = cli_lines()
    assert len(lines) == 12
    outputs = {}
    for line in lines:
        words = shlex.split(line)
        if words[0] == "python":
            words = words[2:]
        with pytest.raises(SystemExit) as e:
            main(words[1:])
        out = capsys.readouterr()
        assert e.value.code == 0, (line, out.err)
        outputs[line] = out.out
    logdet = next(v for k, v in outputs.items() if k.startswith("bigspec logdet K.zarr --memory"))
    assert json.loads(logdet)["logabsdet"] == pytest.approx(np.linalg.slogdet(A)[1], rel=1e-12)
    assert np.array_equal(open_matrix("U.zarr").read(0, 600, 0, 600), A[:600, :600])
    spectrum = json.loads(next(v for k, v in outputs.items() if k.startswith("bigspec spectrum")))
    assert spectrum["size"] == 2000 and Path("spectrum.png").stat().st_size > 0
    assert open_matrix("k.zarr").attrs["kernel"]["params"]["nu"] == 2.5
    est = json.loads(next(v for k, v in outputs.items() if "--method flodance --sample-size 500 --shift" in k))
    assert est["method"] == "flodance" and est["interval"][0] < est["logabsdet"] < est["interval"][1]
    assert Path("fl.png").stat().st_size > 0
    assert not Path("r.zarr").exists()                      # form --dry-run wrote nothing
    assert "predicted:" in next(v for k, v in outputs.items() if "--profile h100" in k)
