"""The command line as a user runs it: import, logdet --json, --dry-run, info, demo, exit codes."""

import json
import subprocess
import sys

import dask.config
import numpy as np
import pytest
from click.testing import CliRunner

from bigspec.cli import cli, main
from bigspec.testing import make_spd

LOCAL = ["--workers", "1", "--threads", "2", "--no-progress"]


@pytest.fixture
def npy(tmp_path):
    A = make_spd(300, seed=1)
    path = tmp_path / "A.npy"
    np.save(path, A)
    return A, str(path)


def run_main(args):
    with pytest.raises(SystemExit) as e:
        main(args)
    return e.value.code


def test_import_and_logdet_json(tmp_path, npy, capsys):
    A, path = npy
    store = str(tmp_path / "A.zarr")
    assert run_main(["import", path, store, "--tile-size", "50"]) == 0
    capsys.readouterr()
    assert run_main(["logdet", store, "--memory", str(int(A.nbytes * 0.5)), "--method", "cholesky",
                     "--json", *LOCAL]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["super_panels"] >= 2 and out["method"] == "cholesky"
    assert out["logabsdet"] == pytest.approx(np.linalg.slogdet(A)[1], rel=1e-12)
    # shift and scale
    assert run_main(["logdet", store, "--shift", "1.5", "--scale", "2", "--json", "--checkpoint",
                     "--overwrite", *LOCAL]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["logabsdet"] == pytest.approx(np.linalg.slogdet(2 * A + 1.5 * np.eye(300))[1], rel=1e-12)


def test_dry_run_and_info(tmp_path, npy):
    A, path = npy
    store = str(tmp_path / "A.zarr")
    r = CliRunner().invoke(cli, ["import", path, store, "--tile-size", "50"])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(cli, ["logdet", store, "--dry-run", "--memory", "400kB", *LOCAL])
    assert r.exit_code == 0, r.output
    assert "super-panels" in r.output and "peak memory" in r.output and "flops" in r.output
    r = CliRunner().invoke(cli, ["info", store, "--json"])
    info = json.loads(r.output)
    assert info["store"]["n"] == 300 and info["store"]["missing_tiles"] == 0
    import bigspec

    right = bigspec.logdet(store, checkpoint=True).logabsdet          # recorded in the store's attributes
    r = CliRunner().invoke(cli, ["info", store])
    assert r.exit_code == 0 and "300 x 300 float64" in r.output and "50 x 50, 21 stored: complete" in r.output
    assert "factor      ldl" in r.output and "{" not in r.output          # aligned fields, no dict reprs
    assert f"logabsdet {right!r}" in r.output and "GiB" in r.output


def test_user_errors_exit_1_with_message(tmp_path, capsys):
    assert run_main(["logdet", str(tmp_path / "missing.zarr"), *LOCAL]) == 1
    assert "no bigspec matrix store" in capsys.readouterr().err
    bad = tmp_path / "bad.npy"
    np.save(bad, np.ones((3, 4)))
    assert run_main(["import", str(bad), str(tmp_path / "b.zarr")]) == 1
    assert "square" in capsys.readouterr().err
    np.save(bad, np.diag([1.0, -1.0, 2.0]))
    assert run_main(["import", str(bad), str(tmp_path / "c.zarr")]) == 0
    assert run_main(["logdet", str(tmp_path / "c.zarr"), "--method", "cholesky", *LOCAL]) == 1
    assert "not positive definite" in capsys.readouterr().err
    assert run_main(["logdet", "--bogus-flag"]) == 2
    with dask.config.set({"distributed.comm.timeouts.connect": "2s"}):
        assert run_main(["logdet", str(tmp_path / "c.zarr"), "--scheduler", "tcp://127.0.0.1:1",
                         "--no-progress"]) == 3


def _has_torch():
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.slow
@pytest.mark.ntk  # runs in both CI steps: without torch the demo leaves out its empirical-NTK part, with it runs it
def test_entry_points_and_demo():
    out = subprocess.run([sys.executable, "-m", "bigspec", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.startswith("bigspec")
    out = subprocess.run(["bigspec", "demo", "--n-samples", "700", "--ntk-samples", "60", "--tile-size", "100",
                          "--json", *LOCAL], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout)
    parts = ["relu_ntk", "empirical_ntk"] if _has_torch() else ["relu_ntk"]
    assert sorted(res) == sorted(parts)
    for part in parts:
        r = res[part]
        assert r["bigspec"]["super_panels"] >= 2 and r["memory_budget"] < r["matrix_bytes"]
        assert r["rel_diff"] < 1e-11
    assert res["relu_ntk"]["n"] == 700 and res["relu_ntk"]["kron_outputs"] == 10
    out = subprocess.run(["dask", "bigspec", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "logdet" in out.stdout
