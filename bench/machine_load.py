"""How busy the machine is besides this benchmark: the benchmarks time only runs that other
processes left alone (threaded BLAS slows down by orders of magnitude when another process takes
a core its threads wait on)."""

import os
import resource
import time


def cpu_busy_seconds() -> float:
    """Machine-wide non-idle CPU seconds since boot (user..steal of /proc/stat)."""
    with open("/proc/stat") as f:
        vals = [int(v) for v in f.readline().split()[1:9]]
    return (sum(vals) - vals[3] - vals[4]) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds(children: bool = True) -> float:
    """CPU seconds of this process and, with ``children``, of its descendants (a LocalCluster's workers)."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    total = ru.ru_utime + ru.ru_stime
    if children:
        try:
            import psutil
        except ImportError:
            return total
        for child in psutil.Process().children(recursive=True):
            try:
                t = child.cpu_times()
                total += t.user + t.system
            except psutil.Error:
                pass
    return total


def wait_for_quiet(max_wait: float, threshold: float, probe: float = 1.0, pause: float = 1.0,
                   children: bool = True) -> tuple[float, float]:
    """Wait up to ``max_wait`` s until other processes use < ``threshold`` cores.

    Returns (seconds waited, cores the other processes used in the last ``probe`` seconds).
    """
    t0 = time.perf_counter()
    while True:
        b0, c0 = cpu_busy_seconds(), own_cpu_seconds(children)
        time.sleep(probe)
        busy = max(0.0, (cpu_busy_seconds() - b0 - (own_cpu_seconds(children) - c0)) / probe)
        waited = time.perf_counter() - t0
        if busy < threshold or waited >= max_wait:
            return waited, busy
        time.sleep(pause)
