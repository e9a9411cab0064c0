"""Memory plans: how each (experiment, layer, view) job is cut into Dask tasks.

The planner turns ``--memory-limit`` (and, on a GPU, the card's memory) into filter
groups, checkpoint passes, Gram panels and bootstrap groups from an explicit per-task
estimate, and compares thread counts by estimated time (the module doc of
:mod:`ftdyn.analysis`, "Memory").
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field

import numpy as np
import torch

from ..config import DEBIASED_CKA, AnalyzeConfig, arg
from ..devices import device_memory, route
from ..errors import FtdynError
from ..metrics.estimators import JACKKNIFE_GROUPS
from ..metrics.registry import diagonal_self_products
from ..metrics.stats import choose_side
from ..summary import shared_counts, shared_indices, shared_units
from .estimation import debiased, debiased_metrics, heldout_metrics, jackknifed
from .gram_memory import F8, GramFinishCost, gram_finish_cost
from .inputs import Experiment, Source
from .maps import map_pairs

MAX_UNITS = 32
MIN_UNITS = 8
SUB_BLOCK_BYTES = 32 * 2**20
#: caps for tests and tuning: at most this many chunks per Gram panel / filters per group (None = by
#: memory)
MAX_PANEL_CHUNKS: int | None = None
MAX_FILTER_GROUP: int | None = None
MAX_CHECKPOINTS_PER_PASS: int | None = None
#: part of --memory-limit kept for what tasks do not estimate (thread arenas, zarr's loop, the
#: graph)
RESERVE = 128 * 2**20
#: transient memory of one zarr chunk read, in chunks (compressed bytes, decoded buffer, output
#: copy: measured
#: peak ≈ 2.8 chunks for one read)
READ_OVERHEAD = 2.5
#: per-thread rates used only to compare plans (decode + float64 conversion; float64 GEMM on CPU)
READ_RATE = 0.3e9
FLOP_RATE = 15e9
#: float64 rate of one GPU on these batched problems (well under an H100's ~50 TFLOP/s peak), shared
#: by all threads
GPU_FLOP_RATE = 5e12


@dataclass
class Job:
    """One view of one layer of one experiment: how it is computed and its Dask outputs."""

    exp: int
    layer: int
    view: str
    metrics: list[str]
    side: str  # row | gram | map
    mode: str  # all | ref
    groups: list[slice]  # filter groups (one pass each); [slice(None)] otherwise
    batch: int  # filters per group (1 for whole-layer views)
    # row side, reference pairs: checkpoints per pass
    ckpt_groups: list = field(default_factory=lambda: [None])
    sub_bytes: int = SUB_BLOCK_BYTES  # float64 row block per matrix
    read_bytes: float = 0.0  # estimated bytes decoded (re-reads included)
    flops: float = 0.0  # estimated float64 FLOPs of the statistics
    units: int = 1
    panels: int = 1
    leaves: int = 1
    task_bytes: int = 0
    outputs: list = field(default_factory=list)
    #: the metrics of the view whose convergence subsets this job computes (None: its own)
    convergence: list[str] | None = None
    #: row side: its leaves also keep the spatial means of every block they read (the
    #: linear probes' features, :func:`mark_pooled`)
    pooled: bool = False
    #: row side, reference pairs: of the self-products XᵀX, YᵀY only their diagonals (all
    #: that the job's metrics need, :func:`ftdyn.metrics.diagonal_self_products`)
    diagonal: bool = False
    #: row side: the statistics also hold the debiased CKA's fourth moments
    quartic: bool = False

    def __post_init__(self):
        if self.convergence is None:
            self.convergence = list(self.metrics)

    def passes(self, T: int, ref: int) -> list[list[int]]:
        """The checkpoint positions of each pass over the store, of T with the reference at
        ``ref``: the reference and a checkpoint group's positions (all of them: one pass)."""
        return [list(range(T)) if cg is None else [ref, *cg] for cg in self.ckpt_groups]


def chunk_groups(n_chunks: int, n_groups: int) -> list[list[int]]:
    n_groups = max(1, min(n_groups, n_chunks))
    bounds = np.linspace(0, n_chunks, n_groups + 1).round().astype(int)
    return [
        list(range(bounds[i], bounds[i + 1])) for i in range(n_groups) if bounds[i + 1] > bounds[i]
    ]


