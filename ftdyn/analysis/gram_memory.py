"""What a Gram-side metrics task holds (:func:`~ftdyn.analysis.grams.gram_finish`): the estimate
by which the planner sizes Gram-side filter groups (:func:`ftdyn.analysis.plan.plan_job`).

Counted in Grams, K = one checkpoint's n × n float64 Grams of the group's filters: the T raw Grams
the task receives, and beside them the largest of its phases, each measured with torch's
allocation profile (``tests/test_analysis.py``):

* the values and the trajectory: per Gram whose pairs are pending (every checkpoint for all
  pairs, the reference and one other for reference pairs) its cached forms, each one K: the
  double-centered Gram (plug-in CKA, decompositions), the eigenvectors (Procrustes, PWSM) and the
  U-centered Gram (debiased CKA), plus a few K of temporaries;
* the grouped jackknife, and the bootstrap of the metrics other than CKA: two resampled Grams with
  their centered forms and decompositions at a time;
* the bootstrap of CKA: a few centered Grams and products of a block of filters at a time
  (:func:`~ftdyn.analysis.grams._gram_cka_replicates`).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..config import AnalyzeConfig
from .estimation import debiased, jackknifed

#: Grams of temporaries beside the cached forms while the values and the trajectory are computed
PAIR_TEMPORARIES = 3
#: Grams held while one resampled pair is decomposed (two Grams, centered, eigenvectors, copies)
RESAMPLED = 9
#: CKA replicates, per block of filters: its Grams' temporaries (centered Grams, products), its
#: (U, U, U) cubic coefficients (of the pair and of each side, their parts) and the replicates'
#: (U, U) contractions with them, in those units (measured 3.3, 5.8 and 2.1 at 8 to 16 filters,
#: 128 and 256 images, 32 units, 12 and 48 replicates)
BOOT_GRAMS, BOOT_CUBICS, BOOT_SQUARES = 4, 6, 3
#: bytes of a float64
F8 = 8


@dataclass(frozen=True)
class GramFinishCost:
    """What a Gram-side metrics task computes, as far as its memory depends on it."""

    #: T checkpoints (the Grams the task receives)
    epochs: int
    #: cached n × n forms per Gram whose pairs are pending
    per_gram: int
    #: whether it resamples the Grams (jackknife, or bootstrap of a metric other than CKA)
    resampled: bool
    #: CKA replicates: bytes of the Grams of a block of filters (None: no CKA replicates)
    boot_block: int | None = None
    #: CKA replicates: groups of images and replicates
    units: int = 0
    replicates: int = 0

    def bytes(self, filters: int, n: int, mode: str) -> float:
        """Peak bytes of the task for a group of ``filters`` filters and ``n`` images in pair
        ``mode``."""
        one = n * n * F8
        k_bytes = filters * one
        pending = self.epochs if mode == "all" else 2
        phase = (pending * self.per_gram + PAIR_TEMPORARIES) * k_bytes
        if self.resampled:
            phase = max(phase, RESAMPLED * k_bytes)
        if self.boot_block is not None:
            f = min(filters, max(1, self.boot_block // one))
            U = self.units
            coefficients = (BOOT_CUBICS * U**3 + BOOT_SQUARES * self.replicates * U**2) * F8
            phase = max(phase, f * (BOOT_GRAMS * one + coefficients))
        return self.epochs * k_bytes + phase


def gram_finish_cost(
    config: AnalyzeConfig, metrics, epochs: int, boot: tuple[int, int] | None, block: int
) -> GramFinishCost:
    """The :class:`GramFinishCost` of a Gram-side job of ``metrics`` over ``epochs`` checkpoints;
    ``boot``: (groups of images, replicates) of its bootstrap (None: none), CKA's replicates
    computed in blocks of ``block`` bytes of Grams."""
    corrected = debiased(config, metrics)
    decomposed = [m for m in metrics if m not in ("cka", "cka_debiased")]
    plugin_cka = "cka" in metrics and not corrected
    per_gram = (
        int(bool(decomposed or plugin_cka))
        + int(bool(decomposed))
        + int(corrected or "cka_debiased" in metrics)
    )
    wanted = (
        () if boot is None else [m for m in metrics if m in (config.bootstrap_metrics or metrics)]
    )
    # CKA's replicates come from unit-level coefficients; every other estimate on a subset of the
    # images resamples the Grams
    resampled = bool(set(jackknifed(config, metrics)) | (set(wanted) - {"cka"}))
    if "cka" not in wanted:
        return GramFinishCost(epochs, per_gram, resampled)
    return GramFinishCost(epochs, per_gram, resampled, block, *boot)
