"""Summary statistics of distance curves: agreement, reusability, bootstrap intervals.

Pure numpy, NaN-aware, no I/O. Conventions (documented for the README):

* **Agreement** — Pearson r between two metrics' distance curves of one layer,
  across epochs, the reference epoch excluded; only epochs where both values are
  finite count (``n_epochs``); NaN when fewer than 3 such epochs remain or a curve is
  constant (r is undefined or trivially ±1 with 2 points).
* **Agreement summary** — mean ± std (population std, ``ddof=0``) of the finite r over
  all layers and experiments. This is *not* the paper's "r = 0.83 ± 0.43": the
  published code correlated the metrics across filters per (epoch, layer, class) and
  took a plain mean (:func:`pearson_plain`; ``--preset paper-code`` reproduces it).
* **Reusability** — per experiment and metric: the layer-averaged distance at every
  epoch (NaN-aware mean over layers), then mean ± std (``ddof=0``) over the epochs,
  reference excluded (the paper's Table 2). Per layer: the same over that layer's curve.
* **Bootstrap** — percentile intervals (2.5 %, 97.5 % for ``level=0.95``) of the
  replicate values, NaN replicates ignored; resampling weights are multinomial counts
  drawn with :func:`bootstrap_counts` (one row per replicate).
* **Convergence** — a distance on nested subsets of the probe images has converged when its
  change from half the images to all is within its own noise or 2 % of its scale
  (:func:`convergence_verdict`).
"""

from __future__ import annotations

import warnings

import numpy as np

MIN_AGREEMENT_EPOCHS = 3