@dataclass(frozen=True)
class JobSpec:
    """One (experiment, layer, view) and the ``metrics`` of it to plan (:func:`metric_parts`):
    the layer's :class:`Source`, the number of analyzed checkpoints and the position of the
    reference among them."""

    exp: int
    layer: int
    src: Source
    view: str
    metrics: tuple[str, ...]
    epochs: int
    ref: int
    #: whether the job gives its metrics' convergence subsets (else another job of the view does)
    subsets: bool = True


@dataclass(frozen=True)
class Budget:
    """Memory for the concurrently running tasks of a plan: ``host`` bytes of host memory for
    all ``threads`` of them and, when the statistics run on a GPU, ``device`` bytes of its
    memory (raw chunks then count against the host budget; float64 blocks, statistics and
    decompositions against the GPU's). ``device`` None: one pool."""

    host: int
    threads: int
    device: int | None = None

    @property
    def task(self) -> int:
        """Host bytes per task."""
        return self.host // max(1, self.threads)

    @property
    def stats_total(self) -> int:
        """Bytes for the statistics of all tasks (the host's or the GPU's)."""
        return self.host if self.device is None else self.device

    @property
    def stats(self) -> int:
        """Bytes for the statistics of one task."""
        return self.stats_total // max(1, self.threads)

    @property
    def sub_block(self) -> int:
        """Bytes of one float64 row block: small when memory is tight."""
        return int(max(2**20, min(SUB_BLOCK_BYTES, self.stats // 16)))

    def fits(self, host: float, dev: float) -> bool:
        """Whether a task holding ``host`` bytes of raw data and ``dev`` bytes of
        statistics fits."""
        return (
            host + dev <= self.task
            if self.device is None
            else host <= self.task and dev <= self.stats
        )

    def host_part(self, host: float, dev: float) -> int:
        """What such a task holds in host memory."""
        return int(host + dev if self.device is None else host)


def plan_job(config: AnalyzeConfig, spec: JobSpec, budget: Budget) -> Job:
    """Choose side, pair mode, filter groups, bootstrap groups and task sizes for one job
    within ``budget`` (pure: reads nothing)."""
    if spec.view == "map":
        return _plan_map(config, spec, budget)
    # the convergence run's groups only give subsets: they do not weigh the side; a debiased CKA
    # of every pair (the trajectory) needs the per-image Grams
    grams_only = debiased(config, spec.metrics) and config.trajectory == "all"
    side, per_filter, cols = _side(
        spec, 1 if config.nested else job_units(config, spec), grams_only
    )
    sizes = _filter_group_sizes(spec.src.channels if per_filter else 1)
    if per_filter and MAX_FILTER_GROUP:
        sizes = [g for g in sizes if g <= MAX_FILTER_GROUP] or [1]
    if side == "gram":
        return _plan_gram(config, spec, budget, per_filter, sizes)
    quartic = bool(debiased_metrics(config, spec.metrics))
    return _plan_row(
        config, spec, budget, _RowCosts(spec, cols, per_filter, budget, quartic), sizes
    )


def _side(spec: JobSpec, units: int, grams_only: bool = False) -> tuple[str, bool, int]:
    """(side, per-filter view, columns of one matrix) of a row- or Gram-side view, whose
    statistics hold ``units`` groups of images; ``grams_only``: its CKA is the debiased one of
    every pair, which only the Gram side gives (the row side gives the reference pairs')."""
    src, view, T, n = spec.src, spec.view, spec.epochs, spec.src.n
    hw = src.height * src.width
    if view in ("channels", "pooled"):
        return "row", False, src.channels
    per_filter = view == "filter"
    cols = hw if per_filter else src.channels * hw
    side = choose_side(n, cols)
    if grams_only or DEBIASED_CKA in spec.metrics:  # U-centering of every pair's Grams
        side = "gram"
    elif units > 1 and not _decomposed(spec.metrics) and T * n * n < units * (2 * T - 1) * cols**2:
        # CKA's replicates need no decomposition on either side: the Grams (T n×n per filter)
        # are then cheaper than the row side's statistics per group of images (each group's
        # XᵀX, and XᵀY and YᵀY per checkpoint)
        side = "gram"
    return side, per_filter, cols


def _decomposed(metrics) -> bool:
    """Whether any of ``metrics`` needs eigen- or singular values (not CKA's inner products)."""
    return any(m not in ("cka", DEBIASED_CKA) for m in metrics)


def _widen(src: Source) -> int:
    """Bytes held per raw byte once a chunk is converted: the raw chunk plus its float64 copy."""
    return 1 + F8 // src.itemsize


def _groups_of(channels: int, g: int, per_filter: bool) -> list[slice]:
    return (
        [slice(s, min(s + g, channels)) for s in range(0, channels, g)]
        if per_filter
        else [slice(None)]
    )


def _plan_map(config: AnalyzeConfig, spec: JobSpec, budget: Budget) -> Job:
    """The map view: computed per (image, filter) chunk by chunk."""
    src, T = spec.src, spec.epochs
    mode = "all" if config.trajectory == "all" else "ref"
    held = T if mode == "all" else 2  # raw chunks (host) and their float64 copies
    resident = budget.host_part(
        (held + READ_OVERHEAD) * src.chunk_bytes, held * (_widen(src) - 1) * src.chunk_bytes
    )
    slab = src.n * src.image_bytes
    return Job(
        spec.exp,
        spec.layer,
        spec.view,
        list(spec.metrics),
        "map",
        mode,
        [slice(None)],
        src.channels,
        task_bytes=resident,
        leaves=max(1, min(src.n_chunks, 4 * budget.threads)),
        read_bytes=T * slab,
        flops=len(map_pairs(T, 0, mode))
        * src.n
        * src.channels
        * 30
        * max(src.height, src.width) ** 3,
    )


def _gram_modes(
    config: AnalyzeConfig, spec: JobSpec, metrics: list[str], cols_per_filter: int
) -> list[str]:
    """Pair modes to try, preferred first. auto: all pairs if their work (an n×n product +
    nuclear norm, ~20 n³ per filter, or n² for cka alone) is at most the work of building the
    Grams (T·n²·cols per filter)."""
    T, n = spec.epochs, spec.src.n
    extra_pairs = T * (T - 1) // 2 - (T - 1)
    cheap = extra_pairs * (20 * n if _decomposed(metrics) else 1) <= T * cols_per_filter
    return {"all": ["all"], "reference": ["ref"]}.get(
        config.trajectory, ["all", "ref"] if cheap else ["ref"]
    )


def _gram_choice(
    spec: JobSpec,
    budget: Budget,
    sizes: list[int],
    modes: list[str],
    cols_per_filter: int,
    fixed: float,
    finish: GramFinishCost,
) -> tuple[int, str, int, float, float] | None:
    """(filters per group, pair mode, bytes per panel chunk, room per panel task, bytes of the
    metrics task) of the first (preferred mode, largest group) that fits, None when none does:
    smaller groups cost little more, so the memory limit changes the pairs computed last."""
    src, n = spec.src, spec.src.n
    for mode in modes:
        for g in sizes:
            k_bytes = g * n * n * F8
            # float64 panel rows + their output block
            per_chunk = src.spc * (g * cols_per_filter * F8 + g * n * F8)
            # every checkpoint's K is a Dask result until the metrics task, which holds them all
            # beside its own work (:mod:`.gram_memory`); while the panels run, the Ks built so
            # far (+ one being assembled) sit beside them: both within one task's share
            held = finish.bytes(g, n, mode)
            room = budget.stats - (spec.epochs + 1) * k_bytes - fixed  # per panel task
            if held <= budget.stats and room >= per_chunk:
                return g, mode, per_chunk, room, held
    return None


def _plan_gram(
    config: AnalyzeConfig, spec: JobSpec, budget: Budget, per_filter: bool, sizes: list[int]
) -> Job:
    """Gram side: each checkpoint's n×n Gram per filter, built by panels of sample chunks."""
    src, T, n, C = spec.src, spec.epochs, spec.src.n, spec.src.channels
    metrics = list(spec.metrics)
    cols_per_filter = src.height * src.width if per_filter else C * src.height * src.width
    host_fixed = src.chunk_bytes * (1 + READ_OVERHEAD)  # a raw chunk and zarr's decode buffers
    # its float64 copy, product blocks
    dev_fixed = src.chunk_bytes * (_widen(src) - 1) + 2 * budget.sub_block
    fixed = dev_fixed + (host_fixed if budget.device is None else 0)
    boot = (boot_groups(config, n), config.bootstrap) if bootstrapped(config, metrics) else None
    finish = gram_finish_cost(config, metrics, T, boot, budget.sub_block)
    modes = _gram_modes(config, spec, metrics, cols_per_filter)
    choice = None
    if host_fixed <= budget.task:
        choice = _gram_choice(spec, budget, sizes, modes, cols_per_filter, fixed, finish)
    if choice is None:
        raise FtdynError(
            f"{arg('memory_limit')}: layer {src.var} view {spec.view} needs about "
            f"{finish.bytes(1, n, modes[-1]) / 1e9:.1f} GB per thread for the Gram matrices of {n}"
            " images (one filter) beside its reads; raise the limit or use fewer probe images."
        )
    g, mode, per_chunk, room, held = choice
    k = int(min(src.n_chunks, max(1, room // max(1, per_chunk)), MAX_PANEL_CHUNKS or src.n_chunks))
    panels = math.ceil(src.n_chunks / k)
    groups = _groups_of(C, g, per_filter)
    slab = src.n * src.image_bytes
    filters = C if per_filter else 1
    return Job(
        spec.exp,
        spec.layer,
        spec.view,
        metrics,
        "gram",
        mode,
        groups,
        g,
        panels=panels,
        sub_bytes=budget.sub_block,
        task_bytes=budget.host_part(host_fixed, max(dev_fixed + k * per_chunk, held)),
        read_bytes=T
        * slab
        * (panels + 1)
        / 2
        * len(groups)
        * (src.decoded_fraction(g) if per_filter else 1.0),
        flops=T * n * n * cols_per_filter * filters + T * 10 * n**3 * filters,
    )


@dataclass(frozen=True)
class _RowCosts:
    """Per-task memory and store reads of the row-side plans of one job."""

    spec: JobSpec
    cols: int  # columns of one matrix (p)
    per_filter: bool
    budget: Budget
    #: the statistics also hold the debiased CKA's fourth moments (:attr:`Job.quartic`)
    quartic: bool = False

    @property
    def others(self) -> list[int]:
        """Checkpoint positions besides the reference."""
        return [t for t in range(self.spec.epochs) if t != self.spec.ref]

    def diagonal(self, mode: str) -> bool:
        """Whether the self-products are kept as their diagonals (:attr:`Job.diagonal`)."""
        return mode == "ref" and diagonal_self_products(self.spec.metrics)

    def memory(self, g: int, mode: str, units: int, k: int) -> tuple[float, float, float]:
        """(host bytes, statistics-side bytes, accumulator bytes) of one task: g filters and k
        checkpoints (+ reference) per pass."""
        src, T, p, sub = self.spec.src, self.spec.epochs, self.cols, self.budget.sub_block
        block = g * p * p * F8
        m = T if mode == "all" else k + 1
        all_bytes = (m * p) ** 2 * g * F8
        # XᵀY per other checkpoint (and the reference's own XᵀX with diagonals) + XᵀX, YᵀY
        diagonal = self.diagonal(mode)
        own = g * p * F8 if diagonal else block
        pairs = (m if diagonal else m - 1) * block + m * own
        ref_blocks = pairs * units if (mode == "ref" or units > 1) else 0
        acc = ref_blocks + (all_bytes if mode == "all" else 0) + units * m * g * p * F8
        acc += units * m * g * (2 + 3 * p) * F8 if self.quartic else 0
        resident = (
            (m if mode == "all" else 2) + READ_OVERHEAD
        ) * src.chunk_bytes  # + zarr's decode buffers
        # float64 views and their copies
        temps = 4 * sub + (all_bytes if mode == "all" else 3 * block)
        # the metrics: centered/symmetrized copies, decompositions, workspace
        finish = acc + 10 * block
        if self.budget.device is None:
            return max(resident + 2 * acc + temps, finish), 0, acc
        return resident, max(2 * acc + temps, finish), acc

    def reads(self, g: int, k: int) -> float:
        """Slabs decoded: per filter group, the reference once per pass + every checkpoint once."""
        src, others = self.spec.src, self.others
        passes = math.ceil(max(1, len(others)) / max(1, k))
        groups = math.ceil(src.channels / g) if self.per_filter else 1
        return (
            groups * (src.decoded_fraction(g) if self.per_filter else 1.0) * (passes + len(others))
        )


def _unit_options(config: AnalyzeConfig, spec: JobSpec) -> list[int]:
    """Groups of images to try, most first: the bootstrap's for jobs with a bootstrapped metric
    (--bootstrap-metric); for the others the convergence check's groups (its subsets then come
    from the main pass) or one accumulator (then from the convergence check's own run)."""
    options = [job_units(config, spec)]
    if config.nested:
        return options
    if options == [1]:  # no bootstrap: the convergence subsets' groups, where they cost no pass
        in_pass = NESTED_IN_PASS and spec.subsets and spec.src.n >= NESTED_UNITS
        return [NESTED_UNITS, 1] if in_pass else options
    while options[-1] > MIN_UNITS:
        options.append(max(MIN_UNITS, options[-1] // 2))
    return options


def _row_candidates(
    config: AnalyzeConfig, costs: _RowCosts, sizes: list[int], unit_options: list[int]
) -> list[tuple[float, int, int, int, str, int]]:
    """(reads, -units, order, filters per group, mode, checkpoints per pass), best first: the
    job's own groups of images (:func:`job_units`), then fewest reads, then most groups (and
    groups of images). auto: reference pairs only on
    the row side (all pairs cost ≈T/3 more)."""
    others = costs.others
    ks = sorted(
        {
            max(1, math.ceil(len(others) / q))
            for q in range(1, max(1, len(others)) + 1)
            if math.ceil(len(others) / q) <= (MAX_CHECKPOINTS_PER_PASS or len(others) or 1)
        },
        reverse=True,
    )
    candidates: list[tuple[float, int, int, int, str, int]] = []
    if config.trajectory == "all":
        for g in sizes:
            for units in unit_options:
                candidates.append(
                    (
                        costs.reads(g, len(others)) - 0.5,
                        -units,
                        len(candidates),
                        g,
                        "all",
                        len(others),
                    )
                )
    else:
        for g in sizes:
            for k in ks:
                for units in unit_options:
                    candidates.append((costs.reads(g, k), -units, len(candidates), g, "ref", k))
    # the job's own groups (bootstrap, convergence run) are wanted at any cost; the convergence
    # check's in a main pass without bootstrap (unit_options [4, 1]) only where free
    wanted = unit_options[0] if unit_options[0] == job_units(config, costs.spec) else None
    return sorted(candidates, key=lambda c: (wanted is not None and c[1] != -wanted, *c[:3]))


def _plan_row(
    config: AnalyzeConfig, spec: JobSpec, budget: Budget, costs: _RowCosts, sizes: list[int]
) -> Job:
    """Row side: C×C (or per-filter h·w × h·w) statistics per pair, in passes over the store;
    the candidate with the fewest decoded bytes that fits."""
    best = None
    for _, neg_units, _, g, mode, k in _row_candidates(
        config, costs, sizes, _unit_options(config, spec)
    ):
        host, dev, acc = costs.memory(g, mode, -neg_units, k)
        if best is None or host + dev < best[0]:
            best = (host + dev, acc)
        if budget.fits(host, dev):
            return _row_job(config, costs, g, mode, -neg_units, k, budget.host_part(host, dev), acc)
    src = spec.src
    gpu = "" if budget.device is None else f" (and {budget.stats / 1e9:.2f} GB of GPU memory)"
    raise FtdynError(
        f"{arg('memory_limit')}: layer {src.var} view {spec.view} needs about {best[0] / 1e9:.2f}"
        f" GB per task (chunks of {src.chunk_bytes / 1e6:.0f} MB, statistics {best[1] / 1e6:.0f}"
        f" MB) but {budget.task / 1e9:.2f} GB{gpu} are available per thread; raise"
        f" {arg('memory_limit')} or lower {arg('workers')}."
    )


def _row_job(
    config: AnalyzeConfig,
    costs: _RowCosts,
    g: int,
    mode: str,
    units: int,
    k: int,
    task: int,
    acc: float,
) -> Job:
    """The row-side job of a chosen candidate."""
    spec, budget, others = costs.spec, costs.budget, costs.others
    src, T, p, C = spec.src, spec.epochs, costs.cols, spec.src.channels
    leaves = max(
        1, min(src.n_chunks, 4 * budget.threads, int(budget.stats_total // (4 * max(1, acc))))
    )
    cgroups = (
        [None] if mode == "all" else [others[i : i + k] for i in range(0, len(others), k)] or [[]]
    )
    slab = src.n * src.image_bytes
    rows_per_byte = (
        (src.height * src.width if spec.view == "channels" else 1)
        / src.image_bytes
        * (C if costs.per_filter else 1)
    )
    # products per row: all pairs; or XᵀY per checkpoint and the self-products (their
    # diagonals: O(p) per row instead of O(p²))
    products = T * T / 2 if mode == "all" else (T if costs.diagonal(mode) else 2 * (T - 1) + 1)
    pairs_flops = products * 2 * p * p * rows_per_byte * slab
    return Job(
        spec.exp,
        spec.layer,
        spec.view,
        list(spec.metrics),
        "row",
        mode,
        _groups_of(C, g, costs.per_filter),
        g,
        units=units,
        leaves=leaves,
        task_bytes=task,
        ckpt_groups=cgroups,
        sub_bytes=budget.sub_block,
        read_bytes=costs.reads(g, k if mode == "ref" else len(others)) * slab,
        flops=pairs_flops,
        diagonal=costs.diagonal(mode),
        quartic=costs.quartic,
    )


#: whether jobs without a bootstrap keep the convergence check's groups of images in their main
#: pass where that takes no extra pass (False: their subsets always come from the convergence
#: check's own run; benchmarks/bench_interpret.py switches it off for the plain analysis)
NESTED_IN_PASS = True
#: image fractions of the convergence check's nested subsets (analysis.interpret): the first
#: ⌈f·U⌉ of U seeded groups of images (:func:`ftdyn.summary.shared_units`), U at least
#: NESTED_UNITS (the bootstrap's groups where a job has them: its statistics give the subsets)
NESTED_FRACTIONS = (0.25, 0.5, 1.0)
NESTED_UNITS = 4


def nested_counts(n_units: int) -> np.ndarray:
    """(fractions, n_units) 0/1 counts: the first ⌈f·U⌉ units of the seeded unit order, nested;
    the proper subsets only (the last fraction, all images, is the distance itself)."""
    return np.array(
        [
            [1 if u < math.ceil(f * n_units) else 0 for u in range(n_units)]
            for f in NESTED_FRACTIONS[:-1]
        ],
        dtype=np.int64,
    )


def nested_groups(n: int) -> tuple[int, int]:
    """(groups, groups kept) of the convergence check's own run: n images dealt into
    NESTED_UNITS seeded groups, of which its proper subsets use the first ⌈f·U⌉ only (the
    distance on all images comes from the main run)."""
    groups = min(NESTED_UNITS, n)
    return groups, math.ceil(NESTED_FRACTIONS[-2] * groups)


def convergence_units(n: int, seed: int, experiment: int) -> np.ndarray:
    """The group of every image in the convergence check's own run (:func:`nested_groups`),
    -1 for the images of the groups it does not need."""
    groups, kept = nested_groups(n)
    units = shared_units(n, groups, seed, experiment)
    return np.where(units < kept, units, -1)


def convergence_counts(n: int) -> np.ndarray:
    """The nested subsets' counts over the kept groups of the convergence run."""
    groups, kept = nested_groups(n)
    return nested_counts(groups)[:, :kept]


def subset_sizes(counts: np.ndarray, units: np.ndarray) -> list[int]:
    """Images in each subset of unit ``counts`` (S, U), ``units`` the group of every image."""
    per_unit = np.bincount(units[units >= 0], minlength=counts.shape[1])
    return [int(k) for k in counts @ per_unit]


def job_nested_counts(args: AnalyzeConfig, n_units: int, n: int) -> np.ndarray | None:
    """The nested subsets' counts over a row-side job's ``n_units`` groups: in the convergence
    check's own run over its kept groups (:func:`nested_groups`), in the main run over the
    bootstrap's groups where there are at least NESTED_UNITS, else None (that job's subsets
    come from the convergence run). ``n``: the images."""
    if args.nested:
        return convergence_counts(n)
    return nested_counts(n_units) if n_units >= NESTED_UNITS else None


def nested_units(args: AnalyzeConfig, n: int) -> int:
    """Groups of images of the Gram-side and map views' nested subsets: the bootstrap's
    (:func:`shared_boot`) when there is one, else NESTED_UNITS."""
    groups = boot_groups(args, n) if args.bootstrap else 0
    return groups if groups >= NESTED_UNITS else min(NESTED_UNITS, n)


def nested_subsets(n: int, n_units: int, seed: int, experiment: int) -> list[np.ndarray]:
    """Image indices of the nested subsets (:func:`nested_counts`) of an experiment's n images."""
    return shared_indices(shared_units(n, n_units, seed, experiment), nested_counts(n_units))


def replicate_counts(args: AnalyzeConfig, n_units: int, experiment: int) -> np.ndarray:
    """Unit counts of every bootstrap replicate: the experiment's shared draws."""
    return shared_counts(n_units, args.bootstrap, args.seed, experiment)


def job_units(config: AnalyzeConfig, spec: JobSpec) -> int:
    """Groups of images a job's statistics keep, at most: the kept groups of the convergence
    check's own run, the bootstrap's for a job with a bootstrapped metric (--bootstrap-metric),
    at least the jackknife's groups for a job with a jackknifed metric or a held-out value, else 1
    (one accumulator)."""
    n = spec.src.n
    if config.nested:
        return nested_groups(n)[1]
    units = boot_groups(config, n) if bootstrapped(config, spec.metrics) else 1
    if jackknifed(config, spec.metrics, spec.src) or heldout_metrics(
        config, spec.metrics, spec.src
    ):
        units = max(units, min(JACKKNIFE_GROUPS, n))
    return units


def bootstrapped(config: AnalyzeConfig, metrics) -> bool:
    """Whether a job of ``metrics`` computes bootstrap replicates (of some of them)."""
    wanted = config.bootstrap_metrics
    return bool(config.bootstrap) and (wanted is None or bool(set(metrics) & set(wanted)))


def metric_parts(config: AnalyzeConfig, metrics: tuple[str, ...]) -> list[tuple[str, ...]]:
    """``metrics`` of one view as the bootstrapped ones (--bootstrap-metric) and the others (one
    part where all or none are bootstrapped)."""
    boot = tuple(m for m in metrics if bootstrapped(config, (m,)))
    rest = tuple(m for m in metrics if m not in boot)
    return [part for part in (boot, rest) if part]


def plan_view(config: AnalyzeConfig, spec: JobSpec, budget: Budget) -> list[Job]:
    """The jobs of one view: one for all its metrics, or, where that is a row-side job whose
    statistics per bootstrap group of images take more than one task (filter groups ×
    checkpoint passes, each re-reading the store) and the bootstrapped metrics alone
    (:func:`metric_parts`) take the Gram side (:func:`_side`), a Gram-side job for them and a
    row-side job without groups of images for the others; the Gram-side job also gives the
    others' convergence subsets."""
    parts = metric_parts(config, spec.metrics)
    try:
        job = plan_job(config, spec, budget)
    except FtdynError:
        if len(parts) == 1:
            raise
        job = None
    if job is not None and (
        len(parts) == 1 or job.side != "row" or len(job.groups) * len(job.ckpt_groups) == 1
    ):
        return [job]
    boot = plan_job(config, dataclasses.replace(spec, metrics=parts[0]), budget)
    if boot.side != "gram":
        if job is not None:
            return [job]  # the bootstrapped metrics' statistics per group would stay as large
        return [boot, plan_job(config, dataclasses.replace(spec, metrics=parts[1]), budget)]
    # the Grams of all the images give every metric's subsets (small decompositions): the
    # others' job keeps no groups of images and needs no convergence run of its own
    rest = plan_job(config, dataclasses.replace(spec, metrics=parts[1], subsets=False), budget)
    boot.convergence, rest.convergence = list(spec.metrics), []
    return [boot, rest]


def boot_groups(args: AnalyzeConfig, n: int) -> int:
    """Groups of images of the bootstrap at their unlimited number (``bootstrap_groups``, else
    MAX_UNITS), at most one per image; with the corrected estimators a multiple of the
    jackknife's groups (where there are that many), so that each jackknife group is a union of
    bootstrap groups and the estimate does not depend on whether there is a bootstrap."""
    groups = min(args.bootstrap_groups or MAX_UNITS, n)
    if args.estimator == "corrected" and groups >= JACKKNIFE_GROUPS:
        groups -= groups % JACKKNIFE_GROUPS
    return groups


def shared_boot(n: int, args: AnalyzeConfig, experiment: int) -> tuple[np.ndarray, np.ndarray]:
    """(unit of every image, unit counts (N, U)) of the experiment's replicates, the row side's
    units at their unlimited number, min(MAX_UNITS, n): Gram-side and map views resample the
    same images."""
    n_units = boot_groups(args, n)
    return shared_units(n, n_units, args.seed, experiment), replicate_counts(
        args, n_units, experiment
    )


def shared_boot_indices(n: int, args: AnalyzeConfig, experiment: int) -> list[np.ndarray]:
    """Image indices of the experiment's replicates (:func:`shared_boot`)."""
    return shared_indices(*shared_boot(n, args, experiment))


def _filter_group_sizes(c: int) -> list[int]:
    sizes, g = [], c
    while g > 1:
        sizes.append(g)
        g = math.ceil(g / 2)
    sizes.append(1)
    return list(dict.fromkeys(sizes))


def device_budget(dev: torch.device) -> int | None:
    """GPU memory for the float64 blocks and statistics (80 % of the card, or of the simulated
    one: :data:`ftdyn.devices.SIMULATED_DEVICE_MEMORY`; they are not under --memory-limit), or
    None on the CPU, where they share the host budget."""
    memory = device_memory(dev)
    return None if memory is None else int(0.8 * memory)


def plan_analysis(
    exps: list[Experiment],
    args: AnalyzeConfig,
    dev: torch.device,
    limit: int,
    workers: int | None,
    only: list[tuple[int, int, str, tuple[str, ...]]] | None = None,
) -> tuple[int, list[Job]]:
    """(threads, jobs): a plan for the metrics of every (experiment, layer, view) (those in
    ``only`` where given; :func:`plan_view`) within ``limit`` bytes of host memory.

    Plans for ``workers``, workers/2, ..., 1 threads (fewer threads leave more memory per task:
    fewer passes over the store) and keeps the one with the smallest estimated time.
    """
    host = max(32 * 2**20, limit - RESERVE)  # thread arenas, zarr's event loop, graph, results
    gpu = device_budget(dev)
    keys = only if only is not None else view_keys(exps, args)
    specs = [
        JobSpec(e, l, exps[e].layers[l][1], view, metrics, len(exps[e].epochs), exps[e].ref)
        for e, l, view, metrics in keys
    ]
    best, error, threads = None, None, (os.cpu_count() or 1) if workers is None else int(workers)
    if not specs:
        return threads, []
    while True:
        try:
            budget = Budget(host, threads, gpu)
            jobs = [job for spec in specs for job in plan_view(args, spec, budget)]
            used = max(1, min(threads, int(host // max(1, max(j.task_bytes for j in jobs)))))
            cost = _estimated_seconds(jobs, used, dev)
            if best is None or cost < best[0] * 0.95:
                best = (cost, used, jobs)
        except FtdynError as exc:
            error = error or exc
        if threads == 1:
            break
        threads = max(1, threads // 2)
    if best is None:
        raise error
    if not args.nested:
        mark_pooled(best[2])
    return best[1], best[2]


#: the linear probes' pooled features come from a row-side job's reads where a layer has one
#: (the benchmark of the interpretation's cost switches this off for its plain run)
POOLED_IN_PASS = True


def mark_pooled(jobs: list[Job]) -> None:
    """Let the first row-side job of each (experiment, layer) keep the spatial means of the
    blocks it reads (every checkpoint, image and channel: its filter groups cover the
    channels, its passes the checkpoints), so that no task re-reads the layer for them."""
    if not POOLED_IN_PASS:
        return
    seen = set()
    for job in jobs:
        key = (job.exp, job.layer)
        if job.side == "row" and key not in seen:
            job.pooled = True
            seen.add(key)


def view_keys(exps: list[Experiment], args: AnalyzeConfig) -> list[tuple[int, int, str, tuple]]:
    """(experiment, layer, view, its metrics) of every view of an analysis, in order."""
    return [
        (e, l, view, tuple(args.metrics_on(view)))
        for e, exp in enumerate(exps)
        for l in range(len(exp.layers))
        for view in dict.fromkeys(args.views[m] for m in args.metrics)
    ]


def _estimated_seconds(jobs: list[Job], threads: int, dev: torch.device) -> float:
    """Decode + float64 FLOPs: on a CPU every thread computes, on CUDA they share one GPU."""
    reading = sum(j.read_bytes for j in jobs) / READ_RATE
    flops = sum(j.flops for j in jobs)
    return (
        (reading + flops / FLOP_RATE) / threads
        if route(dev) == "cpu"
        else reading / threads + flops / GPU_FLOP_RATE
    )
