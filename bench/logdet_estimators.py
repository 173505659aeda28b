"""Estimated log-determinants against the exact value, beside detkit, imate and naive scaling.

What it measures
----------------
For each matrix below, the exact log-determinant (bigspec's tiled Cholesky, timed) is the
oracle. Each estimator runs at sample sizes s = 500, 1000, 2000 (samples of the n = 16384
data points; s <= n for the digits):

* ``flodance``: ``bigspec.logdet(kernel=..., X=X, method="flodance", sample_size=s)`` with
  its defaults (no setting chosen by hand; the matrix is never formed);
* ``spectrum``: ``bigspec.logdet(kernel=..., X=X, method="spectrum", sample_size=s,
  n_samples=min(4, n // s))``;
* ``slq``: ``bigspec.logdet(K, method="slq", probes=32, lanczos_steps=60, seed=0)`` once per
  matrix, and over 10 seeds (probes 16, 40 steps) for its interval's coverage;
* peers on the same leading block (the data order bigspec uses, ``bigspec.form.permutation(n,
  0)``): detkit 0.12.3's ``FitLogdet(m=q)`` for q = 0..4, fitted to the ladder on the full
  window (m >= 1) and the tail window (m >= s/2), evaluated at n; its "usual" setting
  (q = 2, full window) and the best of the ten chosen with hindsight; naive scaling
  ``l(s) * n / s``; imate 0.29's ``logdet(method="slq")`` with its defaults (its reported
  error as its interval);
* over further draws (``--flodance-seeds``, default 5): FLODANCE with seeds 1..5 (other random
  subsets), and detkit's ten settings on the leading s-block of as many other random orders
  (``permutation(n, seed)``): the mean |error| of its best setting chosen with hindsight for
  each draw, and of its one setting best on average. One draw decides little at small s (the
  errors of both methods spread by several percent between draws); the means over draws compare
  the methods, not the luck of one draw.

Matrices: Matérn-3/2 (lengthscale 0.2, points uniform in [0, 1]^3) with nuggets 1e-3 and
1e-6 (as ``shift``); the analytic ReLU NTK of depth 3 (bigspec's ``relu`` kernel defaults:
weight variance 2, bias variance 0.1) on points uniform on the sphere S^15, no nugget; the
digits NTK (the same kernel on the 1797 scikit-learn digits, K of K (x) I_10, no nugget).

Printed: one line per (matrix, method, s): relative error, interval, whether it covers the
exact value, entries read or formed, seconds; then the coverage counts. JSON:
``bench/results/logdet_estimators.json``.

Run: ``python bench/logdet_estimators.py`` (about 15 minutes on 2 cores; ``--n 4096`` for a
quick look). detkit and imate are installed only for the benchmark
(``pip install detkit==0.12.3 imate``); without them their columns are skipped.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import time
import warnings

import numpy as np

import bigspec
from bigspec.form import permutation
from bigspec.kernels import get_kernel


def cases(n):
    rng = np.random.default_rng(0)
    X = rng.uniform(size=(n, 3))
    yield "matern-1e-3", "matern", dict(nu=1.5, lengthscale=0.2), X, 1e-3
    yield "matern-1e-6", "matern", dict(nu=1.5, lengthscale=0.2), X, 1e-6
    Y = rng.standard_normal((n, 16))
    Y /= np.linalg.norm(Y, axis=1, keepdims=True)
    yield "relu-ntk-S15", "relu", dict(depth=3), Y, 0.0
    from bigspec.demo import digits

    D, _ = digits()
    yield "digits-ntk", "relu", dict(depth=3), D, 0.0


def kernel_matrix(kernel, params, X, order):
    k = get_kernel(kernel, **params).bind(X)
    P = np.asarray(k.prepare(X))[order]
    return np.asarray(k(P, P, diagonal=True))


def ladder(B):
    """l(m) = log det B[:m, :m] for every m (Cholesky prefix sums)."""
    L = np.linalg.cholesky(B)
    return 2 * np.cumsum(np.log(np.diag(L)))


def run_estimate(**kwargs):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        t = time.perf_counter()
        try:
            est = bigspec.logdet(**kwargs)
        except bigspec.EstimateError as e:
            return {"refused": str(e), "seconds": time.perf_counter() - t}
        seconds = time.perf_counter() - t
    return {"estimate": est.logabsdet, "interval": list(est.interval), "seconds": seconds,
            "entries": est.cost.get("entries"), "warnings": [str(w.message)[:160] for w in caught
                                                             if issubclass(w.category, bigspec.BigspecWarning)],
            "model": est.diagnostics.get("model")}


def peers(lad, s, n):
    out = {}
    try:
        from detkit import FitLogdet
    except ImportError:
        return {"detkit": "not installed"}
    x = np.arange(1, s + 1, dtype=float)
    fits = {}
    for q in range(5):
        for window, lo in (("full", 1), ("tail", s // 2)):
            sel = x >= lo
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    f = FitLogdet(m=q)
                    f.fit(x[sel], lad[sel])
                    fits[f"q={q},{window}"] = float(np.ravel(f.eval(np.array([float(n)])))[0])
            except Exception as e:  # a failed fit is a result too
                fits[f"q={q},{window}"] = f"failed: {e}"
    out["detkit"] = fits
    return out


def imate_slq(K):
    try:
        import imate
    except ImportError:
        return "not installed"
    t = time.perf_counter()
    value, info = imate.logdet(K, method="slq", return_info=True)
    err = info.get("error", {})
    abs_err = err.get("absolute_error", np.nan)
    return {"estimate": float(value), "reported_abs_error": float(abs_err),
            "reported_rel_error": float(err.get("relative_error", np.nan)), "seconds": time.perf_counter() - t}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=16384)
    ap.add_argument("--sizes", type=int, nargs="*", default=[500, 1000, 2000])
    ap.add_argument("--slq-seeds", type=int, default=10)
    ap.add_argument("--flodance-seeds", type=int, default=5, help="FLODANCE again on seeds 1..N (error spread)")
    ap.add_argument("--only", default=None, help="run only this matrix")
    ap.add_argument("--carry-slq", action="store_true",
                    help="keep the previous results' SLQ and imate figures for each matrix instead of rerunning them")
    ap.add_argument("--table", default=None, metavar="JSON", help="only print the markdown table of a results file")
    ap.add_argument("--out", default=str(pathlib.Path(__file__).parent / "results" / "logdet_estimators.json"))
    args = ap.parse_args()
    if args.table:
        print(markdown(json.load(open(args.table))["results"]))
        return
    rows, report = [], {}
    # read once: the results file is rewritten after each matrix
    carried = json.load(open(args.out))["results"] if args.carry_slq and pathlib.Path(args.out).exists() else {}
    for name, kernel, params, X, shift in cases(args.n):
        if args.only and name != args.only:
            continue
        n = len(X)
        order = permutation(n, 0)
        K = kernel_matrix(kernel, params, X, order)
        t = time.perf_counter()
        exact = bigspec.logdet(K, method="cholesky", shift=shift, progress=False)
        t_exact = time.perf_counter() - t
        truth = exact.logabsdet
        entry = {"n": n, "exact": truth, "exact_seconds": t_exact, "shift": shift, "cells": []}
        print(f"\n{name}: n = {n}, exact log det = {truth:.6g} ({t_exact:.1f} s, bigspec cholesky)", flush=True)
        Kd = K + shift * np.eye(n)
        for s in args.sizes:
            if s > n // 2:
                continue
            lad = ladder(Kd[:s, :s])
            cell = {"s": s, "naive": float(lad[-1] * n / s)}
            for method in ("flodance", "spectrum"):
                extra = dict(n_samples=min(4, n // s)) if method == "spectrum" else {}
                cell[method] = run_estimate(kernel=kernel, X=X, method=method, sample_size=s, shift=shift,
                                            progress=False, **params, **extra)
            cell.update(peers(lad, s, n))
            entry["cells"].append(cell)
            for method in ("flodance", "spectrum"):
                r = cell[method]
                if "refused" in r:
                    print(f"  s={s:5d} {method:9s} refused: {r['refused'][:120]}")
                    rows.append((name, method, s, None, None))
                    continue
                err = (r["estimate"] - truth) / abs(truth)
                lo, hi = r["interval"]
                ok = lo <= truth <= hi
                rows.append((name, method, s, err, ok))
                print(f"  s={s:5d} {method:9s} err {100 * err:+8.3f}%  interval [{lo:.6g}, {hi:.6g}] "
                      f"(+-{50 * (hi - lo) / abs(truth):.3g}%) {'covers' if ok else 'MISSES'}  "
                      f"{r['entries']:.3g} entries  {r['seconds']:.2f} s  {r.get('model') or ''}"
                      + (f"  [{len(r['warnings'])} warning(s)]" if r["warnings"] else ""), flush=True)
            naive_err = (cell["naive"] - truth) / abs(truth)
            print(f"  s={s:5d} naive     err {100 * naive_err:+8.3f}%")
            fits = cell.get("detkit")
            if isinstance(fits, dict):
                errs = {k: (v - truth) / abs(truth) for k, v in fits.items() if isinstance(v, float)}
                usual = errs.get("q=2,full")
                best = min(errs, key=lambda k: abs(errs[k])) if errs else None
                cell["detkit_usual_err"] = usual
                cell["detkit_best"] = [best, errs.get(best)]
                print(f"  s={s:5d} detkit    usual (q=2, full) err {100 * usual:+8.3f}%; best with hindsight "
                      f"{best}: {100 * errs[best]:+8.3f}%; range of the 10 settings "
                      f"{100 * min(errs.values()):+.3g}% .. {100 * max(errs.values()):+.3g}%")
        # FLODANCE over further seeds (other subsets of the same points): its error is partly the draw
        if args.flodance_seeds:
            entry["flodance_seeds"] = {}
            for s in args.sizes:
                if s > n // 2:
                    continue
                errs, cov = [], 0
                for seed in range(1, args.flodance_seeds + 1):
                    r = run_estimate(kernel=kernel, X=X, method="flodance", sample_size=s, shift=shift, seed=seed,
                                     progress=False, **params)
                    if "refused" in r:
                        continue
                    errs.append((r["estimate"] - truth) / abs(truth))
                    cov += r["interval"][0] <= truth <= r["interval"][1]
                e = np.abs(errs)
                entry["flodance_seeds"][s] = {"errors": errs, "covered": cov}
                print(f"  s={s:5d} flodance over seeds 1..{args.flodance_seeds}: mean |err| {100 * e.mean():.2f}%, "
                      f"median {100 * np.median(e):.2f}%, max {100 * e.max():.2f}%, covers {cov} of {len(errs)}",
                      flush=True)
                # detkit on a leading block of s samples in other random orders, one per seed: its best
                # setting with hindsight per draw, and the one setting best on average over the draws
                per_seed = []
                for seed in range(1, args.flodance_seeds + 1):
                    Ks = kernel_matrix(kernel, params, X, permutation(n, seed)[:s]) + shift * np.eye(s)
                    fits = peers(ladder(Ks), s, n).get("detkit")
                    if isinstance(fits, dict):
                        per_seed.append({k: (v - truth) / abs(truth) for k, v in fits.items() if isinstance(v, float)})
                if per_seed:
                    settings = set.intersection(*[set(d) for d in per_seed])
                    best_each = float(np.mean([min(abs(v) for v in d.values()) for d in per_seed]))
                    fixed = min(settings, key=lambda k: np.mean([abs(d[k]) for d in per_seed]))
                    entry["flodance_seeds"][s]["detkit"] = {
                        "best_each_mean_abs": best_each, "best_fixed": fixed,
                        "best_fixed_mean_abs": float(np.mean([abs(d[fixed]) for d in per_seed]))}
                    print(f"  s={s:5d} detkit over the same number of draws: best with hindsight per draw, mean |err| "
                          f"{100 * best_each:.2f}%; best single setting ({fixed}) mean |err| "
                          f"{100 * entry['flodance_seeds'][s]['detkit']['best_fixed_mean_abs']:.2f}%", flush=True)
        # SLQ: once at the full setting, and its coverage over seeds (or, with --carry-slq, the previous
        # run's SLQ and imate figures for this matrix, marked as carried: SLQ's code did not change)
        previous = carried.get(name, {})
        if "slq" in previous:
            for key in ("slq", "slq_seed_coverage", "imate_slq"):
                entry[key] = previous.get(key)
            entry["slq_carried_from_previous_run"] = True
            r = entry["slq"]
            err = (r["estimate"] - truth) / abs(truth)
            rows.append((name, "slq", 0, err, r["interval"][0] <= truth <= r["interval"][1]))
            print(f"  slq: carried from the previous run (err {100 * err:+.3f}%)", flush=True)
            report[name] = entry
            save(args, report)
            continue
        r = run_estimate(A=K, method="slq", probes=32, lanczos_steps=60, seed=0, shift=shift, progress=False)
        err = (r["estimate"] - truth) / abs(truth)
        lo, hi = r["interval"]
        entry["slq"] = r
        rows.append((name, "slq", 0, err, lo <= truth <= hi))
        print(f"  slq (32 probes, 60 steps) err {100 * err:+8.3f}%  interval [{lo:.6g}, {hi:.6g}] "
              f"{'covers' if lo <= truth <= hi else 'MISSES'}  {r['seconds']:.1f} s", flush=True)
        covered = []
        for seed in range(args.slq_seeds):
            r = run_estimate(A=K, method="slq", probes=16, lanczos_steps=40, seed=seed, shift=shift, progress=False)
            covered.append(bool(r["interval"][0] <= truth <= r["interval"][1]))
        entry["slq_seed_coverage"] = [sum(covered), len(covered)]
        print(f"  slq (16 probes, 40 steps) interval covers on {sum(covered)} of {len(covered)} seeds", flush=True)
        im = imate_slq(Kd)
        entry["imate_slq"] = im
        if isinstance(im, dict):
            e = (im["estimate"] - truth) / abs(truth)
            print(f"  imate slq (defaults) err {100 * e:+8.3f}%, reports relative error "
                  f"{100 * im['reported_rel_error']:.3g}%  {im['seconds']:.1f} s", flush=True)
        report[name] = entry
        save(args, report)          # after each matrix: a later failure keeps what was measured
    cells = [r for r in rows if r[4] is not None]
    print(f"\nintervals covering the exact value: {sum(r[4] for r in cells)} of {len(cells)} cells "
          f"({', '.join(sorted({r[1] for r in cells}))})")
    for method in ("flodance", "spectrum", "slq"):
        sub = [r for r in cells if r[1] == method]
        if sub:
            print(f"  {method}: {sum(r[4] for r in sub)} of {len(sub)}")
    save(args, report)
    print(f"wrote {args.out}")


def markdown(results: dict) -> str:
    """The results as a markdown table (``bench/results/logdet_estimators.md``)."""
    d = results
    out = ["| matrix | s | FLODANCE err, ±half-width, covers | FLODANCE over seeds 1-5: mean / max abs err, covers; detkit on as many draws: mean abs err, best per draw / best single setting | spectrum err, ±hw, covers | naive | detkit q=2 full / best with hindsight | FLODANCE s |",
           "|---|---|---|---|---|---|---|---|"]
    cov = tot = 0
    beat = cells = 0
    seed_beat = seed_beat_fixed = seed_cells = 0
    for name, e in d.items():
        T = e["exact"]
        for c in e["cells"]:
            s = c["s"]
            row = [f"{name} (n={e['n']}, exact {T:.6g})", str(s)]
            for m in ("flodance",):
                r = c[m]
                if "refused" in r:
                    row.append("refused: " + r["refused"][:80]); continue
                err = (r["estimate"] - T) / abs(T); lo, hi = r["interval"]; ok = lo <= T <= hi
                cov += ok; tot += 1
                row.append(f"{100*err:+.2f}%, ±{50*(hi-lo)/abs(T):.3g}%, {'yes' if ok else 'NO'}")
                fe = abs(err)
            sd = e.get("flodance_seeds", {}).get(str(s)) or e.get("flodance_seeds", {}).get(s)
            if sd:
                errs = [abs(x) for x in sd["errors"]]
                text = f"{100*sum(errs)/len(errs):.2f}% / {100*max(errs):.2f}%, {sd['covered']} of {len(errs)}"
                dk = sd.get("detkit")
                if dk:
                    text += (f"; detkit {100*dk['best_each_mean_abs']:.2f}% (best per draw) / "
                             f"{100*dk['best_fixed_mean_abs']:.2f}% ({dk['best_fixed']})")
                    seed_cells += 1
                    seed_beat += sum(errs) / len(errs) <= dk["best_each_mean_abs"]
                    seed_beat_fixed += sum(errs) / len(errs) <= dk["best_fixed_mean_abs"]
                row.append(text)
            else:
                row.append("")
            r = c["spectrum"]
            if "refused" in r:
                row.append("refused")
            else:
                err = (r["estimate"] - T) / abs(T); lo, hi = r["interval"]; ok = lo <= T <= hi
                cov += ok; tot += 1
                row.append(f"{100*err:+.2f}%, ±{50*(hi-lo)/abs(T):.3g}%, {'yes' if ok else 'NO'}")
            row.append(f"{100*(c['naive']-T)/abs(T):+.1f}%")
            if "detkit_best" in c:
                b = c["detkit_best"]
                row.append(f"{100*c['detkit_usual_err']:+.2f}% / {100*b[1]:+.2f}% ({b[0]})")
                cells += 1; beat += fe <= abs(b[1])
            else:
                row.append("")
            row.append(f"{c['flodance']['seconds']:.2f} s")
            out.append("| " + " | ".join(row) + " |")
        s = e.get("slq")
        if s:
            err = (s["estimate"] - T) / abs(T); lo, hi = s["interval"]; ok = lo <= T <= hi
            cov += ok; tot += 1
            im = e.get("imate_slq")
            imtxt = f"imate SLQ {100*(im['estimate']-T)/abs(T):+.1f}% (reports {100*im['reported_rel_error']:.2g}%)" if isinstance(im, dict) else ""
            sc = e.get("slq_seed_coverage", [0, 0])
            out.append(f"| {name} | SLQ 32x60 | {100*err:+.2f}%, interval [{lo:.4g}, {hi:.4g}], {'covers' if ok else 'MISSES'}, {s['seconds']:.0f} s | | seeds covered {sc[0]}/{sc[1]} (16x40) | | {imtxt} | exact {e['exact_seconds']:.0f} s |")
    out.append("")
    out.append(f"intervals covering the exact value: {cov} of {tot}; FLODANCE at or below detkit's best with hindsight: {beat} of {cells} cells")
    if seed_cells:
        out.append(f"over the further draws (mean |error|): FLODANCE at or below detkit's best setting chosen with hindsight "
                   f"for each draw in {seed_beat} of {seed_cells} cells, at or below its best single setting in "
                   f"{seed_beat_fixed} of {seed_cells}")
    return "\n".join(out) + "\n"


def save(args, report):
    pathlib.Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    if args.only and pathlib.Path(args.out).exists():   # one matrix again: keep the others' results
        report = {**json.load(open(args.out))["results"], **report}
    with open(args.out, "w") as f:
        json.dump({"n": args.n, "results": report}, f, indent=1, default=str)
    pathlib.Path(args.out).with_suffix(".md").write_text(markdown(json.loads(json.dumps(report, default=str))))


if __name__ == "__main__":
    main()
