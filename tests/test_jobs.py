"""Job files and `bigspec run` / `bigspec status` as a user runs them, answers checked against numpy."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

import bigspec
from bigspec.cli import cli
from bigspec.errors import JobSpecError
from bigspec.jobs import job_from_dict, load_job, parse_job, run_job
from bigspec.store import open_matrix

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
LOCAL = ["--workers", "1", "--threads", "2", "--no-progress"]


def small_job(store="K.zarr", samples=300, tile=100, **sections):
    """A job dict: RBF on generated data, exact Cholesky of K + 0.01 I."""
    job = {"store": store,
           "form": {"kernel": "rbf", "data": {"random": "uniform", "samples": samples, "features": 2, "seed": 1},
                    "params": {"lengthscale": 0.3}, "tile-size": tile},
           "logdet": {"method": "cholesky", "shift": 0.01}}
    job.update(sections)
    return {k: v for k, v in job.items() if v is not None}


def to_toml(d: dict) -> str:
    """A minimal TOML writer for job dicts (top-level keys, then one table per section)."""
    def value(v):
        if isinstance(v, dict):
            return "{" + ", ".join(f"{k} = {value(x)}" for k, x in v.items()) + "}"
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return repr(v)

    lines = [f"{k} = {value(v)}" for k, v in d.items() if not isinstance(v, dict)]
    for k, v in d.items():
        if isinstance(v, dict):
            lines.append(f"[{k}]")
            lines += [f"{kk} = {value(vv)}" for kk, vv in v.items()]
    return "\n".join(lines) + "\n"


def write_job(path: Path, d: dict) -> Path:
    path.write_text(to_toml(d) if path.suffix == ".toml" else yaml.safe_dump(d, sort_keys=False))
    return path


def rejection(tmp_path, d, ext):
    path = write_job(tmp_path / f"job{ext}", d)
    with pytest.raises(JobSpecError) as e:
        load_job(path)
    return str(e.value).replace(str(path), "JOB")


BAD = [
    # (change to the small job, what the message must say)
    (lambda j: j["logdet"].update(metod="ldl"),
     ["unknown key $.logdet.metod", "did you mean method?", "logdet takes: method, memory"]),
    (lambda j: j.update(spectrom={"samples": 2}), ["unknown key $.spectrom", "did you mean spectrum?"]),
    (lambda j: j["form"]["data"].update(sample=3), ["unknown key $.form.data.sample", "did you mean samples?"]),
    (lambda j: j["form"].update({"tile_size": 100}), ["unknown key $.form.tile_size", "did you mean tile-size?"]),
    (lambda j: j["form"].update({"tile-size": "big"}), ["$.form.tile-size: Expected `int | null`, got `str`"]),
    (lambda j: j["logdet"].update(method="lu"), ["$.logdet.method", "allowed: cholesky, flodance, ldl, slq, spectrum"]),
    (lambda j: j.pop("store"), ["$.store is required"]),
    (lambda j: j["form"].pop("kernel"), ["$.form.kernel is required"]),
    (lambda j: j["logdet"].update(memory="lots"), ["$.logdet.memory: memory='lots' is not a size"]),
    (lambda j: j["logdet"].update(probes=4), ["$.logdet: probes is an option of method='slq'"]),
    (lambda j: j["form"].update(kernel="rbff"), ["$.form.kernel: unknown kernel 'rbff'", "matern"]),
    (lambda j: j["form"]["params"].update(nu=1.5), ["$.form.params:"]),
    (lambda j: j.update(spectrum={"sample-size": 200, "samples": 2}), ["$.spectrum.sample-size:", "300"]),
    (lambda j: j.update(cluster={"scheduler": "tcp://h:8786", "scheduler-file": "s.json"}),
     ["$.cluster: give scheduler or scheduler-file, not both"]),
    (lambda j: [j.pop("form"), j.pop("logdet"), j.update(spectrum={"samples": 1})],
     ["$.store: no bigspec store at", "no form step"]),
]


@pytest.mark.parametrize("change,expected", BAD, ids=[e[0] for _, e in BAD])
def test_rejections_name_the_key_path_in_yaml_and_toml_alike(tmp_path, monkeypatch, change, expected):
    monkeypatch.chdir(tmp_path)
    d = small_job()
    change(d)
    said = {ext: rejection(tmp_path, d, ext) for ext in (".yaml", ".toml")}
    assert said[".yaml"] == said[".toml"]
    for part in expected:
        assert part in said[".yaml"], said[".yaml"]
    assert not Path("K.zarr").exists()


def test_parse_errors_and_formats(tmp_path):
    with pytest.raises(JobSpecError, match="not valid YAML at line 2"):
        parse_job("store: a\n  - : [\n", "yaml")
    with pytest.raises(JobSpecError, match="not valid TOML"):
        parse_job("store = \n", "toml")
    with pytest.raises(JobSpecError, match="the job is empty"):
        parse_job("", "yaml")
    with pytest.raises(JobSpecError, match="a job is a mapping of sections"):
        parse_job("- store\n", "yaml")
    with pytest.raises(JobSpecError, match="no steps"):
        job_from_dict({"store": str(tmp_path / "K.zarr")})
    (tmp_path / "job.json").write_text("{}")
    with pytest.raises(JobSpecError, match="YAML .* or TOML"):
        load_job(tmp_path / "job.json")
    # YAML's 1e-3 is a float here, as in TOML
    assert parse_job(yaml.safe_dump(small_job(str(tmp_path / "K.zarr"))).replace("0.01", "1e-2"),
                     "yaml").spec.logdet.shift == 0.01


def test_example_files_are_one_job(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    a, b = load_job(EXAMPLES / "job.yaml"), load_job(EXAMPLES / "job.toml")
    assert a.spec == b.spec and a.to_dict() == b.to_dict()
    assert a.steps == ["form", "logdet", "spectrum"] and a.n == 4000


def test_dry_run_computes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    job = write_job(tmp_path / "job.yaml", small_job(memory=None))
    r = CliRunner().invoke(cli, ["run", str(job), "--dry-run", *LOCAL])
    assert r.exit_code == 0, r.output
    for part in ("1. form: rbf", "2. logdet: cholesky", "tasks:", "flops:", "peak memory:", "per worker",
                 "nothing was computed"):
        assert part in r.output
    assert not Path("K.zarr").exists() and not Path("K.zarr.lease").exists()
    r = CliRunner().invoke(cli, ["run", str(job), "--dry-run", "--json", *LOCAL])
    plan = json.loads(r.stdout)
    # the plan is the planner's own for this matrix: 3 tile rows of 100
    assert plan["logdet_plan"]["tiles"] == 3 and plan["logdet_plan"]["n"] == 300 and plan["problems"] == []
    assert not Path("K.zarr").exists()


def test_plan_refuses_workers_with_too_little_memory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    job = small_job(samples=1000, tile=250)
    job["logdet"]["memory"] = "1GiB"
    path = write_job(tmp_path / "job.yaml", job)
    args = ["run", str(path), "--workers", "1", "--threads", "1", "--memory-limit", "4MB", "--no-progress"]
    r = CliRunner().invoke(cli, [*args, "--dry-run"])
    assert r.exit_code == 1
    assert "PROBLEM: the exact logdet needs" in r.output and "per worker at its peak" in r.output
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 1 and "lower logdet.memory" in r.output
    assert not Path("K.zarr").exists()                     # refused before anything was written


def test_unwritable_store_location_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("afile").write_text("x")
    path = write_job(tmp_path / "job.yaml", small_job(store="afile/K.zarr"))
    r = CliRunner().invoke(cli, ["run", str(path), *LOCAL])
    assert r.exit_code == 1 and "is a file, not a directory" in r.output and "Traceback" not in r.output
    if os.geteuid() != 0:                                  # root writes anywhere
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        path = write_job(tmp_path / "job.yaml", small_job(store="ro/K.zarr"))
        r = CliRunner().invoke(cli, ["run", str(path), *LOCAL])
        assert r.exit_code == 1 and "not writable" in r.output


def formed(store) -> np.ndarray:
    ms = open_matrix(store)
    return ms.read(0, ms.n, 0, ms.n)


def test_run_example_job_and_status(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shutil.copy(EXAMPLES / "job.yaml", "job.yaml")
    r = CliRunner().invoke(cli, ["run", "job.yaml", "--workers", "1", "--threads", "2", "--no-progress"])
    assert r.exit_code == 0, r.output
    K = formed("example.zarr")
    assert K.shape == (4000, 4000)
    sign, ref = np.linalg.slogdet(K + 0.01 * np.eye(4000))
    assert f"logabsdet = {ref:.8f}"[:22] in r.output                  # printed, to 8 places or so
    assert "warning" not in r.output                                  # the example runs where its methods hold
    r = CliRunner().invoke(cli, ["status", "example.zarr", "--json"])
    assert r.exit_code == 0, r.output
    st = json.loads(r.stdout)
    rec = st["jobs"][-1]
    assert rec["status"] == "done" and rec["spec"] == load_job("job.yaml").to_dict()
    assert set(rec["versions"]) == {"bigspec", "dask", "distributed", "numpy", "zarr", "python"}
    assert rec["versions"]["bigspec"] == bigspec.__version__
    logdet = rec["steps"]["logdet"]["result"]
    assert logdet["sign"] == sign and logdet["logabsdet"] == pytest.approx(ref, rel=1e-12)
    assert rec["steps"]["form"]["result"]["formed_tiles"] == 36
    spec = rec["steps"]["spectrum"]["result"]
    assert spec["trace"] == pytest.approx(np.trace(K) + 0.01 * 4000, rel=1e-12)   # RBF: 1 + shift on the diagonal
    for step in rec["steps"].values():
        assert step["started"] <= step["finished"]
    assert st["store"]["missing_tiles"] == 0 and st["lease"] is None
    r = CliRunner().invoke(cli, ["status", "example.zarr"])
    assert "job 1" in r.output and "done at" in r.output and "lease            free" in r.output.replace(" free", " free")


def test_run_in_a_subprocess_toml_json(tmp_path):
    shutil.copy(EXAMPLES / "job.toml", tmp_path / "job.toml")
    p = subprocess.run([sys.executable, "-m", "bigspec", "run", "job.toml", "--json", *LOCAL], cwd=tmp_path,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    rec = json.loads(p.stdout)
    K = formed(tmp_path / "example.zarr")
    assert rec["steps"]["logdet"]["result"]["logabsdet"] == pytest.approx(
        np.linalg.slogdet(K + 0.01 * np.eye(4000))[1], rel=1e-12)
    assert "step 3/3: spectrum" in p.stderr


def test_cli_options_override_the_job_cluster(tmp_path, monkeypatch):
    from bigspec import cli as cli_module

    seen = {}
    real = cli_module._client

    @contextlib.contextmanager
    @functools.wraps(real)                     # the same signature: `run` passes what _client takes
    def spy(**kwargs):
        seen.update(kwargs)
        with real(**kwargs) as client:
            yield client

    monkeypatch.setattr(cli_module, "_client", spy)
    monkeypatch.chdir(tmp_path)
    job = write_job(tmp_path / "job.yaml", small_job(cluster={"workers": 3, "threads": 1, "memory-limit": "1GiB"}))
    r = CliRunner().invoke(cli, ["run", str(job), "--dry-run", "--workers", "1", "--no-progress"])
    assert r.exit_code == 0, r.output
    assert seen["workers"] == 1 and seen["threads"] == 1 and seen["memory_limit"] == "1GiB"


def test_failed_and_partial_jobs_show_in_status_and_resume(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    job = job_from_dict(small_job())
    real = bigspec.logdet

    def broken(*args, **kwargs):
        raise RuntimeError("worker fell over")

    monkeypatch.setattr(bigspec, "logdet", broken)
    with pytest.raises(RuntimeError):
        run_job(job, progress=False)
    monkeypatch.setattr(bigspec, "logdet", real)
    # a formation cut short: three of its six tiles gone
    ms = open_matrix("K.zarr")
    lost = [(1, 0), (2, 1), (2, 2)]
    for i, j in lost:
        os.remove(os.path.join(ms.local_path, "matrix", "c", str(i), str(j)))
    r = CliRunner().invoke(cli, ["status", "K.zarr"])
    assert r.exit_code == 0, r.output
    assert "failed at" in r.output and "logdet: worker fell over" in r.output
    assert "3 written, 3 missing" in r.output and "logdet    started" in r.output
    assert "failed (the job's error above)" in r.output and "run the job again" not in r.output
    st = json.loads(CliRunner().invoke(cli, ["status", "K.zarr", "--json"]).stdout)
    assert st["store"]["missing_tiles"] == 3 and st["jobs"][-1]["status"] == "failed"
    # run again: only the lost tiles are formed, and the answer is numpy's
    rec = run_job(job_from_dict(small_job()), progress=False)
    assert rec["steps"]["form"]["result"]["formed_tiles"] == len(lost)
    K = formed("K.zarr")
    assert rec["steps"]["logdet"]["result"]["logabsdet"] == pytest.approx(
        np.linalg.slogdet(K + 0.01 * np.eye(300))[1], rel=1e-12)
    assert [j["status"] for j in open_matrix("K.zarr").attrs["jobs"]] == ["failed", "done"]


def test_second_writer_refused_by_cli_then_force(tmp_path, monkeypatch):
    from bigspec.lease import read_lease

    monkeypatch.chdir(tmp_path)
    job = write_job(tmp_path / "job.yaml", small_job())
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lease = {"host": os.uname().nodename, "pid": holder.pid, "started": time.time(), "refreshed": time.time(),
                 "ttl": 120.0, "token": "theirs", "command": "bigspec run other.yaml"}
        import socket

        lease["host"] = socket.gethostname()
        Path("K.zarr.lease").write_text(json.dumps(lease))
        r = CliRunner().invoke(cli, ["run", str(job), *LOCAL])
        assert r.exit_code == 1
        assert f"pid {holder.pid}" in r.output and "bigspec run other.yaml" in r.output and "--force" in r.output
        assert not Path("K.zarr").exists()
        r = CliRunner().invoke(cli, ["run", str(job), "--force", *LOCAL])
        assert r.exit_code == 0, r.output
        assert "took over the lease" in r.output and "forced (--force)" in r.output
        assert read_lease("K.zarr") is None                      # given back at the end
        rec = open_matrix("K.zarr").attrs["jobs"][-1]
        assert rec["lease_taken_from"]["pid"] == holder.pid
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.slow
def test_process_topology_scheduler_file_two_workers(tmp_path):
    """`dask scheduler --scheduler-file` + two `dask worker` processes on loopback, `bigspec run` against them."""
    sched_file = tmp_path / "scheduler.json"
    env = {**os.environ, "DASK_DISTRIBUTED__WORKER__DAEMON": "False"}
    procs = []
    try:
        procs.append(subprocess.Popen(["dask", "scheduler", "--scheduler-file", str(sched_file), "--host", "127.0.0.1",
                                       "--port", "0", "--dashboard-address", ":0"], env=env,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        deadline = time.time() + 30
        while not sched_file.exists() and time.time() < deadline:
            time.sleep(0.2)
        assert sched_file.exists(), "the scheduler did not start"
        for i in range(2):
            procs.append(subprocess.Popen(["dask", "worker", "--scheduler-file", str(sched_file), "--nthreads", "1",
                                           "--memory-limit", "2GiB", "--name", f"w{i}", "--host", "127.0.0.1",
                                           "--no-dashboard"], env=env, cwd=tmp_path,
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        from distributed import Client

        with Client(scheduler_file=str(sched_file), timeout=30) as c:
            c.wait_for_workers(2, timeout=60)
        r = subprocess.run([sys.executable, "-m", "bigspec", "info", "--scheduler-file", str(sched_file), "--json"],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        info = json.loads(r.stdout)["cluster"]
        assert info["n_workers"] == 2 and info["threads"] == 2 and info["mismatches"] == []
        assert info["memory"] == 2 * 2**31             # two workers of 2 GiB
        job = small_job(store=str(tmp_path / "K.zarr"), samples=600, tile=150,
                        spectrum={"sample-size": 200, "samples": 2}, cluster={"workers": 7})
        write_job(tmp_path / "job.yaml", job)
        p = subprocess.run([sys.executable, "-m", "bigspec", "run", "job.yaml", "--scheduler-file", str(sched_file),
                            "--json", "--no-progress"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert p.returncode == 0, p.stderr
        rec = json.loads(p.stdout)
        K = formed(tmp_path / "K.zarr")
        assert rec["steps"]["logdet"]["result"]["logabsdet"] == pytest.approx(
            np.linalg.slogdet(K + 0.01 * np.eye(600))[1], rel=1e-12)
        assert rec["steps"]["spectrum"]["result"]["trace"] == pytest.approx(np.trace(K), rel=1e-12)
    finally:
        for p in reversed(procs):
            p.kill()
        for p in procs:
            with contextlib.suppress(Exception):
                p.wait(timeout=10)


def test_readme_shows_the_example_job(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    readme = (EXAMPLES.parent / "README.md").read_text()
    block = readme.split("## Cluster", 1)[1].split("```yaml\n", 1)[1].split("```", 1)[0]
    assert parse_job(block, "yaml").spec == load_job(EXAMPLES / "job.yaml").spec


def test_info_scheduler_reports_version_mismatches(monkeypatch):
    from distributed import Client, LocalCluster

    real = Client.get_versions

    def skewed(self, check=False, packages=None):
        v = real(self, check=check, packages=packages)
        for w in v["workers"].values():
            w["packages"]["numpy"] = "1.0.0"
        return v

    monkeypatch.setattr(Client, "get_versions", skewed)
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as c:
        r = CliRunner().invoke(cli, ["info", "--scheduler", c.scheduler_address])
        assert r.exit_code == 0, r.output
        assert re.search(r"MISMATCH +numpy 1.0.0 on inproc://", r.output) and f"{np.__version__} here" in r.output
        info = json.loads(CliRunner().invoke(cli, ["info", "--scheduler", c.scheduler_address, "--json"]).stdout)
    assert info["cluster"]["n_workers"] == 1 and [m["package"] for m in info["cluster"]["mismatches"]] == ["numpy"]


def test_run_waits_for_a_worker_then_says_none_came(tmp_path, monkeypatch):
    """A scheduler started with its runner may have no worker yet: run waits, then fails clearly (exit 3)."""
    from distributed import LocalCluster

    import bigspec.cli as bcli

    monkeypatch.chdir(tmp_path)
    shutil.copy(EXAMPLES / "job.yaml", "job.yaml")
    monkeypatch.setattr(bcli, "WORKER_WAIT", 1.0)
    with LocalCluster(n_workers=0, processes=False, dashboard_address=None) as lc:
        r = CliRunner().invoke(cli, ["run", "job.yaml", "--scheduler", lc.scheduler_address, "--no-progress"])
    assert r.exit_code == 3, r.output
    assert "no worker joined the scheduler" in r.output and "within 1 s" in r.output
    assert not (tmp_path / "example.zarr").exists()


def test_a_scheduler_on_this_machines_own_address_is_local():
    """The documented process setup binds the scheduler to the host's network address: not 'another machine'."""
    import psutil

    from bigspec.jobs import _loopback

    own = [a.address for addrs in psutil.net_if_addrs().values() for a in addrs if a.family.name == "AF_INET"]
    assert all(_loopback(f"tcp://{ip}:8786") for ip in own)
    assert _loopback("tls://localhost:8786") and not _loopback("tcp://203.0.113.7:8786")   # TEST-NET-3: never ours


