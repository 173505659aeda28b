"""The 500,000-row float64 NTK's exact log-determinant, planned and predicted (docs/scale.md).

Plans are made without data (``bigspec.plan_logdet(n=...)``: the task graphs built and counted,
nothing computed) and predicted with the named profiles of published peaks
(:data:`bigspec.perfmodel.PROFILES`). Prints the markdown table docs/scale.md shows.

    python bench/scale_plans.py
"""

import bigspec
from bigspec.perfmodel import predict, resolve_profile

N = 500_000
CONFIGS = [
    ("8 x H100, 64 GiB each (`h100`)", dict(memory="512GiB", workers=8, threads=1, device="gpu", tile_size=4096), "h100"),
    ("8 x H100 (`h100`)", dict(memory="512GiB", workers=8, threads=1, device="gpu", tile_size=8192), "h100"),
    ("8 x H100 (`h100`)", dict(memory="512GiB", workers=8, threads=1, device="gpu", tile_size=12288), "h100"),
    ("32 EPYC nodes, 8 TiB, 192 threads each (`cpu-node`)", dict(memory="8TiB", workers=32, threads=192,
                                                                  tile_size=4096), "cpu-node"),
    ("32 EPYC nodes, 8 TiB, 96 threads each (`cpu-node`)", dict(memory="8TiB", workers=32, threads=96,
                                                                 tile_size=8192), "cpu-node"),
    ("32 EPYC nodes, 1 TiB, 64 threads each (`cpu-node`)", dict(memory="1TiB", workers=32, threads=64,
                                                                 tile_size=4096), "cpu-node"),
]

NAMES = {"store_read": "store read", "store_write": "write", "host_device": "host-device"}


def main():
    print("| machine (profile) | tile | granularity | panels x width | tasks | re-read (bound) | predicted | "
          "bottleneck | terms (s) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for label, kw, prof in CONFIGS:
        try:
            p = bigspec.plan_logdet(n=N, method="cholesky", **kw)
        except bigspec.MemoryBudgetError as e:
            print(f"| {label} | {kw['tile_size']} | - | - | - | - | - | - | refused: minimum "
                  f"{e.minimum / 2**40:.2f} TiB |")
            continue
        s = p.summary()
        r = predict(p, resolve_profile(prof))
        panels = "1 (in memory)" if s["super_panels"] == 1 else f"{s['super_panels']} x {s['panel_width']:,}"
        reread = "0" if not s["bytes_read_factor"] else \
            f"{s['bytes_read_factor'] / 1e12:.2f} TB ({s['bytes_read_factor'] / s['reread_bound']:.2f})"
        terms = ", ".join(f"{NAMES.get(k, k)} {v:.0f}" for k, v in r.terms.items() if v >= 0.5)
        print(f"| {label} | {kw['tile_size']} | {p.granularity} | {panels} | {s['tasks']:,} | {reread} | "
              f"{r.seconds:,.0f} s | {r.bottleneck} | {terms} |")


if __name__ == "__main__":
    main()
