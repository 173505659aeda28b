"""TLS for a Dask cluster: the certificates ``bigspec certs DIR`` writes, and the ``Security`` that reads them.

One directory holds a private certificate authority and a certificate and key for each role of
a Dask cluster, as PEM files that ``dask scheduler`` / ``dask worker`` take on their command
line and ``distributed.Security`` takes in Python::

    DIR/ca.pem                 the CA certificate: every role trusts it (--tls-ca-file)
    DIR/ca-key.pem             the CA key: signs certificates; keep it off the cluster
    DIR/scheduler.pem, DIR/scheduler-key.pem
    DIR/worker.pem,    DIR/worker-key.pem
    DIR/client.pem,    DIR/client-key.pem

Every connection is authenticated both ways (distributed requires a certificate from the
client too and checks that the CA signed it), so a client, worker or scheduler without a
certificate of this CA is refused. Host names are not checked by distributed (its contexts
set ``check_hostname=False``); the certificates still name ``hosts`` as subject alternative
names. Keys are written readable by their owner only (mode 0600).

Writing certificates needs the ``cryptography`` package (``pip install "bigspec[tls]"``);
reading them (:func:`tls_security`) needs only distributed.

Examples
--------
>>> import os, tempfile, bigspec.security as sec
>>> _ = __import__("pytest").importorskip("cryptography")
>>> d = tempfile.mkdtemp()
>>> files = sec.write_certificates(d, hosts=["head-node"])
>>> sorted(os.path.basename(p) for p in files.values())[:3]
['ca-key.pem', 'ca.pem', 'client-key.pem']
>>> oct(os.stat(files["client-key"]).st_mode & 0o777)
'0o600'
>>> s = sec.tls_security(d)
>>> s.require_encryption, os.path.basename(s.tls_client_cert)
(True, 'client.pem')
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import socket
from collections.abc import Iterable

from .errors import ArgumentError

#: the roles of a Dask cluster, each with its own certificate and key
ROLES = ("scheduler", "worker", "client")

#: host names every certificate names besides those given: loopback, this machine, and the
#: service name of the scheduler in docker-compose.yml and the Helm chart
DEFAULT_HOSTS = ("localhost", "127.0.0.1", "::1", "scheduler")


def file_names() -> dict[str, str]:
    """The file of each item in a certificates directory: ``{"ca": "ca.pem", "client-key": "client-key.pem", ...}``.

    Examples
    --------
    >>> file_names()["worker"], file_names()["worker-key"]
    ('worker.pem', 'worker-key.pem')
    """
    names = {"ca": "ca.pem", "ca-key": "ca-key.pem"}
    for role in ROLES:
        names[role] = f"{role}.pem"
        names[f"{role}-key"] = f"{role}-key.pem"
    return names


def _crypto():
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
    except ImportError:
        from .errors import BackendUnavailableError

        raise BackendUnavailableError(
            "writing TLS certificates needs the cryptography package: pip install cryptography "
            "(or pip install \".[tls]\" in the bigspec checkout)") from None
    return x509, hashes, serialization, ec, ExtendedKeyUsageOID, NameOID


def _alt_names(x509, hosts: Iterable[str]):
    names, seen = [], set()
    for host in hosts:
        host = str(host).strip()
        if not host or host in seen:
            continue
        seen.add(host)
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


def write_certificates(directory: str | os.PathLike, *, hosts: Iterable[str] = (), days: int = 365,
                       overwrite: bool = False) -> dict[str, str]:
    """Write a new CA and a certificate and key for the scheduler, the workers and the client.

    Parameters
    ----------
    directory : str or os.PathLike
        Where to write (created if missing). Mount it read-only into the containers, or put it
        on a file system every node of the cluster sees.
    hosts : iterable of str
        Host names or IP addresses the certificates name, besides ``localhost``, the loopback
        addresses, ``scheduler`` (the compose/Helm service) and this machine's name.
        Informational for Dask (it does not check host names), useful for other TLS clients.
    days : int
        Validity of every certificate, in days from now (default one year).
    overwrite : bool
        Replace certificates already in ``directory``; otherwise they are refused.

    Returns
    -------
    dict of str to str
        The path of each file, keyed as in :func:`file_names` (``"ca"``, ``"worker-key"``, ...).

    Raises
    ------
    CertificatesExistError
        ``directory`` already holds some of these files and ``overwrite`` is False (a
        ``FileExistsError``).
    ArgumentError
        ``days`` is not a positive whole number, or ``directory`` is a file.
    BackendUnavailableError
        The ``cryptography`` package is not installed.

    Examples
    --------
    >>> import tempfile, bigspec.security as sec
    >>> _ = __import__("pytest").importorskip("cryptography")
    >>> d = tempfile.mkdtemp()
    >>> sorted(sec.write_certificates(d, days=30))
    ['ca', 'ca-key', 'client', 'client-key', 'scheduler', 'scheduler-key', 'worker', 'worker-key']
    >>> sec.write_certificates(d)
    Traceback (most recent call last):
    ...
    bigspec.errors.CertificatesExistError: ... already holds TLS certificates (ca.pem, ...); pass overwrite=True to replace them ...
    """
    if isinstance(days, bool) or not isinstance(days, int) or days < 1:
        raise ArgumentError(f"days={days!r} must be a positive whole number of days the certificates stay valid, "
                            f"e.g. days=365")
    directory = os.fspath(directory)
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise ArgumentError(f"{directory} is a file, not a directory for TLS certificates; choose another path")
    names = file_names()
    paths = {key: os.path.join(directory, name) for key, name in names.items()}
    there = [names[k] for k, p in paths.items() if os.path.exists(p)]
    if there and not overwrite:
        from .errors import CertificatesExistError, opt

        raise CertificatesExistError(
            f"{directory} already holds TLS certificates ({', '.join(there)}); pass "
            f"{opt('overwrite=True', '--overwrite')} to replace them (servers and clients using the old ones are then "
            f"refused), or choose another directory", directory=directory, files=there)
    x509, hashes, serialization, ec, EKU, NameOID = _crypto()
    os.makedirs(directory, exist_ok=True)

    now = datetime.datetime.now(datetime.timezone.utc)
    start, end = now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=days)

    def name(common):
        return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "bigspec"),
                          x509.NameAttribute(NameOID.COMMON_NAME, common)])

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = name("bigspec dask cluster CA")
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca_cert = (x509.CertificateBuilder()
               .subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
               .serial_number(x509.random_serial_number()).not_valid_before(start).not_valid_after(end)
               .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                            data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                            crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
               .add_extension(ca_ski, critical=False)
               .sign(ca_key, hashes.SHA256()))
    alt = x509.SubjectAlternativeName(_alt_names(x509, [*DEFAULT_HOSTS, socket.gethostname(), *hosts]))
    pem = {"ca": ca_cert.public_bytes(serialization.Encoding.PEM), "ca-key": _key_bytes(ca_key, serialization)}
    for role in ROLES:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (x509.CertificateBuilder()
                .subject_name(name(f"dask {role}")).issuer_name(ca_name).public_key(key.public_key())
                .serial_number(x509.random_serial_number()).not_valid_before(start).not_valid_after(end)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                             data_encipherment=False, key_agreement=True, key_cert_sign=False,
                                             crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
                # every role both listens and connects (workers talk to each other)
                .add_extension(x509.ExtendedKeyUsage([EKU.SERVER_AUTH, EKU.CLIENT_AUTH]), critical=False)
                .add_extension(alt, critical=False)
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
                .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
                .sign(ca_key, hashes.SHA256()))
        pem[role] = cert.public_bytes(serialization.Encoding.PEM)
        pem[f"{role}-key"] = _key_bytes(key, serialization)
    for key, data in pem.items():
        _write(paths[key], data, 0o600 if key.endswith("key") else 0o644)
    return paths


def _key_bytes(key, serialization) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _write(path: str, data: bytes, mode: int) -> None:
    """Write ``data`` to ``path`` with ``mode`` from the start (a key is never readable by others, even briefly)."""
    tmp = f"{path}.tmp-{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, mode)            # the umask may have taken bits away from a certificate
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def tls_security(directory: str | os.PathLike, *, roles: Iterable[str] = ROLES):
    """A ``distributed.Security`` from a directory written by :func:`write_certificates` (``bigspec certs``).

    Encryption is required. Each of ``roles`` whose certificate and key are in ``directory`` is
    filled in; the client's must be there (it is the role bigspec connects as). A directory
    holding only ``ca.pem``, ``client.pem`` and ``client-key.pem`` is enough for a client.

    Parameters
    ----------
    directory : str or os.PathLike
        The certificates directory.
    roles : iterable of str
        Roles to fill in (default all three; a local TLS cluster needs all of them).

    Returns
    -------
    distributed.Security

    Raises
    ------
    ArgumentError
        ``directory`` does not exist, or lacks ``ca.pem`` or the client's certificate or key;
        the message names the missing files and how to write them.

    Examples
    --------
    >>> import tempfile, bigspec.security as sec
    >>> sec.tls_security(tempfile.mkdtemp())
    Traceback (most recent call last):
    ...
    bigspec.errors.ArgumentError: the TLS certificates directory ... lacks ca.pem, client.pem, client-key.pem; write them with `bigspec certs ...` (or copy them from the directory it wrote)
    """
    from distributed import Security

    directory = os.fspath(directory)
    if not os.path.isdir(directory):
        raise ArgumentError(f"no TLS certificates directory at {directory}: write one with `bigspec certs {directory}` "
                            f"and start the scheduler and workers with its files (see deploy/README.md)")
    names = file_names()

    def path(key):
        return os.path.join(directory, names[key])

    missing = [names[k] for k in ("ca", "client", "client-key") if not os.path.isfile(path(k))]
    if missing:
        raise ArgumentError(f"the TLS certificates directory {directory} lacks {', '.join(missing)}; write them with "
                            f"`bigspec certs {directory}` (or copy them from the directory it wrote)")
    kwargs = {"tls_ca_file": path("ca")}
    for role in roles:
        if role not in ROLES:
            raise ArgumentError(f"roles holds {role!r}; a Dask TLS role is one of {', '.join(ROLES)}")
        if os.path.isfile(path(role)) and os.path.isfile(path(f"{role}-key")):
            kwargs[f"tls_{role}_cert"] = path(role)
            kwargs[f"tls_{role}_key"] = path(f"{role}-key")
    return Security(require_encryption=True, **kwargs)


def dask_flags(directory: str | os.PathLike, role: str) -> list[str]:
    """The ``dask scheduler`` / ``dask worker`` options that make ``role`` use the certificates in ``directory``.

    Examples
    --------
    >>> dask_flags("/certs", "worker")
    ['--tls-ca-file', '/certs/ca.pem', '--tls-cert', '/certs/worker.pem', '--tls-key', '/certs/worker-key.pem']
    """
    if role not in ROLES:
        raise ArgumentError(f"role={role!r}; a Dask TLS role is one of {', '.join(ROLES)}")
    names, directory = file_names(), os.fspath(directory)
    return ["--tls-ca-file", os.path.join(directory, names["ca"]), "--tls-cert", os.path.join(directory, names[role]),
            "--tls-key", os.path.join(directory, names[f"{role}-key"])]


__all__ = ["ROLES", "file_names", "write_certificates", "tls_security", "dask_flags"]
