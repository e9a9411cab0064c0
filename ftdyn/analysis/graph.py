"""The Dask graph of a plan (tree-reduced statistics per job) and its computation."""

from __future__ import annotations

import os
import time

import dask
import numpy as np
import torch

from ..config import AnalyzeConfig
from ..metrics.estimators import JACKKNIFE_GROUPS
from ..progress import dask_progress, stage, track
from ..runtime import dask_client
from ..summary import shared_units
from .estimation import (
    debiased,
    debiased_metrics,
    degenerate,
    heldout_metrics,
    jackknifed,
    replicated,
    subsets_degenerate,
)
from .inputs import Experiment
from .plan import (
    Job,
    chunk_groups,
    convergence_units,
    job_nested_counts,
    nested_subsets,
    nested_units,
    replicate_counts,
    shared_boot,
    subset_sizes,
)
from .tasks import (
    GramFinishRequest,
    GramPanelRequest,
    MapLeafRequest,
    NestedCounts,
    NestedImages,
    RowAccumulator,
    RowFinishRequest,
    RowLeafRequest,
    concat_map,
    gram_assemble,
    gram_finish,
    gram_panel,
    map_leaf,
    pooled_leaf,
    row_finish,
    row_leaf,
)

#: children per merge task of the tree reductions
FAN_IN = 4


def build_graph(
    exps: list[Experiment],
    args: AnalyzeConfig,
    jobs: list[Job],
    inplace: bool = True,
    name: str = "",
):
    """The output task of every filter group (and checkpoint pass) of every job, in order;
    ``name`` prefixes the task keys, so that the graphs of two runs compute together."""
    graph_outputs = []
    for job in jobs:
        exp = exps[job.exp]
        tag = f"{name}{job.exp}-{job.layer}-{job.view}-{'+'.join(job.metrics)}"
        for gi, fsl in enumerate(job.groups):
            gtag = f"{tag}-{gi}"
            if job.side == "row":
                if gi == 0:
                    resamples = _row_resamples(args, job, exp)
                outs = _row_outputs(exp, args, job, fsl, gtag, resamples, inplace)
            elif job.side == "gram":
                outs = [_gram_output(exp, args, job, fsl, gtag)]
            else:  # map
                outs = [_map_output(exp, args, job, fsl, gtag)]
            job.outputs.extend(outs)
            graph_outputs.extend(outs)
    return graph_outputs


def build_pooled(exps: list[Experiment], jobs: list[Job], name: str = "pooled") -> dict:
    """{(experiment, layer): task} of its pooled features at every position
    (:func:`~ftdyn.analysis.maps.pooled_leaf`) for the layers whose ``jobs`` do not keep them
    while reading (:func:`~ftdyn.analysis.plan.mark_pooled`)."""
    kept = {(j.exp, j.layer) for j in jobs if j.pooled}
    return {
        (e, l): dask.delayed(pooled_leaf, pure=True)(
            src, exp.ckpt_index, dask_key_name=f"{name}-{e}-{l}"
        )
        for e, exp in enumerate(exps)
        for l, (_, src) in enumerate(exp.layers)
        if (e, l) not in kept
    }


def _row_resamples(args: AnalyzeConfig, job: Job, exp: Experiment):
    """(unit of every image, bootstrap counts) of a row-side job: (None, None) without groups
    of images, counts None without a bootstrap (groups for the convergence check alone)."""
    n = exp.layers[job.layer][1].n
    if args.nested:  # the convergence run: images outside the kept groups are not read into any
        return convergence_units(n, args.seed, exp.draws), None
    if job.units == 1:
        return None, None
    # one resample per replicate for every job of the experiment
    units = shared_units(n, job.units, args.seed, exp.draws)
    return units, replicate_counts(args, job.units, exp.draws) if args.bootstrap else None


