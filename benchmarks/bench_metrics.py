"""Benchmark ftdyn.metrics against a per-filter loop of the textbook formulas.

Usage::

    python benchmarks/bench_metrics.py                  # CPU, full sizes (a few minutes)
    python benchmarks/bench_metrics.py --quick          # smaller subsets, ~1 minute
    python benchmarks/bench_metrics.py --device cuda    # ftdyn on the GPU (baseline stays
    numpy/CPU)
    python benchmarks/bench_metrics.py --json out.json  # also write the table as JSON
    python benchmarks/bench_metrics.py --skip-early-baseline   # do not run the ~20-50 s/filter
    baseline
    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1 python benchmarks/bench_metrics.py
                                                        # steadier numbers on a shared machine

On a CPU that other processes share, multi-threaded BLAS/OpenMP calls (numpy's
OpenBLAS especially, torch's OpenMP too) can run 10-20x slower than one thread
(threads wait at barriers for a descheduled peer): compare runs made with the same
thread settings, which the header prints together with the load average.

Cases (issue 3):

* ``early``: per-filter view of an early layer, 100 images × 56×56 maps × 64 filters:
  each filter is X: 100×3136. ftdyn: one batched call (Gram route, 100×100 problems).
  Baseline: netrep's algorithm on the full matrices (center, eigh of the 3136×3136
  XᵀX, whiten, SVD of XwᵀYw) for 1 filter (2 without --quick), extrapolated ×64.
  PWSM with α = 0.5: α = 0 is degenerate when rows < cols (angle 0 for every
  filter), which would make the equality check vacuous; the cost is the same.
* ``deep``: 500 images × 7×7 × 2048 filters (X: 500×49 per filter), PWSM α = 0
  (the paper's setting). Baseline loop over a subset of filters, extrapolated.
  Also timed: the float64 products alone (``row_stats``: XᵀX, YᵀY, XᵀY per filter),
  work that any exact method does; ``speedup_ceiling`` = baseline / that time.
* ``channels``: rows = 200·28·28, cols = 256, PWSM α = 0. Baseline: form the
  centered float64 and whitened matrices (netrep); ftdyn: direct call (chunked
  sufficient statistics) and the streaming route (``row_stats`` over row chunks +
  ``merge``). Each route runs in its own subprocess so its peak resident memory
  *above the input data* can be reported.

Every timed pair is checked for equal answers (assert). Activations are float32
(what extraction stores); all arithmetic is float64 on both sides. The baseline
uses ``np.linalg.svd(..., compute_uv=False)`` (netrep computes U and V too), so it
is slightly faster than netrep itself: the ratios are conservative. With
``--device cuda`` the Gram/statistics step is also timed alone and reported in
TFLOP/s and as a fraction of the FP64 peak (``--fp64-peak``, default 55 TFLOP/s,
measured on an H200).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from _results import command_line, write_result

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from ftdyn import metrics
from ftdyn.metrics import stats


# ------------------------------------------------------------------- baseline
def _whiten(X, alpha, eigval_tol=1e-7):
    """netrep.utils.whiten (preserve_variance=True)."""
    if alpha > 1 - eigval_tol:
        return X
    lam, V = np.linalg.eigh(X.T @ X)
    lam = np.maximum(lam, eigval_tol)
    d = alpha + (1 - alpha) * lam**-0.5
    new_var = np.sum(alpha**2 * lam + 2 * alpha * (1 - alpha) * lam**0.5 + (1 - alpha) ** 2)
    d *= np.sqrt(np.sum(lam) / new_var)
    return X @ ((V * d) @ V.T)


def textbook_pwsm(X, Y, alpha):
    """Per-matrix PWSM, netrep's algorithm on the full (float64) matrices."""
    X = X.astype(np.float64)
    Y = Y.astype(np.float64)
    X -= X.mean(0)
    Y -= Y.mean(0)
    Xw, Yw = _whiten(X, alpha), _whiten(Y, alpha)
    s = np.linalg.svd(Xw.T @ Yw, compute_uv=False)
    return float(np.arccos(np.clip(s.sum() / (np.linalg.norm(Xw) * np.linalg.norm(Yw)), -1, 1)))


