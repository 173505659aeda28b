"""Errors and warnings raised by bigspec.

Each error also inherits the builtin exception a user would naturally catch, so
``except ValueError`` keeps working. Messages name the offending value and the fix, in the
interface the user is in: an option or call written with :func:`opt` reads ``tile_size=512``
or ``bigspec.from_array(...)`` from Python and ``--tile-size 512`` or ``bigspec import ...``
on the command line (the CLI prints :meth:`BigspecError.cli_message`).

Examples
--------
>>> from bigspec.errors import TileSizeError, opt
>>> issubclass(TileSizeError, ValueError)
True
>>> e = TileSizeError(f"{opt('tile_size', '--tile-size')} must be positive; try {opt('tile_size=512', '--tile-size 512')}")
>>> str(e)
'tile_size must be positive; try tile_size=512'
>>> e.cli_message()
'--tile-size must be positive; try --tile-size 512'
"""

from __future__ import annotations

import re

import numpy as np

_MARK = re.compile("\x1f(.*?)\x1e(.*?)\x1d", re.DOTALL)


def opt(python: str, cli: str | None = None) -> str:
    """An option, value or call in a message: ``python`` from Python, ``cli`` on the command line."""
    return f"\x1f{python}\x1e{python if cli is None else cli}\x1d"


#: the command-line flag of each keyword argument that has one
FLAGS = {"tile_size": "--tile-size", "memory": "--memory", "method": "--method", "shift": "--shift",
         "scale": "--scale", "overwrite": "--overwrite", "checkpoint": "--checkpoint", "dry_run": "--dry-run",
         "shuffle": "--no-shuffle", "seed": "--seed", "triangle": "--triangle", "missing_chunks": "--missing-chunks",
         "sample_size": "--sample-size", "n_samples": "--samples", "size": "--size", "degree": "--degree",
         "regime": "--regime", "progress": "--progress", "dtype": "--dtype", "device": "--gpu",
         "n_ladders": "--ladders", "probes": "--probes", "lanczos_steps": "--lanczos-steps",
         "reorthogonalize": "--reorthogonalize", "pseudo_tol": "--pseudo-tol", "kernel": "--kernel", "X": "--data",
         "profile": "--profile", "quick": "--quick"}
_NO = object()


def arg(name: str, value=_NO) -> str:
    """A keyword argument (with a value: a setting of it) in a message, e.g. ``arg("memory", "4GiB")``
    reads ``memory='4GiB'`` from Python and ``--memory 4GiB`` on the command line."""
    flag = FLAGS.get(name)
    if value is _NO:
        return opt(name, flag)
    python = f"{name}={value!r}"
    if flag is None:
        return opt(python)
    if isinstance(value, bool):
        cli = {("checkpoint", False): "--no-checkpoint", ("shuffle", True): "(the default)",
               ("progress", False): "--no-progress"}.get((name, value), flag if value else f"no {flag}")
        return opt(python, cli)
    return opt(python, f"{flag} {value}")


def kw(name: str) -> str:
    """A keyword argument to set, in a message: ``shift=`` from Python, ``--shift`` on the command line."""
    return opt(f"{name}=", FLAGS.get(name, f"{name}="))


def again(overwrite: bool = False) -> str:
    """How to resume, in a message: "call it again" from Python, "run the same command again" on the
    command line (without ``overwrite``, which would start over)."""
    if overwrite:
        return opt("call it again without overwrite=True", "run it again without --overwrite")
    return opt("call it again", "run the same command again")


#: keyword arguments that are also keys of a job file's sections (:mod:`bigspec.jobs` fills it)
JOB_KEYS: set = set()
#: how the command line words its messages: "cli", or "job" while ``bigspec run`` runs a job file
CLI_INTERFACE = "cli"
_SETTING = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)=(.*)$", re.DOTALL)


def _job_spelling(python: str, cli: str) -> str:
    """A job file's spelling of a keyword argument (``overwrite=True`` -> ``overwrite: true``), where the
    job has that key; else the command line's (``--force`` is a flag of ``bigspec run``)."""
    m = _SETTING.match(python)
    name = m.group(1) if m else python
    if name not in JOB_KEYS:
        return cli
    key = name.replace("_", "-")
    if not m:
        return key
    value = m.group(2)
    value = {"True": "true", "False": "false", "None": "null"}.get(value, value.strip("'\""))
    return f"{key}: {value}" if value else f"{key}:"


def render(text: str, interface: str = "python") -> str:
    """A message with its :func:`opt` parts written for ``interface`` ("python", "cli", or "job":
    a job file's keys where it has them, command-line flags elsewhere)."""
    if interface == "job":
        return _MARK.sub(lambda m: _job_spelling(m.group(1), m.group(2)), str(text))
    group = 2 if interface == "cli" else 1
    return _MARK.sub(lambda m: m.group(group), str(text))


def cli_text(obj) -> str:
    """The command-line wording of an error or warning (its plain text when it has no other)."""
    template = getattr(obj, "template", None)
    return render(template, CLI_INTERFACE) if template is not None else str(obj)