def _quiet(func, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return func(*args, **kwargs)


def nanmean(values, axis=None):
    """Mean ignoring NaN; NaN (no warning) where every value is NaN."""
    return _quiet(np.nanmean, np.asarray(values, dtype=np.float64), axis=axis)


def nanstd(values, axis=None, ddof: int = 0):
    """Std ignoring NaN (``ddof=0``); NaN where no value is finite."""
    return _quiet(np.nanstd, np.asarray(values, dtype=np.float64), axis=axis, ddof=ddof)


def pearson(a, b, min_points: int = MIN_AGREEMENT_EPOCHS) -> tuple[float, int]:
    """(r, n) over the positions where both ``a`` and ``b`` are finite.

    r is NaN when fewer than ``min_points`` remain or either series is constant.
    """
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    ok = np.isfinite(a) & np.isfinite(b)
    n = int(ok.sum())
    if n < min_points:
        return float("nan"), n
    x, y = a[ok] - a[ok].mean(), b[ok] - b[ok].mean()
    den = np.sqrt((x * x).sum() * (y * y).sum())
    scale = max(np.abs(a[ok]).max(), np.abs(b[ok]).max(), 1e-300)
    if den <= (1e-12 * scale) ** 2 * n:  # a constant curve (up to rounding)
        return float("nan"), n
    return float(np.clip((x * y).sum() / den, -1.0, 1.0)), n


def pearson_plain(a, b, axis: int = -1) -> np.ndarray:
    """Pearson r along ``axis`` computed as the published code did: no NaN handling (any NaN
    makes r NaN), NaN where either series is constant (0/0)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    x = a - a.mean(axis=axis, keepdims=True)
    y = b - b.mean(axis=axis, keepdims=True)
    den = np.sqrt((x * x).sum(axis=axis) * (y * y).sum(axis=axis))
    num = (x * y).sum(axis=axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, np.clip(num / np.where(den > 0, den, 1.0), -1.0, 1.0), np.nan)


def agreement(curves: np.ndarray, keep: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pearson r between every pair of metrics, per layer.

    ``curves`` (metric, layer, epoch) distances; ``keep`` (epoch,) bool, False for the
    reference epoch and epochs to ignore. Returns ``r`` and ``n`` of shape
    (layer, metric, metric): r = 1 on the diagonal where the curve is not constant.
    """
    curves = np.asarray(curves, dtype=np.float64)
    m, n_layers, _ = curves.shape
    r = np.full((n_layers, m, m), np.nan)
    count = np.zeros((n_layers, m, m), dtype=np.int64)
    for layer in range(n_layers):
        for i in range(m):
            for j in range(i, m):
                value, k = pearson(curves[i, layer, keep], curves[j, layer, keep])
                r[layer, i, j] = r[layer, j, i] = value
                count[layer, i, j] = count[layer, j, i] = k
    return r, count


def agreement_summary(r: np.ndarray) -> tuple[float, float, int]:
    """(mean, std, n) of the finite values of ``r`` (any shape), std with ddof=0."""
    r = np.asarray(r, dtype=np.float64)
    finite = r[np.isfinite(r)]
    if finite.size == 0:
        return float("nan"), float("nan"), 0
    return float(finite.mean()), float(finite.std()), int(finite.size)


def reusability(
    curves: np.ndarray, keep: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Reusability from ``curves`` (metric, layer, epoch) and ``keep`` (epoch,) bool.

    Returns (mean, std) of shape (metric,) — over kept epochs of the layer-averaged
    distance — and (layer_mean, layer_std) of shape (metric, layer).
    """
    curves = np.asarray(curves, dtype=np.float64)[..., np.asarray(keep, dtype=bool)]
    layer_avg = nanmean(curves, axis=1)  # (metric, epoch)
    return (
        nanmean(layer_avg, axis=-1),
        nanstd(layer_avg, axis=-1),
        nanmean(curves, axis=-1),
        nanstd(curves, axis=-1),
    )


def bootstrap_counts(n_units: int, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """(n_boot, n_units) int multinomial counts: unit u is drawn counts[b, u] times in
    replicate b."""
    if n_units < 1 or n_boot < 1:
        return np.zeros((max(n_boot, 0), max(n_units, 0)), dtype=np.int64)
    return rng.multinomial(n_units, np.full(n_units, 1.0 / n_units), size=n_boot).astype(np.int64)


def bootstrap_indices(n_items: int, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """(n_boot, n_items) indices drawn with replacement (image bootstrap)."""
    return rng.integers(0, n_items, size=(n_boot, n_items))


def shared_units(n_items: int, n_units: int, seed: int, experiment: int) -> np.ndarray:
    """Bootstrap unit (0..n_units-1) of every image: a seeded permutation dealt round-robin, so
    units mix classes (stores are class-sorted). The same for every layer, view and epoch of
    an experiment: replicates built from it are paired across all of them."""
    units = np.empty(n_items, dtype=np.int64)
    units[np.random.default_rng([seed, experiment, 7]).permutation(n_items)] = (
        np.arange(n_items) % n_units
    )
    return units


def shared_counts(n_units: int, n_boot: int, seed: int, experiment: int) -> np.ndarray:
    """(n_boot, n_units) counts of :func:`bootstrap_counts`, the same draws for every job of an
    experiment that uses ``n_units`` units (one image resample per replicate)."""
    return bootstrap_counts(n_units, n_boot, np.random.default_rng([seed, experiment, 8, n_units]))


def shared_indices(units: np.ndarray, counts: np.ndarray) -> list[np.ndarray]:
    """Image indices of each replicate: every image of unit u repeated counts[b, u] times (the
    same resample as the unit counts, for views that resample single images exactly)."""
    members = [np.flatnonzero(units == u) for u in range(counts.shape[1])]
    return [
        np.concatenate([np.tile(members[u], int(c)) for u, c in enumerate(row) if c])
        for row in counts
    ]


def percentile_interval(
    replicates, level: float = 0.95, axis: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """NaN-aware percentile interval of ``replicates`` along ``axis``."""
    tail = 100.0 * (1.0 - level) / 2.0
    reps = np.asarray(replicates, dtype=np.float64)
    low = _quiet(np.nanpercentile, reps, tail, axis=axis)
    high = _quiet(np.nanpercentile, reps, 100.0 - tail, axis=axis)
    return np.asarray(low), np.asarray(high)


def class_balanced_mean(values: np.ndarray, labels: np.ndarray, axis: int = 0) -> np.ndarray:
    """NaN-aware mean over classes of the per-class means along ``axis``.

    ``values`` has the samples on ``axis``; ``labels`` (samples,) int. Classes with no
    finite value do not count (the published code's "average per class, then over
    classes").
    """
    values = np.moveaxis(np.asarray(values, dtype=np.float64), axis, 0)
    labels = np.asarray(labels)
    classes = np.unique(labels)
    per_class = np.stack([nanmean(values[labels == c], axis=0) for c in classes])
    return nanmean(per_class, axis=0)


#: a distance has converged when its change from half the images to all is within its noise or
#: this share of its scale (the random-init ceiling, else the metric's range)
CONVERGENCE_TOLERANCE = 0.02
#: two-sided 95 % normal quantile: turns the subsets' standard error into a half-width like the
#: bootstrap's
_Z95 = 1.959963984540054


def subset_noise(subsets) -> np.ndarray:
    """95 % half-width of the all-images distance implied by nested subsets (..., fraction) at
    1/4, 1/2 and all of the images (the last three entries).

    Nested means share their images, so under sampling noise alone d(n) has variance σ²·N/n and
    d(1/4) − 3·d(1/2) + 2·d(all) has variance 6σ²; that combination is also blind to a trend
    c/n (the estimators' bias), so a systematic drift with the images is not taken for noise.
    NaN where any of the three is not finite.
    """
    conv = np.asarray(subsets, dtype=np.float64)
    quarter, half, full = conv[..., -3], conv[..., -2], conv[..., -1]
    return _Z95 * np.abs(quarter - 3.0 * half + 2.0 * full) / np.sqrt(6.0)


def convergence_verdict(
    subsets,
    n_images,
    *,
    half_width=np.nan,
    ceiling=np.nan,
    metric_range=1.0,
    tolerance: float = CONVERGENCE_TOLERANCE,
) -> tuple[np.ndarray, np.ndarray]:
    """(converged, images needed) of distances measured on nested subsets of the probe images.

    ``subsets`` (..., fraction): the distance on 1/4, 1/2 and all of the images (the last three
    entries); ``n_images`` the images of "all" (broadcast against ``subsets[..., -1]``);
    ``half_width``: the bootstrap interval's half-width of the all-images distance, NaN where
    there is none; ``ceiling``: the random-init ceiling, NaN where there is none;
    ``metric_range``: the span of the metric's values.

    A distance has converged when ``|d(all) − d(1/2)|`` is at most the larger of its noise
    (``half_width`` where finite, else :func:`subset_noise`) and ``tolerance`` × its scale (the
    ceiling where finite and positive, else ``metric_range``). Images needed, where not: the
    change taken as ∝ 1/images (the order of these estimators' bias), so it falls within that
    bound at images·change/bound. Both are undefined (False, NaN) where d(1/2) or d(all) is not
    finite.
    """
    conv = np.asarray(subsets, dtype=np.float64)
    half, full = conv[..., -2], conv[..., -1]
    change = np.abs(full - half)
    width = np.broadcast_to(np.asarray(half_width, dtype=np.float64), change.shape)
    noise = np.where(np.isfinite(width), width, subset_noise(conv))
    ceiling = np.broadcast_to(np.asarray(ceiling, dtype=np.float64), change.shape)
    scale = np.where(np.isfinite(ceiling) & (ceiling > 0), ceiling, metric_range)
    allowed = np.fmax(noise, tolerance * scale)  # fmax: a NaN noise leaves the tolerance
    defined = np.isfinite(change)
    ok = defined & (change <= allowed)
    n = np.broadcast_to(np.asarray(n_images, dtype=np.float64), change.shape)
    with np.errstate(invalid="ignore", divide="ignore"):
        need = np.where(defined & ~ok, np.ceil(n * change / allowed), np.nan)
    return ok, need
