"""Memory plans: how each (experiment, layer, view) job is cut into Dask tasks.

The planner turns ``--memory-limit`` (and, on a GPU, the card's memory) into filter
groups, checkpoint passes, Gram panels and bootstrap groups from an explicit per-task
estimate, and compares thread counts by estimated time (the module doc of
:mod:`ftdyn.analysis`, "Memory").
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

import numpy as np
import torch

from .. import metrics as M
from .. import stats as S
from ..errors import FtdynError
from .inputs import DEBIASED_CKA, Args, Experiment, Source
from .tasks import map_pairs

MAX_UNITS = 32
MIN_UNITS = 8
SUB_BLOCK_BYTES = 32 * 2**20
#: caps for tests and tuning: at most this many chunks per Gram panel / filters per group (None = by memory)
MAX_PANEL_CHUNKS: int | None = None
MAX_FILTER_GROUP: int | None = None
MAX_CHECKPOINTS_PER_PASS: int | None = None
#: part of --memory-limit kept for what tasks do not estimate (thread arenas, zarr's loop, the graph)
RESERVE = 128 * 2**20
#: transient memory of one zarr chunk read, in chunks (compressed bytes, decoded buffer, output copy: measured
#: peak ≈ 2.8 chunks for one read)
READ_OVERHEAD = 2.5
#: per-thread rates used only to compare plans (decode + float64 conversion; float64 GEMM on CPU)
READ_RATE = 0.3e9
FLOP_RATE = 15e9
#: float64 rate of one GPU on these batched problems (well under an H100's ~50 TFLOP/s peak), shared by all threads
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
    ckpt_groups: list = field(default_factory=lambda: [None])  # row side, reference pairs: checkpoints per pass
    sub_bytes: int = SUB_BLOCK_BYTES  # float64 row block per matrix
    read_bytes: float = 0.0  # estimated bytes decoded (re-reads included)
    flops: float = 0.0  # estimated float64 FLOPs of the statistics
    units: int = 1
    panels: int = 1
    leaves: int = 1
    task_bytes: int = 0
    outputs: list = field(default_factory=list)


def chunk_groups(n_chunks: int, n_groups: int) -> list[list[int]]:
    n_groups = max(1, min(n_groups, n_chunks))
    bounds = np.linspace(0, n_chunks, n_groups + 1).round().astype(int)
    return [list(range(bounds[i], bounds[i + 1])) for i in range(n_groups) if bounds[i + 1] > bounds[i]]


def plan_job(exp_i: int, layer_i: int, src: Source, view: str, metrics: list[str], T: int, ref_pos: int,
              args: Args, threads: int, total_budget: int, device_budget: int | None = None) -> Job:
    """Choose side, pair mode, filter groups, bootstrap groups and task sizes for one job.

    ``total_budget``: host memory for all concurrent tasks. ``device_budget``: GPU memory for
    them when the statistics run on a GPU (then raw chunks count against the host budget
    and float64 blocks, statistics and decompositions against the GPU's); None: one pool.
    """
    task_budget = total_budget // max(1, threads)
    stats_total = total_budget if device_budget is None else device_budget
    stats_budget = stats_total // max(1, threads)

    def fits(host: float, dev: float) -> bool:
        return host + dev <= task_budget if device_budget is None else host <= task_budget and dev <= stats_budget

    def host_part(host: float, dev: float) -> int:  # what a task holds in host memory
        return int(host + dev if device_budget is None else host)

    sub = int(max(2**20, min(SUB_BLOCK_BYTES, stats_budget // 16)))  # float64 row blocks: small when memory is
    C, H, W, n = src.channels, src.height, src.width, src.n
    hw = H * W
    f8 = 8
    widen = 1 + f8 // src.itemsize  # a raw chunk plus its float64 copy
    if view == "map":
        mode = "all" if args.trajectory == "all" else "ref"
        held = T if mode == "all" else 2  # raw chunks (host) and their float64 copies
        resident = host_part((held + READ_OVERHEAD) * src.chunk_bytes, held * (widen - 1) * src.chunk_bytes)
        slab = src.n * src.image_bytes
        return Job(exp_i, layer_i, view, metrics, "map", mode, [slice(None)], C, task_bytes=resident,
                   leaves=max(1, min(src.n_chunks, 4 * threads)), read_bytes=T * slab,
                   flops=len(map_pairs(T, 0, mode)) * n * C * 30 * max(H, W) ** 3)
    if view in ("channels", "pooled"):
        side, per_filter, p = "row", False, C
    elif view == "flat":
        side, per_filter, p = M.choose_side(n, C * hw), False, C * hw
    else:  # filter
        side, per_filter, p = M.choose_side(n, hw), True, hw
    if DEBIASED_CKA in metrics:  # U-centering needs the per-image Grams
        side = "gram"
    sizes = _filter_group_sizes(C if per_filter else 1)
    if per_filter and MAX_FILTER_GROUP:
        sizes = [g for g in sizes if g <= MAX_FILTER_GROUP] or [1]

    def groups_of(g):
        return [slice(s, min(s + g, C)) for s in range(0, C, g)] if per_filter else [slice(None)]

    if side == "gram":
        cols_per_filter = hw if per_filter else C * hw
        extra_pairs = T * (T - 1) // 2 - (T - 1)
        decomposed = any(m not in ("cka", DEBIASED_CKA) for m in metrics)
        # auto: all pairs if their work (an n×n product + nuclear norm, ~20 n³ per filter, or n² for
        # cka alone) is at most the work of building the Grams (T·n²·cols per filter)
        cheap = extra_pairs * (20 * n if decomposed else 1) <= T * cols_per_filter
        host_fixed = src.chunk_bytes * (1 + READ_OVERHEAD)  # a raw chunk and zarr's decode buffers
        dev_fixed = src.chunk_bytes * (widen - 1) + 2 * sub  # its float64 copy, product blocks
        fixed = dev_fixed + (host_fixed if device_budget is None else 0)
        modes = {"all": ["all"], "reference": ["ref"]}.get(args.trajectory, ["all", "ref"] if cheap else ["ref"])
        plan = None
        for g in sizes:
            k_bytes = g * n * n * f8
            per_chunk = src.spc * (g * cols_per_filter * f8 + g * n * f8)  # float64 panel rows + their output block
            for mode in modes:
                # every checkpoint's K is a Dask result until the finishing task, which adds
                # decompositions (T of them for all pairs, 2 for reference pairs) and temporaries;
                # while the panels run, the Ks built so far (+ one being assembled) sit beside them
                held = T * k_bytes + (T if mode == "all" else 2) * 2 * k_bytes + 2 * k_bytes
                room = (stats_total - (T + 1) * k_bytes) // max(1, threads) - fixed  # per panel task
                if held <= stats_total and room >= per_chunk and host_fixed <= task_budget:
                    plan = (g, mode, per_chunk, room)
                    break
            if plan:
                break
        if plan is None:
            raise FtdynError(f"--memory-limit: layer {src.var} view {view} needs about "
                             f"{(T + 3) * n * n * f8 / 1e9:.1f} GB for the Gram matrices of {n} images (one filter) "
                             "beside its reads; raise the limit or use fewer probe images.")
        g, mode, per_chunk, room = plan
        k = int(min(src.n_chunks, max(1, room // max(1, per_chunk)), MAX_PANEL_CHUNKS or src.n_chunks))
        task = host_part(host_fixed, dev_fixed + k * per_chunk)
        panels = math.ceil(src.n_chunks / k)
        slab = src.n * src.image_bytes
        return Job(exp_i, layer_i, view, metrics, "gram", mode, groups_of(g), g, panels=panels, task_bytes=task,
                   read_bytes=T * slab * (panels + 1) / 2 * len(groups_of(g)) * (src.decoded_fraction(g) if per_filter
                                                                                  else 1.0),
                   flops=T * n * n * cols_per_filter * (C if per_filter else 1) + T * 10 * n ** 3 * (C if per_filter else 1))

    # row side
    # replicates only for jobs with a bootstrapped metric (--bootstrap-metric): the others keep one
    # accumulator instead of one per group of images
    boot = args.bootstrap and (args.bootstrap_metrics is None or bool(set(metrics) & set(args.bootstrap_metrics)))
    units_wanted = (min(NESTED_UNITS, n) if args.nested else min(args.bootstrap_groups or MAX_UNITS, n)) if boot else 1
    unit_options = [units_wanted]
    while unit_options[-1] > MIN_UNITS and not args.nested:
        unit_options.append(max(MIN_UNITS, unit_options[-1] // 2))
    others = [t for t in range(T) if t != ref_pos]

    def estimate(g, mode, units, k):
        """(host bytes, statistics-side bytes, accumulator bytes) of one task: g filters and k
        checkpoints (+ reference) per pass."""
        block = g * p * p * f8
        m = T if mode == "all" else k + 1
        all_bytes = (m * p) ** 2 * g * f8
        ref_blocks = (2 * m - 1) * block * units if (mode == "ref" or units > 1) else 0
        acc = ref_blocks + (all_bytes if mode == "all" else 0) + units * m * g * p * f8
        resident = ((m if mode == "all" else 2) + READ_OVERHEAD) * src.chunk_bytes  # + zarr's decode buffers
        temps = 4 * sub + (all_bytes if mode == "all" else 3 * block)  # float64 views and their copies
        finish = acc + 10 * block  # the metrics: centered/symmetrized copies, decompositions, workspace
        if device_budget is None:
            return max(resident + 2 * acc + temps, finish), 0, acc
        return resident, max(2 * acc + temps, finish), acc

    def reads(g, k):  # slabs decoded: per filter group, the reference once per pass + every checkpoint once
        passes = math.ceil(max(1, len(others)) / max(1, k))
        groups = math.ceil(C / g) if per_filter else 1
        return groups * (src.decoded_fraction(g) if per_filter else 1.0) * (passes + len(others))

    candidates = []  # (reads, -units, order, g, mode, k)
    ks = sorted({max(1, math.ceil(len(others) / q)) for q in range(1, max(1, len(others)) + 1)
                 if math.ceil(len(others) / q) <= (MAX_CHECKPOINTS_PER_PASS or len(others) or 1)}, reverse=True)
    if args.trajectory == "all":  # auto: reference pairs only on the row side (all pairs cost ≈T/3 more)
        for g in sizes:
            for units in unit_options:
                candidates.append((reads(g, len(others)) - 0.5, -units, len(candidates), g, "all", len(others)))
    if args.trajectory != "all":
        for g in sizes:
            for k in ks:
                for units in unit_options:
                    candidates.append((reads(g, k), -units, len(candidates), g, "ref", k))
    best = None
    for _, neg_units, _, g, mode, k in sorted(candidates, key=lambda c: (c[1] != -unit_options[0], c[0], c[1], c[2])):
        host, dev, acc = estimate(g, mode, -neg_units, k)
        if best is None or host + dev < best[0]:
            best = (host + dev, acc)
        if fits(host, dev):
            task = host_part(host, dev)
            leaves = max(1, min(src.n_chunks, 4 * threads, int(stats_total // (4 * max(1, acc)))))
            cgroups = [None] if mode == "all" else [others[i:i + k] for i in range(0, len(others), k)] or [[]]
            slab = src.n * src.image_bytes
            rows_per_byte = (hw if view == "channels" else 1) / src.image_bytes * (C if per_filter else 1)
            pairs_flops = (T * T / 2 if mode == "all" else 2 * (T - 1) + 1) * 2 * p * p * rows_per_byte * slab
            return Job(exp_i, layer_i, view, metrics, "row", mode, groups_of(g), g, units=-neg_units, leaves=leaves,
                       task_bytes=task, ckpt_groups=cgroups, sub_bytes=sub,
                       read_bytes=reads(g, k if mode == "ref" else len(others)) * slab, flops=pairs_flops)
    gpu = "" if device_budget is None else f" (and {stats_budget / 1e9:.2f} GB of GPU memory)"
    raise FtdynError(f"--memory-limit: layer {src.var} view {view} needs about {best[0] / 1e9:.2f} GB per task "
                     f"(chunks of {src.chunk_bytes / 1e6:.0f} MB, statistics {best[1] / 1e6:.0f} MB) but "
                     f"{task_budget / 1e9:.2f} GB{gpu} are available per thread; raise --memory-limit or lower "
                     "--workers.")


#: image fractions of the convergence check's nested subsets (analysis.interpret), made of
#: NESTED_UNITS seeded groups of images (quarters: the statistics of 4 groups, not 32)
NESTED_FRACTIONS = (0.25, 0.5, 1.0)
NESTED_UNITS = 4


def nested_counts(n_units: int) -> np.ndarray:
    """(fractions, n_units) 0/1 counts: the first ⌈f·U⌉ units of the seeded unit order, nested."""
    return np.array([[1 if u < math.ceil(f * n_units) else 0 for u in range(n_units)] for f in NESTED_FRACTIONS],
                    dtype=np.int64)


def replicate_counts(args: Args, n_units: int, experiment: int) -> np.ndarray:
    """Unit counts of every replicate: the experiment's shared bootstrap draws, or the nested
    subsets of the convergence run."""
    if args.nested:
        return nested_counts(n_units)
    return S.shared_counts(n_units, args.bootstrap, args.seed, experiment)


def shared_boot(n: int, args: Args, experiment: int) -> tuple[np.ndarray, np.ndarray]:
    """(unit of every image, unit counts (N, U)) of the experiment's replicates, the row side's
    units at their unlimited number, min(MAX_UNITS, n): Gram-side and map views resample the
    same images."""
    n_units = min(NESTED_UNITS if args.nested else args.bootstrap_groups or MAX_UNITS, n)
    return S.shared_units(n, n_units, args.seed, experiment), replicate_counts(args, n_units, experiment)


def shared_boot_indices(n: int, args: Args, experiment: int) -> list[np.ndarray]:
    """Image indices of the experiment's replicates (:func:`shared_boot`)."""
    return S.shared_indices(*shared_boot(n, args, experiment))


def _filter_group_sizes(c: int) -> list[int]:
    sizes, g = [], c
    while g > 1:
        sizes.append(g)
        g = math.ceil(g / 2)
    sizes.append(1)
    return list(dict.fromkeys(sizes))


def device_budget(dev: torch.device) -> int | None:
    """GPU memory for the float64 blocks and statistics (80 % of the card; they are not under
    --memory-limit), or None on the CPU, where they share the host budget."""
    if dev.type != "cuda":
        return None
    return int(0.8 * torch.cuda.get_device_properties(dev).total_memory)


def plan_analysis(exps: list[Experiment], args: Args, dev: torch.device, limit: int,
                  workers: int | None) -> tuple[int, list[Job]]:
    """(threads, jobs): a plan for every (experiment, layer, view) within ``limit`` bytes of host memory.

    Plans for ``workers``, workers/2, ..., 1 threads (fewer threads leave more memory per task:
    fewer passes over the store) and keeps the one with the smallest estimated time.
    """
    budget = max(32 * 2**20, limit - RESERVE)  # thread arenas, zarr's event loop, graph, results
    gpu_budget = device_budget(dev)
    want = (os.cpu_count() or 1) if workers is None else int(workers)
    if want < 1:
        raise FtdynError(f"--workers: must be at least 1, got {workers}.")
    best, error, threads = None, None, want
    while True:
        try:
            jobs = [plan_job(e, l, src, view, [m for m in args.metrics if args.views[m] == view],
                             len(exp.epochs), exp.ref, args, threads, budget, gpu_budget)
                    for e, exp in enumerate(exps) for l, (_, src) in enumerate(exp.layers)
                    for view in dict.fromkeys(args.views[m] for m in args.metrics)]
            used = max(1, min(threads, int(budget // max(1, max(j.task_bytes for j in jobs)))))
            reading = sum(j.read_bytes for j in jobs) / READ_RATE
            flops = sum(j.flops for j in jobs)
            # estimated seconds (decode + float64 FLOPs): on a CPU every thread computes, on CUDA they share one GPU
            cost = (reading + flops / FLOP_RATE) / used if dev.type == "cpu" else reading / used + flops / GPU_FLOP_RATE
            if best is None or cost < best[0] * 0.95:
                best = (cost, used, jobs)
        except FtdynError as exc:
            error = error or exc
        if threads == 1:
            break
        threads = max(1, threads // 2)
    if best is None:
        raise error
    return best[1], best[2]
