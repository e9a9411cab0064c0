"""The grouped (delete-a-group) jackknife's arithmetic: the row partition and the combination.

Kept apart from :mod:`ftdyn.metrics.estimators` because the metric functions of
:mod:`ftdyn.metrics.direct` compute their corrected values with it, while the estimators module
itself calls those functions (and the registry): the public names are re-exported there.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from . import _linalg as L

__all__ = [
    "ESTIMATORS",
    "JACKKNIFE_GROUPS",
    "check_estimator",
    "jackknife_groups",
    "jackknife",
    "leave_group_out",
]

#: "corrected": the size-bias-corrected estimator (debiased CKA, grouped jackknife for Procrustes
#: and PWSM); "plugin": the metric's formula on the sample, the published convention
ESTIMATORS = ("corrected", "plugin")
#: groups of the delete-a-group jackknife: each leave-out keeps 7/8 of the rows, so its bias is
#: close to the full sample's (the 1/n term is removed), and 8 leave-outs keep the cost at 9 runs
JACKKNIFE_GROUPS = 8


def check_estimator(estimator) -> str:
    if estimator not in ESTIMATORS:
        raise ValueError(
            f"estimator must be one of {', '.join(map(repr, ESTIMATORS))}; got {estimator!r}"
        )
    return estimator


def jackknife_groups(n_rows: int, groups: int = JACKKNIFE_GROUPS, seed: int = 0) -> np.ndarray:
    """The group (0 … G−1) of each of ``n_rows`` rows: a seeded random partition into
    G = min(``groups``, ``n_rows``) groups whose sizes differ by at most one (G = ``n_rows``
    is the delete-one jackknife)."""
    if int(n_rows) < 1:
        raise ValueError(f"n_rows must be >= 1, got {n_rows!r}")
    if int(groups) < 2:
        raise ValueError(f"groups must be >= 2, got {groups!r}")
    count = min(int(groups), int(n_rows))
    return np.random.default_rng(seed).permutation(np.arange(int(n_rows)) % count)


def jackknife(plugin_value, leave_out_values):
    """Bias-corrected value and standard error from the plug-in value θ̂ on all rows and the
    values θ̂₍₋g₎ on all rows but group g (first axis, G ≥ 2; other axes broadcast with θ̂):

    θ_J = G·θ̂ − (G−1)·mean_g θ̂₍₋g₎,   SE_J = sqrt((G−1)/G · Σ_g (θ̂₍₋g₎ − mean)²)

    (Quenouille/Tukey; Efron & Tibshirani 1993, ch. 11). A NaN among an element's values makes
    both results NaN. Python floats for scalar input, else float64 arrays.
    """
    theta = np.asarray(plugin_value, dtype=np.float64)
    leave_out = np.asarray(leave_out_values, dtype=np.float64)
    if leave_out.ndim < 1 or leave_out.shape[0] < 2:
        raise ValueError(
            f"leave_out_values needs >= 2 leave-out values on its first axis, got shape"
            f" {leave_out.shape}"
        )
    count = leave_out.shape[0]
    mean = leave_out.mean(axis=0)
    corrected = count * theta - (count - 1) * mean
    se = np.sqrt((count - 1) / count * ((leave_out - mean) ** 2).sum(axis=0))
    corrected, se = np.broadcast_arrays(corrected, se)
    if corrected.ndim == 0:
        return float(corrected), float(se)
    return corrected.copy(), se.copy()


def leave_group_out(plugin, X, Y, seed: int = 0):
    """(``plugin(X, Y)``, the G values of ``plugin`` on all rows but group g stacked on a first
    axis) for stacks (..., rows, cols) of numpy arrays or torch tensors; ``plugin`` is a metric
    function of two such stacks. With one row there is nothing to leave out: the leave-out
    values are NaN, so the jackknife is NaN too (as is the plug-in: one row is dead input)."""
    Xt, Yt = L.as_tensor(X, "X"), L.as_tensor(Y, "Y")
    L.check_pair(Xt, Yt)
    full = plugin(Xt, Yt)
    n = Xt.shape[-2]
    if n < 2:
        return full, np.full((2, *np.shape(full)), math.nan)
    group = torch.as_tensor(jackknife_groups(n, seed=seed), device=Xt.device)
    leave_out = []
    for g in range(int(group.max()) + 1):
        keep = torch.nonzero(group != g).squeeze(-1)
        leave_out.append(plugin(Xt.index_select(-2, keep), Yt.index_select(-2, keep)))
    return full, np.stack(leave_out)
