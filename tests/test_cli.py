"""The command line as a user runs it: import, logdet --json, --dry-run, info, demo, exit codes."""

import json
import pathlib
import subprocess
import sys

import dask.config
import numpy as np
import pytest
from click.testing import CliRunner
from distributed import Client

import bigspec
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


@pytest.mark.parametrize("workers,threads", [(1, 1), (2, 2), (8, 8), (32, 64)])
def test_demo_picks_a_tile_that_fits_a_third_on_the_cluster_it_runs_on(workers, threads, monkeypatch):
    # the README's first command ran `bigspec demo` on a 2-worker local cluster, where 256-row tiles
    # need more than a third of the 1797 x 1797 matrix
    import bigspec
    from bigspec import demo
    from bigspec.errors import MemoryBudgetError

    monkeypatch.setattr("bigspec.cluster.resources", lambda client=None: (workers, threads, None))
    n = 1797
    candidates = [256, 192, 128, 96, 64, 48, 32]
    tile, budget = demo.fitting_tile(n, candidates)
    plan = bigspec.plan_logdet(n=n, tile_size=tile, memory=budget, method="ldl", workers=workers, threads=threads)
    assert plan.summary()["peak_memory"] <= budget
    for larger in candidates[:candidates.index(tile)]:      # every larger tile was refused at this budget
        with pytest.raises(MemoryBudgetError):
            bigspec.plan_logdet(n=n, tile_size=larger, memory=budget, method="ldl", workers=workers, threads=threads)
    if budget == int(n * n * 8 / 3):
        assert not plan.in_memory                           # a third of the matrix: out of core
    else:                                                   # none fits a third: the smallest tile's minimum
        assert tile == 32 and budget > int(n * n * 8 / 3)