# ----------------------------------------------------------------------- data
def relu_pair(rng, shape, mix=0.3):
    """Source/fine-tuned-like float32 activations: ReLU(Z), ReLU(Z + mix·noise)."""
    Z = rng.standard_normal(shape, dtype=np.float32)
    Y = Z + np.float32(mix) * rng.standard_normal(shape, dtype=np.float32)
    np.maximum(Z, 0, out=Z)
    np.maximum(Y, 0, out=Y)
    return Z, Y


def _sync(dev):
    if dev == "cuda":
        torch.cuda.synchronize()


def timed(fn, dev="cpu", repeat=1):
    best, out = float("inf"), None
    for _ in range(repeat):
        _sync(dev)
        t = time.perf_counter()
        out = fn()
        _sync(dev)
        best = min(best, time.perf_counter() - t)
    return best, out


def to_dev(a, dev):
    return torch.from_numpy(a).to(dev) if dev == "cuda" else a


# ---------------------------------------------------------------------- cases
def case_early(args, rows):
    n_f, n, hw, alpha = 64, 100, 56 * 56, 0.5
    rng = np.random.default_rng(0)
    X, Y = relu_pair(rng, (n_f, n, hw))
    dev = args.device
    Xd, Yd = to_dev(X, dev), to_dev(Y, dev)
    metrics.pwsm(Xd[:2], Yd[:2], alpha)  # warm-up (CUDA context, cuSOLVER handles)
    t_ours, ours = timed(lambda: metrics.pwsm(Xd, Yd, alpha), dev, repeat=3)
    row = {
        "case": "early per-filter",
        "shape": f"{n_f} x ({n}x{hw})",
        "metric": f"pwsm a={alpha}",
        "device": dev,
        "ours_s": t_ours,
        "ours_per_filter_s": t_ours / n_f,
    }
    if dev == "cuda":
        t_g, _ = timed(lambda: (stats.gram(Xd), stats.gram(Yd)), dev, repeat=5)
        flops = 2 * 2.0 * n_f * n * n * hw
        row.update(gram_s=t_g, gram_tflops=flops / t_g / 1e12)
    if not args.skip_early_baseline:
        k = 1 if args.quick else 2
        t_b, base = timed(lambda: [textbook_pwsm(X[i], Y[i], alpha) for i in range(k)])
        np.testing.assert_allclose(ours[:k], base, atol=1e-7)
        row.update(
            baseline_filters_timed=k,
            baseline_per_filter_s=t_b / k,
            baseline_s_extrapolated=t_b / k * n_f,
            speedup=t_b / k * n_f / t_ours,
        )
    rows.append(row)


def case_deep(args, rows):
    n_f, n, hw, alpha = 2048, 500, 49, 0.0
    rng = np.random.default_rng(1)
    X, Y = relu_pair(rng, (n_f, n, hw))
    dev = args.device
    Xd, Yd = to_dev(X, dev), to_dev(Y, dev)
    metrics.pwsm(Xd[:4], Yd[:4], alpha)
    t_ours, ours = timed(lambda: metrics.pwsm(Xd, Yd, alpha), dev, repeat=3)
    k = 64 if args.quick else 256
    t_b, base = timed(lambda: [textbook_pwsm(X[i], Y[i], alpha) for i in range(k)])
    np.testing.assert_allclose(ours[:k], base, atol=1e-8)
    row = {
        "case": "deep per-filter",
        "shape": f"{n_f} x ({n}x{hw})",
        "metric": "pwsm a=0",
        "device": dev,
        "ours_s": t_ours,
        "ours_per_filter_s": t_ours / n_f,
        "baseline_filters_timed": k,
        "baseline_per_filter_s": t_b / k,
        "baseline_s_extrapolated": t_b / k * n_f,
        "speedup": t_b / k * n_f / t_ours,
    }
    # the float64 products alone (XᵀX, YᵀY, XᵀY and column sums of every filter): work any
    # exact method does, so baseline / stats_s bounds the speedup reachable on this device
    t_g, _ = timed(lambda: stats.row_stats(Xd, Yd), dev, repeat=3)
    row.update(
        stats_s=t_g,
        stats_tflops=3 * 2.0 * n_f * n * hw * hw / t_g / 1e12,
        speedup_ceiling=row["baseline_s_extrapolated"] / t_g,
    )
    rows.append(row)


