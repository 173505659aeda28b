"""Job files: a store, the steps to run on it (form -> logdet -> spectrum) and the cluster, in YAML or TOML.

One schema (msgspec structs, kebab-case keys) for both formats. A key that is not allowed, or
a value of the wrong type, is a :class:`~bigspec.errors.JobSpecError` naming the key's path
(``$.logdet.metod``) and what is allowed, and every value is then checked by the same
validators the verbs use, so the whole file is checked before anything starts. Relative paths
(the store, ``form.data``, ``cluster.scheduler-file``) are relative to the current directory,
like the command line's arguments.

A job::

    store: ntk.zarr                     # or {path: s3://bucket/ntk.zarr, storage-options: {...}}
    form:                               # bigspec.form(kernel, data, store, ...)
      kernel: rbf
      data: data.npy                    # or {random: uniform, samples: 2000, features: 3, seed: 0}
      params: {lengthscale: 0.3}
      tile-size: 512
    logdet: {method: cholesky, shift: 1.0e-3, memory: auto}   # bigspec.logdet's options
    spectrum: {sample-size: 500, samples: 2}                   # bigspec.spectrum's options
    cluster: {workers: 2, threads: 1}   # or {scheduler: tcp://head:8786} / {scheduler-file: s.json}

:func:`run_job` takes the store's lease (:mod:`bigspec.lease`), runs the steps in order with
the verbs' own progress display, and records in the store's attributes (``jobs``) the spec, the
versions of bigspec, dask, distributed, numpy, zarr and python, and each step's result with
its times, so the store says how it was made and what was computed from it.

Examples
--------
>>> from bigspec.jobs import parse_job
>>> job = parse_job("store: K.zarr\\nform: {kernel: rbf, data: {random: uniform, samples: 500, features: 2}}\\n"
...                 "logdet: {method: cholesky, shift: 1.0e-3}\\n", "yaml")
>>> job.steps, job.n, job.spec.logdet.shift
(['form', 'logdet'], 500, 0.001)
>>> parse_job("store: K.zarr\\nlogdet: {metod: cholesky}\\n", "yaml")
Traceback (most recent call last):
...
bigspec.errors.JobSpecError: job: unknown key $.logdet.metod (did you mean method?); logdet takes: method, memory, shift, scale, checkpoint, overwrite, sample-size, n-ladders, seed, pseudo-tol, probes, lanczos-steps, reorthogonalize, n-samples
"""

from __future__ import annotations

import datetime
import difflib
import json
import logging
import math
import os
import re
import uuid
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Literal

import msgspec
import numpy as np

from .errors import (BigspecError, BigspecWarning, JobSpecError, MemoryBudgetError, StoreExistsError,
                     StoreNotWritableError, render)

logger = logging.getLogger(__name__)

STEPS = ("form", "logdet", "spectrum")


# -- the schema ---------------------------------------------------------------------------

class _Section(msgspec.Struct, rename="kebab", forbid_unknown_fields=True, kw_only=True, frozen=True):
    pass


class StoreSpec(_Section):
    """``store``: the matrix store's path or URL, and fsspec options for a URL."""

    path: str
    storage_options: dict[str, Any] | None = None


class RandomData(_Section):
    """``form.data`` generated: ``samples`` x ``features`` points, uniform on [0, 1) or standard normal."""

    random: Literal["uniform", "normal"]
    samples: int
    features: int
    seed: int = 0


class FormSpec(_Section):
    """``form``: :func:`bigspec.form` of ``kernel`` (with ``params``) on ``data`` into the store."""

    kernel: str
    data: str | RandomData
    params: dict[str, Any] = {}
    tile_size: int | None = None
    seed: int = 0
    dtype: Literal["float64", "float32"] = "float64"
    shuffle: bool = True
    overwrite: bool = False


class LogdetSpec(_Section):
    """``logdet``: :func:`bigspec.logdet` of the store, with its options (kebab-case)."""

    method: Literal["ldl", "cholesky", "flodance", "slq", "spectrum"] = "ldl"
    memory: str | int | None = None
    shift: float = 0.0
    scale: float = 1.0
    checkpoint: bool | None = None
    overwrite: bool | None = None
    sample_size: int | None = None
    n_ladders: int | None = None
    seed: int | None = None
    pseudo_tol: float | None = None
    probes: int | None = None
    lanczos_steps: int | None = None
    reorthogonalize: bool | None = None
    n_samples: int | None = None


class SpectrumSpec(_Section):
    """``spectrum``: :func:`bigspec.spectrum` of the store (``samples`` is its ``n_samples``)."""

    sample_size: int | None = None
    samples: int = 1
    size: int | None = None
    seed: int = 0
    regime: Literal["auto", "kernel", "bulk", "heavy-tailed"] = "auto"
    shift: float = 0.0
    scale: float = 1.0


class ClusterSpec(_Section):
    """``cluster``: a new LocalCluster (``local``, the default), or a running scheduler; command-line
    options override these."""

    local: bool | None = None
    scheduler: str | None = None
    scheduler_file: str | None = None
    gpu: bool = False
    workers: int | None = None
    threads: int | None = None
    memory_limit: str | int = "auto"


def _register_job_keys() -> None:
    """Tell the error messages which keyword arguments are job keys (they then read ``memory: 4GiB``)."""
    from . import errors

    for spec in (FormSpec, LogdetSpec, SpectrumSpec):
        errors.JOB_KEYS.update(f.name for f in msgspec.structs.fields(spec))


