"""Cross-validated linear probe against scikit-learn's RidgeClassifier on the same folds."""

from __future__ import annotations

import numpy as np
import pytest

from ftdyn.metrics.probe import linear_probe, stratified_folds


def _sklearn_accuracy(x, y, folds, ridge):
    from sklearn.linear_model import RidgeClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    correct = 0
    for f in np.unique(folds):
        held = folds == f
        model = make_pipeline(StandardScaler(), RidgeClassifier(alpha=ridge, solver="svd"))
        correct += int((model.fit(x[~held], y[~held]).predict(x[held]) == y[held]).sum())
    return correct / len(y)


@pytest.mark.parametrize("n, d, classes", [(90, 12, 3), (60, 200, 4), (40, 5, 2)])
def test_matches_sklearn_ridge_classifier(n, d, classes):
    rng = np.random.default_rng(n + d)
    y = np.arange(n) % classes
    # errors happen
    x = rng.normal(size=(n, d)) + 0.4 * np.sqrt(12 / d) * rng.normal(size=(classes, d))[y]
    x[:, 0] = 5.0  # a constant feature must not break the standardization
    result = linear_probe(x, y, folds=5, ridge=2.0, seed=7)
    expected = _sklearn_accuracy(x, y, stratified_folds(y, 5, 7), 2.0)
    assert result.accuracy == pytest.approx(expected, abs=1e-12)
    assert (
        0 < result.accuracy < 1
        and result.chance == pytest.approx(1 / classes)
        and result.folds == 5
    )


def test_separable_features_are_perfect_and_noise_is_near_chance():
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(4), 50)
    signal = np.eye(4)[y] * 10 + rng.normal(size=(200, 4))
    assert linear_probe(signal, y).accuracy == 1.0
    noise = linear_probe(rng.normal(size=(200, 30)), y)
    assert noise.accuracy < 0.45  # chance 0.25


def test_folds_are_stratified_balanced_and_seeded():
    y = np.repeat([0, 1, 2], [10, 7, 13])
    folds = stratified_folds(y, 5, seed=1)
    for cls in range(3):
        per_fold = np.bincount(folds[y == cls], minlength=5)
        assert per_fold.max() - per_fold.min() <= 1
    assert np.bincount(folds).max() - np.bincount(folds).min() <= 1
    assert np.array_equal(folds, stratified_folds(y, 5, seed=1))
    assert not np.array_equal(folds, stratified_folds(y, 5, seed=2))


def test_not_estimable_is_nan_with_a_reason():
    y = np.array([0, 0, 1])
    result = linear_probe(np.ones((3, 2)), y)
    assert np.isnan(result.accuracy) and "single sample" in result.reason
    assert "2 classes" in linear_probe(np.ones((4, 2)), np.zeros(4)).reason
    x = np.ones((6, 2))
    x[0, 0] = np.nan
    assert "non-finite" in linear_probe(x, np.array([0, 0, 0, 1, 1, 1])).reason
    assert (
        linear_probe(
            np.random.default_rng(0).normal(size=(6, 2)), np.array([0, 0, 0, 1, 1, 1])
        ).folds
        == 3
    )
