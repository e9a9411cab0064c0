"""The plan's memory estimate of a Gram-side metrics task bounds what the task allocates, with
and without a bootstrap (issue #32: ``--bootstrap 50`` on the demo held 18 GB under a 12.6 GB
limit, its Gram-side metrics tasks far beyond the plan's estimate of them)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from ftdyn.analysis import plan as AP
from ftdyn.analysis.estimation import debiased, jackknifed
from ftdyn.analysis.gram_memory import gram_finish_cost
from ftdyn.analysis.inputs import Source
from ftdyn.analysis.tasks import GramFinishRequest, gram_finish
from ftdyn.config import AnalyzeConfig
from ftdyn.metrics.estimators import JACKKNIFE_GROUPS
from ftdyn.summary import shared_units

N_IMAGES, FILTERS, EPOCHS = 128, 8, 4


def _torch_peak(fn) -> int:
    """The most bytes of torch CPU tensors allocated during ``fn()`` and alive at once (from the
    profiler's allocation events: deterministic, unlike the resident memory)."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted(
        (e.start_ns(), e.nbytes())
        for e in prof.profiler.kineto_results.events()
        if e.name() == "[memory]"
    )
    live = peak = 0
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    return peak


def _grams(rng, cols: int) -> list[torch.Tensor]:
    """EPOCHS raw Grams (FILTERS, N_IMAGES, N_IMAGES) of drifting ReLU activations."""
    X = rng.standard_normal((FILTERS, N_IMAGES, cols))
    out = []
    for t in range(EPOCHS):
        Y = np.maximum(X + 0.3 * t * rng.standard_normal(X.shape), 0.0)
        out.append(torch.from_numpy(Y @ Y.transpose(0, 2, 1)))
    return out


@pytest.mark.parametrize(
    "metrics, trajectory, bootstrap",
    [
        (("cka",), "all", 12),
        (("cka",), "reference", 12),
        (("procrustes", "cka"), "all", 12),
        (("procrustes", "cka"), "reference", 12),
        (("procrustes", "cka"), "reference", 0),
    ],
)
def test_gram_metrics_task_allocates_at_most_the_plans_estimate(
    metrics, trajectory, bootstrap, one_torch_thread
):
    """gram_finish on the Grams of a planned job: its inputs plus the most it allocates stay
    within the job's task estimate, and the estimate is not far above (at most 2x)."""
    # every pair's debiased CKA takes the Grams; the reference pairs' take them where a filter
    # has more positions than there are images (beyond the jackknife's column limit)
    side = 4 if trajectory == "all" else 12
    src = Source("unused.zarr", "features_3", N_IMAGES, N_IMAGES, FILTERS, side, side, 2)
    args = AnalyzeConfig(
        metrics=list(metrics), views="filter", bootstrap=bootstrap, trajectory=trajectory
    )
    spec = AP.JobSpec(0, 0, src, "filter", metrics, epochs=EPOCHS, ref=0)
    job = AP.plan_job(args, spec, AP.Budget(64 * 2**20, threads=1))
    assert job.side == "gram" and len(job.groups) == 1
    assert job.mode == ("all" if trajectory == "all" else "ref")
    narrow = tuple(m for m in metrics if m != "cka") if trajectory == "all" else ()
    assert jackknifed(args, metrics, src) == narrow
    request = GramFinishRequest(
        metrics=list(metrics),
        alpha=0.0,
        ref=0,
        mode=job.mode,
        boot=AP.shared_boot(N_IMAGES, args, 0) if bootstrap else None,
        block_bytes=job.sub_bytes,
        corrected=debiased(args, metrics),
        jackknifed=jackknifed(args, metrics, src),
        jack_groups=shared_units(N_IMAGES, JACKKNIFE_GROUPS, 0, 0),
    )
    Ks = _grams(np.random.default_rng(3), src.height * src.width)
    result = []
    held = sum(K.nbytes for K in Ks) + _torch_peak(lambda: result.append(gram_finish(request, *Ks)))
    assert np.isfinite(result[0].values["cka"][1:]).all()
    assert bool(result[0].replicates) == bool(bootstrap)
    boot = (AP.boot_groups(args, N_IMAGES), bootstrap) if bootstrap else None
    estimate = gram_finish_cost(args, metrics, EPOCHS, boot, job.sub_bytes)
    assert held <= estimate.bytes(FILTERS, N_IMAGES, job.mode) <= 2 * held
    assert held <= job.task_bytes
