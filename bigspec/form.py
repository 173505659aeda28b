"""Form a kernel matrix tile by tile into a store: one task per lower tile, resumable.

The data are shuffled with a seeded permutation (recorded) and copied into the store's
``data`` array, so every leading principal submatrix is a uniformly random principal
submatrix. Each task reads only the data rows of its tile,
computes the block, writes its chunk once and returns small metadata. Forming again skips
tiles already written.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
import uuid
from dataclasses import dataclass, field

import numpy as np

from . import config
from .backend import check_device, to_device, to_host
from .errors import KernelError, NonFiniteError, StoreExistsError, StoreNotFoundError, TileSizeError, again, arg, opt
from .kernels import get_kernel

# zarr, dask and the store load on first use: ``bigspec.form`` is bound at ``import bigspec``

logger = logging.getLogger(__name__)


#: how :func:`form` names its data in messages: ``X`` from Python, ``DATA`` on the command line
#: (``bigspec form KERNEL DATA STORE``)
DATA = opt("X", "DATA")
_NPY_MAGIC = b"\x93NUMPY"


def open_data(path, name: str | None = None):
    """The data points at ``path``, opened without reading them: a memory-mapped ``.npy`` file or a zarr array.

    Parameters
    ----------
    path : str or os.PathLike
        A ``.npy`` file or a zarr array: a local path (``~`` expanded) or an fsspec URL.
    name : str, optional
        The argument that gave ``path``, as messages name it (written with :func:`~bigspec.errors.opt`);
        default ``X`` (``--data`` on the command line).

    Returns
    -------
    numpy.memmap or zarr.Array

    Raises
    ------
    StoreNotFoundError
        Nothing is at ``path``.
    KernelError
        ``path`` holds no data points: a file that is not a readable ``.npy`` file (not one, truncated, or of
        Python objects), a directory that is not a zarr array (empty, other files, a zarr group or a bigspec
        store), or an array of other values than numbers (strings).

    Examples
    --------
    >>> import bigspec
    >>> from bigspec.form import open_data
    >>> try:
    ...     open_data("no/such/data.npy")
    ... except bigspec.StoreNotFoundError as e:
    ...     print(str(e).split(";")[0].replace(e.path, "PATH"))
    the data file PATH (X) does not exist
    """
    import zarr

    from .storage import contents, locate

    name = arg("X") if name is None else name
    what = (f"{name} must be a .npy file or a zarr array of data points, shape (n_samples, ...)"
            + opt(", or an array", ""))
    loc = locate(path)
    local = loc.protocol == "file"
    where = loc.path if local else loc.url
    kind = "data file" if where.endswith(".npy") else "data path"
    if local and not os.path.exists(where):
        raise StoreNotFoundError(f"the {kind} {where} ({name}) does not exist; {what}", path=where)
    if not local and where.endswith(".npy"):
        if not loc.filesystem().exists(loc.path):
            raise StoreNotFoundError(f"the {kind} {where} ({name}) does not exist; {what}", path=where)
        raise KernelError(f"the data file {where} ({name}) is a .npy file at a remote URL; bigspec memory-maps "
                          f".npy files on a local disk only: copy it to a local path, or store the data points as "
                          f"a zarr array (zarr.save_array(URL, X)), which is read from anywhere", path=where)
    if local and os.path.isfile(where):
        return _numbers(_open_npy(where, name, what), name)
    try:
        return _numbers(zarr.open_array(where, mode="r"), name)
    except KernelError:
        raise
    except FileNotFoundError:
        if not local:
            raise StoreNotFoundError(f"the {kind} {where} ({name}) does not exist; {what}", path=where) from None
        found = contents(where)
    except Exception:
        found = contents(where) if local else None
    if found is not None and found.kind in ("empty", "other"):
        more = ", ..." if found.count > len(found.entries) else ""
        held = ("an empty directory" if found.kind == "empty" else
                f"a directory of other files ({', '.join(found.entries)}{more})")
        raise KernelError(f"{where} ({name}) is {held}; {what}", path=where)
    raise KernelError(
        f"{where} ({name}) is not a .npy file or a zarr array of data points (a zarr group, or a bigspec store, "
        f"is not data); pass the data points, shape (n_samples, ...)", path=where)


def _open_npy(path, name, what):
    """A local ``.npy`` file, memory-mapped; KernelError (the reason in words) where it is not one numpy can map."""
    try:
        with open(path, "rb") as f:
            head = f.read(len(_NPY_MAGIC))
    except OSError as e:
        raise KernelError(f"the data file {path} ({name}) cannot be read: {e.strerror or e}", path=path) from None
    if head != _NPY_MAGIC:
        raise KernelError(
            f"the data file {path} ({name}) is not a .npy file: it "
            + ("is empty" if not head else "does not start with the .npy header")
            + f"; {what} (write one with numpy.save(path, X))", path=path)
    try:
        return np.load(path, mmap_mode="r")
    except FileNotFoundError:
        raise StoreNotFoundError(f"the data file {path} ({name}) does not exist; {what}", path=path) from None
    except (ValueError, OSError, EOFError) as e:
        reason = {"mmap length is greater than file size": "it is shorter than its header says (truncated?)",
                  "No data left in file": "it ends inside its header (truncated?)"}.get(str(e), str(e))
        if "Python objects" in str(e):
            reason = "it holds Python objects, not numbers"
        raise KernelError(f"the data file {path} ({name}) cannot be read as a .npy file: {reason}; {what}",
                          path=path) from None


def _load_data(X, name: str | None = None) -> np.ndarray:
    """Data points given as an array (numpy, dask, zarr) or a path (:func:`open_data`), as numbers;
    ``name`` is the argument in messages (default ``X``)."""
    if isinstance(X, (str, os.PathLike)):
        data = open_data(X, name)
        data = data if isinstance(data, np.ndarray) else np.asarray(data[...])
    elif type(X).__module__.startswith("dask"):
        data = np.asarray(X.compute())
    else:
        data = np.asarray(X)
    return _numbers(data, arg("X") if name is None else name)


def _numbers(data, name: str):
    """``data`` where it holds numbers; else KernelError naming ``name`` and the dtype."""
    if np.dtype(data.dtype).kind not in "biufc":
        raise KernelError(f"{name} holds {data.dtype} values, not numbers: pass the data points as numbers, shape "
                          f"(n_samples, ...)", dtype=str(data.dtype))
    return data


def _check_finite(X, name: str | None = None):
    """NonFiniteError where some data points are NaN or infinite (``name``: the argument in messages,
    default ``X``)."""
    name = arg("X") if name is None else name
    bad = ~np.isfinite(X.reshape(X.shape[0], -1)).all(axis=1)
    if bad.any():
        rows = np.flatnonzero(bad)
        raise NonFiniteError(
            f"{name} holds NaN or infinite values in {rows.size} row(s), first at row {rows[0]}; "
            f"drop or impute them before forming a kernel matrix", rows=rows[:10].tolist())


def permutation(n: int, seed: int, shuffle: bool = True) -> np.ndarray:
    """The seeded data order used by :func:`form` (identity when ``shuffle=False``)."""
    if not shuffle:
        return np.arange(n)
    return np.random.default_rng(np.random.SeedSequence(seed)).permutation(n)


def form_tile(kernel, data, matrix, i, j, rows, cols, dtype, device):
    """Compute and write tile (i, j); return small metadata. Pure: same inputs, same bytes."""
    t0 = time.perf_counter()
    xr = to_device(np.asarray(data[rows[0]:rows[1]], dtype=np.float64), device)
    xc = xr if i == j else to_device(np.asarray(data[cols[0]:cols[1]], dtype=np.float64), device)
    block = kernel(xr, xc, diagonal=i == j)
    if i == j:
        block = (block + block.T) / 2  # exactly symmetric: IEEE addition commutes
    host = np.ascontiguousarray(to_host(block), dtype=dtype)
    if not np.isfinite(host).all():
        raise NonFiniteError(f"kernel {kernel.name!r} produced NaN or infinite values in tile ({i}, {j}); "
                             f"check its parameters and the data scale", tile=(i, j))
    b = matrix.chunks[0]
    matrix[i * b:i * b + host.shape[0], j * b:j * b + host.shape[1]] = host
    return {"tile": (i, j), "max_abs": float(np.max(np.abs(host), initial=0.0)),
            "seconds": time.perf_counter() - t0}


def form(kernel, X, store, *, tile_size=None, dtype="float64", seed=0, shuffle=True, client=None,
         overwrite=False, device="cpu", progress=None, storage_options=None, dry_run=False, profile=None,
         **kernel_params) -> MatrixStore:
    """Form the kernel matrix of ``X`` into a new (or unfinished) store, one task per lower tile.

    Parameters
    ----------
    kernel : str or Kernel
        ``"rbf"``, ``"matern"``, ``"relu"``, ``"ntk"``, ``"attention"``, a registered name, or
        an instance; ``kernel_params`` go to its constructor.
    X : array-like or path
        Data points, first axis = samples (numpy, dask, zarr, or a ``.npy`` / Zarr path: checked before
        anything is written, see :func:`open_data`).
    store : str, os.PathLike or zarr.Group
        Where to write. An unfinished store of the same kernel and data is resumed.
    tile_size : int, optional
        Tile edge in matrix rows (a multiple of ``n_outputs`` for non-Kronecker kernels).
        Default: ``bigspec.tile-size`` (1024), smaller where the exact factorization could not
        hold one tile column within its memory budget (``bigspec.memory``, "auto": half of the
        workers' or this machine's free memory), so the store can always be factored out of core.
    dtype : {"float64", "float32"}
        Storage dtype (the factorization computes in float64 either way).
    seed, shuffle :
        The data are permuted with ``SeedSequence(seed)`` unless ``shuffle=False``. ``seed`` is
        the permutation's only: a kernel's own randomness has its own parameter
        (``draw_seed`` of the attention kernel).
    client : distributed.Client, optional
        Default: the current client, else Dask's threaded scheduler.
    overwrite : bool
        Replace an existing store (an unfinished one of the same kernel and data is resumed
        without it).
    device : {"cpu", "gpu"}
        ``"gpu"`` forms the tiles with cupy.
    progress : bool, optional
        Progress bar (default: on a terminal).
    storage_options : dict, optional
        fsspec options for a URL ``store``.
    dry_run : bool
        Check everything (kernel, data, tile size, what is at ``store``) and return the
        :class:`FormPlan` (tiles and entries to form, bytes to write, predicted seconds and
        bottleneck); nothing is written.
    profile : str, dict, path or MachineProfile, optional
        With ``dry_run``: the machine whose rates predict the seconds
        (:func:`bigspec.perfmodel.resolve_profile`; default: the dask config's, else the
        calibrated one).
    **kernel_params
        Parameters of a kernel given by name (``nu=1.5``, ``depth=3``...).

    Returns
    -------
    MatrixStore or FormPlan

    Raises
    ------
    KernelError
        Unknown kernel or parameter, data the kernel cannot take, or an ``X`` path that holds no data
        points (:func:`open_data`).
    StoreNotFoundError
        ``X`` is a path where nothing is (nothing is written at ``store``).
    StoreExistsError
        ``store`` holds another matrix (or other data) and ``overwrite`` was not given.
    TileSizeError
        ``tile_size`` is not a positive multiple of the rows per data point.
    Interrupted
        Ctrl-C: the tiles already written are kept; forming again resumes.

    Examples
    --------
    >>> import numpy as np, bigspec
    >>> X = np.random.default_rng(0).random((50, 3))
    >>> K = bigspec.form("matern", X, "memory://doc-form.zarr", tile_size=16, nu=1.5,
    ...                  lengthscale=0.5, overwrite=True)
    >>> K.n, K.attrs["kernel"]["name"]
    (50, 'matern')
    >>> plan = bigspec.form("rbf", X, "memory://doc-form-plan.zarr", tile_size=16, dry_run=True)
    >>> plan.tiles_to_form, plan.entries, plan.bytes_written
    (10, 1636, 13088)
    """
    from .cluster import require_visible, resolve_client, resources
    from .progress import want_progress
    from .runner import Runner
    from .store import check_dtype, check_tile_size
    from .validate import check_flag, check_seed

    overwrite, shuffle = check_flag(overwrite, "overwrite"), check_flag(shuffle, "shuffle")
    dry_run = check_flag(dry_run, "dry_run")
    if profile is not None:
        from .perfmodel import resolve_profile

        if not dry_run:
            from .errors import ArgumentError

            raise ArgumentError(f"{arg('profile')} predicts the seconds of a plan: give it with {arg('dry_run', True)}")
        profile = resolve_profile(profile)
    seed = check_seed(seed)
    want_progress(progress)
    client = resolve_client(client)
    k = get_kernel(kernel, **kernel_params)
    check_device(device)
    dtype = check_dtype(dtype)
    X_origin = X
    X = _load_data(X, DATA)
    if X.ndim < 2 or X.shape[0] < 1:
        raise KernelError(f"{DATA} must have shape (n_samples, ...) with n_samples >= 1, got {X.shape}")
    k = k.bind(X)                 # validated, configured for X; the caller's kernel is left as it was
    _check_finite(X, DATA)
    n_samples = int(X.shape[0])
    per = k.rows_per_sample()
    N = n_samples * per
    n_workers, threads, workers_memory = resources(client)
    if tile_size is None:
        from .determinant.plan import fit_tile_size, memory_budget

        b = fit_tile_size(N, memory_budget(None, client, workers_memory), threads, multiple=per)
    else:
        b = min(check_tile_size(tile_size), N)
    if b % per:
        raise TileSizeError(f"{arg('tile_size', b)} must be a multiple of {per} (matrix rows per data point) so a "
                            f"sample's {per}x{per} block is never split across tiles; try "
                            f"{arg('tile_size', max(per, b - b % per))}",
                            tile_size=b)
    perm = permutation(n_samples, seed, shuffle)
    data = np.ascontiguousarray(k.prepare(np.asarray(X[perm], dtype=np.float64)))
    digest = hashlib.sha1(data.tobytes()).hexdigest()
    meta = {"kernel": k.spec(), "permutation": {"seed": int(seed), "shuffle": bool(shuffle)},
            "data_sha1": digest, "n_samples": n_samples, "source": "form"}

    if dry_run:
        return _plan(store, storage_options, overwrite, N, b, dtype, meta, X_origin, X, k, n_workers, threads,
                     client is not None, profile)

    from .lease import hold

    # one writer at a time: a job (`bigspec run`) or another process forming into this store refuses us
    with hold(store, storage_options=storage_options, forceable=False, command=f"bigspec.form {k.name}"):
        ms = _open_or_create(store, storage_options, overwrite, N, b, dtype, meta, data, perm, per,
                             inputs=[X_origin])
        tiles = sum(1 for _ in ms.stored_tiles())
        todo = sorted(set(ms.stored_tiles()) - ms.written_tiles())
        before = tiles - len(todo)
        spt = b // per
        bounds = [(i * spt, min((i + 1) * spt, n_samples)) for i in range(ms.n_tiles)]
        max_tasks = int(config.get("max-graph-tasks", 100_000))
        tok = uuid.uuid4().hex[:8]
        kernel_key = f"bigspec-kernel-{tok}"  # one copy of the kernel (and a model's weights) per worker

        def interrupted():
            done = len(ms.written_tiles())     # tasks still running may add a few before the process ends
            return (f"formed at least {done} of {tiles} tiles of {ms.url}, which are kept; {again(overwrite)} to form "
                    f"the others")

        note = "resumed" if before else None
        with Runner(client, progress=progress, label=f"bigspec form {k.name}", unit="tiles", total=tiles, done=before,
                    note=note, threads=threads, interrupted=interrupted) as runner:
            if ms.local_path is not None:
                require_visible(client, ms.local_path, f"the store {ms.url}",
                                "form it on storage every worker mounts at the same path, or at a URL (s3://...)")
            for start in range(0, len(todo), max_tasks):
                batch = todo[start:start + max_tasks]
                dsk = {(f"bigspec-form-{tok}", i, j): (form_tile, kernel_key, ms.group["data"], ms.matrix, i, j,
                                                        bounds[i], bounds[j], dtype, device)
                       for i, j in batch}
                keys = list(dsk)
                dsk[kernel_key] = k
                runner.run(dsk, keys, ticks=keys)
        ms.update_attrs(complete=True, formed_tiles=len(todo))
    return ms


#: kernel parameters that change how tiles are computed, not their entries (the empirical NTK's
#: Jacobian cache and parameter groups): a store formed with one value resumes with another
EXECUTION_PARAMETERS = ("cache_bytes", "parameter_chunk")


def _identity(spec):
    """A kernel spec without its :data:`EXECUTION_PARAMETERS` (what makes two stores the same matrix)."""
    if not isinstance(spec, dict) or not isinstance(spec.get("params"), dict):
        return spec
    return {**spec, "params": {k: v for k, v in spec["params"].items() if k not in EXECUTION_PARAMETERS}}


def _existing(store, storage_options, overwrite, N, b, dtype, meta, inputs=(), mode="r+"):
    """The unfinished store of the same matrix at ``store`` (to resume), or None where a new one is
    written; StoreExistsError where another matrix is there and ``overwrite`` is not given."""
    from .storage import check_not_input, contents, locate, open_group
    from .store import MatrixStore

    check_not_input(locate(store, storage_options), inputs)
    if contents(store, storage_options).kind == "bigspec" and not overwrite:
        ms = MatrixStore(open_group(store, mode, storage_options))
        old = ms.attrs
        theirs = {"kernel": _identity(old.get("kernel")), "data": old.get("data_sha1"),
                  "order": old.get("permutation"), "tile_size": ms.tile_size, "dtype": str(ms.dtype), "rows": ms.n}
        mine = {"kernel": _identity(meta["kernel"]), "data": meta["data_sha1"], "order": meta["permutation"],
                "tile_size": b, "dtype": str(np.dtype(dtype)), "rows": N}
        differ = [k for k in mine if theirs[k] != mine[k]]
        if "data" in differ and ("order" in differ or "kernel" in differ):
            differ.remove("data")       # the hash is of the permuted, prepared data: it follows those
        if differ:
            def show(key, value):
                if key == "kernel" and isinstance(value, dict):
                    params = ", ".join(f"{k}={v}" for k, v in (value.get("params") or {}).items())
                    return f"{value.get('name')} ({params}, n_outputs={value.get('n_outputs', 1)})"
                if key == "data":
                    return f"data sha1 {str(value)[:10]}" if value else "unknown data"
                if key == "order" and isinstance(value, dict):
                    return f"seed {value.get('seed')}" + ("" if value.get("shuffle", True) else ", not shuffled")
                return str(value)

            diff = "; ".join(f"{k}: {show(k, theirs[k])} there, {show(k, mine[k])} now" for k in differ)
            raise StoreExistsError(
                f"a matrix store of another matrix already exists at {ms.url} ({diff}); pass "
                f"{arg('overwrite', True)} to replace it, or choose another path", store=ms.url, differ=differ)
        return ms
    return None


def _open_or_create(store, storage_options, overwrite, N, b, dtype, meta, data, perm, per, inputs=()):
    from .storage import prepare_target
    from .store import create_matrix

    ms = _existing(store, storage_options, overwrite, N, b, dtype, meta, inputs)
    if ms is not None:
        logger.info("resuming %s: %d tiles already written", ms.url, len(ms.written_tiles()))
        return ms
    group = prepare_target(store, overwrite=overwrite, storage_options=storage_options, inputs=inputs)
    ms = create_matrix(group, N, b, dtype, True, meta)
    spt = b // per
    group.create_array("data", shape=data.shape, chunks=(max(spt, 1), *data.shape[1:]), dtype="float64",
                       overwrite=True)
    group["data"][...] = data
    group.create_array("permutation", shape=perm.shape, chunks=(max(min(len(perm), 1 << 20), 1),),
                       dtype="int64", overwrite=True)
    group["permutation"][...] = perm
    return ms


@dataclass(frozen=True)
class FormPlan:
    """What :func:`form` would do (``dry_run=True``, ``bigspec form --dry-run``): the tiles and
    entries it would form, the bytes it would write, and the predicted seconds; nothing is written.

    Its ``repr`` is the report; ``summary()`` the numbers as a dict (``--dry-run --json``).
    """

    store: str
    kernel: dict                  # the kernel's spec: name, params, n_outputs
    n: int                        # matrix rows
    n_samples: int
    features: int                 # numbers per data point
    tile_size: int
    dtype: str
    tiles: int                    # tiles of the store (the lower triangle)
    tiles_to_form: int            # those not yet written (all of them for a new store)
    entries: int                  # matrix entries of the tiles to form
    bytes_written: int
    workers: int
    threads: int
    distributed: bool = False
    action: str = "new"           # "new", "resume" or "replace" (overwrite)
    profile: object = field(default=None, compare=False, repr=False)

    def summary(self) -> dict:
        """The plan's numbers, with the prediction (see :func:`bigspec.perfmodel.predict`)."""
        from .perfmodel import form_prediction

        counts = {"verb": "form", "store": self.store, "kernel": self.kernel, "n": self.n,
                  "n_samples": self.n_samples, "features": self.features, "tile_size": self.tile_size,
                  "dtype": self.dtype, "tiles": self.tiles, "tiles_to_form": self.tiles_to_form,
                  "tasks": self.tiles_to_form, "entries": self.entries, "bytes_written": self.bytes_written,
                  "workers": self.workers, "threads": self.threads, "distributed": self.distributed,
                  "action": self.action}
        return {**counts, **form_prediction(self.profile, counts)}

    def to_dict(self) -> dict:
        return self.summary()

    def __repr__(self) -> str:
        return self.describe()

    def describe(self, interface: str = "python") -> str:
        """The plan in words (what ``bigspec form --dry-run`` prints)."""
        from dask.utils import format_bytes

        from .errors import render
        from .perfmodel import describe_summary

        s = self.summary()
        k = self.kernel
        params = ", ".join(f"{key}={v}" for key, v in (k.get("params") or {}).items())
        what = {"new": "a new store", "resume": f"resuming: {self.tiles - self.tiles_to_form} of {self.tiles} tiles "
                                                "are written", "replace": f"replacing what is there ({arg('overwrite', True)})"}
        lines = [f"form plan: {k.get('name')} ({params}) of {self.n_samples} samples x {self.features} features "
                 f"into {self.store} ({what[self.action]})",
                 f"  matrix: {self.n} x {self.n} {self.dtype}, tiles of {self.tile_size}: {self.tiles_to_form} of "
                 f"{self.tiles} lower tiles to form, {self.entries:.4g} entries",
                 f"  written: {format_bytes(self.bytes_written)}; {self.workers} workers, {self.threads} threads",
                 f"  {describe_summary(s)}"]
        return render("\n".join(lines), interface)