class Worded:
    """Mixin of bigspec's errors, warnings and interrupts: a message written with :func:`opt`
    (``str()`` gives its Python wording, :meth:`cli_message` the command line's) and keyword details
    kept as attributes."""

    def __init__(self, message: str = "", **info):
        self.template = str(message)
        super().__init__(render(message))
        self.info = info
        for key, value in info.items():
            setattr(self, key, value)

    def cli_message(self) -> str:
        """The message as the command line says it (flags and commands instead of arguments and calls)."""
        return render(self.template, "cli")


class BigspecError(Worded, Exception):
    """Base class of every bigspec error."""

    def __reduce__(self):
        # keep keyword details when exceptions travel between Dask workers
        return (_rebuild, (type(self), self.template, self.info))


def _rebuild(cls, message, info):
    return cls(message, **info)


class StoreNotFoundError(BigspecError, FileNotFoundError):
    """No bigspec matrix store at the given location."""


class StoreExistsError(BigspecError, FileExistsError):
    """A store (or a factorization in it) exists and ``overwrite`` was not given."""


class InvalidMatrixError(BigspecError, ValueError):
    """The matrix is not square, symmetric, or of a supported dtype."""


class TileSizeError(BigspecError, ValueError):
    """``tile_size`` is invalid or does not match the store."""


class IncompleteStoreError(BigspecError, ValueError):
    """Some tiles of the store were never written (they still hold the NaN fill)."""


class NonFiniteError(BigspecError, ValueError):
    """A tile holds NaN or infinite values."""


class NotPositiveDefiniteError(BigspecError, np.linalg.LinAlgError):
    """Cholesky met a non-positive pivot: the matrix is not (numerically) positive definite."""


class MemoryBudgetError(BigspecError, ValueError):
    """The memory budget is too small for the factorization."""


class BackendUnavailableError(BigspecError, RuntimeError):
    """The requested device backend (cupy, dask-cuda, a GPU) is not available."""


class ClusterError(BigspecError, RuntimeError):
    """The Dask cluster could not be reached or started."""


class UnstableFactorizationError(BigspecError, np.linalg.LinAlgError):
    """LDL^T needs symmetric pivoting across more columns than the memory budget lets one task hold."""


class CorruptFactorError(BigspecError, np.linalg.LinAlgError):
    """The factor's pivots are not numbers (two writers at once, or damaged tiles): no result is returned."""


class ArgumentError(BigspecError, ValueError):
    """An argument has a value bigspec cannot use (``memory="lots"``, ``scale=0``)."""


class ArgumentTypeError(BigspecError, TypeError):
    """An argument has the wrong type (``overwrite="no"``, ``shift="1e-3"``)."""


class BigspecWarning(Worded, UserWarning):
    """Base class of bigspec's warnings; like errors, they speak the user's interface."""


class SingularMatrixWarning(BigspecWarning):
    """The matrix is singular (an exact zero pivot: log|det| is -inf) or numerically singular
    (pivots below the rounding level: log|det| is set by rounding, not by the matrix)."""


class GrowthWarning(BigspecWarning):
    """The indefinite factorization shows large element growth; the result may be inaccurate."""


class OverwriteWarning(BigspecWarning):
    """``overwrite=True`` is about to delete data at the target that is not a bigspec store."""


class EstimateError(BigspecError, ValueError):
    """An estimator refuses: the sampled matrix is not in a regime it can extrapolate (the message says why)."""


class EstimateWarning(BigspecWarning):
    """An estimate whose assumptions visibly fail; the message names the number that shows it."""


class KernelError(BigspecError, ValueError):
    """Unknown kernel, unknown or invalid kernel parameter, or data the kernel cannot take."""


class WorkerLostWarning(BigspecWarning):
    """A Dask worker left the cluster during a run; Dask re-runs its tasks on the others."""


class Interrupted(Worded, KeyboardInterrupt):
    """A run was interrupted (Ctrl-C); the message says what was finished and kept, and how to resume.

    A subclass of :class:`KeyboardInterrupt`, so ``except Exception`` does not swallow it.
    """


class JobSpecError(BigspecError, ValueError):
    """A job file (``bigspec run JOB``) that cannot run: a key that is not allowed, a value of the wrong
    type or range, or a step that cannot work on the store; the message names the key's path
    (``$.logdet.metod``) and what is allowed."""


class StoreLeaseError(BigspecError, RuntimeError):
    """Another writer holds the store's lease (one writer at a time); the message names the holder
    (host, pid, since when) and the way out (``--force`` / ``force=True``)."""


class StoreNotWritableError(BigspecError, PermissionError):
    """The store's location cannot be written (permission denied, read-only, or too little free
    space for what the job will write); raised before any work starts."""


class LeaseWarning(BigspecWarning):
    """A store's lease was taken over: from a holder that is gone (expired), or explicitly (``force``)."""


class CertificatesExistError(BigspecError, FileExistsError):
    """``bigspec certs DIR`` would replace TLS certificates already in DIR, and ``overwrite`` was not given."""