def test_demo_default_tiles_on_a_two_worker_cluster():
    out = subprocess.run(["bigspec", "demo", "--n-samples", "1000", "--ntk-samples", "40", "--json", "--workers", "2",
                          "--threads", "1", "--no-progress"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    for r in json.loads(out.stdout).values():
        assert r["memory_budget"] <= r["matrix_bytes"] / 3 + 1 and r["bigspec"]["super_panels"] >= 2
        assert r["rel_diff"] < 1e-11


@pytest.fixture
def files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    A = make_spd(300, seed=1)
    np.save("A.npy", A)
    bad = A.copy()
    bad[5, 7] = bad[7, 5] = np.nan
    np.save("nan.npy", bad)
    asym = A.copy()
    asym[5, 7] += 1.0
    np.save("asym.npy", asym)
    np.save("X.npy", np.random.default_rng(0).random((100, 3)))
    import zarr

    z = zarr.create_array("plain.zarr", shape=(300, 300), chunks=(100, 100), dtype="float64")
    z[...] = A
    pathlib.Path("empty").mkdir()
    pathlib.Path("garbage.npy").write_bytes(b"not a .npy file")
    return A


# (command line, exit code, words the message must have, words it must not have): every error says
# where and what to do in the CLI's own words (flags and commands, not Python arguments and calls)
MESSAGES = [
    ("import A.npy T.zarr --tile-size 0", 1, ["--tile-size must be a positive integer", "--tile-size 1024"],
     ["tile_size", "from_array"]),
    ("spectrum A.npy --samples 0", 1, ["--samples must be at least 1"], ["n_samples", "ZeroDivision"]),
    ("spectrum A.npy --sample-size 200 --samples 2", 1, ["use --sample-size 150 or --samples 1 or less"],
     ["at most 0", "sample_size"]),
    ("spectrum A.npy --sample-size 400", 1, ["use --sample-size 300 or less"], ["--samples 0"]),
    ("logdet nan.npy", 1, ["NaN at row 5, col 7"], ["tile ("]),
    ("logdet asym.npy", 1, ["|A[5, 7] - A[7, 5]| = 1", "--triangle lower"], ["triangle='lower'"]),
    ("logdet A.npy --checkpoint", 1, ["--checkpoint needs a matrix store", "`bigspec import A.npy STORE`"],
     ["checkpoint=True", "from_array"]),
    ("logdet A.npy --memory lots", 1, ["--memory lots is not a size", "--memory 4GiB"], ["memory="]),
    ("form rbf K.zarr out.zarr", 1, ["is not a .npy file or a zarr array of data points"], ["node_type"]),
    ("form ntk X.npy out.zarr", 1, ["needs a torch model", "Python"], ["NoneType"]),
    ("spectrum K.zarr --plot K.zarr/zarr.json", 2, ["no image extension"], []),
    # DATA that is missing or holds no data points: exit 1 before a cluster starts, naming the path and DATA
    ("form rbf missing.npy out.zarr", 1, ["the data file", "missing.npy (DATA) does not exist",
                                         "DATA must be a .npy file or a zarr array"],
     ["(X)", "Errno", "Invalid value", "dask dashboard"]),
    ("form rbf missing.zarr out.zarr", 1, ["missing.zarr (DATA) does not exist"], ["(X)", "dask dashboard"]),
    ("form rbf empty out.zarr", 1, ["empty (DATA) is an empty directory"], ["node_type", "dask dashboard"]),
    ("form rbf garbage.npy out.zarr", 1, ["garbage.npy (DATA) is not a .npy file"],
     ["pickled", "allow_pickle", "dask dashboard"]),
]


@pytest.mark.parametrize("line, code, words, absent", MESSAGES, ids=[m[0] for m in MESSAGES])
def test_messages_speak_the_command_line(files, line, code, words, absent, capsys):
    assert run_main(["import", "A.npy", "K.zarr", "--tile-size", "100"]) == 0
    capsys.readouterr()
    assert run_main(line.split() + (LOCAL if line.split()[0] in ("logdet", "spectrum", "form") else [])) == code
    err = capsys.readouterr().err
    for w in words:
        assert w in err, (w, err)
    for w in absent:
        assert w not in err, (w, err)
    assert "Traceback" not in err and not pathlib.Path("out.zarr").exists() and not pathlib.Path("T.zarr").exists()


def test_factor_settings_and_small_budget_messages_give_working_commands(files, capsys):
    A = files
    assert run_main(["import", "A.npy", "K.zarr", "--tile-size", "100"]) == 0
    assert run_main(["logdet", "K.zarr", "--checkpoint", *LOCAL]) == 0
    capsys.readouterr()
    assert run_main(["logdet", "K.zarr", "--checkpoint", "--shift", "1", *LOCAL]) == 1
    err = capsys.readouterr().err
    assert "shift=0 there, scale=1.0, shift=1.0 now" in err and "--overwrite" in err and "--no-checkpoint" in err
    assert "checkpoint=False" not in err and "overwrite=True" not in err
    # a budget too small for the store's tiles: the message's command writes a copy that fits
    assert run_main(["logdet", "K.zarr", "--memory", "250kB", "--workers", "1", "--threads", "1",
                     "--no-progress"]) == 1
    err = capsys.readouterr().err
    command = err.split("`bigspec import ")[1].split("`")[0].split()
    assert command[-2] == "--tile-size" and int(command[-1]) < 100
    assert run_main(["import", *command]) == 0
    capsys.readouterr()
    assert run_main(["logdet", command[1], "--memory", "250kB", "--workers", "1", "--threads", "1", "--json",
                     "--no-progress"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["super_panels"] > 1 and out["logabsdet"] == pytest.approx(np.linalg.slogdet(A)[1], rel=1e-12)
    # the same error from Python speaks Python
    import bigspec

    with pytest.raises(bigspec.MemoryBudgetError, match=r"bigspec.from_array\('.*K.zarr', '.*K-\d+.zarr', "
                                                        r"tile_size=\d+\)") as e:
        with Client(processes=False, n_workers=1, threads_per_worker=1, dashboard_address=None) as c:
            bigspec.logdet("K.zarr", memory="250kB", client=c)
    assert "--" not in str(e.value)


def test_form_help_info_and_spectrum_json(files, capsys):
    r = CliRunner().invoke(cli, ["form", "--help"])
    import bigspec.kernels

    for name in bigspec.kernels.known_kernels():
        assert f"  {name}: " in r.output
    assert "lengthscale=1.0" in r.output and "draw_seed=0" in r.output and "Python only" in r.output
    # forming again into the same store resumes (exit 0, nothing recomputed); another kernel is refused
    assert run_main(["form", "rbf", "X.npy", "k.zarr", "--tile-size", "30", *LOCAL]) == 0
    assert run_main(["form", "rbf", "X.npy", "k.zarr", "--tile-size", "30", "--json", *LOCAL]) == 0
    assert json.loads(capsys.readouterr().out.split("\n", 1)[-1] or "{}") or True
    assert run_main(["form", "matern", "X.npy", "k.zarr", "--tile-size", "30", *LOCAL]) == 1
    assert "--overwrite" in capsys.readouterr().err
    # info on a plain zarr array describes it
    r = CliRunner().invoke(cli, ["info", "plain.zarr"])
    assert r.exit_code == 0 and "zarr array" in r.output and "300 x 300 float64, chunks 100 x 100" in r.output
    # spectrum --json is a summary; the grid only with --grid; --plot never replaces a file silently
    assert run_main(["spectrum", "A.npy", "--sample-size", "100", "--json", *LOCAL]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert "x" not in summary and "density" not in summary and "0.5" in summary["quantiles"]
    assert run_main(["spectrum", "A.npy", "--sample-size", "100", "--json", "--grid", *LOCAL]) == 0
    full = json.loads(capsys.readouterr().out)
    assert len(full["x"]) == len(full["density"]) == full["settings"]["grid"]
    pathlib.Path("s.png").write_bytes(b"mine")
    assert run_main(["spectrum", "A.npy", "--sample-size", "100", "--plot", "s.png", *LOCAL]) == 1
    assert "--overwrite" in capsys.readouterr().err and pathlib.Path("s.png").read_bytes() == b"mine"
    assert run_main(["spectrum", "A.npy", "--sample-size", "100", "--plot", "s.png", "--overwrite", *LOCAL]) == 0
    assert pathlib.Path("s.png").read_bytes()[:4] == b"\x89PNG"


def test_spectrum_text_shows_the_kernel_regime_quantile_intervals(tmp_path):
    """In the kernel regime the text output gives each quantile it prints with its 95% held-out interval,
    the numbers of ``quantile_intervals`` from Python; other regimes print their quantiles as before."""
    import re

    import bigspec
    from bigspec.kernels import get_kernel

    X = np.random.default_rng(0).uniform(size=(600, 3))
    K = get_kernel("matern", nu=0.5, lengthscale=0.5).bind(X)(X, X, diagonal=True)
    path = str(tmp_path / "k.npy")
    np.save(path, (K + K.T) / 2)
    options = ["--sample-size", "150", "--samples", "2", "--seed", "3", *LOCAL]
    r = CliRunner().invoke(cli, ["spectrum", path, "--regime", "kernel", *options])
    assert r.exit_code == 0, r.output
    assert "regime = kernel" in r.stdout and "quantiles with 95% held-out intervals:" in r.stdout
    rows = re.findall(r"^  q(\S+) +(\S+) +\[(\S+), (\S+)\]$", r.stdout, flags=re.MULTILINE)
    assert [p for p, *_ in rows] == ["10", "25", "50", "75", "90"], r.stdout   # the levels the intervals were checked at
    printed = np.array([[float(v) for v in row[1:]] for row in rows])     # estimate, low, high
    assert np.all(printed[:, 1] <= printed[:, 0]) and np.all(printed[:, 0] <= printed[:, 2])
    assert np.all(printed[:, 1] < printed[:, 2])
    direct = bigspec.spectrum(path, sample_size=150, n_samples=2, regime="kernel", seed=3, progress=False)
    low, est, high = direct.quantile_intervals([0.1, 0.25, 0.5, 0.75, 0.9], level=0.95)
    np.testing.assert_allclose(printed, np.column_stack([est, low, high]), rtol=5e-4)
    # the bulk regime has no intervals: its line is as it was
    r = CliRunner().invoke(cli, ["spectrum", path, "--regime", "bulk", *options])
    assert r.exit_code == 0, r.output
    assert "held-out intervals" not in r.stdout and re.search(r"quantiles 1/50/99% = \S+ / \S+ / \S+$", r.stdout,
                                                              flags=re.MULTILINE), r.stdout


def test_no_checkpoint_writes_no_factor_into_the_store(tmp_path, capsys):
    A = make_spd(300, seed=4)
    path = str(tmp_path / "A.zarr")
    bigspec.from_array(A, path, tile_size=50)
    budget = str(int(A.nbytes * 0.45))
    assert run_main(["logdet", path, "--memory", budget, "--no-checkpoint", "--json", *LOCAL]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["logabsdet"] == pytest.approx(np.linalg.slogdet(A)[1], rel=1e-12) and out["super_panels"] >= 2
    assert not (pathlib.Path(path) / "factor").exists()          # asked for no checkpoint: none written
    assert run_main(["logdet", path, "--memory", budget, "--json", *LOCAL]) == 0   # the default keeps one
    capsys.readouterr()
    assert (pathlib.Path(path) / "factor").exists()
