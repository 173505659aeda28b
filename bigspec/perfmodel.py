"""Performance model of bigspec's plans: predicted seconds from counts and a machine's rates.

A plan (:func:`bigspec.plan_logdet`, ``bigspec.form(..., dry_run=True)``) counts what its
task graphs do: flops, bytes read from and written to the store, tasks. A
:class:`MachineProfile` holds what a machine does per second: GEMM, potrf and sytrf flops per
task thread, store read and write bandwidth, network and host-device bandwidth, scheduler
overhead per task, and the cost of forming a kernel matrix entry. :func:`predict` combines
the two into seconds, term by term, and names the bottleneck.

The model (a roofline in the sense of Williams, Waterman & Patterson 2009, "Roofline: an
insightful visual performance model for multicore architectures", CACM 52(4), with the
per-task cost of a task scheduler added as its own term) sums, over the plan's super-panels
``p`` (each its own graph, run one after the other),

    compute_p    = gemm_p / (T * gemm(b)) + solve_p / (T * trsm(b)) + factor_p
    store_p      = read_p / store_read + written_p / store_write
    network_p    = (1 - 1/W) * 12 * (flops_p - factor flops_p) / b / (W * network)
    device_p     = (read_p + written_p) / (W * host_device)                 (GPU workers)
    scheduling_p = tasks_p * overhead(threaded or distributed)

with ``T`` task threads in all (on the threaded scheduler at least the profile's: BLAS gets the
cores fewer task threads leave), ``W`` workers and tiles of ``b`` rows. Of a panel's flops
(counted by its graph), ``solve_p`` are the solves of the rows below each diagonal block
(``P^2`` flops a row), ``factor_p`` the time of the diagonal blocks (potrf, or sytrf for
LDL^T): a tile's on the threads like the other tile kernels, a wider Cholesky block as one
LAPACK call on one worker (:meth:`MachineProfile.factor_seconds`), and the rest are GEMMs.
Tile rates are interpolated in the tile size between the calibrated ones. On a cluster each
tile kernel's inputs (three tiles per ``2 b^3`` flops of an update) are on another worker
with probability ``1 - 1/W``, and a worker waits for them at the rate ``network``. The terms
are added, not overlapped: on a CPU node the store is the page cache or a local disk whose
copies take the same cores as the BLAS calls, and a worker waits for a task's inputs before
it runs it. The form was chosen by validation against measured runs (``bench/perf_model.py``,
predicted against measured seconds on 23 configurations). Forming a kernel matrix is
modelled the same way, with ``entries * cost-per-entry / T`` as its compute term (the
empirical NTK: its padded sub-batch contractions and its Jacobians).

Rates come from a short measurement on this machine (:func:`calibrate`, ``bigspec
calibrate``), kept in the dask config (``bigspec.calibration``, written to
``bigspec-profile.yaml`` in the dask config directory), or from a named profile of
published peak figures (:data:`PROFILES`: ``"h100"``, ``"cpu-node"``), or from the user (a
dict, or a YAML file of the same keys). A published-peak profile predicts a lower bound.

Examples
--------
>>> from bigspec.perfmodel import MachineProfile, predict
>>> cpu = MachineProfile(name="laptop", gemm=50e9, potrf=20e9, sytrf=15e9, store_read=2e9,
...                      store_write=1e9, task_overhead=1e-4)
>>> summary = {"verb": "logdet", "n": 4096, "tile_size": 1024, "method": "cholesky", "tasks": 100,
...            "flops": 2.3e10, "factor_flops": 1.4e9, "factor_block": 1024, "bytes_read_matrix": 67108864,
...            "bytes_read_factor": 0, "bytes_written": 0, "workers": 1, "threads": 2}
>>> p = predict(summary, cpu)
>>> round(p.seconds, 3), p.bottleneck
(0.295, 'compute')
>>> print(p.describe())
predicted: 0.29 s (compute 0.25 s, store reads 0.034 s, scheduling 0.01 s; bottleneck: compute) with the laptop profile
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import math
import os
import platform
import time
import warnings
from dataclasses import dataclass, field

import msgspec

from . import config
from .errors import ArgumentError, ArgumentTypeError, BigspecWarning, StoreExistsError, arg, opt

logger = logging.getLogger(__name__)

#: the dask config directory's file that ``bigspec calibrate`` writes
PROFILE_FILE = "bigspec-profile.yaml"


class MachineProfile(msgspec.Struct, rename="kebab", forbid_unknown_fields=True, kw_only=True, frozen=True):
    """What one machine does per second; the rates :func:`predict` divides a plan's counts by.

    Keys (kebab-case in YAML and in the dask config, e.g. ``store-read``):

    Parameters
    ----------
    gemm : float
        GEMM of tiles, flop/s per task thread (while every thread runs one).
    potrf, sytrf : float
        Cholesky (LAPACK potrf) and Bunch-Kaufman LDL^T (sytrf) of one tile, flop/s per task
        thread (while every thread runs one).
    store_read, store_write : float
        Bytes per second read from and written to the store by all workers together.
    store_read_tile, store_write_tile : float
        Seconds a tile read or write costs besides its bytes (per chunk; all workers together).
    graph_efficiency, graph_efficiency_distributed : float
        A factorization's measured seconds over the sum of its separately measured parts, on the
        threaded scheduler and on a cluster (default: the threaded one's): what tasks running side
        by side cost each other. Its compute, store and network terms are multiplied by it.
    task_overhead : float
        Seconds of scheduling per task on Dask's threaded scheduler.
    task_overhead_distributed : float, optional
        Seconds of scheduling per task on a distributed scheduler (default: ``task_overhead``).
    trsm, trsm_ldl : float, optional
        The solve of a tile below a diagonal block, flop/s per task thread (``b^3`` flops; for
        LDL^T with its D^-1 scaling, growth statistics and D-scaled copy). Default: ``gemm``.
    tile_rates : list of (int, dict)
        The same tile rates (``gemm``, ``potrf``, ``sytrf``, ``trsm``, ``trsm-ldl``) at other tile
        sizes; a plan's tiles get rates interpolated between the sizes (:meth:`rate`).
    potrf_blocks : list of (int, float)
        (rows, flop/s per BLAS thread) of Cholesky factorizations of a block run alone on a worker
        (the Cholesky diagonal block is one LAPACK call as wide as memory allows); from two
        sizes the time of any block is interpolated as ``a P^3 + b P^2``. Default: ``potrf``.
    network : float, optional
        Bytes per second between two workers (None: not measured; a one-worker plan needs none).
    host_device : float, optional
        Bytes per second between a worker's host and its device (GPU workers; None: no device).
    scan : float, optional
        Bytes per second per task thread of a pass over a tile in memory (``max|L|`` of each L
        tile a factorization in memory keeps, where it writes none). Default: ``store_write``.
    formation : dict of str to float
        Seconds per matrix entry per task thread of forming a kernel, by kernel name: ``rbf``,
        ``matern``, and ``relu`` per hidden layer (plus one), with ``formation_dim`` features;
        a GEMM term ``2 * (features - formation_dim) / gemm`` is added for wider data.
    formation_dim : int
        Data features the formation costs were measured with.
    formation_tile : float
        Seconds per task thread a formation task costs besides its entries (its data rows,
        checks and result; kernels with a per-entry cost).
    ntk : float, optional
        The empirical NTK's Jacobian contraction ``J J^T``, flop/s per task thread (2 flops per
        model parameter per matrix entry, of sub-batches padded to the kernel's ``batch_size``).
    ntk_pair : float, optional
        Seconds per task thread per pair of sub-batches the contraction multiplies (its calls).
    ntk_jacobian : float, optional
        Seconds per thread of the per-sample Jacobians, per sample, output and parameter (each
        sample's are computed once per process, then cached).
    threads : int
        Task threads per worker the rates were measured with.
    tile_size : int
        Tile edge the tile rates were measured at.
    device : {"cpu", "gpu"}
        Where the tiles are factored.
    name, description : str
        ``"calibrated"``, ``"h100"``... and where the numbers come from (host and date, or the
        datasheet).
    """

    gemm: float
    potrf: float
    sytrf: float
    store_read: float
    store_write: float
    task_overhead: float
    task_overhead_distributed: float | None = None
    store_read_tile: float = 0.0
    store_write_tile: float = 0.0
    graph_efficiency: float = 1.0
    graph_efficiency_distributed: float | None = None
    trsm: float | None = None
    trsm_ldl: float | None = None
    tile_rates: tuple[tuple[int, dict[str, float]], ...] = ()
    potrf_blocks: tuple[tuple[int, float], ...] = ()
    network: float | None = None
    host_device: float | None = None
    scan: float | None = None
    formation: dict[str, float] = {}
    formation_dim: int = 16
    formation_tile: float = 0.0
    ntk: float | None = None
    ntk_pair: float | None = None
    ntk_jacobian: float | None = None
    threads: int = 1
    tile_size: int = 1024
    device: str = "cpu"
    name: str = "custom"
    description: str = ""

    def __post_init__(self):
        rates = ("gemm", "potrf", "sytrf", "store_read", "store_write", "network", "host_device", "ntk",
                 "ntk_jacobian", "trsm", "trsm_ldl", "scan")
        for key in ("graph_efficiency", "graph_efficiency_distributed"):
            value = getattr(self, key)
            if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ArgumentError(f"{arg('profile')}: {key.replace('_', '-')} must be a positive number, "
                                    f"got {value!r}")
        for key in ("ntk_pair", "formation_tile", "store_read_tile", "store_write_tile"):
            value = getattr(self, key)
            if value is not None and not (math.isfinite(value) and value >= 0):
                raise ArgumentError(f"{arg('profile')}: {key.replace('_', '-')} must be seconds >= 0, got {value!r}")
        for key in rates + ("task_overhead", "task_overhead_distributed"):
            value = getattr(self, key)
            if value is None and key not in ("gemm", "potrf", "sytrf", "store_read", "store_write", "task_overhead"):
                continue
            low = 0.0
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > low
                    or key.startswith("task_overhead") and value == 0):
                what = "seconds >= 0" if key.startswith("task_overhead") else "a positive finite rate"
                raise ArgumentError(f"{arg('profile')}: {key.replace('_', '-')} must be {what}, got {value!r}")
        for rows, value in self.potrf_blocks:
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0 and rows > 0):
                raise ArgumentError(f"{arg('profile')}: potrf-blocks holds [rows, rate] pairs of positive numbers "
                                    f"(rows, flop/s), got [{rows!r}, {value!r}]")
        for key, value in self.formation.items():
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ArgumentError(f"{arg('profile')}: formation cost of {key!r} must be positive seconds per "
                                    f"entry, got {value!r}")
        if self.device not in ("cpu", "gpu"):
            raise ArgumentError(f"{arg('profile')}: device must be 'cpu' or 'gpu', got {self.device!r}")
        for key in ("threads", "tile_size", "formation_dim"):
            if getattr(self, key) < 1:
                raise ArgumentError(f"{arg('profile')}: {key.replace('_', '-')} must be at least 1, "
                                    f"got {getattr(self, key)!r}")

    def to_dict(self) -> dict:
        """The profile as kebab-case keys (what the dask config and a YAML profile hold)."""
        return msgspec.to_builtins(self)

    def label(self) -> str:
        """The profile in words: its name and where its numbers come from."""
        if self.name == "calibrated" and self.description:
            return f"the calibrated profile of {self.description}"
        return f"the {self.name} profile" + (f" ({self.description})" if self.description else "")

    def rate(self, kernel: str, size: int | None = None) -> float:
        """Flop/s per thread of a tile kernel ("gemm", "potrf", "sytrf", "trsm", "trsm-ldl") on tiles of
        ``size`` rows: interpolated as a power of the size between the calibrated tile sizes
        (``tile_rates`` and ``tile_size``), the nearest one's beyond them."""
        main = {"gemm": self.gemm, "potrf": self.potrf, "sytrf": self.sytrf,
                "trsm": self.trsm or self.gemm, "trsm-ldl": self.trsm_ldl or self.trsm or self.gemm}
        points = {self.tile_size: main[kernel]}
        for b, rates in self.tile_rates:
            if rates.get(kernel):
                points[int(b)] = float(rates[kernel])
        sizes = sorted(points)
        if size is None or len(sizes) == 1:
            return points[self.tile_size]
        if size <= sizes[0] or size >= sizes[-1]:
            return points[sizes[0] if size <= sizes[0] else sizes[-1]]
        for b1, b2 in zip(sizes, sizes[1:]):
            if size <= b2:
                w = math.log(size / b1) / math.log(b2 / b1)
                return math.exp((1 - w) * math.log(points[b1]) + w * math.log(points[b2]))
        return points[sizes[-1]]       # not reached

    def factor_seconds(self, method: str, rows: int, threads: int = 1) -> float:
        """Seconds of factoring one diagonal block of ``rows`` rows (potrf, or sytrf for LDL^T) by one
        task with ``threads`` BLAS threads, wider than a tile (a tile's runs at :meth:`rate`).

        Between two sizes of ``potrf_blocks`` its time is interpolated as a power of the rows;
        beyond the widest it grows as ``a P^3 + b P^2`` (a blocked potrf: its updates are GEMMs,
        its panel factorizations a lower-order term) through the two widest.
        """
        flops = rows ** 3 / 3.0
        threads = max(int(threads), 1)
        if method == "ldl":
            return flops / (threads * self.rate("sytrf", rows))
        if not self.potrf_blocks:
            return flops / (threads * self.rate("potrf", rows))
        # single-thread-equivalent seconds at the calibrated sizes
        points = sorted({self.tile_size: self.tile_size ** 3 / 3.0 / self.potrf,
                         **{int(p): p ** 3 / 3.0 / r for p, r in self.potrf_blocks}}.items())
        if rows <= points[0][0]:
            return flops / (threads * self.rate("potrf", rows))
        for (p1, t1), (p2, t2) in zip(points, points[1:]):
            if rows <= p2:
                k = math.log(t2 / t1) / math.log(p2 / p1)
                return t1 * (rows / p1) ** k / threads
        if len(points) < 2:             # one size known (a published-peak profile): its rate
            p1, t1 = points[0]
            return t1 * (rows / p1) ** 3 / threads
        (p1, t1), (p2, t2) = points[-2:]
        b = (t1 * p2 ** 3 - t2 * p1 ** 3) / (p1 ** 2 * p2 ** 3 - p2 ** 2 * p1 ** 3)
        a = (t2 - b * p2 ** 2) / p2 ** 3
        if a <= 0 or b < 0:             # not a blocked potrf's shape: the widest size's rate
            return t2 * (rows / p2) ** 3 / threads
        return (a * rows ** 3 + b * rows ** 2) / threads

    def efficiency(self, distributed: bool) -> float:
        """The factor a factorization's compute, store and network terms take (``graph_efficiency``)."""
        if distributed and self.graph_efficiency_distributed is not None:
            return self.graph_efficiency_distributed
        return self.graph_efficiency

    def overhead(self, distributed: bool) -> float:
        """Scheduler seconds per task."""
        if distributed and self.task_overhead_distributed is not None:
            return self.task_overhead_distributed
        return self.task_overhead


# ------------------------------------------------------------------------------------------ named profiles
#: Profiles from published peak figures (each docstring-cited below); they predict lower bounds.
#:
#: ``h100``: one NVIDIA H100 SXM5 per worker (NVIDIA H100 Tensor Core GPU datasheet, 2023):
#: FP64 tensor-core peak 67 TFLOP/s (GEMM, and the J J^T contraction of the empirical NTK);
#: FP64 peak 34 TFLOP/s for potrf (a panel factorization does not run on tensor cores); HBM3
#: 3.35 TB/s, from which the formation costs are memory-bound estimates (5, 8 and 12 passes of
#: 16 bytes per entry for rbf, matern and a relu layer); NVLink 900 GB/s between GPUs (UCX);
#: PCIe Gen5 x16 128 GB/s both ways, 64 GB/s each way, host to device. bigspec has no GPU
#: sytrf: LDL^T's diagonal tiles are factored on the host, at one core of the DGX H100's Intel
#: Xeon Platinum 8480C (2.0 GHz x 32 FP64 flops per cycle, 64 GFLOP/s; Intel ARK). Store: the
#: DGX H100's eight NVMe U.2 drives (DGX H100 datasheet, 2023) at 7.0 GB/s read and 3.8 GB/s
#: write each (Samsung PM1733 datasheet); set ``store-read``/``store-write`` to a shared file
#: system's aggregate rates. Scheduling: 1 ms per task, the top of the 200 us - 1 ms per task
#: overhead the Dask documentation gives ("Dask Best Practices: avoid very large graphs").
#:
#: ``cpu-node``: a two-socket AMD EPYC 9654 node (AMD EPYC 9004 product brief, 2022): 2 x 96
#: Zen 4 cores at 2.4 GHz base, 16 FP64 flops per cycle (two 256-bit FMA pipes), 38.4 GFLOP/s
#: per core for GEMM, potrf and sytrf; 12 channels of DDR5-4800 per socket (921.6 GB/s per
#: node, 4.8 GB/s per core), from which the formation costs per entry are memory-bound
#: estimates as above; one PCIe Gen4 NVMe drive for the store (Samsung PM1733: 7.0 GB/s read,
#: 3.8 GB/s write); 100 Gb/s InfiniBand HDR100 (12.5 GB/s) between nodes; Dask's 200 us per
#: task threaded and 1 ms distributed.
PROFILES = {
    "h100": MachineProfile(
        name="h100", description="NVIDIA H100 SXM5 datasheet peaks, one GPU per worker",
        gemm=67e12, potrf=34e12, sytrf=64e9, potrf_blocks=((4096, 34e12),),
        store_read=8 * 7.0e9, store_write=8 * 3.8e9, network=900e9, host_device=64e9,
        task_overhead=2e-4, task_overhead_distributed=1e-3,
        formation={"rbf": 5 * 16 / 3.35e12, "matern": 8 * 16 / 3.35e12, "relu": 12 * 16 / 3.35e12},
        formation_dim=16, ntk=67e12, threads=1, tile_size=4096, device="gpu"),
    "cpu-node": MachineProfile(
        name="cpu-node", description="2 x AMD EPYC 9654 product-brief peaks, 192 cores",
        gemm=38.4e9, potrf=38.4e9, sytrf=38.4e9, potrf_blocks=((4096, 38.4e9),),
        store_read=7.0e9, store_write=3.8e9, network=12.5e9, host_device=None,
        task_overhead=2e-4, task_overhead_distributed=1e-3,
        formation={"rbf": 5 * 16 / 4.8e9, "matern": 8 * 16 / 4.8e9, "relu": 12 * 16 / 4.8e9},
        formation_dim=16, ntk=38.4e9, threads=192, tile_size=1024, device="cpu"),
}


def profile_path() -> str:
    """Where ``bigspec calibrate`` keeps its profile: ``bigspec-profile.yaml`` in the dask config
    directory (``$DASK_CONFIG``, else ``~/.config/dask``)."""
    import dask.config

    return os.path.join(os.environ.get("DASK_CONFIG") or dask.config.PATH, PROFILE_FILE)


def _from_mapping(obj, where: str) -> MachineProfile:
    if isinstance(obj, dict) and set(obj) <= {"bigspec"} and isinstance(obj.get("bigspec"), dict):
        inner = obj["bigspec"]                     # a bigspec-profile.yaml: its calibration or its named profile
        if isinstance(inner.get("calibration"), dict):
            obj = inner["calibration"]
        elif isinstance(inner.get("profile"), (str, dict)):
            return resolve_profile(inner["profile"])
    try:
        return msgspec.convert(obj, MachineProfile)
    except msgspec.ValidationError as e:
        keys = ", ".join(f.encode_name for f in msgspec.structs.fields(MachineProfile))
        raise ArgumentError(f"{arg('profile')} {where} is not a machine profile: {e}; its keys are: {keys}") from None


def resolve_profile(profile=None) -> MachineProfile | None:
    """The :class:`MachineProfile` that ``profile`` names.

    Parameters
    ----------
    profile : None, str, dict, os.PathLike or MachineProfile
        None: the dask config's ``bigspec.profile`` (a name, or a mapping of rates), else the
        calibrated profile ``bigspec.calibration`` if ``bigspec calibrate`` has stored one, else
        None (uncalibrated). ``"calibrated"``: the stored calibration. A name of
        :data:`PROFILES`. A path to a YAML file of rates. A dict of rates (kebab-case keys).

    Raises
    ------
    ArgumentError
        An unknown name, a missing file or calibration, or a bad rate (the message names it).

    Examples
    --------
    >>> resolve_profile("h100").gemm
    67000000000000.0
    """
    if isinstance(profile, MachineProfile):
        return profile
    if profile is None:
        chosen = config.get("profile", None)
        if chosen is None:
            stored = config.get("calibration", None)
            return _from_mapping(stored, "in the dask config (bigspec.calibration)") if stored else None
        return resolve_profile(chosen)
    if isinstance(profile, dict):
        return _from_mapping(profile, "(a dict)")
    if isinstance(profile, os.PathLike) or isinstance(profile, str) and (
            profile.endswith((".yaml", ".yml", ".json")) or os.sep in profile):
        path = os.fspath(profile)
        if not os.path.isfile(path):
            raise ArgumentError(f"{arg('profile', path)}: no such file; give a YAML file of rates, or one of "
                                f"{_names()}")
        import yaml

        with open(path) as f:
            return _from_mapping(yaml.safe_load(f), f"in {path}")
    if not isinstance(profile, str):
        raise ArgumentTypeError(f"{arg('profile')} must be a name ({_names()}), a dict of rates or a YAML file, "
                                f"got {type(profile).__name__}")
    if profile == "calibrated":
        stored = config.get("calibration", None)
        if not stored:
            raise ArgumentError(f"{arg('profile', 'calibrated')}: this machine has no calibrated profile (none in "
                                f"{profile_path()}); measure one with "
                                + opt("bigspec.calibrate()", "`bigspec calibrate`")
                                + f", or name a published one ({', '.join(map(repr, PROFILES))})")
        return _from_mapping(stored, "in the dask config (bigspec.calibration)")
    if profile in PROFILES:
        return PROFILES[profile]
    import difflib

    close = difflib.get_close_matches(profile, [*PROFILES, "calibrated"], n=1)
    raise ArgumentError(f"{arg('profile', profile)} is not a known machine profile"
                        + (f" (did you mean {close[0]!r}?)" if close else "")
                        + f"; use one of {_names()}, a dict of rates or a YAML file of them")


def _names() -> str:
    return ", ".join(repr(n) for n in ["calibrated", *PROFILES])


# ------------------------------------------------------------------------------------------ the prediction
#: names of the terms, as the plan's report says them
TERMS = {"compute": "compute", "formation": "kernel formation", "store_read": "store reads",
         "store_write": "store writes", "network": "network", "host_device": "host-device",
         "scheduling": "scheduling"}


@dataclass(frozen=True)
class Prediction:
    """Predicted seconds of a plan on a machine profile, term by term.

    ``terms``: seconds of each term (``compute`` or ``formation``, ``store_read``,
    ``store_write``, ``network``, ``host_device``, ``scheduling``) summed over the plan;
    ``bottleneck``: the largest; ``tasks_per_compute_second``: the plan's tasks per second of
    its compute term (how fast the scheduler must hand out tasks to keep the threads busy).
    """

    seconds: float
    terms: dict
    bottleneck: str
    profile: str
    tasks_per_compute_second: float
    panels: tuple = field(default=(), repr=False)

    def to_dict(self) -> dict:
        return {"predicted_seconds": self.seconds, "predicted_terms": dict(self.terms),
                "bottleneck": self.bottleneck, "profile": self.profile,
                "tasks_per_compute_second": self.tasks_per_compute_second}

    def describe(self) -> str:
        """One line: ``predicted: 41 s (compute 35 s, store reads 4 s, ...; bottleneck: compute) with ...``."""
        return describe_summary(self.to_dict())


def describe_summary(s: dict) -> str:
    """A plan summary's ``predicted: ...`` line, or (uncalibrated) how to get one, in
    :func:`bigspec.errors.opt` markup."""
    if s.get("predicted_note"):
        return f"predicted: none ({s['predicted_note']})"
    if s.get("predicted_seconds") is None:
        return UNCALIBRATED
    seconds, terms = s["predicted_seconds"], s["predicted_terms"]
    shown = [(k, v) for k, v in sorted(terms.items(), key=lambda kv: -kv[1]) if v >= 0.005 * seconds]
    parts = ", ".join(f"{TERMS.get(k, k)} {format_seconds(v)}" for k, v in shown)
    return (f"predicted: {format_seconds(seconds)} ({parts}; bottleneck: {TERMS.get(s['bottleneck'])}) "
            f"with {s['profile']}")


def format_seconds(s: float) -> str:
    """Seconds in words: ``0.42 s``, ``41 s``, ``3.2 min``, ``5.1 h``, ``2.3 days``."""
    if s < 10:
        return f"{s:.2g} s" if s < 1 else f"{s:.1f} s"
    if s < 120:
        return f"{s:.0f} s"
    if s < 7200:
        return f"{s / 60:.1f} min"
    if s < 172800:
        return f"{s / 3600:.1f} h"
    return f"{s / 86400:.1f} days"


UNCALIBRATED = ("uncalibrated: no predicted time; measure this machine with "
                + opt("bigspec.calibrate()", "`bigspec calibrate`") + " or pass a machine profile ("
                + opt("profile='h100'", "--profile h100") + ")")


def predict(plan, profile=None) -> Prediction | None:
    """Predicted seconds of ``plan`` on the machine ``profile`` describes.

    Parameters
    ----------
    plan : Plan, FormPlan or dict
        A logdet plan (:func:`bigspec.plan_logdet`; each super-panel is predicted from its own
        graph's counts), a formation plan (``bigspec.form(..., dry_run=True)``), or either one's
        ``summary()`` (a logdet summary is predicted as one panel of its totals).
    profile : optional
        As :func:`resolve_profile` (default: the dask config's, else the calibrated one).

    Returns
    -------
    Prediction or None
        None when no profile is given and none is calibrated.

    Raises
    ------
    ArgumentError
        An unknown profile, or a bad rate in it; a formation plan of a kernel the profile has
        no formation cost for.
    """
    prof = resolve_profile(profile)
    if prof is None:
        return None
    if isinstance(plan, dict):
        summary, panels = plan, None
    else:
        summary, panels = plan.summary(), getattr(plan, "panel_costs", None)
    if summary.get("verb") == "form":
        return _predict_form(summary, prof)
    return _predict_logdet(plan if panels is not None else None, summary, prof)


def _panel_terms(prof, *, flops, blocks, read, write, tasks, method, threads, workers, distributed,
                 tile, scan=0) -> dict:
    """The terms of one super-panel; ``blocks``: (rows, rows below it, how many) of its diagonal blocks."""
    per_worker = max(threads // max(workers, 1), 1)
    if not distributed and workers <= 1:
        # the threaded scheduler: BLAS gets the cores its task threads leave (the profile's threads)
        threads = per_worker = max(threads, prof.threads)
    factor = sum(count * P ** 3 / 3.0 for P, _, count in blocks)
    solve = sum(count * below * P * P for P, below, count in blocks)
    compute = (max(flops - factor - solve, 0.0) / (threads * prof.rate("gemm", tile))
               + solve / (threads * prof.rate("trsm-ldl" if method == "ldl" else "trsm", tile)))
    compute += scan / (threads * (prof.scan or prof.store_write))   # L tiles kept in memory: max|L| of each
    for P, _, count in blocks:
        if P <= tile or method == "ldl":    # tile tasks, among the others
            compute += count * P ** 3 / 3.0 / (threads * prof.rate("sytrf" if method == "ldl" else "potrf", P))
        else:                               # one LAPACK call on one worker
            compute += count * prof.factor_seconds(method, P, per_worker)
    tile_bytes = 8.0 * tile * tile
    eff = prof.efficiency(distributed)
    terms = {"compute": eff * compute,
             "store_read": eff * (read / prof.store_read + read / tile_bytes * prof.store_read_tile),
             "store_write": eff * (write / prof.store_write + write / tile_bytes * prof.store_write_tile),
             "scheduling": tasks * prof.overhead(distributed)}
    if workers > 1 and prof.network:
        # each tile kernel's inputs (3 tiles per 2 b^3 flops of an update) are on another worker with
        # probability 1 - 1/workers; every worker receives its share
        moved = (1 - 1 / workers) * 12.0 * max(flops - factor, 0.0) / tile
        terms["network"] = eff * moved / (workers * prof.network)
    if prof.device == "gpu" and prof.host_device:
        terms["host_device"] = (read + write) / (max(workers, 1) * prof.host_device)
    return terms


def _finish(panels: list, prof: MachineProfile, tasks: int, main: str) -> Prediction:
    terms: dict = {}
    for t in panels:
        for k, v in t.items():
            terms[k] = terms.get(k, 0.0) + v
    seconds = sum(terms.values())
    bottleneck = max(terms, key=terms.get) if terms else main
    rate = tasks / terms[main] if terms.get(main) else 0.0
    return Prediction(seconds, terms, bottleneck, prof.label(), rate, tuple(panels))


def _predict_logdet(plan, s: dict, prof: MachineProfile) -> Prediction:
    workers, threads = int(s.get("workers", 1)), int(s.get("threads", 1))
    distributed = bool(s.get("distributed", workers > 1))
    common = dict(method=s.get("method", "ldl"), threads=threads, workers=workers, distributed=distributed,
                  tile=int(s.get("tile_size", prof.tile_size)))
    panels = []
    if plan is not None and plan.panels:
        for cost, blocks in zip(plan.panel_costs, diagonal_blocks(plan)):
            # a panel that writes no factor (in memory) still takes max|L| of each of its L tiles
            scan = 0 if cost.written else cost.read_matrix * 8 // max(int(plan.storage_itemsize), 1)
            panels.append(_panel_terms(prof, flops=cost.flops, blocks=[(P, plan.n - r0 - P, 1) for r0, P in blocks],
                                       read=cost.read_matrix + cost.read_factor, write=cost.written,
                                       tasks=cost.tasks, scan=scan, **common))
    elif s.get("tasks"):
        b = int(s.get("tile_size", prof.tile_size))
        P = int(s.get("factor_block") or b)
        fl = s.get("factor_flops")
        if fl is None:   # a summary without its diagonal blocks: one tile each, nothing solved below them
            fl = (int(s["n"]) * b * b / 3.0) if s.get("n") else 0.0
        count = float(fl) / (P ** 3 / 3.0)
        below = float(s.get("solve_flops", 0.0)) / (count * P * P) if count else 0.0
        panels.append(_panel_terms(prof, flops=float(s.get("flops", 0.0)), blocks=[(P, below, count)],
                                   read=int(s.get("bytes_read_matrix", 0)) + int(s.get("bytes_read_factor", 0)),
                                   write=int(s.get("bytes_written", 0)), tasks=int(s["tasks"]), **common))
    return _finish(panels, prof, int(s.get("tasks", 0)), "compute")


def plan_prediction(plan, counts: dict) -> dict:
    """The keys a logdet plan's summary gains: its diagonal blocks' flops and the flops solved
    against them, and the prediction with ``plan.profile`` (None: the dask config's) or,
    uncalibrated, None. A bad profile in the dask config leaves the plan without a prediction
    (``predicted_note`` says why) rather than failing it: a given one was checked when it was given.
    """
    blocks = [(r0, P) for panel in diagonal_blocks(plan) for r0, P in panel]
    out = {"distributed": bool(plan.pure), "factor_flops": sum(P ** 3 / 3.0 for _, P in blocks),
           "factor_block": max((P for _, P in blocks), default=0),
           "solve_flops": float(sum((plan.n - r0 - P) * P * P for r0, P in blocks)),
           "predicted_seconds": None, "predicted_terms": None, "bottleneck": None, "profile": None,
           "tasks_per_compute_second": None}
    try:
        prof = resolve_profile(plan.profile)
    except (ArgumentError, ArgumentTypeError) as e:
        out["predicted_note"] = e.template
        return out
    if prof is not None:
        out.update(_predict_logdet(plan, {**counts, **out}, prof).to_dict())
    return out


def diagonal_blocks(plan) -> list:
    """(first row, rows) of each diagonal block (pivot group) each planned super-panel factors, one
    list per panel.

    The blocks are the panel's pivot groups as first factored (``plan.first_group``: one tile
    unless Cholesky's coarse tasks take a wider block), ``P^3 / 3`` flops each, and the rows
    below a block are solved against it (``P^2`` flops per row).
    """
    b, n = plan.tile_size, plan.n
    out = []
    first_group = getattr(plan, "first_group", None)
    for k0, k1 in plan.panels:
        g = max(int(first_group(k0, k1)), 1) if first_group is not None else 1
        out.append([(g0 * b, min(min(g0 + g, k1) * b, n) - g0 * b) for g0 in range(k0, k1, g)])
    return out


def form_entries(n_rows: int, tile_size: int, tiles) -> int:
    """Matrix entries of the lower tiles ``tiles`` ((i, j) pairs) of an n-row matrix."""
    def rows(i):
        return min(tile_size, n_rows - i * tile_size)

    return int(sum(rows(i) * rows(j) for i, j in tiles))


def formation_cost(prof: MachineProfile, kernel: dict, features: int) -> float:
    """Seconds per entry per task thread of forming ``kernel`` (its spec: name, params) on data of
    ``features`` numbers per point (the empirical NTK's is :func:`ntk_formation_seconds`)."""
    name = kernel.get("name")
    params = kernel.get("params") or {}
    if name == "ntk":
        if not prof.ntk:
            raise ArgumentError(f"{prof.label()} has no rate for the empirical NTK (ntk): calibrate with torch "
                                f"installed, or add an ntk rate (flop/s) to the profile")
        return 2.0 * float(params.get("n_parameters", 0)) / prof.ntk
    if name not in prof.formation:
        known = ", ".join(sorted(prof.formation)) or "none"
        raise ArgumentError(f"{prof.label()} has no formation cost for the kernel {name!r} (it has: {known}); add "
                            f"formation: {{{name}: SECONDS_PER_ENTRY}} to the profile")
    cost = prof.formation[name]
    if name == "relu":
        cost *= int(params.get("depth", 2)) + 1
    return cost + 2.0 * max(features - prof.formation_dim, 0) / prof.gemm


def ntk_formation_seconds(prof: MachineProfile, s: dict) -> float:
    """Seconds of forming a formation plan's (summary ``s``) tiles of the empirical NTK.

    Each tile of ``spt`` samples per side (``tile_size / n_outputs``) contracts sub-batches of
    ``batch_size`` samples, padded: ``ceil(spt / batch_size)^2`` pairs, each ``2 P`` flops per
    entry of its padded block (``P`` parameters) and ``ntk-pair`` seconds of its own; and each
    worker computes the Jacobians of the samples its tiles touch (all of them) once, once per
    parameter group with ``parameter_chunk`` (each group's pass costs about a whole one: at
    least ``ceil(P / parameter_chunk)`` of them).
    """
    kernel = s.get("kernel") or {}
    params = kernel.get("params") or {}
    d, P = int(kernel.get("n_outputs", 1)), float(params.get("n_parameters", 0))
    bs = int(params.get("batch_size", 8))
    workers, threads = int(s.get("workers", 1)), int(s.get("threads", 1))
    tiles = int(s.get("tiles_to_form", 0))
    spt = int(s.get("tile_size", d)) // d
    batches = -(-spt // bs)
    per_entry = formation_cost(prof, kernel, 0)              # 2 P / ntk (an error without an ntk rate)
    per_tile = (batches * bs * d) ** 2 * per_entry + batches ** 2 * (prof.ntk_pair or 0.0)
    chunk = params.get("parameter_chunk")
    groups = max(1, math.ceil(P / int(chunk))) if chunk else 1
    jacobians = int(s.get("n_samples", 0)) * d * P * (prof.ntk_jacobian or 0.0) * workers * groups
    return (tiles * per_tile + jacobians) / threads


def _predict_form(s: dict, prof: MachineProfile) -> Prediction:
    workers, threads = int(s.get("workers", 1)), int(s.get("threads", 1))
    kernel = s.get("kernel") or {}
    entries = int(s.get("entries", 0))
    if kernel.get("name") == "ntk":
        formation = ntk_formation_seconds(prof, s) if entries else 0.0
    else:
        formation = (entries * formation_cost(prof, kernel, int(s.get("features", 1)))
                     + int(s.get("tasks", 0)) * prof.formation_tile) / threads
    written = s.get("bytes_written", 0)
    terms = {"formation": formation,
             "store_write": written / prof.store_write + int(s.get("tasks", 0)) * prof.store_write_tile,
             "scheduling": int(s.get("tasks", 0)) * prof.overhead(bool(s.get("distributed", workers > 1)))}
    if prof.device == "gpu" and prof.host_device:
        terms["host_device"] = s.get("bytes_written", 0) / (max(workers, 1) * prof.host_device)
    return _finish([terms], prof, int(s.get("tasks", 0)), "formation")


def form_prediction(profile, counts: dict) -> dict:
    """The keys a formation plan's summary gains: the prediction with ``profile`` (None: the dask
    config's), or None; ``predicted_note`` says why there is none where the profile lacks the
    kernel's formation cost."""
    out = dict(predicted_seconds=None, predicted_terms=None, bottleneck=None, profile=None,
               tasks_per_compute_second=None)
    try:
        prof = resolve_profile(profile)
        if prof is not None:
            out.update(_predict_form(counts, prof).to_dict())
    except (ArgumentError, ArgumentTypeError) as e:
        out["predicted_note"] = e.template
    return out


# ------------------------------------------------------------------------------------------ calibration
def calibrate(*, tile_size: int | None = None, client=None, quick: bool = False, kernels=("rbf", "matern", "relu", "ntk"),
              store_dir: str | None = None, save: bool = True, overwrite: bool = False, seconds: float | None = None,
              threads: int | None = None) -> MachineProfile:
    """Measure this machine's rates for :func:`predict` and keep them in the dask config.

    A short measurement (about half a minute; ``quick``: a few seconds, for tests), of
    bigspec's own tile kernels and tasks rather than of bare BLAS calls:

    * the factorization's tile kernels (:mod:`bigspec.determinant.tiles`: GEMM update, potrf and
      sytrf of a diagonal tile, the solve below it, LDL^T's solve with its D^-1, growth statistics
      and D-scaled copy) on tiles of ``tile_size`` rows, and of half and twice that, every task
      thread running one at once (BLAS threads as the runner leaves them, ``bigspec.blas-threads``);
      Cholesky of blocks of 2, 4 and 8 tiles alone (a wide diagonal block);
    * reads and writes of tiles of a temporary matrix store (its codecs, ``bigspec.compression``;
      a write takes max|L|, a read copies and checks its tile, as the tasks do), at two tile sizes
      for each chunk's own cost, and a pass over a tile in memory;
    * the scheduler's seconds per task on Dask's threaded scheduler and, given ``client``, on the
      cluster, with the rate at which a worker receives tile updates' inputs from another;
    * forming a tile (:func:`bigspec.form.form_tile`, its data rows read from Zarr, its write left
      to the store's rate) of rbf, matern and relu, per entry and per tile; the empirical NTK of a
      small MLP with torch (its contraction, its calls per pair of sub-batches, its Jacobians).

    A measurement that other processes disturbed (threaded BLAS slows down by orders of
    magnitude when another process takes a core its threads wait on) is made again, up to
    three times; a profile still measured on a busy machine says so in its description, with
    a :class:`~bigspec.errors.BigspecWarning`.

    Parameters
    ----------
    tile_size : int, optional
        Tile edge of the measurements (default ``bigspec.tile-size``; quick: 128).
    client : distributed.Client, optional
        Also measure the cluster's scheduling overhead and network bandwidth.
    quick : bool
        Tiny sizes and durations (rates of a smoke test, not of the machine).
    kernels : tuple of str
        Kernels whose formation cost is measured ("ntk" is skipped without torch).
    store_dir : str, optional
        Where the temporary store goes (default: the system's temporary directory); give a
        directory on the storage your stores live on.
    save : bool
        Write the profile to :func:`profile_path` and set it in this process's dask config.
    overwrite : bool
        Replace a profile file that exists (else :class:`StoreExistsError`, before measuring).
    seconds : float, optional
        Time spent on each rate (default 0.5; quick 0.05).
    threads : int, optional
        Task threads (default: one per core, as the threaded scheduler).

    Returns
    -------
    MachineProfile
        Named "calibrated", its description the host and date.

    Examples
    --------
    >>> from bigspec.perfmodel import calibrate
    >>> prof = calibrate(quick=True, save=False, kernels=("rbf",))
    >>> prof.gemm > 0 and prof.formation["rbf"] > 0
    True
    """
    from .store import check_tile_size
    from .validate import check_flag

    quick, save, overwrite = check_flag(quick, "quick"), check_flag(save, "save"), check_flag(overwrite, "overwrite")
    b = check_tile_size(tile_size if tile_size is not None else (128 if quick else config.get("tile-size", 1024)))
    per = float(seconds if seconds is not None else (0.05 if quick else 0.5))
    T = int(threads or os.cpu_count() or 1)
    path = profile_path()
    if save:
        check_profile_writable(path, overwrite)
    _LOADS.clear()
    from threadpoolctl import threadpool_limits

    blas = config.get("blas-threads", None)            # as the runner sets them on the threaded scheduler
    with threadpool_limits(blas, user_api="blas") if blas else contextlib.nullcontext():
        logger.info("calibrating: tile kernels (GEMM, potrf, sytrf, solves) on %d threads, tiles of %d", T, b)
        rates = _blas_rates(b, T, per, quick)
        others = () if quick else (b // 2, 2 * b)
        tile_rates = tuple((size, {k.replace("_", "-"): v for k, v in _blas_rates(size, T, per / 2, True,
                                                                                   blocks=False).items()})
                           for size in others if size >= 32)

    def store_at(size):
        return _undisturbed(lambda: _store_rates(size, T, per, quick, store_dir), better=lambda r, key: max(
            r, key=lambda vb: vb[0]["read"] + vb[0]["write"]))

    logger.info("calibrating: store reads and writes")
    store, half = store_at(b), store_at(b // 2)        # a chunk's own cost, from two tile sizes
    (store["read"], read_tile), (store["write"], write_tile) = (_per_tile(b, store[k], half[k])
                                                                  for k in ("read", "write"))
    logger.info("calibrating: scheduler overhead, then kernel formation (%s)", ", ".join(kernels))
    overhead = _undisturbed(lambda: task_overhead(None, T, 300 if quick else 3000), better=min)
    formation, dim, ntk, formation_tile = _formation_rates(b, T, per, quick, kernels)
    ntk = {**{"ntk": None, "ntk_pair": None, "ntk_jacobian": None}, **ntk}
    host = platform.node() or "this machine"
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    prof = MachineProfile(
        name="calibrated", description=f"{host}, {when}" + (", quick" if quick else ""),
        gemm=rates["gemm"], potrf=rates["potrf"], sytrf=rates["sytrf"], trsm=rates["trsm"],
        trsm_ldl=rates["trsm_ldl"], potrf_blocks=tuple(rates["potrf_blocks"]), tile_rates=tile_rates,
        store_read=store["read"], store_write=store["write"], store_read_tile=read_tile,
        store_write_tile=write_tile, scan=store["scan"] / T,
        task_overhead=overhead, formation=formation, formation_dim=dim, formation_tile=formation_tile, **ntk,
        threads=T, tile_size=b, host_device=_host_device_rate(quick))
    from .cluster import current_client

    if current_client() is None:       # a small exact logdet on the threaded scheduler, against its parts
        logger.info("calibrating: a small factorization against the sum of its parts")
        prof = msgspec.structs.replace(prof, graph_efficiency=_graph_efficiency(prof, None, b, quick, store_dir))
    if client is not None:
        prof = calibrate_cluster(prof, client, quick=quick, store_dir=store_dir)
    prof = _noted(prof)
    if save:
        save_profile(prof, overwrite=True, path=path)
    return prof


def _noted(prof: MachineProfile) -> MachineProfile:
    """``prof`` with a busy machine noted in its description (and a warning), from ``_LOADS``."""
    busy = max(_LOADS, default=None)
    if busy is None or busy <= BUSY_CORES or "busy:" in prof.description:
        return prof
    warnings.warn(f"while bigspec calibrated, other processes used {busy:.2f} of this machine's "
                  f"{os.cpu_count()} cores: the rates may be low; calibrate again when it is quiet "
                  f"({arg('overwrite', True)})", BigspecWarning, stacklevel=3)
    return msgspec.structs.replace(prof, description=f"{prof.description}, busy: other processes used {busy:.2f} "
                                                     f"cores")


def calibrate_cluster(profile: MachineProfile, client, *, quick: bool = False, store_dir: str | None = None,
                      save: bool = False, overwrite: bool = False) -> MachineProfile:
    """``profile`` (of :func:`calibrate`) with the rates of the cluster behind ``client``: the
    distributed scheduler's seconds per task, the rate at which a worker receives tile updates'
    inputs from another (two workers or more), and the efficiency of a small exact logdet on it
    (its seconds against the model's sum of its parts).

    The BLAS, store and formation rates stay this machine's: for a remote cluster, calibrate on
    one of its nodes. ``save``/``overwrite`` as for :func:`calibrate`.
    """
    T = int(profile.threads)
    path = profile_path()
    if save:
        check_profile_writable(path, overwrite)
    b = int(profile.tile_size)
    logger.info("calibrating the cluster: its scheduler, transfers between workers, a small factorization")
    overhead = _undisturbed(lambda: task_overhead(client, T, 200 if quick else 1500), better=min, children=True)
    prof = msgspec.structs.replace(profile, task_overhead_distributed=overhead,
                                   network=network_bandwidth(client, b, quick), graph_efficiency_distributed=1.0)
    prof = msgspec.structs.replace(prof, graph_efficiency_distributed=_graph_efficiency(prof, client, b, quick,
                                                                                        store_dir))
    if save:
        save_profile(_noted(prof), overwrite=True, path=path)
    return prof


def _graph_efficiency(prof: MachineProfile, client, b: int, quick: bool, store_dir: str | None) -> float:
    """Measured over predicted seconds of a small exact Cholesky (4 tiles a side, in memory and with
    half of it, the best of two runs each; geometric mean), on ``client`` or the threaded scheduler:
    what tasks running side by side cost each other (threads sharing cores and memory bandwidth,
    BLAS threads waiting on busy cores), which the sum of separately measured parts leaves out."""
    import shutil
    import tempfile

    import numpy as np

    from .determinant import logdet, plan_logdet
    from .form import form

    n = 4 * b
    tmp = tempfile.mkdtemp(prefix="bigspec-calibrate-", dir=store_dir)
    ratios = []
    try:
        X = np.random.default_rng(5).standard_normal((n, 16))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ms = form("rbf", X, f"{tmp}/K.zarr", tile_size=b, client=client, progress=False, shuffle=False)
            for memory in (64 * n * n, n * n * 4):
                opts = dict(method="cholesky", memory=memory, shift=1e-3, checkpoint=False, client=client)
                try:
                    plan = plan_logdet(ms, profile=prof, **opts)
                except Exception:          # a budget that does not fit these tiles: the other one will
                    continue
                best = math.inf
                for _ in range(2):
                    t0 = time.perf_counter()
                    logdet(ms, progress=False, **opts)
                    best = min(best, time.perf_counter() - t0)
                ratios.append(best / predict(plan, prof).seconds)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if not ratios:
        return 1.0
    return float(min(max(math.exp(sum(map(math.log, ratios)) / len(ratios)), 0.5), 4.0))


def check_profile_writable(path: str, overwrite: bool) -> None:
    """Refuse (:class:`StoreExistsError`) to replace the profile file at ``path`` unless ``overwrite``."""
    if os.path.exists(path) and not overwrite:
        held = _describe_file(path)
        raise StoreExistsError(f"a machine profile exists at {path}{held}; pass {arg('overwrite', True)} to "
                               f"replace it", store=path)


def _describe_file(path: str) -> str:
    try:
        import yaml

        with open(path) as f:
            data = (yaml.safe_load(f) or {}).get("bigspec", {})
        cal = data.get("calibration") or {}
        if cal:
            return f" (calibrated: {cal.get('description', '')})"
        return f" (profile: {data.get('profile')!r})" if data.get("profile") else ""
    except Exception:
        return ""


def save_profile(profile, *, overwrite: bool = False, path: str | None = None) -> str:
    """Write ``profile`` (a :class:`MachineProfile`: the calibration; or a name or file of
    :func:`resolve_profile`: the default) to :func:`profile_path`, and set it in this process's
    dask config; return the path.

    Raises
    ------
    StoreExistsError
        The file exists and ``overwrite`` is not given.
    """
    import dask.config
    import yaml

    path = path or profile_path()
    check_profile_writable(path, overwrite)
    if isinstance(profile, MachineProfile):
        section = {"profile": None, "calibration": profile.to_dict()}
        head = f"# written by `bigspec calibrate` ({profile.description})\n"
    else:
        resolved = resolve_profile(profile)               # checked before it is written
        named = profile if isinstance(profile, str) and profile in (*PROFILES, "calibrated") else resolved.to_dict()
        section = {"profile": named}
        head = f"# written by `bigspec calibrate --profile {profile}`: the machine profile plans use\n"
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.write(head)
        yaml.safe_dump({"bigspec": section}, f, sort_keys=False)
    os.replace(tmp, path)
    dask.config.set({f"bigspec.{k}": v for k, v in section.items()})
    return path


#: cores used by other processes during a calibration above which it warns that its rates may be low
BUSY_CORES = 0.25


class _OtherLoad:
    """CPU that other processes use from now on (Linux /proc/stat less this process)."""

    def __init__(self, children: bool = False):
        self.children = children          # a local cluster's workers are this process's, or others (idle)
        self.start = self._now()

    def _now(self):
        try:
            import psutil

            with open("/proc/stat") as f:
                vals = [int(v) for v in f.readline().split()[1:9]]
            busy = (sum(vals) - vals[3] - vals[4]) / os.sysconf("SC_CLK_TCK")
            me = psutil.Process()
            own = 0.0
            for proc in [me, *(me.children(recursive=True) if self.children else ())]:
                try:
                    t = proc.cpu_times()
                    own += t.user + t.system
                except psutil.Error:
                    pass
            return busy, own, time.perf_counter()
        except (OSError, ValueError, ImportError, AttributeError):
            return None

    def cores(self) -> float | None:
        end = self._now()
        if self.start is None or end is None:
            return None
        return max(0.0, (end[0] - self.start[0]) - (end[1] - self.start[1])) / max(end[2] - self.start[2], 1e-9)


#: the other processes' load (cores) during each measurement calibrate kept
_LOADS: list = []


def _undisturbed(measure, better=max, tries: int = 3, children: bool = False):
    """``measure()``, again (up to ``tries`` times) while other processes used more than
    :data:`BUSY_CORES` cores meanwhile; the best result (``better``) is kept, and the load during
    it noted in ``_LOADS``. Threaded BLAS calls slow down by orders of magnitude when another
    process takes a core their threads wait on, so a disturbed measurement is not the machine's."""
    results = []
    for _ in range(tries):
        load = _OtherLoad(children)
        value = measure()
        busy = load.cores()
        results.append((value, busy or 0.0))
        if busy is None or busy <= BUSY_CORES:
            break
    value, busy = better(results, key=lambda vb: vb[0])
    _LOADS.append(busy)
    return value


def _concurrently(make, threads: int, seconds: float, per_call, min_calls: int = 3) -> float:
    """Aggregate units per second of ``threads`` threads each calling its own ``make()()`` at once,
    for about ``seconds`` and at least ``min_calls`` times (``per_call``: units of one call).

    Each thread's rate is its calls per second after one warm-up call (while they overlap, the
    threads share the cores as a graph's tasks do); measured again where other processes
    disturbed it (:func:`_undisturbed`).
    """
    return _undisturbed(lambda: _concurrent_rate(make, threads, seconds, per_call, min_calls))


def _concurrent_rate(make, threads, seconds, per_call, min_calls):
    from concurrent.futures import ThreadPoolExecutor

    def worker(_):
        fn = make()
        fn()
        calls, t0 = 0, time.perf_counter()
        while (calls < min_calls or time.perf_counter() - t0 < seconds) and \
                not (calls and time.perf_counter() - t0 > 3 * seconds):     # slow calls: fewer of them
            fn()
            calls += 1
        return calls / (time.perf_counter() - t0)

    with ThreadPoolExecutor(threads) as ex:
        return per_call * sum(ex.map(worker, range(threads)))


def _blas_rates(b: int, T: int, seconds: float, quick: bool, blocks: bool = True) -> dict:
    """Per-thread rates of the factorization's tile kernels (:mod:`bigspec.determinant.tiles`, as its
    tasks call them, in place on a tile of the task's own), ``T`` of them at once, BLAS threads as
    the runner leaves them (``bigspec.blas-threads``, else the library's)."""
    import numpy as np

    from .determinant import tiles

    rng = np.random.default_rng(0)

    def spd(m):
        A = rng.standard_normal((m, m))
        return A @ A.T + m * np.eye(m)

    S = spd(b)
    below = rng.standard_normal((b, b))
    factors = {m: tiles.factor_diagonal(S.copy(), m) for m in ("cholesky", "ldl")}

    def in_place(call, source):
        """A kernel of ``call(work)`` on a copy of ``source`` (the task's own tile)."""
        def make():
            work = np.empty_like(source)

            def run():
                np.copyto(work, source)
                return call(work)
            return run
        return make

    def gemm():
        L_i, LD_j, C = rng.standard_normal((b, b)), rng.standard_normal((b, b)), np.zeros((b, b))
        return lambda: tiles.update(C, L_i, LD_j, False, True)

    def ldl_below(work):                      # LDL^T's work per tile below the diagonal block
        F = factors["ldl"]
        X = tiles.solve_below(work, F)
        tiles.growth_rows(X, F.majorant)
        float(np.max(np.abs(X)))
        return tiles.scale_by_D(X, F.D)

    cube = float(b) ** 3
    out = {"gemm": _concurrently(gemm, T, seconds, 2.0 * cube) / T,
           "potrf": _concurrently(in_place(lambda w: tiles.factor_diagonal(w, "cholesky"), S), T, seconds,
                                  cube / 3.0) / T,
           "sytrf": _concurrently(in_place(lambda w: tiles.factor_diagonal(w, "ldl"), S), T, seconds, cube / 3.0) / T,
           "trsm": _concurrently(in_place(lambda w: tiles.solve_below(w, factors["cholesky"]), below), T, seconds,
                                 cube) / T,
           "trsm_ldl": _concurrently(in_place(ldl_below, below), T, seconds, cube) / T}
    if not blocks:
        return out
    blocks = []
    for size in ((2 * b, 4 * b) if quick else (2 * b, 4 * b, 8 * b)):   # one LAPACK call alone, every BLAS thread
        big = spd(size)
        calls = 3 if size * size * 8 <= 2**28 else 1   # the widest (half a GiB at b = 1024): one timed call
        blocks.append((size, _concurrently(in_place(lambda w: tiles.factor_diagonal(w, "cholesky"), big), 1,
                                           0.0 if calls == 1 else seconds / 2, size ** 3 / 3.0, min_calls=calls) / T))
        del big
    out["potrf_blocks"] = blocks
    return out


def _store_rates(b: int, T: int, seconds: float, quick: bool, store_dir: str | None) -> dict:
    """Aggregate bytes per second of ``T`` threads writing and reading tiles of ``b`` rows of a
    temporary matrix store (:func:`bigspec.store.create_matrix`: the chunks and codecs of the stores
    bigspec writes), and of passes over a tile in memory."""
    import shutil
    import tempfile
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np
    import zarr

    from .store import create_matrix

    tiles = max(2 * T, 8 if quick else int(min(512 * 2**20, max(seconds, 0.1) * 1e9) // (8 * b * b)))
    grid = math.isqrt(tiles - 1) + 1
    tmp = tempfile.mkdtemp(prefix="bigspec-calibrate-", dir=store_dir)
    try:
        arr = create_matrix(zarr.open_group(tmp, mode="w"), grid * b, b, "float64").matrix
        tile = np.random.default_rng(1).standard_normal((b, b))
        coords = [(i, j) for i in range(grid) for j in range(i + 1)]
        coords = (coords * (-(-tiles // len(coords))))[:tiles] if len(coords) < tiles else coords[:tiles]

        # as the factorization's tasks do: a write also takes max|L| of its tile; a read copies the
        # tile into a fresh float64 array and checks that it is finite (an unwritten tile is NaN)
        def write(c):
            float(np.max(np.abs(tile)))
            arr[c[0] * b:(c[0] + 1) * b, c[1] * b:(c[1] + 1) * b] = tile

        def read(c):
            T = np.array(arr[c[0] * b:(c[0] + 1) * b, c[1] * b:(c[1] + 1) * b], dtype=np.float64, order="C",
                         copy=True)
            return bool(np.isfinite(T).all())

        def scan(c):
            return float(np.max(np.abs(tile)))

        out = {}
        with ThreadPoolExecutor(T) as ex:
            for name, fn in (("write", write), ("read", read), ("scan", scan)):
                list(ex.map(fn, coords[:T]))             # warm: the first chunks, metadata
                t0 = time.perf_counter()
                list(ex.map(fn, coords))
                out[name] = len(coords) * 8.0 * b * b / (time.perf_counter() - t0)
        return out
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _per_tile(b: int, rate_b: float, rate_half: float) -> tuple[float, float]:
    """(bytes per second, seconds per tile) of an operation on tiles whose time is ``c + bytes / bw``,
    from its rates on tiles of ``b`` and ``b / 2`` rows."""
    t_b, t_half = 8.0 * b * b / rate_b, 2.0 * b * b / rate_half
    c = (4 * t_half - t_b) / 3
    if c <= 0 or c >= t_b:
        return rate_b, 0.0
    return 8.0 * b * b / (t_b - c), c


def _noop(*args):
    return None


def task_overhead(client, threads: int, tasks: int) -> float:
    """Seconds per task of running a graph of ``tasks`` trivial tasks (chains of 10) through bigspec's
    runner: on Dask's threaded scheduler with ``threads`` threads, or on ``client``."""
    import uuid

    from .runner import Runner

    def graph(chains):
        name = f"bigspec-calibrate-{uuid.uuid4().hex[:8]}"      # fresh keys: nothing cached on a cluster
        dsk = {}
        for c in range(chains):
            dsk[(name, c, 0)] = (_noop,)
            for k in range(1, 10):
                dsk[(name, c, k)] = (_noop, (name, c, k - 1))
        return dsk, [(name, c, 9) for c in range(chains)]

    with Runner(client, progress=False, threads=threads) as runner:
        runner.run(*graph(2))                                   # warm up the pool, or the workers
        dsk, keys = graph(max(tasks // 10, 1))
        t0 = time.perf_counter()
        runner.run(dsk, keys)
        return (time.perf_counter() - t0) / len(dsk)


def _tile(seed, b):
    import numpy as np

    return np.random.default_rng(seed).standard_normal((b, b))


def _update(T, L_i, L_j):
    return T - L_i @ L_j.T          # a tile update that copies its tile (as tasks do on a cluster)


def network_bandwidth(client, tile: int = 1024, quick: bool = False) -> float | None:
    """Bytes per second that tile updates on one worker of ``client`` receive from another, as the
    factorization's tasks wait for them: the inputs of updates on one worker are made on another,
    and the workers' own record of the transfers (their durations, serialization included) gives
    the rate. None with one worker."""
    from distributed import get_task_stream

    from .cluster import workers_info

    workers = sorted(workers_info(client))
    if len(workers) < 2:
        return None
    a, b = workers[:2]
    k = 2 if quick else 8
    rates = []
    for rep in range(2 if quick else 3):
        tiles = [client.submit(_tile, 3 * k * rep + i, tile, workers=[a], allow_other_workers=False, pure=False)
                 for i in range(3 * k)]
        client.gather(tiles)
        with get_task_stream(client) as stream:
            client.gather([client.submit(_update, *tiles[3 * i:3 * i + 3], workers=[b], allow_other_workers=False,
                                         pure=False) for i in range(k)])
        waited = sum(ss["stop"] - ss["start"] for task in stream.data for ss in task.get("startstops", ())
                     if ss.get("action") == "transfer")
        if waited > 0:
            rates.append(3 * k * 8.0 * tile * tile / waited)
        del tiles
    return max(rates) if rates else None


class _Discard:
    """A matrix target that keeps nothing: :func:`bigspec.form.form_tile` timed without its write."""

    def __init__(self, b):
        self.chunks = (b, b)

    def __setitem__(self, key, value):
        pass


def _formation_rates(b: int, T: int, seconds: float, quick: bool, kernels):
    """Seconds per entry per thread of forming a tile (``form_tile``, its write left out: that is the
    store's), ``T`` tiles at once; relu per layer plus one."""
    import numpy as np

    from .form import form_tile
    from .kernels import get_kernel

    dim = 16
    X = np.random.default_rng(2).standard_normal((2 * b, dim))
    out, ntk, per_tile = {}, {}, 0.0

    import shutil
    import tempfile

    import zarr

    tmp = tempfile.mkdtemp(prefix="bigspec-calibrate-")

    def tile_seconds(name, params, s):
        """Seconds per thread of forming one tile of ``s`` samples a side, ``T`` at once, its data rows
        read from a Zarr array as :func:`bigspec.form` keeps them."""
        k = get_kernel(name, **params).bind(X)
        prepared = np.ascontiguousarray(k.prepare(X[:2 * s]))
        data = zarr.create_array(store=f"{tmp}/{name}-{s}", shape=prepared.shape, dtype="float64",
                                 chunks=(s, *prepared.shape[1:]), overwrite=True)
        data[...] = prepared

        def make():
            return lambda: form_tile(k, data, _Discard(s), 1, 0, (s, 2 * s), (0, s), np.float64, "cpu")

        return T / _concurrently(make, T, seconds, 1.0)

    try:
        if [n for n in kernels if n != "ntk"]:    # a task's own cost besides its entries, from two tile sizes
            big, small = tile_seconds("rbf", {}, b), tile_seconds("rbf", {}, b // 2)
            per_tile = max((4 * small - big) / 3, 0.0)
        for name in kernels:
            if name == "ntk":
                ntk = _ntk_rates(b, seconds, quick) or {}
                continue
            params = {"depth": 2} if name == "relu" else {}
            per_entry = max(tile_seconds(name, params, b) - per_tile, 1e-9 * b * b) / (b * b)
            out[name] = per_entry / (params.get("depth", 0) + 1) if name == "relu" else per_entry
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out, dim, ntk, per_tile


def _ntk_rates(b: int, seconds: float, quick: bool) -> dict | None:
    """The empirical NTK of a small MLP, per task thread (tiles of one process take turns, each with
    torch's threads): flop/s of its J J^T contraction (2 flops per parameter per entry of the
    sub-batches, padded to ``batch_size`` samples), seconds per pair of sub-batches (the calls the
    contraction makes for each), from warm tiles (Jacobians cached) of two sizes; and seconds per
    Jacobian entry (per sample, output and parameter), from a tile formed cold and warm."""
    try:
        import torch
    except ImportError:
        return None
    import numpy as np

    from .form import form_tile
    from .kernels import get_kernel

    torch.manual_seed(0)
    width, d = (16, 4) if quick else (64, 10)
    net = torch.nn.Sequential(torch.nn.Linear(16, width), torch.nn.Tanh(), torch.nn.Linear(width, width),
                              torch.nn.Tanh(), torch.nn.Linear(width, d))
    P = sum(p.numel() for p in net.parameters())
    k = get_kernel("ntk", model=net)
    bs = int(k.params["batch_size"])
    sizes = (2 * bs, 4 * bs) if quick else (2 * bs, max(b // d, 4 * bs))
    X = np.random.default_rng(3).standard_normal((2 * sizes[-1], 16))
    k = k.bind(X)
    data = np.ascontiguousarray(k.prepare(X))
    T = max(os.cpu_count() or 1, 1)

    def timed(s, cold):
        if cold:
            k.__dict__.pop("_jac_cache", None)       # the tile's Jacobians computed again
        t0 = time.perf_counter()
        form_tile(k, data, _Discard(s * d), 1, 0, (s, 2 * s), (0, s), np.float64, "cpu")
        return time.perf_counter() - t0

    warm, cold = {}, 0.0
    for s in sizes:
        timed(s, False)
        warm[s] = sorted(timed(s, False) for _ in range(3))[1]
    s = sizes[-1]
    cold = sorted(timed(s, True) for _ in range(3))[1]
    (s1, t1), (s2, t2) = sorted(warm.items())
    pairs = [(-(-x // bs)) ** 2 for x in (s1, s2)]
    entries = [2.0 * P * (-(-x // bs) * bs * d) ** 2 for x in (s1, s2)]
    det = pairs[0] * entries[1] - pairs[1] * entries[0]
    per_pair = (t1 * entries[1] - t2 * entries[0]) / det if det else 0.0
    per_flop = (t2 - per_pair * pairs[1]) / entries[1]
    if per_pair < 0 or per_flop <= 0:                 # no per-call cost to see: all of it per flop
        per_pair, per_flop = 0.0, t2 / entries[1]
    return {"ntk": 1.0 / per_flop / T, "ntk_pair": per_pair * T,
            "ntk_jacobian": max(cold - t2, 1e-9) * T / (2 * s * d * P)}


def _host_device_rate(quick: bool) -> float | None:
    try:
        import cupy
        import numpy as np

        if cupy.cuda.runtime.getDeviceCount() < 1:
            return None
    except Exception:
        return None
    nbytes = (16 if quick else 256) * 2**20   # pragma: no cover - needs a GPU
    host = np.ones(nbytes // 8)
    cupy.asarray(host)
    cupy.cuda.Device().synchronize()
    t0 = time.perf_counter()
    dev = cupy.asarray(host)
    cupy.asarray(dev).get()
    cupy.cuda.Device().synchronize()
    return 2 * nbytes / (time.perf_counter() - t0)


__all__ = ["MachineProfile", "PROFILES", "Prediction", "predict", "resolve_profile", "calibrate", "calibrate_cluster",
           "save_profile",
           "profile_path", "format_seconds"]
