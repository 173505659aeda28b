"""Command line: ``bigspec``, ``python -m bigspec`` and ``dask bigspec``.

Exit codes: 0 ok, 1 user error, 2 usage, 3 cluster failure. ``--json`` prints the
result's ``to_dict()``.

Examples
--------
>>> from click.testing import CliRunner
>>> from bigspec.cli import cli
>>> CliRunner().invoke(cli, ["--version"]).output.startswith("bigspec")
True
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import tempfile

import click

from . import __version__
from .errors import BigspecError, ClusterError, Interrupted, cli_text

EXIT_USER, EXIT_USAGE, EXIT_CLUSTER, EXIT_INTERRUPTED = 1, 2, 3, 130


def _emit(obj, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(obj.to_dict() if hasattr(obj, "to_dict") else obj, indent=2))
    else:
        click.echo(obj if isinstance(obj, str) else repr(obj))


def _remember_tls(ctx, param, value):
    if value is not None:
        ctx.meta["bigspec.tls"] = value
    return value


#: ``--tls DIR``: not a parameter of the command functions; kept on the context, where ``_client`` reads it
tls_option = click.option(
    "--tls", "tls", metavar="DIR", type=click.Path(file_okay=False), expose_value=False, callback=_remember_tls,
    help="TLS certificates directory (written by `bigspec certs DIR`) for a tls:// scheduler; without a "
         "scheduler, the local cluster speaks TLS with it. Default: the distributed.comm.tls config "
         "(DASK_DISTRIBUTED__COMM__TLS__*).")


def cluster_options(f):
    """Options shared by commands that run on a cluster."""
    opts = [
        click.option("--scheduler", metavar="ADDR", help="Join a running scheduler (tcp://host:8786, or "
                                                         "tls://host:8786 with --tls)."),
        click.option("--scheduler-file", type=click.Path(), help="Join the scheduler in this file."),
        tls_option,
        click.option("--workers", type=int, help="Workers of the local cluster (default: sized to the machine)."),
        click.option("--threads", type=int, help="Threads per worker of the local cluster."),
        click.option("--memory-limit", default="auto", show_default=True, help="Memory limit per local worker."),
        click.option("--gpu", is_flag=True, help="Run on CUDA GPUs: dask-cuda workers and cupy tiles."),
        click.option("--progress/--no-progress", default=None, help="Progress bar (default: on a terminal)."),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


@contextlib.contextmanager
def _client(scheduler, scheduler_file, workers, threads, memory_limit, gpu, tls=None):
    """The command's cluster: started (or joined) before the work, closed after it, whatever happens.

    Only starting or reaching the cluster can raise ClusterError here (exit 3); errors of the
    work itself keep their own kind (a user error exits 1 under --scheduler too). While the
    command runs, distributed logs warnings and errors only (``-v`` shows its info lines).
    ``tls`` is a certificates directory (default: the command's ``--tls``).
    """
    if tls is None:
        ctx = click.get_current_context(silent=True)
        tls = ctx.meta.get("bigspec.tls") if ctx is not None else None
    import distributed  # noqa: F401  (configures its loggers on import: set their level after that)

    from .cluster import LostWorkerEcho, connect, interrupts_held_back, workers_born_ignoring_interrupts

    echo = LostWorkerEcho()
    quiet = [logging.getLogger(n) for n in ("distributed.scheduler", "distributed.nanny", "distributed.worker")]
    with _distributed_log_level(logging.INFO if _verbosity() else logging.WARNING), _filtered(quiet, echo):
        owned = not (scheduler or scheduler_file)
        try:
            with workers_born_ignoring_interrupts() if owned and not gpu else contextlib.nullcontext():
                client = connect(scheduler, scheduler_file, workers=workers, threads=threads,
                                 memory_limit=memory_limit, gpu=gpu, security=tls)
        except (BigspecError, ValueError, TypeError):
            raise
        except Exception as e:
            raise ClusterError(f"could not start or reach the Dask cluster: {e}") from e
        try:
            click.echo(f"dask dashboard: {client.dashboard_link}", err=True)
            yield client
        except BaseException:
            # an error or an interrupt: close without the shutdown chatter of the cluster we started,
            # and without letting a second Ctrl-C leave it half closed
            with interrupts_held_back(raise_after=False), _distributed_log_level(logging.CRITICAL), \
                    contextlib.suppress(Exception):
                if owned:
                    client.run(_quiet_worker, nanny=False)
                client.close()
            raise
        client.close()


def _quiet_worker():
    logging.getLogger("distributed").setLevel(logging.CRITICAL)


def _verbosity() -> int:
    ctx = click.get_current_context(silent=True)
    return int(ctx.find_root().params.get("verbose") or 0) if ctx is not None else 0


@contextlib.contextmanager
def _filtered(loggers, flt):
    for log in loggers:
        log.addFilter(flt)
    try:
        yield
    finally:
        for log in loggers:
            log.removeFilter(flt)


@contextlib.contextmanager
def _distributed_log_level(level):
    log = logging.getLogger("distributed")
    before = log.level
    log.setLevel(level)
    try:
        yield
    finally:
        log.setLevel(before)


class BigspecGroup(click.Group):
    """The command group, with bigspec's exit codes and one-line messages wherever it runs:
    ``bigspec``, ``python -m bigspec`` and ``dask bigspec`` (which calls the group itself)."""

    def invoke(self, ctx):
        import warnings

        from .runner import interrupt_handling

        show, warnings.showwarning = warnings.showwarning, _show_warning
        try:
            with interrupt_handling():
                return super().invoke(ctx)
        except KeyboardInterrupt as e:
            if ctx.find_root().command is not self:     # `dask bigspec`: this process ends here
                _ignore_further_interrupts()
            said = cli_text(e) if isinstance(e, Interrupted) and str(e) else "nothing was finished"
            click.echo(f"interrupted: {said}", err=True)
            ctx.exit(EXIT_INTERRUPTED)
        except ClusterError as e:
            click.echo(f"error: {cli_text(e)}", err=True)
            ctx.exit(EXIT_CLUSTER)
        except click.exceptions.ClickException:
            raise
        except (BigspecError, ValueError, TypeError, FileNotFoundError, FileExistsError) as e:
            click.echo(f"error: {cli_text(e)}", err=True)
            ctx.exit(EXIT_USER)
        finally:
            warnings.showwarning = show
            from . import errors

            errors.CLI_INTERFACE = "cli"        # `bigspec run` words its messages in job keys while it runs


@click.group(name="bigspec", cls=BigspecGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="bigspec")
@click.option("-v", "--verbose", count=True, help="More logging (-v info, -vv debug).")
def cli(verbose):
    """bigspec: log-determinants and spectra of matrices too large for memory."""
    logging.basicConfig(level=[logging.WARNING, logging.INFO, logging.DEBUG][min(verbose, 2)],
                        format="%(levelname)s %(name)s: %(message)s")


@cli.command()
@click.argument("store", metavar="[MATRIX]", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--scheduler", metavar="ADDR", default=None,
              help="Also report this running cluster: workers, threads, memory, GPUs, and any version mismatch "
                   "between this client and the workers.")
@click.option("--scheduler-file", type=click.Path(), default=None, help="As --scheduler, for the scheduler in this file.")
@tls_option
def info(store, as_json, scheduler, scheduler_file):
    """Show the version, configuration, machine, (given MATRIX) what a store, .npy file or zarr array holds, and
    (given --scheduler) the cluster."""
    import os

    import psutil

    out = {"version": __version__, "config": dict(_config()),
           "cpus": os.cpu_count(), "memory": psutil.virtual_memory().total}
    if store:
        from .matrix import _load
        from .store import MatrixStore

        found = _load(store, None, "r")          # a store, a memory-mapped .npy or a zarr array (not read)
        if isinstance(found, MatrixStore):
            out["store"] = _store_summary(found)
        else:
            chunks = getattr(found, "chunks", None)
            out["array"] = {"path": store, "kind": "zarr array" if chunks is not None else ".npy file",
                            "shape": list(found.shape), "dtype": str(found.dtype),
                            "chunks": list(chunks) if chunks is not None else None}
    if scheduler or scheduler_file:
        with _client(scheduler, scheduler_file, None, None, "auto", False) as client:
            out["cluster"] = _cluster_report(client)
    if as_json:
        click.echo(json.dumps(out, indent=2, default=str))
        return
    click.echo(_format_info(out))


def _store_summary(ms) -> dict:
    """What ``bigspec info`` and ``bigspec status`` say of a store: its attributes, tiles written, factor state."""
    return {"url": ms.url, **ms.attrs, "tiles": sum(1 for _ in ms.stored_tiles()),
            "missing_tiles": len(ms.missing_tiles()), "factor": _factor_state(ms)}


#: the packages whose versions must agree between the client and the workers
_VERSIONED = ("bigspec", "dask", "distributed", "numpy", "zarr")


def _gpu_count() -> int:
    """GPUs a worker sees (run on each worker; 0 without NVML)."""
    try:
        from distributed.diagnostics import nvml

        return int(nvml.device_get_count())
    except Exception:
        return 0


def _cluster_report(client) -> dict:
    """The cluster behind ``client``: each worker's threads, memory and GPUs, and version mismatches."""
    from .cluster import workers_info

    workers = workers_info(client)
    gpus = client.run(_gpu_count) if workers else {}
    versions = client.get_versions(check=False, packages=["bigspec", "zarr"])
    mine = versions["client"]["packages"]
    rows = {addr: {"name": w.get("name"), "host": w.get("host"), "threads": w.get("nthreads"),
                   "memory": w.get("memory_limit"), "gpus": gpus.get(addr, 0)} for addr, w in workers.items()}
    mismatches = []
    for who, info in [("scheduler", versions["scheduler"]), *versions["workers"].items()]:
        theirs = (info or {}).get("packages", {})
        for pkg in _VERSIONED:
            if pkg in theirs and theirs.get(pkg) != mine.get(pkg):
                mismatches.append({"package": pkg, "client": mine.get(pkg), "where": who, "version": theirs.get(pkg)})
    limits = [w["memory"] for w in rows.values()]
    return {"scheduler": client.scheduler.address, "n_workers": len(rows),
            "threads": sum(w["threads"] or 0 for w in rows.values()),
            "memory": sum(limits) if limits and all(limits) else None,
            "gpus": sum(w["gpus"] for w in rows.values()), "workers": rows,
            "versions": {pkg: mine.get(pkg) for pkg in _VERSIONED}, "mismatches": mismatches}


def _cluster_rows(cl: dict | None) -> list:
    """``bigspec info --scheduler`` as rows: the cluster, each worker, and the version check."""
    from dask.utils import format_bytes

    if not cl:
        return []
    mem = format_bytes(cl["memory"]) if cl["memory"] else "no limit"
    rows = [("scheduler", cl["scheduler"]),
            ("workers", f"{cl['n_workers']}: {cl['threads']} threads, {mem} memory, {cl['gpus']} GPUs")]
    for addr, w in sorted(cl["workers"].items()):
        rows.append(("  worker", f"{addr} ({w['name']}): {w['threads']} threads, "
                                 f"{format_bytes(w['memory']) if w['memory'] else 'no memory limit'}, {w['gpus']} GPUs"))
    if cl["mismatches"]:
        for m in cl["mismatches"]:
            rows.append(("MISMATCH", f"{m['package']} {m['version']} on {m['where']}, {m['client']} here: install the "
                                     f"same versions everywhere"))
    else:
        rows.append(("versions", "the same on this client, the scheduler and every worker: "
                                 + ", ".join(f"{k} {v}" for k, v in cl["versions"].items())))
    return rows


def _factor_state(ms) -> dict | None:
    """What ``factor/`` holds: method, settings, columns factored of n."""
    if "factor" not in ms.group:
        return None
    meta = dict(ms.group["factor"].attrs.get("bigspec_factor", {}))
    if not meta:
        return None
    return {"method": meta.get("method"), "settings": meta.get("params"), "tile_size": meta.get("tile_size"),
            "columns_done": min(int(meta.get("columns_done", 0)) * int(meta.get("tile_size") or ms.tile_size), ms.n),
            "n": ms.n, "complete": bool(meta.get("complete"))}


def _format_info(out: dict) -> str:
    """``bigspec info`` as aligned fields, one per line."""
    from dask.utils import format_bytes

    rows = [("bigspec", out["version"]), ("cpus", out["cpus"]), ("memory", format_bytes(out["memory"])),
            ("config", "  ".join(f"{k}={_config_value(k, v)}" for k, v in out["config"].items()))]
    arr = out.get("array")
    if arr:
        rows += [(arr["kind"], arr["path"]),
                 ("shape", f"{' x '.join(map(str, arr['shape']))} {arr['dtype']}"
                           + (f", chunks {' x '.join(map(str, arr['chunks']))}" if arr["chunks"] else "")),
                 ("use", "bigspec logdet / spectrum read it as it is (checked first); `bigspec import "
                         f"{arr['path']} STORE` copies it into a store" if len(arr["shape"]) == 2 and
                  arr["shape"][0] == arr["shape"][1] else
                  "not a square matrix: as data points (n_samples, ...) it is what `bigspec form KERNEL "
                  f"{arr['path']} STORE` takes")]
    rows += _store_rows(out.get("store")) + _cluster_rows(out.get("cluster"))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def _config_value(key, value):
    """A config value as ``bigspec info`` shows it (the calibration by where and when it was measured)."""
    if key == "calibration" and isinstance(value, dict):
        return f"<{value.get('description') or 'measured'}: bigspec calibrate>"
    return value


def _store_rows(st: dict | None) -> list:
    """A store's summary (``_store_summary``) as rows of ``bigspec info`` / ``bigspec status``."""
    from dask.utils import format_bytes

    rows = []
    if not st:
        return rows
    n, b, tiles, missing = st["n"], st["tile_size"], st["tiles"], st["missing_tiles"]
    itemsize = 4 if st.get("dtype") == "float32" else 8
    rows += [("store", st["url"]),
             ("matrix", f"{n} x {n} {st.get('dtype')}, "
                        f"{'symmetric (lower tiles stored)' if st.get('symmetric') else 'not symmetric'}, "
                        f"{format_bytes(n * n * itemsize)} in full"),
             ("tiles", f"{b} x {b}, {tiles} stored: "
                       + ("complete" if not missing else
                          f"{tiles - missing} written, {missing} missing (unfinished: form it again to resume)")),
             ("source", st.get("source"))]
    kernel = st.get("kernel")
    if kernel:
        params = ", ".join(f"{k}={v}" for k, v in (kernel.get("params") or {}).items())
        d = int(kernel.get("n_outputs", 1))
        kron = (f"; the matrix is K (x) I_{d} ({n * d} x {n * d}), K stored" if kernel.get("kron_identity")
                and d > 1 else f"; {d} rows per data point" if d > 1 else "")
        rows.append(("kernel", f"{kernel.get('name')}: {params}{kron}"))
    perm = st.get("permutation")
    if isinstance(perm, dict):
        rows.append(("order", f"data shuffled with seed {perm.get('seed')}" if perm.get("shuffle", True)
                     else "data order kept (shuffle=False)"))
    f = st.get("factor")
    if f:
        state = ("complete" if f["complete"] else
                 f"{f['columns_done']} of {f['n']} columns factored (unfinished: run the same "
                 f"`bigspec logdet` again to resume)")
        rows.append(("factor", f"{f['method']} ({f['settings']}): {state}"))
    for name, r in (st.get("results") or {}).items():
        value = (f"sign {r.get('sign')}, logabsdet {r.get('logabsdet')!r}" if "logabsdet" in r else
                 f"size {r.get('size')}, trace {r.get('trace')!r}")
        seconds = r.get("seconds")
        rows.append((name, value + (f" ({seconds:.3g} s)" if isinstance(seconds, (int, float)) else "")))
    return rows


@contextlib.contextmanager
def _stages_to_stderr(name: str):
    """While the block runs, INFO lines of the logger ``name`` go to stderr, one per stage."""
    import logging

    log = logging.getLogger(name)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    level = log.level
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        yield
    finally:
        log.removeHandler(handler)
        log.setLevel(level)


def _config():
    from .config import settings

    return settings()


def matrix_options(f):
    """Options of commands that read a matrix given as an array (.npy file or zarr array)."""
    opts = [
        click.option("--triangle", type=click.Choice(["lower", "upper"]), default=None,
                     help="The matrix is given by this triangle (the other is ignored); default: both, checked to agree."),
        click.option("--missing-chunks", type=click.Choice(["error", "fill"]), default="error", show_default=True,
                     help="A zarr chunk never written: refuse, or read it as the fill value."),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


@cli.command(name="import")
@click.argument("source", metavar="MATRIX")
@click.argument("store")
@click.option("--tile-size", type=int, help="Tile edge (default from config).")
@matrix_options
@click.option("--overwrite", is_flag=True, help="Replace what is at STORE (other data there is listed first).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def import_(source, store, tile_size, triangle, missing_chunks, overwrite, as_json):
    """Write MATRIX (a .npy file, a zarr array or a store) into a new matrix STORE, tile by tile."""
    from .store import from_array

    ms = from_array(source, store, tile_size=tile_size, triangle=triangle, missing_chunks=missing_chunks,
                    overwrite=overwrite)
    summary = {"store": ms.url, "n": ms.n, "tile_size": ms.tile_size, "dtype": ms.dtype.name,
               "tiles": sum(1 for _ in ms.stored_tiles())}
    _emit(summary if as_json else f"wrote {ms}", as_json)


class _LogdetCommand(click.Command):
    """``bigspec logdet``: kernel parameters come as ``--param K=V`` or free ``--K V`` options."""


@cli.command(cls=_LogdetCommand, context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.argument("store", metavar="[MATRIX]", required=False)
@click.option("--method", type=click.Choice(["ldl", "cholesky", "flodance", "slq", "spectrum"]), default=None,
              help="ldl (exact, symmetric; default), cholesky (exact, SPD), or an estimate: flodance (scaling law "
                   "from leading blocks), slq (stochastic Lanczos quadrature), spectrum (free decompression).")
@click.option("--kernel", default=None, help="flodance/spectrum without a MATRIX: form only the sampled blocks of "
                                            "this kernel on --data (the matrix is never formed).")
@click.option("--data", "data", type=click.Path(exists=True), default=None, help="Data points (.npy) for --kernel.")
@click.option("--param", "params", multiple=True, metavar="K=V", help="Kernel parameter for --kernel, e.g. depth=3.")
@click.option("--memory", default=None, help="Memory budget, e.g. 2GiB (default: auto).")
@click.option("--tile-size", type=int, help="Tile edge for a .npy or zarr MATRIX; a store's must match.")
@click.option("--shift", type=float, default=0.0, show_default=True, help="Add shift * I.")
@click.option("--scale", type=float, default=1.0, show_default=True, help="Multiply the matrix by scale.")
@matrix_options
@click.option("--checkpoint/--no-checkpoint", default=None,
              help="Exact: keep the factor in the store to resume (default: when out of core).")
@click.option("--overwrite", is_flag=True, default=None, help="Exact: replace a factorization made with other settings.")
@click.option("--dry-run", is_flag=True, default=None, help="Exact: print tasks, flops, bytes, peak memory and the "
                                                           "predicted seconds; compute nothing.")
@click.option("--profile", default=None, metavar="NAME|FILE",
              help="With --dry-run: predict the seconds on this machine profile: calibrated (`bigspec calibrate`), "
                   "h100, cpu-node, or a YAML file of rates (default: the calibrated one, if any).")
@click.option("--sample-size", type=int, default=None, help="flodance: samples per ladder; spectrum: data points per sample (rows of the matrix, or whole "
                   "data points of d rows for an empirical NTK with d outputs).")
@click.option("--ladders", "n_ladders", type=int, default=None, help="flodance: independent ladders (default: up to 8).")
@click.option("--samples", "n_samples", type=int, default=None, help="spectrum: disjoint samples (default 4).")
@click.option("--probes", type=int, default=None, help="slq: Rademacher probes (default 64).")
@click.option("--lanczos-steps", type=int, default=None, help="slq: Lanczos steps (default min(80, n)).")
@click.option("--reorthogonalize", is_flag=True, default=None, help="slq: full reorthogonalization.")
@click.option("--seed", type=int, default=None, help="Estimators: seed of the probes / subsets (default 0).")
@click.option("--cross-check", type=click.Choice(["flodance", "slq", "spectrum"]), default=None,
              help="Estimators: a second estimate by this method beside the first (a warning where they disagree).")
@click.option("--pseudo-tol", type=float, default=None,
              help="flodance: pivots below this times max(diag) are dropped (pseudo-determinant).")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), default=None,
              help="Estimators: save the estimate's picture (FLODANCE: ladder, fit and band).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@cluster_options
@click.pass_context
def logdet(ctx, store, method, kernel, data, params, memory, tile_size, shift, scale, triangle, missing_chunks,
           checkpoint, overwrite, dry_run, profile, sample_size, n_ladders, n_samples, probes, lanczos_steps,
           reorthogonalize, seed, cross_check, pseudo_tol, plot_path, as_json, scheduler, scheduler_file, workers,
           threads, memory_limit, gpu, progress):
    """Log-determinant of MATRIX (a store, a .npy file or a zarr array): exact by tiled LDL^T / Cholesky (out of
    core), or estimated (--method flodance / slq / spectrum; flodance and spectrum also from --kernel and --data
    without forming the matrix)."""
    from .determinant import logdet as run_logdet
    from .determinant import check_options
    from .matrix import as_matrix

    from .store import check_tile_size
    from .validate import check_memory, check_scale

    extra = list(ctx.args)
    if store is not None and store.startswith("--"):   # a free kernel option (--depth 3) took MATRIX's place
        extra, store = [store, *extra], None
    kernel_params = _parse_params(params, extra)
    if kernel is None and data is None:
        if kernel_params:
            raise click.UsageError("kernel parameters (--param, --K V) go with --kernel and --data")
        if store is None:
            raise click.UsageError("give a MATRIX, or --kernel and --data (with --method flodance or spectrum)")
    elif store is not None:
        raise click.UsageError("give a MATRIX or --kernel and --data, not both")
    elif kernel is None or data is None:
        raise click.UsageError("--kernel and --data go together")
    if kernel is not None and method is None:
        raise click.UsageError("--kernel and --data never form the matrix: choose --method flodance or spectrum")
    options = dict(memory=memory, tile_size=tile_size, checkpoint=checkpoint, overwrite=overwrite, dry_run=dry_run,
                   sample_size=sample_size, n_ladders=n_ladders, n_samples=n_samples, probes=probes,
                   lanczos_steps=lanczos_steps, reorthogonalize=reorthogonalize, seed=seed, pseudo_tol=pseudo_tol)
    # flags left off are False; --no-checkpoint is a choice (False), --checkpoint's absence is None
    given = {k: v for k, v in options.items() if v is not None and (v is not False or k == "checkpoint")}
    if plot_path and given.get("overwrite") and (method or "ldl") not in ("ldl", "cholesky"):
        del given["overwrite"]                          # with an estimate --overwrite replaces the --plot file
    check_options(method or "ldl", given)
    if plot_path and (method or "ldl") in ("ldl", "cholesky"):
        raise click.UsageError("--plot draws an estimate (--method flodance, slq or spectrum)")
    # every argument is checked before a cluster starts
    check_memory(memory)
    check_scale(scale)
    machine = _profile_for_dry_run(profile, dry_run)
    if plot_path:
        _check_plot_path(plot_path, overwrite)
    if tile_size is not None:
        check_tile_size(tile_size)
    source = as_matrix(store, triangle=triangle, missing_chunks=missing_chunks, mode="r+") if store else None
    kwargs = dict(method=method, shift=shift, scale=scale, device="gpu" if gpu else "cpu", progress=progress,
                  triangle=triangle, missing_chunks=missing_chunks, cross_check=cross_check, **given)
    if kernel is not None:
        kwargs.update(kernel=kernel, X=data, **kernel_params)
    if dry_run:
        with _client(scheduler, scheduler_file, workers, threads, memory_limit, gpu) as client:
            plan = run_logdet(source, client=client, **kwargs)
        if machine is not None:
            import dataclasses

            plan = dataclasses.replace(plan, profile=machine)
        _emit(plan.summary() if as_json else plan.describe("cli"), as_json)
        return
    with _client(scheduler, scheduler_file, workers, threads, memory_limit, gpu) as client:
        res = run_logdet(source, client=client, **kwargs)
    if plot_path:
        import matplotlib

        matplotlib.use("Agg")
        res.plot().figure.savefig(plot_path, dpi=120, bbox_inches="tight")
    if as_json:
        _emit(res, True)
    elif res.method in ("ldl", "cholesky"):
        click.echo(f"sign = {res.sign}\nlogabsdet = {res.logabsdet!r}")
        if res.kron_outputs != 1:
            click.echo(f"matrix = {res.matrix}")
        click.echo(f"n = {res.n}, method = {res.method}, tile_size = {res.tile_size}, "
                   f"super-panels = {res.super_panels} ({res.panels_computed} computed now), "
                   f"{res.seconds:.2f} s" + (" (cached)" if res.cached else ""), err=True)
    else:
        low, high = res.interval
        click.echo(f"sign = {res.sign}\nlogabsdet = {res.logabsdet!r}\ninterval = [{low!r}, {high!r}]")
        click.echo(f"method = {res.method}, matrix rows = {res.matrix_rows}, "
                   f"+-{100 * res.relative_halfwidth:.3g}%; {res.interval_meaning}", err=True)
        cost = res.cost
        click.echo(f"cost: {cost.get('entries', 0):.4g} matrix entries, {cost.get('flops', 0):.3g} flops, "
                   f"{res.seconds:.2f} s" + (f"; plot: {plot_path}" if plot_path else ""), err=True)
        check = res.diagnostics.get("cross_check")
        if check and "refused" in check:
            click.echo(f"cross-check: {check['method']} refused (see its warning)")
        elif check:
            click.echo(f"cross-check: {check['method']} logabsdet = {check['logabsdet']!r} in [{check['interval'][0]!r}, "
                       f"{check['interval'][1]!r}]; the intervals {'overlap' if check['overlap'] else 'DO NOT overlap'}")


@cli.command()
@click.argument("store", metavar="MATRIX")
@click.option("--sample-size", type=int, default=None, help="Data points per sample: rows of the matrix, or whole data points of d rows for an empirical NTK "
                   "with d outputs (default: min(n / samples, 4096)).")
@click.option("--samples", "n_samples", type=int, default=1, show_default=True, help="Disjoint diagonal blocks.")
@click.option("--size", type=int, default=None, help="Decompress to this size (default: n).")
@click.option("--regime", type=click.Choice(["auto", "kernel", "bulk", "heavy-tailed"]), default="auto",
              show_default=True, help="kernel: the kernel-operator fit across nested sub-blocks (kernel/NTK spectra); "
                                      "bulk: full free decompression; heavy-tailed: its large-alpha form; auto: kernel "
                                      "or bulk by a held-out check.")
@click.option("--shift", type=float, default=0.0, show_default=True,
              help="The spectrum of scale * A + shift * I (a nugget).")
@click.option("--scale", type=float, default=1.0, show_default=True, help="See --shift.")
@click.option("--seed", type=int, default=0, show_default=True, help="Recorded in the result.")
@click.option("--degree", type=int, default=None, help="Chebyshev degree of the sample density.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), default=None,
              help="Save the sample histogram and decompressed density (PNG, SVG, PDF).")
@click.option("--log", "log_axis", is_flag=True, help="Plot on a log10 eigenvalue axis.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON (a summary: add --grid for the density).")
@click.option("--grid", "with_grid", is_flag=True, help="With --json: include the density on its grid (x, density).")
@click.option("--overwrite", is_flag=True, help="Replace an existing --plot file.")
@matrix_options
@cluster_options
def spectrum(store, sample_size, n_samples, size, regime, shift, scale, seed, degree, plot_path, log_axis, as_json,
             with_grid, overwrite, triangle, missing_chunks, scheduler, scheduler_file, workers, threads, memory_limit, gpu, progress):
    """Eigenvalue density of MATRIX (a store, .npy file or zarr array) by free decompression of sampled blocks.

    In the kernel regime each quantile printed comes with its 95% held-out interval (--json: at 10, 25, 50, 75
    and 90%)."""
    from .matrix import as_matrix
    from .spectra import spectrum as run_spectrum

    from .spectra.sample import check_sample_size

    if with_grid and not as_json:
        raise click.UsageError("--grid adds the density to the JSON output: use it with --json")
    matrix = as_matrix(store, triangle=triangle, missing_chunks=missing_chunks)  # errors before a cluster
    check_sample_size(sample_size, matrix.n, n_samples)
    if plot_path:
        _check_plot_path(plot_path, overwrite)
    options = {"degree": degree} if degree else {}
    with _client(scheduler, scheduler_file, workers, threads, memory_limit, gpu) as client:
        res = run_spectrum(matrix, sample_size=sample_size, n_samples=n_samples, size=size, regime=regime,
                           shift=shift, scale=scale, seed=seed, client=client, device="gpu" if gpu else "cpu",
                           progress=progress, **options)
    if plot_path:
        import matplotlib

        matplotlib.use("Agg")
        ax = res.plot(log=log_axis or res.settings["regime"] in ("heavy-tailed", "kernel"))
        ax.figure.savefig(plot_path, dpi=120, bbox_inches="tight")
    if as_json:
        click.echo(json.dumps(res.to_dict(grid=with_grid), indent=2))
        return
    click.echo(f"size = {res.size} from {res.n_samples} sample(s) of {res.sample_size} (alpha = {res.alpha:.3g}), "
               f"regime = {res.settings['regime']}")
    support = f"support = [{res.support[0]:.6g}, {res.support[1]:.6g}], mean = {res.mean:.6g}"
    if res.settings.get("regime") == "kernel" and res.nested is not None:      # the regime with intervals
        click.echo(support)
        click.echo("\n".join(_quantile_interval_lines(res, INTERVAL_QUANTILES, INTERVAL_LEVEL)))
    else:
        q = res.quantiles(SPECTRUM_QUANTILES)
        click.echo(f"{support}, quantiles {'/'.join(f'{100 * p:g}' for p in SPECTRUM_QUANTILES)}% = "
                   + " / ".join(f"{v:.4g}" for v in q))
    for loc, mass in res.atoms:
        click.echo(f"atom at {loc:.4g} with mass {mass:.4f}")
    click.echo(f"{res.seconds:.2f} s" + (f"; plot: {plot_path}" if plot_path else ""), err=True)


#: the quantiles ``bigspec spectrum`` prints; in the kernel regime, those whose held-out intervals were
#: checked against exact spectra (10-90%), with the intervals' level
SPECTRUM_QUANTILES, INTERVAL_QUANTILES, INTERVAL_LEVEL = (0.01, 0.5, 0.99), (0.1, 0.25, 0.5, 0.75, 0.9), 0.95


def _quantile_interval_lines(res, p, level) -> list[str]:
    """A kernel-regime spectrum's quantiles ``p`` with their held-out intervals at ``level``
    (:meth:`~bigspec.spectra.result.SpectrumResult.quantile_intervals`), a heading and one aligned line each:
    ``q50  0.0475  [0.0193, 0.117]``."""
    low, est, high = res.quantile_intervals(list(p), level)
    rows = [(f"q{100 * x:g}", f"{e:.4g}", f"[{lo:.4g}, {hi:.4g}]") for x, lo, e, hi in zip(p, low, est, high)]
    names, values = (max(len(r[i]) for r in rows) for i in (0, 1))
    return [f"quantiles with {level:.0%} held-out intervals:",
            *(f"  {name:<{names}}  {value:<{values}}  {interval}" for name, value, interval in rows)]


@cli.command(name="run")
@click.argument("job_file", metavar="JOB", type=click.Path(exists=True, dir_okay=False))
@click.option("--dry-run", is_flag=True, help="Validate the job and print its plan (tasks, flops, bytes, memory per "
                                              "worker); compute and write nothing.")
@click.option("--force", is_flag=True, help="Take over the store's lease from another writer (only when that job is "
                                            "gone or stopped: two writers at once can corrupt the store).")
@click.option("--json", "as_json", is_flag=True, help="Print the plan (--dry-run) or the job's record as JSON.")
@cluster_options
@click.pass_context
def run_(ctx, job_file, dry_run, force, as_json, **cluster):
    """Run the job file JOB (YAML or TOML): form -> logdet -> spectrum on one store, recorded in the store.

    The whole file is checked before anything starts. Cluster options given here override the job's
    cluster section. `bigspec status STORE` shows the record afterwards.
    """
    from . import errors
    from .jobs import load_job, plan_job, run_job

    errors.CLI_INTERFACE = "job"                 # fixes name the job file's keys (memory: 4GiB), not flags
    job = load_job(job_file)                     # the whole file, before a cluster starts
    options, progress = _job_cluster(ctx, job, cluster)
    with _client(**options) as client:
        _wait_for_workers(client, options)
        if dry_run:
            plan = plan_job(job, client=client)
        else:
            record = run_job(job, client=client, progress=progress, force=force,
                             device="gpu" if options.get("gpu") else "cpu",
                             on_event=lambda line: click.echo(line, err=True))
    if dry_run:
        _emit(plan.to_dict() if as_json else plan.describe(errors.CLI_INTERFACE) + "\nnothing was computed (--dry-run)",
              as_json)
        if plan.problems:
            from .errors import MemoryBudgetError

            raise MemoryBudgetError(f"{job.source}: the job cannot run as planned: " + "; ".join(plan.problems))
        return
    if as_json:
        _emit(record, True)
        return
    for step, r in record["steps"].items():
        res = r.get("result") or {}
        if step == "logdet":
            click.echo(f"logdet: sign = {res.get('sign')}, logabsdet = {res.get('logabsdet')!r} ({res.get('method')})")
        elif step == "spectrum":
            click.echo(f"spectrum: size = {res.get('size')}, support = {res.get('support')}, "
                       f"trace = {res.get('trace')!r}")
        else:
            click.echo(f"form: {res.get('store')}, n = {res.get('n')}, tile_size = {res.get('tile_size')}, "
                       f"{res.get('formed_tiles')} of {res.get('tiles')} tiles formed now")
    click.echo(f"recorded in {job.store} (bigspec status {job.store})", err=True)


#: seconds ``bigspec run`` waits for the first worker of a scheduler it joins (workers may still be starting)
WORKER_WAIT = 120.0


def _wait_for_workers(client, options: dict) -> None:
    """A joined scheduler with no worker yet: wait for one (a cluster started together with its runner)."""
    if client is None or not (options.get("scheduler") or options.get("scheduler_file")):
        return
    from .cluster import workers_info

    if workers_info(client):
        return
    import asyncio

    from .errors import ClusterError

    click.echo(f"waiting up to {WORKER_WAIT:.0f} s for a worker to join the scheduler", err=True)
    try:
        client.wait_for_workers(1, timeout=WORKER_WAIT)
    except (TimeoutError, asyncio.TimeoutError) as e:
        raise ClusterError(f"no worker joined the scheduler {client.scheduler.address} within {WORKER_WAIT:.0f} s: "
                           f"start workers (dask worker {client.scheduler.address}) and run the job again") from e


def _job_cluster(ctx, job, cluster: dict) -> tuple[dict, bool | None]:
    """The cluster of ``bigspec run``: the job's cluster section, overridden by options given on the command line.

    Returns the keyword arguments of ``_client`` and the progress setting.
    """
    import inspect

    from click.core import ParameterSource

    given = {k for k in cluster if ctx.get_parameter_source(k) in (ParameterSource.COMMANDLINE,
                                                                     ParameterSource.ENVIRONMENT)}
    merged = dict(cluster)
    from_job = job.cluster_options()
    joins = given & {"scheduler", "scheduler_file"}
    for key, value in from_job.items():
        if key in given or value is None:
            continue
        if joins and key in ("scheduler", "scheduler_file"):
            continue                              # a scheduler named here replaces the job's choice
        merged[key] = value
    accepted = inspect.signature(_client).parameters
    return {k: v for k, v in merged.items() if k in accepted}, merged.get("progress")


@cli.command()
@click.argument("store")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def status(store, as_json):
    """What STORE holds and what was done with it: tiles formed, columns factored, each job's record, the lease."""
    from .lease import read_lease
    from .store import open_matrix

    ms = open_matrix(store, mode="r")
    summary = _store_summary(ms)
    jobs = summary.pop("jobs", None) or []
    holder = read_lease(store)
    lease = None if holder is None else {**{k: v for k, v in holder.to_dict().items() if k != "token"},
                                         "expired": holder.expired()}
    if as_json:
        click.echo(json.dumps({"store": summary, "lease": lease, "jobs": jobs}, indent=2, default=str))
        return
    rows = _store_rows(summary)
    rows.append(("lease", "free" if holder is None else
                 f"held by {holder.describe()}" + (f" (expired: {lease['expired']})" if lease["expired"] else "")))
    for i, rec in enumerate(jobs, 1):
        state = {"done": f"done at {rec.get('finished')}", "running": "running (or stopped without a word: see the "
                                                                      "lease)",
                 "failed": f"failed at {rec.get('finished')}: {rec.get('error')}",
                 "stopped": f"stopped: {rec.get('error')}",
                 "interrupted": f"interrupted at {rec.get('finished')}: {rec.get('error')}"}.get(rec.get("status"),
                                                                                              rec.get("status"))
        rows.append((f"job {i}", f"{rec.get('file')} (id {rec.get('id')}), started {rec.get('started')}: {state}"))
        rows.append(("  versions", ", ".join(f"{k} {v}" for k, v in (rec.get("versions") or {}).items())))
        for step, r in (rec.get("steps") or {}).items():
            rows.append((f"  {step}", _step_text(step, r, summary, rec.get("status"))))
    width = max(len(k) for k, _ in rows)
    click.echo("\n".join(f"{k:<{width}}  {v}" for k, v in rows))


def _step_text(step: str, r: dict, summary: dict, status: str | None = None) -> str:
    """One step of a job record in words; an unfinished one with the store's progress now (which a later job
    may have carried further)."""
    res = r.get("result")
    if res is None:
        if status == "failed":
            return f"started {r.get('started')}, failed (the job's error above)"
        complete = False
        if step == "form":
            complete = summary["missing_tiles"] == 0
            done = f"the store has {summary['tiles'] - summary['missing_tiles']} of {summary['tiles']} tiles formed"
        elif step == "logdet":
            f = summary.get("factor")
            complete = bool(f and f["columns_done"] >= f["n"])
            done = (f"the store's factor has {f['columns_done']} of {f['n']} columns" if f else
                    "no factor kept yet (in memory)")
        else:
            done = "a spectrum keeps nothing until it is done"
        again = ("" if status == "done" else " (finished since, by a later run)" if complete
                 else "; run the job again to resume")
        return f"started {r.get('started')}, not finished: {done}{again}"
    took = f" ({r['seconds']:.1f} s)" if isinstance(r.get("seconds"), (int, float)) else ""
    if step == "form":
        return f"{res.get('formed_tiles')} of {res.get('tiles')} tiles formed, n = {res.get('n')}{took}"
    if step == "logdet":
        interval = f", interval {res['interval']}" if res.get("interval") else ""
        return f"{res.get('method')}: sign {res.get('sign')}, logabsdet {res.get('logabsdet')!r}{interval}{took}"
    return (f"size {res.get('size')}, support {res.get('support')}, trace {res.get('trace')!r}, "
            f"regime {(res.get('settings') or {}).get('regime')}{took}")


def _profile_for_dry_run(profile, dry_run):
    """The machine profile of ``--profile`` (None: the default), checked before any cluster starts."""
    if profile is None:
        return None
    if not dry_run:
        raise click.UsageError("--profile predicts the seconds of a plan: use it with --dry-run")
    from .perfmodel import resolve_profile

    return resolve_profile(profile)


def _check_plot_path(path, overwrite):
    """A --plot file is the user's: never replaced without --overwrite; its format must be one matplotlib writes."""
    import os

    from .results import pyplot

    try:
        pyplot()                          # before any work, not after it
    except ImportError as e:
        raise click.UsageError(f"--plot {path}: {e}")
    ext = os.path.splitext(path)[1].lower().lstrip(".")
    if ext not in ("png", "svg", "pdf", "jpg", "jpeg", "eps", "ps", "tif", "tiff", "webp"):
        raise click.BadParameter(f"{path!r} has no image extension; use .png, .svg or .pdf", param_hint="--plot")
    if os.path.exists(path) and not overwrite:
        raise FileExistsError(f"{path} exists; pass --overwrite to replace it, or choose another --plot path")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise FileNotFoundError(f"no directory {parent} for --plot {path}")


def _parse_params(pairs, extra):
    """Kernel parameters from ``--param k=v`` pairs and free ``--name value`` options."""
    import yaml

    params = {}
    for pair in pairs:
        if "=" not in pair:
            raise click.UsageError(f"--param takes key=value, got {pair!r}")
        key, value = pair.split("=", 1)
        params[key.strip().replace("-", "_")] = yaml.safe_load(value)
    it = iter(extra)
    for token in it:
        if not token.startswith("--"):
            raise click.UsageError(f"unexpected argument {token!r}")
        key = token[2:]
        if "=" in key:
            key, value = key.split("=", 1)
        else:
            value = next(it, None)
            if value is None:
                raise click.UsageError(f"option {token} needs a value")
        params[key.replace("-", "_")] = yaml.safe_load(value)
    return params


class _FormCommand(click.Command):
    """``bigspec form``: its help ends with every known kernel and its parameters (read when shown)."""

    def format_epilog(self, ctx, formatter):
        from .kernels import describe

        formatter.write_paragraph()
        formatter.write_text("Kernels (KERNEL: layout; parameters with their defaults, set with --param K=V or "
                             "--K V):")
        import textwrap

        with formatter.indentation():
            width = max((formatter.width or 80) - formatter.current_indent, 40)
            for line in describe().splitlines():
                formatter.write_text("\b\n" + "\n".join(textwrap.wrap(line, width, subsequent_indent="    ")))
        formatter.write_paragraph()
        formatter.write_text("Forming into an existing store of the same kernel, data, seed and tile size resumes "
                             "it (only missing tiles are computed); --overwrite starts over.")


@cli.command(cls=_FormCommand, context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.argument("kernel")
@click.argument("data")
@click.argument("store")
@click.option("--tile-size", type=int, help="Tile edge in matrix rows (default from config).")
@click.option("--param", "params", multiple=True, metavar="K=V",
              help="Kernel parameter, e.g. --param nu=1.5; kernel options like --depth 3 work too.")
@click.option("--dtype", type=click.Choice(["float64", "float32"]), default="float64", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the data permutation.")
@click.option("--no-shuffle", is_flag=True, help="Keep the data order (leading blocks are then not random samples).")
@click.option("--overwrite", is_flag=True, help="Replace an existing store (one of the same kernel and data resumes).")
@click.option("--dry-run", is_flag=True, help="Check everything and print the tiles and entries to form, the bytes to "
                                              "write and the predicted seconds; write nothing.")
@click.option("--profile", default=None, metavar="NAME|FILE",
              help="With --dry-run: predict the seconds on this machine profile: calibrated (`bigspec calibrate`), "
                   "h100, cpu-node, or a YAML file of rates (default: the calibrated one, if any).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@cluster_options
@click.pass_context
def form(ctx, kernel, data, store, tile_size, params, dtype, seed, no_shuffle, overwrite, dry_run, profile, as_json,
         scheduler, scheduler_file, workers, threads, memory_limit, gpu, progress):
    """Form the KERNEL matrix of DATA (.npy or Zarr) into STORE, one task per lower tile."""
    import time

    from .form import DATA, open_data
    from .form import form as run_form
    from .kernels import get_kernel

    kernel_obj = get_kernel(kernel, **_parse_params(params, ctx.args))  # bad names fail before any cluster
    open_data(data, DATA)             # so does DATA that is missing or holds no data points (exit 1, nothing written)
    machine = _profile_for_dry_run(profile, dry_run)
    if dry_run:
        with _client(scheduler, scheduler_file, workers, threads, memory_limit, gpu) as client:
            plan = run_form(kernel_obj, data, store, tile_size=tile_size, dtype=dtype, seed=seed,
                            shuffle=not no_shuffle, client=client, overwrite=overwrite,
                            device="gpu" if gpu else "cpu", progress=False, dry_run=True, profile=machine)
        _emit(plan.summary() if as_json else plan.describe("cli") + "\nnothing was written (--dry-run)", as_json)
        return
    t0 = time.perf_counter()
    with _client(scheduler, scheduler_file, workers, threads, memory_limit, gpu) as client:
        ms = run_form(kernel_obj, data, store, tile_size=tile_size, dtype=dtype, seed=seed,
                      shuffle=not no_shuffle, client=client, overwrite=overwrite,
                      device="gpu" if gpu else "cpu", progress=progress)
    meta = ms.attrs
    summary = {"store": ms.url, "n": ms.n, "tile_size": ms.tile_size, "kernel": meta["kernel"],
               "tiles": sum(1 for _ in ms.stored_tiles()), "formed_tiles": meta.get("formed_tiles"),
               "seconds": time.perf_counter() - t0}
    if as_json:
        _emit(summary, True)
    else:
        click.echo(f"formed {ms} ({summary['formed_tiles']} of {summary['tiles']} tiles now, "
                   f"{summary['seconds']:.1f} s)")


@cli.command()
@click.option("--tile-size", type=int, default=None, help="Tile edge of the measurements (default from config).")
@click.option("--quick", is_flag=True, help="A smoke test: tiny sizes, a few seconds (rates not of this machine).")
@click.option("--profile", "named", default=None, metavar="NAME|FILE",
              help="Keep this machine profile instead of measuring one: h100 or cpu-node (published peaks), or a "
                   "YAML file of rates.")
@click.option("--store-dir", type=click.Path(file_okay=False, exists=True), default=None,
              help="Measure the store bandwidth in this directory, on the storage your stores live on (default: "
                   "the temporary directory).")
@click.option("--overwrite", is_flag=True, help="Replace the profile file that exists.")
@click.option("--json", "as_json", is_flag=True, help="Print the profile as JSON.")
@cluster_options
def calibrate(tile_size, quick, named, store_dir, overwrite, as_json, scheduler, scheduler_file, workers, threads,
              memory_limit, gpu, progress):
    """Measure this machine's rates (GEMM, potrf, sytrf, store bandwidth, scheduler overhead, kernel formation) and
    keep them in the dask config, so that --dry-run plans predict seconds and name the bottleneck.

    The rates go to bigspec-profile.yaml in the dask config directory ($DASK_CONFIG, else ~/.config/dask); an
    existing file is replaced only with --overwrite. The BLAS, store and formation rates are measured in this
    process (as Dask's threaded scheduler runs tasks); the scheduler's overhead per task and the bandwidth between
    workers on the cluster (a local cluster by default, or --scheduler). For a remote cluster, run it on one of
    its nodes. --profile keeps a published-peak profile (or a file of rates) as the default instead.
    """
    from .perfmodel import calibrate as run_calibrate
    from .perfmodel import profile_path, resolve_profile, save_profile, check_profile_writable

    path = profile_path()
    check_profile_writable(path, overwrite)                      # before anything is measured
    if named is not None:
        machine = resolve_profile(named)
        save_profile(named, overwrite=overwrite, path=path)
        _emit(machine.to_dict() if as_json else f"plans now use {machine.label()}: wrote {path}", as_json)
        return
    if tile_size is not None:
        from .store import check_tile_size

        check_tile_size(tile_size)
    from .perfmodel import calibrate_cluster

    # this machine first, on the threaded scheduler, before a local cluster starts (its nannies set
    # OMP/OPENBLAS_NUM_THREADS=1 in this process, and a BLAS loaded after that would run on one thread);
    # then the cluster's scheduler, transfers and efficiency
    with _stages_to_stderr("bigspec.perfmodel"):      # a minute or more with nothing to show otherwise
        machine = run_calibrate(tile_size=tile_size, quick=quick, store_dir=store_dir, save=False)
        with _client(scheduler, scheduler_file, workers, threads, memory_limit, gpu) as client:
            machine = calibrate_cluster(machine, client, quick=quick, store_dir=store_dir, save=True,
                                        overwrite=overwrite)
    if as_json:
        _emit({"path": path, **machine.to_dict()}, True)
        return
    click.echo(_format_profile(machine))
    click.echo(f"wrote {path}: plans (--dry-run, bigspec.plan_logdet) now predict with it", err=True)


def _format_profile(p) -> str:
    """A machine profile as aligned rows of rates."""
    from dask.utils import format_bytes

    def rate(x, unit="flop/s"):
        return "-" if x is None else f"{x / 1e9:.3g} G{unit}"

    def bw(x):
        return "-" if x is None else f"{format_bytes(int(x))}/s"

    def us(x):
        return "-" if x is None else f"{x * 1e6:.3g} us"

    rows = [("profile", p.label()), ("tile size", f"{p.tile_size} ({p.threads} task threads)"),
            ("gemm", rate(p.gemm) + " per thread"), ("potrf", rate(p.potrf) + " per thread"),
            ("sytrf", rate(p.sytrf) + " per thread"),
            *[(f"potrf {rows}", f"{rate(r)} per thread (alone)") for rows, r in sorted(p.potrf_blocks)],
            ("store read", bw(p.store_read)), ("store write", bw(p.store_write)),
            ("task overhead", f"{us(p.task_overhead)} threaded, {us(p.task_overhead_distributed)} distributed"),
            ("network", bw(p.network)), ("host-device", bw(p.host_device)),
            ("efficiency", f"{p.graph_efficiency:.2f} threaded, "
                           + ("-" if p.graph_efficiency_distributed is None else f"{p.graph_efficiency_distributed:.2f}")
                           + " distributed (a factorization's seconds over its parts')")]
    rows += [(f"form {k}", f"{v * 1e9:.3g} ns per entry per thread" + (" per layer" if k == "relu" else ""))
             for k, v in p.formation.items()]
    rows.append(("form ntk", rate(p.ntk) + " per thread (J J^T)"))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


@cli.command()
@click.option("--n-samples", type=int, default=None, help="Use the first N digits (default: all 1797).")
@click.option("--ntk-samples", type=int, default=150, show_default=True,
              help="Digits in the empirical NTK of the small MLP (needs torch).")
@click.option("--tile-size", type=int, default=256, show_default=True)
@click.option("--store", "workdir", default=None, help="Directory for the demo stores (default: a temp dir).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@cluster_options
def demo(n_samples, ntk_samples, tile_size, workdir, as_json, scheduler, scheduler_file, workers, threads,
         memory_limit, gpu, progress):
    """Built-in example: NTKs of the digits data, exact logdet out of core vs numpy's."""
    from .demo import run_demo

    with tempfile.TemporaryDirectory(prefix="bigspec-demo-") as tmp:
        with _client(scheduler, scheduler_file, workers, threads, memory_limit, gpu) as client:
            out = run_demo(workdir or tmp, n_samples=n_samples, ntk_samples=ntk_samples, tile_size=tile_size,
                           client=client, progress=progress)
    if as_json:
        _emit(out, True)
        return
    titles = {"relu_ntk": "Analytic NTK of a depth-3 ReLU network on the digits (K (x) I_10)",
              "empirical_ntk": "Empirical NTK of a 64-64-10 MLP (torch) on a digits subset"}
    for name, r in out.items():
        b = r["bigspec"]
        click.echo(titles[name])
        click.echo(f"  stored matrix {r['n']} x {r['n']} ({r['matrix_bytes'] / 2**20:.1f} MiB), formed in "
                   f"{r['form_seconds']:.1f} s in tiles of {r['tile_size']}; memory budget "
                   f"{r['memory_budget'] / 2**20:.1f} MiB ({r['memory_budget'] / r['matrix_bytes']:.0%} of it) -> "
                   f"{b['super_panels']} super-panels")
        click.echo(f"  bigspec logdet : sign {b['sign']:+d}, logabsdet {b['logabsdet']:.10f}  ({b['seconds']:.2f} s)")
        click.echo(f"  numpy slogdet  : sign {r['numpy_sign']:+d}, logabsdet {r['numpy_logabsdet']:.10f}  "
                   f"({r['numpy_seconds']:.2f} s, in core)")
        click.echo(f"  relative difference: {r['rel_diff']:.2e}")
    if "empirical_ntk" not in out:
        click.echo("(install torch for the empirical-NTK part: pip install torch, or pip install '.[ntk]' in the bigspec checkout)")


@cli.command()
@click.argument("directory", metavar="DIR", type=click.Path(dir_okay=True, file_okay=False))
@click.option("--host", "hosts", multiple=True, metavar="NAME",
              help="Host name or IP the certificates also name (repeat); localhost, 127.0.0.1, scheduler and this "
                   "machine are always named.")
@click.option("--days", type=int, default=365, show_default=True, help="Validity of the certificates.")
@click.option("--overwrite", is_flag=True, help="Replace the certificates already in DIR.")
@click.option("--json", "as_json", is_flag=True, help="Print the files written as JSON.")
def certs(directory, hosts, days, overwrite, as_json):
    """Write a CA and TLS certificates and keys for the scheduler, workers and client into DIR.

    Start the cluster with them (dask scheduler --protocol tls --tls-ca-file DIR/ca.pem --tls-cert
    DIR/scheduler.pem --tls-key DIR/scheduler-key.pem; dask worker tls://HOST:8786 with the worker's
    files) and join it with --scheduler tls://HOST:8786 --tls DIR. Keep DIR/ca-key.pem off the cluster.
    """
    from .security import write_certificates

    paths = write_certificates(directory, hosts=hosts, days=days, overwrite=overwrite)
    if as_json:
        _emit(paths, True)
        return
    click.echo(f"wrote a CA and certificates for the scheduler, workers and client to {directory} "
               f"(valid {days} days):")
    for key, path in paths.items():
        click.echo(f"  {key:<14} {path}")
    click.echo(f"scheduler: dask scheduler --protocol tls --tls-ca-file {paths['ca']} --tls-cert {paths['scheduler']} "
               f"--tls-key {paths['scheduler-key']}")
    click.echo(f"worker:    dask worker tls://HOST:8786 --tls-ca-file {paths['ca']} --tls-cert {paths['worker']} "
               f"--tls-key {paths['worker-key']}")
    click.echo(f"client:    bigspec run JOB --scheduler tls://HOST:8786 --tls {directory}")


def _show_warning(message, category, filename, lineno, file=None, line=None):
    click.echo(f"warning: {cli_text(message)}", err=True)


def main(argv=None) -> None:
    """Console entry point: ``bigspec``. Exit codes: 0 ok, 1 user error, 2 usage, 3 cluster, 130 Ctrl-C."""
    try:
        rv = cli.main(args=argv, prog_name="bigspec", standalone_mode=False)
    except click.exceptions.UsageError as e:
        e.show()
        sys.exit(EXIT_USAGE)
    except click.exceptions.Abort:       # Ctrl-C outside a command (at a prompt, or while parsing)
        click.echo("interrupted: nothing was finished", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except click.exceptions.ClickException as e:
        e.show()
        sys.exit(EXIT_USER)
    if rv == EXIT_INTERRUPTED:
        _ignore_further_interrupts()
    sys.exit(rv if isinstance(rv, int) else 0)


def _ignore_further_interrupts() -> None:
    """After a Ctrl-C the command is ending: more presses must not cut short its exit (exit 130)."""
    import signal
    import threading

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)