_register_job_keys()


class JobSpec(_Section):
    """A job file: the store (required) and the optional steps and cluster."""

    store: str | StoreSpec
    form: FormSpec | None = None
    logdet: LogdetSpec | None = None
    spectrum: SpectrumSpec | None = None
    cluster: ClusterSpec | None = None


# -- reading and checking -----------------------------------------------------------------

class _YamlLoader(__import__("yaml").SafeLoader):
    """PyYAML's safe loader, reading ``1e-3`` as a float as YAML 1.2 (and TOML) do."""


_YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                   |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                   |\.[0-9_]+(?:[eE][-+][0-9]+)?
                   |[-+]?\.(?:inf|Inf|INF)
                   |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."))


@dataclass
class Job:
    """A validated job: the spec, where it came from, and what validation resolved.

    ``store`` is the store's path or URL; ``n`` its order (rows) when known before running
    (from the form step, or an existing store); ``data`` the form step's data (an array, or the
    path of a ``.npy`` / zarr file).
    """

    spec: JobSpec
    source: str
    store: str
    storage_options: dict | None
    n: int | None = None
    data: Any = None
    kernel_params: dict = field(default_factory=dict)
    rows_per_sample: int = 1

    @property
    def steps(self) -> list[str]:
        """The steps to run, in order."""
        return [s for s in STEPS if getattr(self.spec, s) is not None]

    def cluster_options(self) -> dict:
        """The cluster section as keyword arguments of :func:`bigspec.connect` (None where not given)."""
        c = self.spec.cluster or ClusterSpec()
        return {"scheduler": c.scheduler, "scheduler_file": c.scheduler_file, "workers": c.workers,
                "threads": c.threads, "memory_limit": c.memory_limit, "gpu": c.gpu}

    def to_dict(self) -> dict:
        """The spec as written (kebab-case keys), JSON-safe."""
        return msgspec.to_builtins(self.spec)


def load_job(path) -> Job:
    """Read and validate a job file (``.yaml``, ``.yml`` or ``.toml``), all of it, before anything starts.

    Parameters
    ----------
    path : str or os.PathLike
        The job file.

    Returns
    -------
    Job

    Raises
    ------
    JobSpecError
        The file cannot be parsed, holds a key that is not allowed, or a value no step can use;
        the message names the key's path (``$.logdet.metod``) and what is allowed.
    FileNotFoundError
        No file at ``path``.

    Examples
    --------
    >>> import os, tempfile
    >>> from bigspec.jobs import load_job
    >>> path = os.path.join(tempfile.mkdtemp(), "job.toml")
    >>> _ = open(path, "w").write('store = "K.zarr"\\n[form]\\nkernel = "rbf"\\n'
    ...                           'data = {random = "uniform", samples = 200, features = 2}\\n')
    >>> load_job(path).spec.form.data.samples
    200
    """
    path = os.fspath(path)
    ext = os.path.splitext(path)[1].lower()
    fmt = {".yaml": "yaml", ".yml": "yaml", ".toml": "toml"}.get(ext)
    if fmt is None:
        raise JobSpecError(f"{path}: a job file is YAML (.yaml, .yml) or TOML (.toml), got {ext or 'no extension'!r}")
    with open(path, "rb") as f:
        text = f.read().decode("utf-8")
    return parse_job(text, fmt, source=path)


def parse_job(text: str, fmt: str, source: str = "job") -> Job:
    """Parse and validate a job given as text (``fmt`` "yaml" or "toml"); see :func:`load_job`."""
    if fmt == "yaml":
        import yaml

        try:
            obj = yaml.load(text, Loader=_YamlLoader)  # noqa: S506 - a SafeLoader subclass
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            raise JobSpecError(f"{source}: not valid YAML{where}: {getattr(e, 'problem', None) or e}") from None
    elif fmt == "toml":
        import tomllib

        try:
            obj = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise JobSpecError(f"{source}: not valid TOML: {e}") from None
    else:
        raise JobSpecError(f"{source}: the format must be 'yaml' or 'toml', got {fmt!r}")
    return job_from_dict(obj, source)


def job_from_dict(obj, source: str = "job") -> Job:
    """Validate a job given as a dict of sections (what a YAML or TOML file holds); see :func:`load_job`."""
    if obj is None:
        raise JobSpecError(f"{source}: the job is empty; it needs at least `store` and one of the steps "
                           f"{', '.join(STEPS)}")
    try:
        spec = msgspec.convert(obj, JobSpec)
    except msgspec.ValidationError as e:
        raise JobSpecError(f"{source}: {_explain(str(e))}") from None
    return _check(spec, source)


def _section_fields(path: str):
    """(section name, allowed keys, inspect type of the struct) at a ``$.a.b`` path of the schema."""
    import msgspec.inspect as mi

    t = mi.type_info(JobSpec)
    name = "the job"
    for part in [p for p in path.split(".")[1:] if p]:
        struct = _struct_of(t)
        if struct is None:
            return name, [], None
        found = next((f for f in struct.fields if f.encode_name == part), None)
        if found is None:
            return name, [], None
        t, name = found.type, part
    struct = _struct_of(t)
    return name, ([f.encode_name for f in struct.fields] if struct is not None else []), t