def _status_mb(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _reset_peak_rss():
    """Linux: writing 5 to clear_refs resets VmHWM (the peak resident set size)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def channels_child(route, n_img, dev):
    """Runs in a subprocess: one route on the channels view, prints JSON."""
    rng = np.random.default_rng(2)
    rows_, cols = n_img * 28 * 28, 256
    X = np.empty((rows_, cols), np.float32)
    Y = np.empty((rows_, cols), np.float32)
    W = (rng.standard_normal((cols, cols)) / np.sqrt(cols)).astype(np.float32)
    for s in range(0, rows_, 8192):  # chunked generation: no big temporaries before the measurement
        Z = rng.standard_normal((min(8192, rows_ - s), cols), dtype=np.float32)
        X[s : s + len(Z)] = np.maximum(Z, 0)
        Y[s : s + len(Z)] = np.maximum(Z + 0.3 * (Z @ W), 0)
    Xd, Yd = to_dev(X, dev), to_dev(Y, dev)
    if dev == "cuda":
        metrics.pwsm(Xd[:1000], Yd[:1000])
        torch.cuda.reset_peak_memory_stats()
    before = _status_mb("VmRSS")
    if not _reset_peak_rss():
        before = float("nan")
    if route == "baseline":
        t, v = timed(lambda: textbook_pwsm(X, Y, 0.0))
    elif route == "direct":
        t, v = timed(lambda: metrics.pwsm(Xd, Yd, 0.0), dev)
    else:  # streamed: statistics of 8192-row chunks merged pairwise, as a Dask reduction would

        def stream():
            s = None
            for a in range(0, rows_, 8192):
                part = stats.row_stats(Xd[a : a + 8192], Yd[a : a + 8192])
                s = part if s is None else stats.merge(s, part)
            return stats.pwsm_from_row_stats(s, 0.0)

        t, v = timed(stream, dev)
    out = {
        "time_s": t,
        "value": v,
        "peak_extra_mb": _status_mb("VmHWM") - before,
        "data_mb": 2 * X.nbytes / 2**20,
    }
    if dev == "cuda" and route != "baseline":
        out["gpu_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
        t_g, _ = timed(lambda: stats.row_stats(Xd, Yd), dev, repeat=5)
        out["stats_s"], out["stats_tflops"] = t_g, 3 * 2.0 * rows_ * cols * cols / t_g / 1e12
    print("RESULT " + json.dumps(out))


def case_channels(args, rows):
    n_img = 50 if args.quick else 200
    res = {}
    for route in ("baseline", "direct", "streamed"):
        dev = "cpu" if route == "baseline" else args.device
        p = subprocess.run(
            [sys.executable, __file__, "--_child", route, "--_n", str(n_img), "--device", dev],
            capture_output=True,
            text=True,
            check=True,
        )
        res[route] = json.loads(p.stdout.split("RESULT ", 1)[1])
    b = res["baseline"]
    for route in ("direct", "streamed"):
        r = res[route]
        assert abs(r["value"] - b["value"]) < 1e-8, (route, r["value"], b["value"])
        row = {
            "case": f"channels ({route})",
            "shape": f"{n_img * 784} x 256",
            "metric": "pwsm a=0",
            "device": args.device,
            "ours_s": r["time_s"],
            "baseline_s": b["time_s"],
            "speedup": b["time_s"] / r["time_s"],
            "ours_peak_extra_mb": r["peak_extra_mb"],
            "baseline_peak_extra_mb": b["peak_extra_mb"],
            "input_data_mb": b["data_mb"],
        }
        for k in ("gpu_peak_mb", "stats_s", "stats_tflops"):
            if k in r:
                row[k] = r[k]
        rows.append(row)


def case_big_gram(args, rows):
    """CUDA only: FLOP rate of the Gram step at a size where it is compute bound (flat view)."""
    n, p = 2000, 512 * 14 * 14
    X = torch.rand(n, p, device="cuda", dtype=torch.float32)
    stats.gram(X[:, :1000])
    t, _ = timed(lambda: stats.gram(X), "cuda", repeat=5)
    rows.append(
        {
            "case": "Gram step, flat view",
            "shape": f"{n} x {p}",
            "metric": "K = X Xᵀ (float64)",
            "device": "cuda",
            "gram_s": t,
            "gram_tflops": 2.0 * n * n * p / t / 1e12,
        }
    )


def case_micro(args, rows):
    """Batched float64 linear-algebra primitives on the device (which route is fastest here)."""
    from ftdyn.metrics import _linalg

    dev = args.device
    g = torch.Generator(device=dev).manual_seed(0)
    for shape in [(2048, 49, 49), (64, 100, 100), (1, 256, 256), (1, 2048, 2048)]:
        A = torch.randn(*shape, dtype=torch.float64, device=dev, generator=g)
        C = A @ A.mT + shape[-1] * torch.eye(shape[-1], dtype=torch.float64, device=dev)
        ops = {
            "eigh": lambda C=C: torch.linalg.eigh(C),
            "eigvalsh": lambda C=C: torch.linalg.eigvalsh(C),
            "svdvals": lambda A=A: torch.linalg.svdvals(A),
            "cholesky": lambda C=C: torch.linalg.cholesky_ex(C),
            "nuc_eigh": lambda A=A: _linalg.nuclear_norm(A, "eigh"),
            "nuc_svd": lambda A=A: _linalg.nuclear_norm(A, "svd"),
        }
        row = {"case": "micro", "shape": "x".join(map(str, shape)), "device": dev}
        for k, f in ops.items():
            f()
            row[k + "_s"] = timed(f, dev, repeat=3)[0]
        rows.append(row)
        print("   ", row, flush=True)


# ---------------------------------------------------------------------- main
def fmt(v):
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--skip-early-baseline", action="store_true")
    ap.add_argument(
        "--cases",
        default="early,deep,channels,biggram",
        help="comma list from micro,early,deep,channels,biggram (biggram: CUDA only)",
    )
    ap.add_argument(
        "--fp64-peak", type=float, default=55.0, help="FP64 peak in TFLOP/s for the fraction"
    )
    ap.add_argument("--_child", help=argparse.SUPPRESS)
    ap.add_argument("--_n", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args._child:
        return channels_child(args._child, args._n, args.device)
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device")
    dev_name = (
        torch.cuda.get_device_name()
        if args.device == "cuda"
        else f"CPU, {torch.get_num_threads()} threads"
    )
    load = (
        ", load average {:.1f} {:.1f} {:.1f}".format(*os.getloadavg())
        if hasattr(os, "getloadavg")
        else ""
    )
    load += "; " + " ".join(
        f"{k}={os.environ.get(k, '-')}" for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS")
    )
    print(
        f"ftdyn.metrics benchmark on {dev_name}{load}; torch {torch.__version__}; numpy"
        f" {np.__version__}",
        flush=True,
    )
    rows: list[dict] = []
    cases = args.cases.split(",")
    for name, fn in (
        ("micro", case_micro),
        ("early", case_early),
        ("deep", case_deep),
        ("channels", case_channels),
    ):
        if name in cases:
            t = time.perf_counter()
            fn(args, rows)
            print(f"  {name}: done in {time.perf_counter() - t:.1f} s", flush=True)
    if args.device == "cuda" and "biggram" in cases:
        case_big_gram(args, rows)
        for r in rows:
            for k in ("gram_tflops", "stats_tflops"):
                if k in r:
                    r[k.replace("tflops", "fraction_of_fp64_peak")] = r[k] / args.fp64_peak
    keys = [
        "case",
        "shape",
        "metric",
        "device",
        "ours_s",
        "baseline_s",
        "baseline_s_extrapolated",
        "speedup",
        "stats_s",
        "speedup_ceiling",
        "ours_per_filter_s",
        "baseline_per_filter_s",
        "baseline_filters_timed",
        "ours_peak_extra_mb",
        "baseline_peak_extra_mb",
        "input_data_mb",
        "gram_tflops",
        "stats_tflops",
        "gram_fraction_of_fp64_peak",
        "stats_fraction_of_fp64_peak",
        "gpu_peak_mb",
    ]
    print()
    for r in rows:
        if r["case"] == "micro":
            continue
        print(" | ".join(f"{k}={fmt(r[k])}" for k in keys if k in r))
    print(
        "\nbaseline_s_extrapolated = baseline time per filter (timed on baseline_filters_timed"
        " filters) x filters; all answers asserted equal.\nstats_s = the float64 products alone"
        " (row_stats); speedup_ceiling = baseline / stats_s: the most that ftdyn's float64 products"
        " leave room for on this device."
    )
    summary = {
        "device": dev_name,
        "load_average": list(os.getloadavg()),
        "quick": args.quick,
        "rows": rows,
    }
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))
    write_result("bench_metrics", summary, command_line())


if __name__ == "__main__":
    main()
