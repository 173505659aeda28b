"""TLS: `bigspec certs` writes a CA and certificates; a TLS scheduler and workers on loopback compute a
logdet for a client with them, and refuse a client without them (at once, with a clear error)."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time

import dask.config
import numpy as np
import pytest

import bigspec
from bigspec.cli import cli
from bigspec.errors import ArgumentError, CertificatesExistError, ClusterError
from bigspec.security import dask_flags, file_names, tls_security, write_certificates
from bigspec.testing import make_spd

pytest.importorskip("cryptography")

ENV = {**os.environ, "DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT": "5s", "PYTHONUNBUFFERED": "1"}


def test_certs_are_a_ca_and_one_signed_pair_per_role(tmp_path):
    from cryptography import x509
    from cryptography.x509.oid import ExtendedKeyUsageOID

    paths = write_certificates(tmp_path / "certs", hosts=["head-node", "10.0.0.7"], days=10)
    assert set(paths) == set(file_names())
    ca = x509.load_pem_x509_certificate((tmp_path / "certs" / "ca.pem").read_bytes())
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    for role in ("scheduler", "worker", "client"):
        cert = x509.load_pem_x509_certificate(open(paths[role], "rb").read())
        cert.verify_directly_issued_by(ca)                          # signed by this CA
        assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH} <= set(eku)
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert {"localhost", "scheduler", "head-node"} <= set(san.get_values_for_type(x509.DNSName))
        assert 9 <= (cert.not_valid_after_utc - cert.not_valid_before_utc).days <= 11
        assert stat.S_IMODE(os.stat(paths[f"{role}-key"]).st_mode) == 0o600
        assert stat.S_IMODE(os.stat(paths[role]).st_mode) == 0o644
    assert stat.S_IMODE(os.stat(paths["ca-key"]).st_mode) == 0o600
    sec = tls_security(tmp_path / "certs")
    assert sec.require_encryption and sec.tls_worker_key == paths["worker-key"]
    assert dask_flags(tmp_path / "certs", "scheduler")[-1] == paths["scheduler-key"]


def test_certs_are_never_replaced_silently(tmp_path):
    first = write_certificates(tmp_path)
    ca = open(first["ca"]).read()
    with pytest.raises(CertificatesExistError, match=r"already holds TLS certificates \(ca.pem.*overwrite=True"):
        write_certificates(tmp_path)
    assert open(first["ca"]).read() == ca
    write_certificates(tmp_path, overwrite=True)
    assert open(first["ca"]).read() != ca
    with pytest.raises(ArgumentError, match="days=0 must be a positive"):
        write_certificates(tmp_path / "other", days=0)
    with pytest.raises(ArgumentError, match=r"no TLS certificates directory at .*other: write one with `bigspec certs"):
        tls_security(tmp_path / "other")                          # not even created by the refused call
    os.makedirs(tmp_path / "empty")
    with pytest.raises(ArgumentError, match=r"lacks ca.pem, client.pem, client-key.pem; write them with `bigspec certs"):
        tls_security(tmp_path / "empty")
    os.makedirs(tmp_path / "half")
    with pytest.raises(ArgumentError, match=r"lacks client-key.pem"):
        for key in ("ca", "client"):
            (tmp_path / "half" / file_names()[key]).write_text(open(first[key]).read())
        tls_security(tmp_path / "half")


def test_certs_command(tmp_path):
    from click.testing import CliRunner

    d = str(tmp_path / "c")
    r = CliRunner().invoke(cli, ["certs", d, "--host", "head", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["client-key"] == os.path.join(d, "client-key.pem")
    r = subprocess.run([sys.executable, "-m", "bigspec", "certs", d], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert r.stderr.startswith("error: ") and "pass --overwrite to replace them" in r.stderr and "Traceback" not in r.stderr
    r = CliRunner().invoke(cli, ["certs", d, "--overwrite"])
    assert r.exit_code == 0 and f"--tls-ca-file {d}/ca.pem" in r.output and f"--tls {d}" in r.output


def test_a_local_cluster_speaks_tls_with_the_certificates(tmp_path):
    write_certificates(tmp_path / "certs")
    A = make_spd(120, seed=11)
    with bigspec.connect(workers=1, threads=2, processes=False, dashboard=False, security=str(tmp_path / "certs")) as c:
        assert c.scheduler.address.startswith("tls://")
        assert all(w.startswith("tls://") for w in c.scheduler_info()["workers"])
        r = bigspec.logdet(A, tile_size=40, client=c, method="cholesky")
    assert r.logabsdet == pytest.approx(np.linalg.slogdet(A)[1], rel=1e-12)


# -- a TLS scheduler and two workers, as processes on loopback -------------------------------------

@pytest.fixture(scope="module")
def tls_cluster(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tls")
    certs = tmp / "certs"
    write_certificates(certs)
    file = tmp / "scheduler.json"
    procs = [subprocess.Popen(["dask", "scheduler", "--protocol", "tls", "--host", "127.0.0.1", "--port", "0",
                               "--scheduler-file", str(file), "--dashboard-address", ":0",
                               *dask_flags(certs, "scheduler")],
                              env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)]
    try:
        t0 = time.monotonic()
        while not (file.exists() and file.read_text()):
            assert time.monotonic() - t0 < 60, "the TLS scheduler did not start"
            time.sleep(0.1)
        address = json.loads(file.read_text())["address"]
        assert address.startswith("tls://127.0.0.1:")
        for _ in range(2):
            procs.append(subprocess.Popen(["dask", "worker", address, "--nthreads", "1", "--no-dashboard",
                                           "--memory-limit", "1GiB", *dask_flags(certs, "worker")],
                                          env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                          start_new_session=True))
        with bigspec.connect(address, security=str(certs)) as c:
            c.wait_for_workers(2, timeout=60)
        yield address, certs, tmp
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
            p.wait()


@pytest.mark.slow
def test_logdet_over_tls_python_and_cli(tls_cluster, tmp_path):
    address, certs, _ = tls_cluster
    A = make_spd(400, seed=12)
    path = str(tmp_path / "A.zarr")
    bigspec.from_array(A, path, tile_size=50)
    with bigspec.connect(address, security=str(certs)) as c:
        workers = c.scheduler_info()["workers"]
        assert len(workers) == 2 and all(w.startswith("tls://127.0.0.1:") for w in workers)
        before = c.run(lambda dask_worker: dask_worker.state.executed_count)
        r = bigspec.logdet(path, method="cholesky", memory=int(A.nbytes * 0.4), client=c, progress=False)
        after = c.run(lambda dask_worker: dask_worker.state.executed_count)
    assert r.super_panels >= 2
    assert r.logabsdet == pytest.approx(np.linalg.slogdet(A)[1], rel=1e-12) and r.sign == 1
    assert all(after[w] > before[w] for w in workers)            # both workers computed, over TLS
    # the command line: --scheduler tls://... --tls DIR
    out = subprocess.run(["bigspec", "logdet", path, "--method", "ldl", "--no-checkpoint", "--scheduler", address,
                          "--tls", str(certs), "--json", "--no-progress"],
                         capture_output=True, text=True, env=ENV, timeout=120)
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout)
    assert res["logabsdet"] == pytest.approx(np.linalg.slogdet(A)[1], rel=1e-12) and res["sign"] == 1
    # bigspec info reports the TLS cluster
    out = subprocess.run(["bigspec", "info", "--scheduler", address, "--tls", str(certs), "--json"],
                         capture_output=True, text=True, env=ENV, timeout=120)
    assert out.returncode == 0, out.stderr
    cluster = json.loads(out.stdout)["cluster"]
    assert cluster["scheduler"] == address and cluster["n_workers"] == 2 and cluster["mismatches"] == []


@pytest.mark.slow
def test_a_client_without_the_certificates_is_refused_at_once(tls_cluster, tmp_path):
    address, certs, tmp = tls_cluster
    port = address.rsplit(":", 1)[1]
    write_certificates(tmp_path / "stranger")               # a CA of its own: not this cluster's
    with dask.config.set({"distributed.comm.timeouts.connect": "5s"}):
        cases = [
            (dict(security=None), "speaks TLS and no certificates were given"),
            (dict(security=str(tmp_path / "stranger")), "refused these certificates"),
        ]
        for kwargs, said in cases:
            t0 = time.monotonic()
            with pytest.raises(ClusterError, match=said):
                bigspec.connect(address, **kwargs)
            assert time.monotonic() - t0 < 10
        t0 = time.monotonic()
        with pytest.raises(ClusterError, match="resets plain connections: give its tls:// address"):
            bigspec.connect(f"tcp://127.0.0.1:{port}")          # plain TCP to the TLS port
        assert time.monotonic() - t0 < 10
        with pytest.raises(ClusterError, match="is not a tls:// address"):
            bigspec.connect(f"tcp://127.0.0.1:{port}", security=str(certs))
    # the certificates from dask's config (DASK_DISTRIBUTED__COMM__TLS__*) instead of a directory
    names = file_names()
    with dask.config.set({"distributed.comm.tls.ca-file": str(certs / names["ca"]),
                          "distributed.comm.tls.client.cert": str(certs / names["client"]),
                          "distributed.comm.tls.client.key": str(certs / names["client-key"])}), \
            bigspec.connect(address) as c:
        assert len(c.scheduler_info()["workers"]) == 2
    # distributed itself, with a stranger's certificates: the handshake fails, the client gets nothing
    from distributed import Client

    with pytest.raises(Exception, match="(?i)certificate|ssl|tls|timed out"):
        Client(address, security=tls_security(tmp_path / "stranger"), timeout=5)
    # the command line: exit 3 within the connect timeout, one line, no traceback
    np.save(tmp / "m.npy", make_spd(40, seed=1))
    t0 = time.monotonic()
    r = subprocess.run(["bigspec", "logdet", str(tmp / "m.npy"), "--scheduler", address, "--no-progress"],
                       capture_output=True, text=True, env=ENV, timeout=60)
    assert r.returncode == 3, r.stderr
    assert "speaks TLS and no certificates were given" in r.stderr and "--tls DIR" in r.stderr
    assert "Traceback" not in r.stderr and time.monotonic() - t0 < 40


@pytest.mark.slow
def test_a_worker_without_the_certificates_cannot_join(tls_cluster):
    address, certs, _ = tls_cluster
    p = subprocess.run(["dask", "worker", address.replace("tls://", "tcp://"), "--no-nanny", "--no-dashboard",
                        "--death-timeout", "3"], env=ENV, capture_output=True, text=True, timeout=60)
    assert p.returncode != 0
    with bigspec.connect(address, security=str(certs)) as c:
        assert len(c.scheduler_info()["workers"]) == 2           # still only the two with certificates


@pytest.mark.slow
def test_the_compose_secure_runner_command_runs_the_example_job_over_tls(tls_cluster, tmp_path):
    """docker-compose.yml's secure-runner command, with its mounts mapped to this machine: /jobs -> examples/,
    /certs -> the certificates, /data (its working directory) -> a temporary directory."""
    import yaml

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    address, certs, _ = tls_cluster
    svc = yaml.safe_load(open(os.path.join(root, "docker-compose.yml")))["services"]["secure-runner"]
    mounts = {c: h for h, c in (v.split(":")[:2] for v in svc["volumes"]) if h.startswith("./")}
    assert set(mounts) == {"/jobs", "/certs"}
    local = {"/jobs": os.path.join(root, "examples"), "/certs": str(certs)}
    argv = []
    for token in svc["command"]:
        if token.startswith("tls://"):
            token = address
        for container, here in local.items():
            if token == container or token.startswith(container + "/"):
                token = here + token[len(container):]
        argv.append(token)
    r = subprocess.run([*argv, "--json", "--no-progress"], capture_output=True, text=True, env=ENV, timeout=240,
                       cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    record = json.loads(r.stdout)
    assert record["status"] == "done"
    logdet = record["steps"]["logdet"]["result"]
    ms = bigspec.open_matrix(str(tmp_path / record["spec"]["store"]))
    K = ms.read(0, ms.n, 0, ms.n)
    data = np.asarray(ms.group["data"][:])
    ell = record["spec"]["form"]["params"]["lengthscale"]
    d2 = ((data[:, None, :] - data[None, :, :]) ** 2).sum(-1)
    np.testing.assert_allclose(K, np.exp(-d2 / (2 * ell * ell)), rtol=1e-12, atol=1e-12)
    shift = record["spec"]["logdet"]["shift"]
    sign, want = np.linalg.slogdet(K + shift * np.eye(ms.n))
    assert logdet["sign"] == sign and logdet["logabsdet"] == pytest.approx(want, rel=1e-11)