def test_a_stopped_step_finished_by_a_later_run_is_not_told_to_resume():
    from bigspec.cli import _step_text

    summary = {"tiles": 6, "missing_tiles": 0, "factor": {"columns_done": 300, "n": 300}}
    r = {"started": "t0", "finished": None}
    assert _step_text("logdet", r, summary, "stopped").endswith("300 of 300 columns (finished since, by a later run)")
    half = {**summary, "factor": {"columns_done": 100, "n": 300}}
    assert _step_text("logdet", r, half, "stopped").endswith("run the job again to resume")
    assert _step_text("form", r, summary, "interrupted").endswith("(finished since, by a later run)")
    assert _step_text("logdet", r, half, "failed").endswith("failed (the job's error above)")


def test_dry_run_lists_a_kept_factor_of_other_settings_in_job_keys(tmp_path, monkeypatch):
    """The store keeps a factor made with shift 0.01; a job asking for shift 0.03 would be refused: the dry
    run says so first, worded in the job's keys; with overwrite: true the plan is clean."""
    monkeypatch.chdir(tmp_path)
    run_job(job_from_dict(small_job(logdet={"method": "cholesky", "shift": 0.01,
                                                              "checkpoint": True})), progress=False)
    other = write_job(tmp_path / "other.yaml", small_job(logdet={"method": "cholesky", "shift": 0.03}))
    r = CliRunner().invoke(cli, ["run", str(other), "--dry-run", *LOCAL])
    assert r.exit_code == 1, r.output
    assert "keeps one factorization in factor/" in r.output and "pass overwrite: true to replace it" in r.output
    assert "--overwrite" not in r.output
    ok = write_job(tmp_path / "ok.yaml", small_job(logdet={"method": "cholesky", "shift": 0.03, "overwrite": True}))
    r = CliRunner().invoke(cli, ["run", str(ok), "--dry-run", *LOCAL])
    assert r.exit_code == 0 and "PROBLEM" not in r.output, r.output


def test_a_store_under_proc_is_refused_for_what_it_is(tmp_path, monkeypatch):
    """A pseudo file system (no blocks) cannot hold a store, whoever runs the job (root passes os.access there)."""
    if os.statvfs("/proc").f_blocks != 0:
        pytest.skip("/proc has blocks here")
    monkeypatch.chdir(tmp_path)
    job = write_job(tmp_path / "job.yaml", small_job(store="/proc/bigspec-K.zarr"))
    r = CliRunner().invoke(cli, ["run", str(job), "--dry-run", *LOCAL])
    assert r.exit_code == 1 and "a file system that holds no files (such as /proc or /sys)" in r.output, r.output