def _struct_of(t):
    import msgspec.inspect as mi

    if isinstance(t, mi.StructType):
        return t
    if isinstance(t, mi.UnionType):
        return next((u for u in t.types if isinstance(u, mi.StructType)), None)
    return None


def _literal_values(t) -> list:
    import msgspec.inspect as mi

    if isinstance(t, mi.LiteralType):
        return list(t.values)
    if isinstance(t, mi.UnionType):
        return [v for u in t.types for v in _literal_values(u)]
    return []


def _explain(message: str) -> str:
    """msgspec's validation message, told with the key's path and what is allowed there."""
    m = re.fullmatch(r"Object contains unknown field `(.+?)`(?: - at `(.+)`)?", message)
    if m:
        key, at = m.group(1), m.group(2) or "$"
        name, allowed, _ = _section_fields(at)
        close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
        if not close and key.replace("_", "-") in allowed:
            close = [key.replace("_", "-")]
        hint = f" (did you mean {close[0]}?)" if close else ""
        return f"unknown key {at}.{key}{hint}; {name} takes: {', '.join(allowed)}"
    m = re.fullmatch(r"Object missing required field `(.+?)`(?: - at `(.+)`)?", message)
    if m:
        key, at = m.group(1), m.group(2) or "$"
        what = {"store": "the path or URL of the matrix store (`store: K.zarr`)",
                "kernel": "a kernel name (rbf, matern, relu, attention, ...)",
                "data": "a .npy file of data points, or {random: uniform, samples: N, features: D}",
                "path": "the store's path or URL"}.get(key, "")
        return f"{at}.{key} is required" + (f": {what}" if what else "")
    m = re.fullmatch(r"(.+?) - at `(.+)`", message)
    if m:
        problem, at = m.group(1), m.group(2)
        _, allowed, t = _section_fields(at)
        values = _literal_values(t)
        if values:
            problem += f"; allowed: {', '.join(map(str, values))}"
        elif allowed and "object" in problem:
            problem += f"; it is a section taking: {', '.join(allowed)}"
        return f"{at}: {problem}"
    if message.startswith("Expected `object`"):
        return (f"a job is a mapping of sections ({', '.join(['store', *STEPS, 'cluster'])}); "
                f"{message[0].lower()}{message[1:]}")
    return message


def _said(e: Exception) -> str:
    template = getattr(e, "template", None)
    return render(template, "python") if template is not None else str(e)