def _row_outputs(exp, args, job, fsl, gtag, resamples, inplace) -> list:
    """The metrics tasks of one filter group of a row-side job, one per checkpoint pass (the
    reference against itself in the first pass only): tree-merged row statistics of the chunk
    groups, then the metrics."""
    outputs = []
    for ci, pos in enumerate(job.passes(len(exp.epochs), exp.ref)):
        ctag = f"{gtag}-{ci}"
        request = _row_finish_request(exp, args, job, pos, resamples, first=ci == 0)
        merged = _row_statistics(exp, job, fsl, ctag, pos, resamples[0], inplace)
        outputs.append(
            dask.delayed(row_finish, pure=True)(request, merged, dask_key_name=f"metrics-{ctag}")
        )
    return outputs


def _row_finish_request(exp, args, job, pos, resamples, first: bool) -> RowFinishRequest:
    """What the metrics task of the pass over the checkpoints at positions ``pos`` computes."""
    src = exp.layers[job.layer][1]
    units, counts = resamples
    counts_nested = job_nested_counts(args, job.units, src.n) if exp.last in pos else None
    nested = None
    if counts_nested is not None:  # the convergence check's subsets, where the groups give them
        sizes = subset_sizes(counts_nested, units)
        undefined = subsets_degenerate(args, src, job.metrics, sizes)
        nested = NestedCounts(pos.index(exp.last), counts_nested, undefined)
    return RowFinishRequest(
        metrics=job.metrics,
        alpha=args.alpha,
        n_positions=len(pos),
        ref=pos.index(exp.ref),
        mode=job.mode,
        counts=counts,
        boot_metrics=replicated(args, job.metrics, src),
        skip=tuple(i for i, t in enumerate(pos) if exp.epochs[t] in args.skip_replicates),
        nested=nested,
        point=not args.nested,
        ref_value=first,
        jackknifed=jackknifed(args, job.metrics, src) if units is not None else (),
        jack_groups=None if units is None else np.arange(job.units) % JACKKNIFE_GROUPS,
        debiased=debiased_metrics(args, job.metrics),
        undefined=_undefined(args, job, src),
        heldout=heldout_metrics(args, job.metrics, src) if units is not None else (),
    )


def _undefined(args: AnalyzeConfig, job: Job, src) -> tuple[str, ...]:
    """The job's metrics that are degenerate on all the images of ``src``: the results leave them
    undefined, so their metrics task does not compute them."""
    return tuple(m for m in job.metrics if degenerate(args, src, m, src.n) is not None)


def _row_statistics(exp, job, fsl, ctag, pos, units, inplace):
    """The row statistics of the pass over the checkpoints at positions ``pos``: one leaf per
    chunk group, tree-merged (in place, or into copies where a task may be retried)."""
    src = exp.layers[job.layer][1]
    leaves = [
        dask.delayed(row_leaf, pure=True)(
            RowLeafRequest(
                src=src,
                chunks=grp,
                ckpts=[exp.ckpt_index[t] for t in pos],
                ref=pos.index(exp.ref),
                view=job.view,
                filters=fsl,
                mode=job.mode,
                units=units,
                n_units=job.units,
                sub_bytes=job.sub_bytes,
                pooled=job.pooled,
                diagonal=job.diagonal,
                quartic=job.quartic,
            ),
            dask_key_name=f"stats-{ctag}-{i}",
        )
        for i, grp in enumerate(chunk_groups(src.n_chunks, job.leaves))
    ]
    return _tree(
        leaves, RowAccumulator.merge if inplace else RowAccumulator.merged, f"merge-{ctag}"
    )