def _plan(store, storage_options, overwrite, N, b, dtype, meta, X_origin, X, k, workers, threads, distributed,
          profile) -> FormPlan:
    """The :class:`FormPlan` of a dry run: the same checks of ``store`` as :func:`form`, nothing written."""
    from .storage import locate, prepare_target
    from .perfmodel import form_entries

    ms = _existing(store, storage_options, overwrite, N, b, dtype, meta, [X_origin], mode="r")
    nt = -(-N // b)
    every = [(i, j) for i in range(nt) for j in range(i + 1)]
    if ms is not None:
        todo, action = ms.missing_tiles(), "resume"
    else:
        from .storage import contents

        found = contents(store, storage_options).kind
        prepare_target(store, overwrite=overwrite, storage_options=storage_options, inputs=[X_origin], dry_run=True)
        todo, action = every, ("replace" if found in ("bigspec", "zarr", "other") else "new")
    entries = form_entries(N, b, todo)
    features = int(np.prod(X.shape[1:]))
    return FormPlan(store=locate(store, storage_options).url, kernel=meta["kernel"], n=N,
                    n_samples=int(X.shape[0]), features=features, tile_size=b, dtype=np.dtype(dtype).name,
                    tiles=len(every), tiles_to_form=len(todo), entries=entries,
                    bytes_written=entries * np.dtype(dtype).itemsize, workers=workers, threads=threads,
                    distributed=distributed, action=action, profile=profile)


def kron_outputs(ms) -> int:
    """d when the store holds K of a Kronecker kernel K (x) I_d (else 1)."""
    spec = ms.attrs.get("kernel") or {}
    return int(spec.get("n_outputs", 1)) if spec.get("kron_identity") else 1


__all__ = ["form", "FormPlan", "open_data", "permutation", "kron_outputs"]
