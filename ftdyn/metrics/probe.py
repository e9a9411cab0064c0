"""Cross-validated linear-probe accuracy of frozen features (pure numpy, no I/O).

How much a layer's features already give for a labelling, without training the layer:
standardize the features (train-fold statistics), fit a closed-form ridge classifier on
±1 one-hot targets (scikit-learn's ``RidgeClassifier`` with ``StandardScaler`` computes the
same thing), predict the arg-max class of each held-out sample over stratified, seeded folds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["ProbeResult", "stratified_folds", "ridge_predict", "linear_probe"]


@dataclass(frozen=True)
class ProbeResult:
    accuracy: (
        float  #: fraction of samples classified correctly when held out; NaN when not estimable
    )
    chance: float  #: accuracy of always answering the most frequent class
    folds: int
    reason: str | None = None  #: why ``accuracy`` is NaN


def stratified_folds(labels: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """Fold index (0..k-1) of every sample: each class is shuffled (seeded) and dealt
    round-robin."""
    labels = np.asarray(labels)
    folds = np.empty(len(labels), np.int64)
    rng = np.random.default_rng(int(seed))
    offset = 0
    for cls in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == cls))
        folds[members] = (offset + np.arange(len(members))) % k
        # the next class starts where this one stopped, so fold sizes stay balanced
        offset += len(members)
    return folds


def ridge_predict(
    train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, classes: np.ndarray, ridge: float
) -> np.ndarray:
    """Class predictions for ``test_x`` of a ridge classifier fitted on standardized ``train_x``."""
    mean = train_x.mean(0)
    std = train_x.std(0)
    std[std == 0] = 1.0  # a constant feature carries nothing; keep it at 0 instead of dividing by 0
    xs, xt = (train_x - mean) / std, (test_x - mean) / std
    targets = np.where(train_y[:, None] == classes[None, :], 1.0, -1.0)
    intercept = targets.mean(0)
    centred = targets - intercept
    n, d = xs.shape
    if d <= n:  # primal: (XᵀX + λI)⁻¹ XᵀY
        weights = np.linalg.solve(xs.T @ xs + ridge * np.eye(d), xs.T @ centred)
    else:  # dual, cheaper when features outnumber samples: Xᵀ (XXᵀ + λI)⁻¹ Y
        weights = xs.T @ np.linalg.solve(xs @ xs.T + ridge * np.eye(n), centred)
    return classes[np.argmax(xt @ weights + intercept, axis=1)]


def linear_probe(
    features: np.ndarray, labels: np.ndarray, *, folds: int = 5, ridge: float = 1.0, seed: int = 0
) -> ProbeResult:
    """Stratified ``folds``-fold cross-validated accuracy of a ridge classifier on ``features`` (N,
    D).

    Uses fewer folds when the smallest class has fewer members (at least 2); NaN with a
    reason when a class has a single sample, there is one class only, or a feature is not finite.
    """
    x = np.asarray(features, np.float64).reshape(len(features), -1)
    y = np.asarray(labels)
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"features have {x.shape[0]} rows but labels {y.shape[0]}")
    classes, counts = np.unique(y, return_counts=True)
    chance = float(counts.max() / counts.sum()) if len(counts) else float("nan")
    k = int(min(folds, counts.min())) if len(counts) else 0
    if len(classes) < 2:
        return ProbeResult(float("nan"), chance, 0, "fewer than 2 classes")
    if k < 2:
        return ProbeResult(
            float("nan"), chance, 0, "a class has a single sample (cross-validation needs 2)"
        )
    if not np.isfinite(x).all():
        return ProbeResult(float("nan"), chance, k, "non-finite features")
    fold = stratified_folds(y, k, seed)
    correct = 0
    for f in range(k):
        held = fold == f
        correct += int(
            (ridge_predict(x[~held], y[~held], x[held], classes, float(ridge)) == y[held]).sum()
        )
    return ProbeResult(correct / len(y), chance, k)