def _gram_output(exp, args, job, fsl, gtag):
    """The metrics task of one filter group of a Gram-side job: per checkpoint the Gram matrix,
    assembled from panels of rows, then the metrics of all of them."""
    src = exp.layers[job.layer][1]
    panels = chunk_groups(src.n_chunks, job.panels)
    previous = job.outputs[-1] if job.outputs else None
    Ks = []
    for t, k in enumerate(exp.ckpt_index):
        blocks = [
            dask.delayed(gram_panel, pure=True)(
                GramPanelRequest(
                    src=src,
                    ckpt=k,
                    view=job.view,
                    filters=fsl,
                    panel=panel,
                    stream=list(range(panel[-1] + 1, src.n_chunks)),
                ),
                previous,
                dask_key_name=f"gram-{gtag}-{t}-{pi}",
            )
            for pi, panel in enumerate(panels)
        ]
        Ks.append(
            dask.delayed(gram_assemble, pure=True)(src.n, *blocks, dask_key_name=f"K-{gtag}-{t}")
        )
    request = GramFinishRequest(
        metrics=job.metrics,
        alpha=args.alpha,
        ref=exp.ref,
        mode=job.mode,
        boot=shared_boot(src.n, args, exp.draws) if args.bootstrap else None,
        block_bytes=job.sub_bytes,
        boot_metrics=replicated(args, job.metrics, src),
        skip=tuple(t for t, ep in enumerate(exp.epochs) if ep in args.skip_replicates),
        nested=None if exp.last is None else _gram_nested(exp, args, job, src),
        corrected=debiased(args, job.metrics),
        jackknifed=jackknifed(args, job.metrics, src),
        jack_groups=shared_units(src.n, min(JACKKNIFE_GROUPS, src.n), args.seed, exp.draws),
        undefined=_undefined(args, job, src),
        heldout=heldout_metrics(args, job.metrics, src),
    )
    return dask.delayed(gram_finish, pure=True)(request, *Ks, dask_key_name=f"metrics-{gtag}")


def _gram_nested(exp: Experiment, args: AnalyzeConfig, job: Job, src) -> NestedImages:
    """The convergence check's image subsets of a Gram job (at the last epoch)."""
    subsets = nested_subsets(src.n, nested_units(args, src.n), args.seed, exp.draws)
    undefined = subsets_degenerate(args, src, job.convergence, [len(idx) for idx in subsets])
    return NestedImages(exp.last, job.convergence, subsets, undefined)


def _map_output(exp, args, job, fsl, gtag):
    """The map task of one filter group of a map job: the chunk groups' maps, concatenated."""
    src = exp.layers[job.layer][1]
    leaves = [
        dask.delayed(map_leaf, pure=True)(
            MapLeafRequest(
                src=src,
                chunks=grp,
                ckpts=exp.ckpt_index,
                ref=exp.ref,
                metrics=job.metrics,
                alpha=args.alpha,
                filters=fsl,
                mode=job.mode,
                center=args.map_center,
            ),
            dask_key_name=f"maps-{gtag}-{i}",
        )
        for i, grp in enumerate(chunk_groups(src.n_chunks, job.leaves))
    ]
    return _tree(leaves, concat_map, f"concat-{gtag}", ordered=True)


def _tree(items: list, combine, name: str, ordered: bool = False):
    level = 0
    while len(items) > 1:
        nxt = []
        for i in range(0, len(items), FAN_IN):
            group = items[i : i + FAN_IN]
            nxt.append(
                group[0]
                if len(group) == 1
                else dask.delayed(combine, pure=True)(*group, dask_key_name=f"{name}-{level}-{i}")
            )
        items, level = nxt, level + 1
    return items[0]


def compute(outputs: list, *, threads: int, scheduler, progress: bool, what: str = "distances"):
    """The results of ``outputs`` (one per job); with ``progress`` a bar on a terminal and one line
    when done, naming ``what`` was computed."""
    started = time.perf_counter()
    results = _compute(outputs, threads=threads, scheduler=scheduler, progress=progress, what=what)
    if progress:
        stage(f"{what} computed ({len(outputs)} jobs, {time.perf_counter() - started:.1f} s)")
    return results


def _compute(outputs: list, *, threads: int, scheduler, progress: bool, what: str):
    if scheduler is not None:
        from distributed import as_completed

        with dask_client(scheduler) as client:
            futures = client.compute(outputs)
            for _ in track(as_completed(futures), what, total=len(futures), enabled=progress):
                pass
            return client.gather(futures)
    old = torch.get_num_threads()
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(1, threads)))
    try:
        with dask_progress(what, progress):
            return dask.compute(*outputs, scheduler="threads", num_workers=threads)
    finally:
        torch.set_num_threads(old)