class _Checker:
    def __init__(self, source):
        self.source = source

    def __call__(self, path, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except JobSpecError:
            raise
        except (BigspecError, ValueError, TypeError, OSError) as e:
            raise JobSpecError(f"{self.source}: {path}: {_said(e)}") from None

    def fail(self, path, message):
        raise JobSpecError(f"{self.source}: {path}: {message}")


def _check(spec: JobSpec, source: str) -> Job:
    """Every value through the verbs' own validators; what is known before running (n) resolved."""
    from .determinant import check_options
    from .spectra.sample import check_counts, check_sample_size
    from .storage import contents, locate
    from .validate import check_count, check_memory, check_number, check_scale, check_seed

    c = _Checker(source)
    store, storage_options = (spec.store, None) if isinstance(spec.store, str) else \
        (spec.store.path, spec.store.storage_options)
    at_store = "$.store" if isinstance(spec.store, str) else "$.store.path"
    loc = c(at_store, locate, store, storage_options)
    job = Job(spec, source, loc.url if loc.protocol != "file" else loc.path, storage_options)
    if not job.steps:
        c.fail("$", f"the job has no steps: add one or more of {', '.join(STEPS)}")
    found = c(at_store, contents, job.store, storage_options)
    if spec.form is not None:
        f = spec.form
        job.kernel_params = {k.replace("-", "_"): v for k, v in f.params.items()}
        from .kernels import get_kernel, known_kernels

        if f.kernel not in known_kernels():
            c.fail("$.form.kernel", f"unknown kernel {f.kernel!r}; known kernels: {', '.join(known_kernels())}")
        kernel = c("$.form.params", get_kernel, f.kernel, **job.kernel_params)
        if isinstance(f.data, str):
            data = os.path.abspath(os.path.expanduser(f.data))
            if not os.path.exists(data):
                c.fail("$.form.data", f"no data at {data}: give a .npy file (or zarr array) of data points, or "
                                      f"generated data such as {{random: uniform, samples: 2000, features: 3}}")
            X = c("$.form.data", _data_header, data)
            job.data = data
        else:
            c("$.form.data.samples", check_count, f.data.samples, "samples")
            c("$.form.data.features", check_count, f.data.features, "features")
            c("$.form.data.seed", check_seed, f.data.seed)
            X = random_data(f.data)
            job.data = X
        if getattr(X, "ndim", 0) < 2 or X.shape[0] < 1:
            c.fail("$.form.data", f"data points must have shape (n_samples, ...), got {getattr(X, 'shape', None)}")
        bound = c("$.form.params", kernel.bind, X)
        job.rows_per_sample = per = int(bound.rows_per_sample())
        job.n = int(X.shape[0]) * per
        if f.tile_size is not None:
            from .store import check_tile_size

            c("$.form.tile-size", check_tile_size, f.tile_size)
            if f.tile_size % per:
                c.fail("$.form.tile-size", f"{f.tile_size} must be a multiple of {per} (matrix rows per data point)")
        c("$.form.seed", check_seed, f.seed)
        if found.kind in ("zarr", "other", "file") and not f.overwrite:
            c.fail(at_store, f"{job.store} holds data that is not a bigspec store ({', '.join(found.entries)}); "
                             f"choose another path, or set overwrite: true in form to replace it")
    elif found.kind != "bigspec":
        c.fail(at_store, f"no bigspec store at {job.store} ({found.kind}) and no form step to write one; add a form "
                         f"section, or point store at an existing store")
    else:
        from .store import open_matrix

        job.n = c(at_store, open_matrix, job.store, mode="r", storage_options=storage_options).n
    if spec.logdet is not None:
        lg = spec.logdet
        given = {k: getattr(lg, k) for k in ("memory", "checkpoint", "overwrite", "sample_size", "n_ladders", "seed",
                                             "pseudo_tol", "probes", "lanczos_steps", "reorthogonalize",
                                             "n_samples") if getattr(lg, k) is not None}
        c("$.logdet", check_options, lg.method, given)
        c("$.logdet.memory", check_memory, lg.memory)
        c("$.logdet.shift", check_number, lg.shift, "shift")
        c("$.logdet.scale", check_scale, lg.scale)
        for key in ("sample_size", "n_ladders", "probes", "lanczos_steps", "n_samples"):
            if getattr(lg, key) is not None:
                c(f"$.logdet.{key.replace('_', '-')}", check_count, getattr(lg, key), key)
        if lg.seed is not None:
            c("$.logdet.seed", check_seed, lg.seed)
        if lg.pseudo_tol is not None:
            c("$.logdet.pseudo-tol", check_number, lg.pseudo_tol, "pseudo_tol")
    if spec.spectrum is not None:
        sp = spec.spectrum
        c("$.spectrum.samples", check_counts, sp.sample_size, sp.samples)
        if job.n is not None:
            c("$.spectrum.sample-size", check_sample_size, sp.sample_size, job.n, sp.samples)
        if sp.size is not None:
            c("$.spectrum.size", check_count, sp.size, "size")
        c("$.spectrum.seed", check_seed, sp.seed)
        c("$.spectrum.shift", check_number, sp.shift, "shift")
        c("$.spectrum.scale", check_scale, sp.scale)
    if spec.cluster is not None:
        cl = spec.cluster
        if cl.scheduler and cl.scheduler_file:
            c.fail("$.cluster", "give scheduler or scheduler-file, not both")
        if cl.local and (cl.scheduler or cl.scheduler_file):
            c.fail("$.cluster.local", "local: true starts a new cluster; remove it to join the scheduler given")
        if cl.local is False and not (cl.scheduler or cl.scheduler_file):
            c.fail("$.cluster.local", "local: false needs a scheduler or scheduler-file to join")
        for key in ("workers", "threads"):
            if getattr(cl, key) is not None:
                c(f"$.cluster.{key}", check_count, getattr(cl, key), key)
        if cl.memory_limit != "auto":
            c("$.cluster.memory-limit", check_memory, cl.memory_limit)
    return job


def _data_header(path: str):
    """The data at ``path`` without reading it: a memory-mapped .npy file or a zarr array."""
    if path.endswith(".npy"):
        return np.load(path, mmap_mode="r")
    import zarr

    try:
        return zarr.open_array(path, mode="r")
    except Exception:
        raise ValueError(f"{path} is not a .npy file or a zarr array of data points") from None


def random_data(d: RandomData) -> np.ndarray:
    """The generated data points of ``form.data`` (float64, seeded, the same on every machine)."""
    rng = np.random.default_rng(np.random.SeedSequence(d.seed))
    shape = (d.samples, d.features)
    return rng.uniform(size=shape) if d.random == "uniform" else rng.standard_normal(shape)


# -- planning and pre-flight ----------------------------------------------------------------

def versions() -> dict:
    """The versions a record keeps: bigspec, dask, distributed, numpy, zarr and python."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    from . import __version__

    out = {"bigspec": __version__}
    for name in ("dask", "distributed", "numpy", "zarr"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    out["python"] = platform.python_version()
    return out


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _loopback(address: str) -> bool:
    import ipaddress
    import socket
    from urllib.parse import urlsplit

    try:
        host = urlsplit(address if "://" in address else f"tcp://{address}").hostname or ""
    except ValueError:
        return False
    if host in ("localhost", "", socket.gethostname()):
        return True
    try:
        if ipaddress.ip_address(host).is_loopback:
            return True
    except ValueError:
        try:
            host = socket.gethostbyname(host)
        except OSError:
            return False
    return host in _own_addresses()      # a scheduler bound to this machine's own network address


def _own_addresses() -> set:
    """The IP addresses of this machine's network interfaces."""
    import psutil

    return {a.address.split("%")[0] for addrs in psutil.net_if_addrs().values() for a in addrs
            if a.family.name in ("AF_INET", "AF_INET6")}


def _existing_ancestor(path: str) -> str:
    path = os.path.abspath(path)
    while not os.path.exists(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return path


@dataclass
class JobPlan:
    """What a job will do, checked against the cluster and the store's location; computes nothing.

    ``steps`` says each step in words; ``logdet_plan`` is the exact factorization's
    :class:`~bigspec.determinant.plan.Plan` (tasks, flops, bytes, peak memory per worker);
    ``problems`` are what would stop the job (``run_job`` raises on the first).
    """

    source: str
    store: str
    steps: list
    cluster: dict
    logdet_plan: Any = None
    disk: dict | None = None
    lease: dict | None = None
    problems: list = field(default_factory=list)
    notes: list = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"job": self.source, "store": self.store, "steps": self.steps, "cluster": self.cluster,
                "logdet_plan": self.logdet_plan.summary() if self.logdet_plan is not None else None,
                "disk": self.disk, "lease": self.lease, "problems": self.problems, "notes": self.notes}

    def describe(self, interface: str = "python") -> str:
        """The plan in words, options written for ``interface`` ("python", "cli" or "job")."""
        from dask.utils import format_bytes

        cl = self.cluster
        lines = [f"job {self.source} -> store {self.store}",
                 f"cluster: {cl.get('where')}: {cl.get('workers')} workers, {cl.get('threads')} threads"
                 + (f", {format_bytes(cl['memory'])} memory" if cl.get("memory") else "")]
        for i, s in enumerate(self.steps, 1):
            lines.append(f"{i}. {s['step']}: {s['what']}")
            if s["step"] == "logdet" and self.logdet_plan is not None:
                lines += ["   " + line for line in self.logdet_plan.describe(interface).splitlines()]
        if self.disk:
            lines.append(f"disk: about {format_bytes(self.disk['needed'])} to write, "
                         f"{format_bytes(self.disk['free'])} free at {self.disk['at']}")
        if self.lease:
            lines.append(f"lease: held by host {self.lease['host']}, pid {self.lease['pid']}"
                         + (f" (expired: {self.lease['expired']})" if self.lease.get("expired") else ""))
        lines += [f"note: {n}" for n in self.notes]
        lines += [f"PROBLEM: {p}" for p in self.problems]
        from .errors import render

        return render("\n".join(lines), interface)


def plan_job(job: Job, *, client=None) -> JobPlan:
    """What ``job`` will do on ``client`` and whether it can: computes nothing, writes nothing.

    Parameters
    ----------
    job : Job
        From :func:`load_job`.
    client : distributed.Client, optional
        The cluster it will run on (default: the current client, else the threaded scheduler).

    Returns
    -------
    JobPlan
        Its ``problems`` list what would stop the job before it starts (too little memory on the
        workers for the plan, too little disk, a store location the workers cannot see).

    Raises
    ------
    StoreNotWritableError
        The store's location cannot be written.
    MemoryBudgetError
        The logdet memory budget cannot hold one tile column.

    Examples
    --------
    >>> import os, tempfile
    >>> from bigspec.jobs import parse_job, plan_job
    >>> store = os.path.join(tempfile.mkdtemp(), "K.zarr")
    >>> job = parse_job(f"store: {store}\\nform: {{kernel: rbf, data: {{random: uniform, samples: 300, features: 2}}, "
    ...                 "tile-size: 100}\\nlogdet: {method: cholesky, shift: 0.01}\\n", "yaml")
    >>> p = plan_job(job)
    >>> p.logdet_plan.summary()["tiles"], p.problems, os.path.exists(store)
    (3, [], False)
    """
    from dask.utils import format_bytes

    from .cluster import resolve_client, resources, workers_info

    client = resolve_client(client)
    spec = job.spec
    n_workers, threads, memory = resources(client)
    where = (f"scheduler {client.scheduler.address}" if client is not None else "Dask's threaded scheduler")
    cluster = {"where": where, "workers": n_workers, "threads": threads, "memory": memory}
    plan = JobPlan(job.source, job.store, [], cluster)
    b = _tile_size(job, client)
    if spec.form is not None:
        f = spec.form
        params = ", ".join(f"{k}={v}" for k, v in job.kernel_params.items())
        data = (f"{f.data.samples} x {f.data.features} {f.data.random} random points (seed {f.data.seed})"
                if isinstance(f.data, RandomData) else f.data)
        nt = -(-job.n // b)
        itemsize = np.dtype(f.dtype).itemsize
        plan.steps.append({"step": "form", "kernel": f.kernel, "params": job.kernel_params, "n": job.n,
                           "tile_size": b, "tiles": nt * (nt + 1) // 2,
                           "what": f"{f.kernel}({params}) on {data}: {job.n} x {job.n} {f.dtype} in {b}-row tiles, "
                                   f"{nt * (nt + 1) // 2} lower tiles ({format_bytes(_lower_bytes(job.n, b, itemsize))})"})
    if spec.logdet is not None:
        lg = spec.logdet
        exact = lg.method in ("ldl", "cholesky")
        plan.logdet_plan = _logdet_plan(job, client, b) if exact else None
        kept = _kept_factor_problem(job) if exact else None
        if kept:
            plan.problems.append(kept)
        extra = f", shift {lg.shift:g}" if lg.shift else ""
        plan.steps.append({"step": "logdet", "method": lg.method,
                           "what": f"{lg.method} ({'exact' if exact else 'estimate'}){extra}"})
        if plan.logdet_plan is not None:
            need = plan.logdet_plan.summary()["peak_memory_per_worker"]
            limits = {a: w.get("memory_limit") for a, w in workers_info(client).items() if w.get("memory_limit")}
            if limits and need > min(limits.values()):
                small = min(limits, key=limits.get)
                plan.problems.append(
                    f"the exact logdet needs {format_bytes(need)} per worker at its peak, but worker {small} has "
                    f"{format_bytes(limits[small])} (memory-limit): lower logdet.memory (the budget, now "
                    f"{format_bytes(plan.logdet_plan.budget)}) or give the workers more memory")
    if spec.spectrum is not None:
        sp = spec.spectrum
        size = sp.sample_size or (min(job.n // sp.samples, 4096) if job.n else "auto")
        plan.steps.append({"step": "spectrum", "what": f"{sp.samples} sample(s) of {size} rows, regime {sp.regime}"
                                                       + (f", shift {sp.shift:g}" if sp.shift else "")})
    try:
        _check_writable(job)
    except StoreNotWritableError as e:
        plan.problems.append(str(e))
    plan.disk = _disk(job, b, plan.logdet_plan)
    if plan.disk and plan.disk["needed"] > plan.disk["free"]:
        plan.problems.append(f"the job writes about {format_bytes(plan.disk['needed'])} at {plan.disk['at']}, which "
                             f"has {format_bytes(plan.disk['free'])} free: free some space or choose another store")
    from .lease import read_lease

    holder = read_lease(job.store, job.storage_options)
    if holder is not None:
        plan.lease = {**holder.to_dict(), "expired": holder.expired()}
        if not plan.lease["expired"]:
            plan.notes.append(f"the store's lease is held by {holder.describe()}: the job will be refused unless "
                              f"that one finishes first (or with --force)")
    plan.notes += _visibility(job, client)
    return plan


def _lower_bytes(n: int, b: int, itemsize: int) -> int:
    nt = -(-n // b)
    return (nt * (nt + 1) // 2) * b * b * itemsize


def _tile_size(job: Job, client) -> int:
    """The tile edge the store will have: the existing store's, the form step's, or what form will choose."""
    from .storage import is_store

    if is_store(job.store, job.storage_options) and not (job.spec.form and job.spec.form.overwrite):
        from .store import open_matrix

        return open_matrix(job.store, mode="r", storage_options=job.storage_options).tile_size
    f = job.spec.form
    if f is not None and f.tile_size is not None:
        return min(f.tile_size, job.n)
    from .cluster import resources
    from .determinant.plan import fit_tile_size, memory_budget

    _, threads, workers_memory = resources(client)
    return fit_tile_size(job.n, memory_budget(None, client, workers_memory), threads, multiple=job.rows_per_sample)


def _kept_factor_problem(job: Job) -> str | None:
    """The refusal an exact logdet step would meet: the store keeps a factor made with other settings."""
    from .determinant.exact import _shift_digest
    from .storage import is_store
    from .store import FactorStore, open_matrix

    lg = job.spec.logdet
    if lg.checkpoint is False or not is_store(job.store, job.storage_options):
        return None
    ms = open_matrix(job.store, mode="r", storage_options=job.storage_options)
    if "factor" not in ms.group:
        return None
    meta = dict(ms.group["factor"].attrs.get("bigspec_factor", {}))
    try:
        FactorStore.check(meta, ms.n, ms.tile_size, lg.method, _shift_digest(lg.scale, lg.shift), bool(lg.overwrite))
    except StoreExistsError as e:
        return getattr(e, "template", None) or str(e)
    return None


def _logdet_plan(job: Job, client, b: int):
    """The exact factorization's Plan: from the verb itself on an existing, complete store, else from the
    planner on the store the form step will write."""
    import bigspec

    from . import config
    from .cluster import resources
    from .determinant.plan import make_plan, memory_budget, task_granularity

    lg = job.spec.logdet
    options = {k: getattr(lg, k) for k in ("memory", "checkpoint", "overwrite") if getattr(lg, k) is not None}
    if job.spec.form is None:
        return bigspec.logdet(job.store, method=lg.method, shift=lg.shift, scale=lg.scale, client=client,
                              storage_options=job.storage_options, dry_run=True, progress=False, **options)
    workers, threads, workers_memory = resources(client)
    budget = memory_budget(lg.memory, client, workers_memory)
    itemsize = np.dtype(job.spec.form.dtype).itemsize
    common = dict(max_tasks=config.get("max-graph-tasks", 100_000), storage_itemsize=itemsize, store_tiles=True,
                  store_url=job.store, pure=client is not None,
                  granularity=task_granularity("gpu" if job.spec.cluster is not None and job.spec.cluster.gpu else "cpu"))
    probe = make_plan(job.n, b, 8, lg.method, budget, threads, workers, **common)
    write = bool(lg.checkpoint) or not probe.in_memory
    return make_plan(job.n, b, 8, lg.method, budget, threads, workers, write_factor=write, **common)


def _disk(job: Job, b: int, logdet_plan) -> dict | None:
    """Bytes the job writes at a local store and the free space there (None for URLs)."""
    import shutil

    from .storage import locate

    loc = locate(job.store, job.storage_options)
    if loc.protocol != "file":
        return None
    at = _existing_ancestor(loc.path)
    needed = 0
    if job.spec.form is not None and not os.path.exists(os.path.join(loc.path, "zarr.json")) or \
            (job.spec.form is not None and job.spec.form.overwrite):
        needed += _lower_bytes(job.n, b, np.dtype(job.spec.form.dtype).itemsize)
    if logdet_plan is not None and logdet_plan.write_factor:
        needed += int(logdet_plan.summary()["bytes_written"])
    return {"at": at, "needed": int(needed), "free": int(shutil.disk_usage(at).free)}


def _visibility(job: Job, client) -> list[str]:
    """A local store with a scheduler on another machine: a note, and an error if a worker cannot see it."""
    from .cluster import require_visible
    from .storage import locate

    loc = locate(job.store, job.storage_options)
    if client is None or loc.protocol != "file":
        return []
    notes = []
    address = client.scheduler.address
    if not _loopback(address):
        message = (f"the store {job.store} is a local path and the scheduler {address} is on another machine: every "
                   f"worker must mount {os.path.dirname(loc.path)} at the same path (or use a URL such as s3://...)")
        warnings.warn(BigspecWarning(message), stacklevel=3)
        notes.append(message)
    require_visible(client, _existing_ancestor(loc.path), f"the store {job.store}",
                    "put the store on storage every worker mounts at the same path, or at a URL (s3://...)")
    return notes


def _check_writable(job: Job) -> None:
    """A local store's location must be writable (a clear error before anything starts, not a traceback)."""
    from .storage import locate

    loc = locate(job.store, job.storage_options)
    if loc.protocol != "file":
        return
    at = _existing_ancestor(loc.path)
    if not os.path.isdir(at):
        raise StoreNotWritableError(f"cannot write the store {job.store}: {at} is a file, not a directory; choose "
                                    f"another store path", store=job.store, path=at)
    vfs = os.statvfs(at)
    if vfs.f_blocks == 0:
        raise StoreNotWritableError(f"cannot write the store {job.store}: {at} is on a file system that holds no "
                                    f"files (such as /proc or /sys); choose a location on a disk", store=job.store,
                                    path=at)
    if vfs.f_flag & os.ST_RDONLY:
        raise StoreNotWritableError(f"cannot write the store {job.store}: {at} is on a read-only file system; choose a "
                                    f"location you can write", store=job.store, path=at)
    if not os.access(at, os.W_OK | os.X_OK):
        raise StoreNotWritableError(f"cannot write the store {job.store}: {at} is not writable (permission denied); "
                                    f"choose a location you can write", store=job.store, path=at)


# -- running ------------------------------------------------------------------------------

def _jsonable(obj):
    """A JSON-safe copy (NaN and infinities as strings, numpy scalars as Python numbers)."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        v = float(obj)
        return v if math.isfinite(v) else ("nan" if math.isnan(v) else ("inf" if v > 0 else "-inf"))
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if obj is None or isinstance(obj, (str, bool, int)):
        return obj
    return str(obj)


def _save(job: Job, record: dict) -> None:
    """Write ``record`` into the store's ``jobs`` attribute (replacing the entry of the same id)."""
    from .storage import is_store
    from .store import open_matrix

    if not is_store(job.store, job.storage_options):
        return                          # the form step has not created it yet
    ms = open_matrix(job.store, storage_options=job.storage_options)   # fresh: the verbs wrote attributes too
    jobs = [_ended(r, record) for r in ms.attrs.get("jobs", []) if r.get("id") != record["id"]]
    ms.update_attrs(jobs=[*jobs, _jsonable(record)])


def _ended(old: dict, current: dict) -> dict:
    """An earlier record still marked running while this job holds the lease: its process is gone (the lease
    was free, expired or taken over), so it stopped where its steps say."""
    if old.get("status") != "running":
        return old
    return {**old, "status": "stopped", "error": old.get("error") or (
        f"stopped without a word: its process was gone when job {current['id']} took the store's lease")}


def run_job(job: Job, *, client=None, progress=None, force: bool = False, device: str | None = None,
            on_event: Callable[[str], None] | None = None) -> dict:
    """Run a job's steps in order (form -> logdet -> spectrum), holding the store's lease; return its record.

    Before anything starts: the store's location must be writable with room for what the job
    writes, the workers must see a local store and have the memory the exact logdet's plan
    needs, and the store's lease must be free (or expired, or ``force``). The record (the spec,
    the versions, each step's times and result) is written into the store's attributes
    (``jobs``) after each step, and with the error if a step fails.

    Parameters
    ----------
    job : Job
        From :func:`load_job`.
    client : distributed.Client, optional
        Default: the current client, else Dask's threaded scheduler.
    progress : bool, optional
        The verbs' progress bar (default: on a terminal).
    force : bool
        Take the store's lease over from a live holder (it says so with a LeaseWarning).
    device : {"cpu", "gpu"}, optional
        Default: "gpu" when the job's cluster section says ``gpu: true``.
    on_event : callable, optional
        Called with a line of text as each step starts and ends (the CLI prints them).

    Returns
    -------
    dict
        The job's record, as stored: ``id``, ``spec``, ``versions``, ``started``, ``finished``,
        ``status`` ("done"), ``steps`` (each with ``started``, ``finished``, ``seconds``, ``result``).

    Raises
    ------
    StoreLeaseError
        Another job holds the store's lease.
    StoreNotWritableError, MemoryBudgetError, StoreNotFoundError
        A pre-flight check failed (nothing was started).

    Examples
    --------
    >>> import os, tempfile, numpy as np, bigspec
    >>> from bigspec.jobs import parse_job, run_job
    >>> store = os.path.join(tempfile.mkdtemp(), "K.zarr")
    >>> job = parse_job(f"store: {store}\\nform: {{kernel: rbf, data: {{random: uniform, samples: 300, features: 2}}, "
    ...                 "tile-size: 100}\\nlogdet: {method: cholesky, shift: 0.01}\\n", "yaml")
    >>> record = run_job(job, progress=False)
    >>> K = bigspec.open_matrix(store).read(0, 300, 0, 300)
    >>> ref = np.linalg.slogdet(K + 0.01 * np.eye(300))[1]
    >>> bool(np.isclose(record["steps"]["logdet"]["result"]["logabsdet"], ref, rtol=1e-10))
    True
    >>> bigspec.open_matrix(store).attrs["jobs"][-1]["status"]
    'done'
    """
    import time

    import bigspec

    from .cluster import resolve_client
    from .errors import cli_text
    from .lease import hold

    emit = on_event or (lambda line: logger.info(line))
    client = resolve_client(client)
    spec = job.spec
    device = device or ("gpu" if spec.cluster is not None and spec.cluster.gpu else "cpu")
    _check_writable(job)
    plan = plan_job(job, client=client)
    if plan.problems:
        first = plan.problems[0]
        kind = (MemoryBudgetError if plan.logdet_plan is not None and "per worker" in first else
                StoreExistsError if "keeps one factorization" in first else StoreNotWritableError)
        raise kind(f"{job.source}: the job cannot run as planned: " + "; ".join(plan.problems))
    common = dict(client=client, progress=progress, device=device, storage_options=job.storage_options)
    with hold(job.store, storage_options=job.storage_options, force=force,
              command=f"bigspec run {job.source}") as lease:
        record = {"id": uuid.uuid4().hex[:12], "file": os.path.abspath(job.source) if os.path.exists(job.source)
                  else job.source, "spec": job.to_dict(), "versions": versions(), "started": _now(),
                  "finished": None, "status": "running", "steps": {}}
        if lease is not None:
            record["holder"] = {k: v for k, v in lease.holder.to_dict().items() if k != "token"}
            if lease.taken_from is not None:
                record["lease_taken_from"] = {k: v for k, v in lease.taken_from.to_dict().items() if k != "token"}
        step = None
        try:
            for i, step in enumerate(job.steps, 1):
                t0, started = time.perf_counter(), _now()
                record["steps"][step] = {"started": started, "finished": None}
                _save(job, record)
                emit(f"step {i}/{len(job.steps)}: {step} ({plan.steps[i - 1]['what']})")
                if step == "form":
                    f = spec.form
                    ms = bigspec.form(f.kernel, job.data, job.store, tile_size=f.tile_size, dtype=f.dtype,
                                      seed=f.seed, shuffle=f.shuffle, overwrite=f.overwrite, **common,
                                      **job.kernel_params)
                    meta = ms.attrs
                    result = {"store": ms.url, "n": ms.n, "tile_size": ms.tile_size, "kernel": meta.get("kernel"),
                              "tiles": sum(1 for _ in ms.stored_tiles()), "formed_tiles": meta.get("formed_tiles")}
                    said = f"formed {ms} ({result['formed_tiles']} of {result['tiles']} tiles now)"
                elif step == "logdet":
                    lg = spec.logdet
                    options = {k: getattr(lg, k) for k in (
                        "memory", "checkpoint", "overwrite", "sample_size", "n_ladders", "seed", "pseudo_tol",
                        "probes", "lanczos_steps", "reorthogonalize", "n_samples") if getattr(lg, k) is not None}
                    res = bigspec.logdet(job.store, method=lg.method, shift=lg.shift, scale=lg.scale, **common,
                                         **options)
                    result = res.to_dict()
                    said = f"logdet: sign {res.sign}, logabsdet {res.logabsdet!r}"
                else:
                    sp = spec.spectrum
                    res = bigspec.spectrum(job.store, sample_size=sp.sample_size, n_samples=sp.samples,
                                           size=sp.size, seed=sp.seed, regime=sp.regime, shift=sp.shift,
                                           scale=sp.scale, **common)
                    result = res.to_dict()
                    said = (f"spectrum: size {res.size}, support [{res.support[0]:.6g}, {res.support[1]:.6g}], "
                            f"regime {res.settings['regime']}")
                seconds = time.perf_counter() - t0
                record["steps"][step] = {"started": started, "finished": _now(), "seconds": seconds,
                                         "result": _jsonable(result)}
                _save(job, record)
                emit(f"  {said} ({seconds:.1f} s)")
        except BaseException as e:
            record["status"] = "interrupted" if isinstance(e, KeyboardInterrupt) else "failed"
            record["error"] = f"{step}: {cli_text(e) or type(e).__name__}"
            record["finished"] = _now()
            try:
                _save(job, record)
            except Exception as save_error:  # the original error matters more
                logger.info("could not record the failure in %s: %s", job.store, save_error)
            raise
        record["status"], record["finished"] = "done", _now()
        _save(job, record)
    return _jsonable(record)


def job_records(store, storage_options: dict | None = None) -> list[dict]:
    """The job records a store keeps (oldest first), as :func:`run_job` wrote them."""
    from .store import open_matrix

    return list(open_matrix(store, mode="r", storage_options=storage_options).attrs.get("jobs", []))


__all__ = ["JobSpec", "StoreSpec", "FormSpec", "LogdetSpec", "SpectrumSpec", "ClusterSpec", "RandomData", "Job",
           "JobPlan", "load_job", "parse_job", "job_from_dict", "plan_job", "run_job", "job_records", "versions",
           "random_data"]
