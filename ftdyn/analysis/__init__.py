"""``ftdyn analyze``: activation stores -> distances, trajectories, agreement, reusability.

For every store (= experiment), selected layer, checkpoint and metric, the distance
between the *reference* checkpoint (epoch 0 = the source model unless
``reference=``) and the checkpoint, in the metric's *view* (:mod:`ftdyn.views`), plus
the checkpoint × checkpoint *trajectory*, bootstrap intervals, the Pearson
agreement between metrics and the reusability table. Out-of-core with Dask: the
store is streamed chunk by chunk into float64 sufficient statistics
(:mod:`ftdyn.metrics`, README "Metrics"); a layer is never loaded whole.

Presets (``preset=``; ``metrics=``/``views=`` override them)
    ``default``     pwsm on ``channels``; procrustes and cka on ``filter`` (one
                    distance per filter, NaN-aware mean over filters, dead filters
                    counted); a ``map`` view, if asked for, is averaged over all
                    (image, filter) values per filter, then over filters.
    ``paper-code``  the published code's numbers: pwsm on ``channels``; procrustes
                    and cka on ``map`` with each map's *rows* centered
                    (:mod:`ftdyn.metrics.paper_code`); per class the NaN-aware mean
                    over its images of each filter, the layer value the NaN-aware
                    mean over all (class, filter) cells; plus the published Pearson
                    agreement across filters per (epoch, layer, class), summarized
                    by a plain mean (``agreement_paper_code*``).
    ``alpha`` (PWSM) defaults to 0 in both: the paper's setting, and the only value
    besides 1 that does not depend on the activation scale in netrep's convention.

Distances (all: lower = more similar, 0 for identical activations)
    pwsm radians in [0, π/2]; procrustes 1 − ‖X̂ᵀŶ‖_* in [0, 1]; cka 1 − linear CKA.
    Where a view's shape makes a metric 0 for any pair (:func:`ftdyn.metrics.degenerate_reason`:
    ≤ 2 rows; PWSM α = 0 with rows − 1 ≤ cols) its values are NaN, counted in ``n_nan``,
    warned about once per layer and listed in ``attrs["<metric>_degenerate"]``.
    Every block read is checked: NaN/inf (or a chunk file gone) is a one-line error naming
    the layer and the epoch, before anything is written.

How each view is computed ("side", chosen per layer)
    ``channels``/``pooled``: row side (C×C statistics per pair of checkpoints).
    ``filter``/``flat``: :func:`ftdyn.metrics.choose_side` on (images, columns):
    row side (per-filter h·w × h·w statistics) when images ≥ columns, else Gram
    side (per-filter n×n Gram matrices of each checkpoint). ``map``: computed
    directly per (image, filter) chunk by chunk (each matrix lies in one image).
    Row side: one pass over the store; each task reads one sample chunk of the
    reference and then of each checkpoint (every chunk is read once per pass) and
    accumulates XᵀX, YᵀY, XᵀY and column sums in float64 (torch matmul); tasks are
    tree-reduced (fan-in 4, summed in place; copied on a distributed cluster). When the statistics
    of all checkpoints
    do not fit a task, passes cover groups of checkpoints (the reference is re-read
    per pass) and, for per-filter views, groups of filters (each group reads only its
    channels, which decodes only their inner chunks in a sharded store, see
    :mod:`ftdyn.store`; all channels in older stores); the plan with the fewest decoded
    bytes that fits is used and recorded in
    ``attrs["plan"]``. Gram side: each checkpoint's n×n Gram (per filter) is built by
    *panels*: a task keeps a panel of sample chunks (float64) and streams the following
    chunks past it, so a (layer, checkpoint) slab is read ≈ (p+1)/2 times with p =
    number of panels (1 when the slab fits the per-task memory). Per-filter views batch
    all filters of a group in one stacked computation.
    Cost on CPU: row-side statistics take ≈ 2·cols float64 FLOPs per stored byte per
    checkpoint (cols = C for channels, h·w for filter), Gram side ≈ n FLOPs per byte;
    on a 2-core CPU (~20-30 GFLOP/s float64) that, not I/O, bounds the throughput.

Trajectory (``trajectory=``)
    ``"auto"`` (default): all checkpoint pairs where they are cheap, else only the
    reference row/column (= the distances; the rest NaN). Gram side: each checkpoint's
    Gram is built once, a pair then costs an n×n product and nuclear norm per filter
    (~20·n³; CKA alone n²) — all pairs when that extra work is at most the work of
    building the Grams (T·n²·cols per filter), i.e. for few images and wide maps.
    Row side: the pair statistic XᵀY needs both checkpoints' rows together, so all
    pairs come from one concatenated product [X₁…X_T]ᵀ[X₁…X_T] per row block — taken
    when it fits a quarter of a task's memory and costs at most twice the reference
    pairs (T ≤ 6). Map view: reference pairs only. ``"all"``: every pair for every
    view (row side O(T²) statistics, map view O(T²) direct computations).
    ``"reference"``: the reference row/column only.

Bootstrap (``bootstrap=N``, percentile 95 % interval into ci_low/ci_high)
    Resampling unit = groups of images: images are dealt into U = min(32, n)
    (``bootstrap_groups``) seeded groups (a permutation, so groups mix classes even
    though stores are class-sorted) and each replicate draws U groups with replacement,
    ONE draw per replicate shared by every epoch, layer and view of an experiment, so
    differences between epochs and layers are paired (:mod:`ftdyn.analysis.interpret`).
    Row-side views accumulate each group's statistics separately and re-sum them
    (U is lowered to ≥ 8 when they would not fit the memory limit; that layer's
    replicates are then not paired with the others); Gram-side and map views take
    exactly the drawn groups' images (rows/columns of the Gram matrices; per-image map
    distances). Replicate statistics are pooled per filter then averaged like the point
    estimate. ``bootstrap_metrics`` limits replicates to some metrics (jobs without one
    keep a single accumulator, or the convergence check's 4 groups where that costs no
    pass). Where a row-side view's statistics per group would take several tasks, its
    bootstrapped metrics get a Gram-side job of their own when their Grams are smaller
    (:func:`ftdyn.analysis.plan.plan_view`). Cost: N metric evaluations per (layer,
    checkpoint); for CKA O(U³) per replicate from unit-level coefficients.

Memory (``memory_limit=``, default 50 % of RAM; ``workers=``, default CPU count)
    The limit bounds the data and statistics held by concurrently running tasks, from
    an explicit per-task estimate: raw chunks resident (2, or T for all-pairs row
    statistics) plus ~2.5 chunks of zarr decode buffers, float64 blocks (≤ 32 MB each,
    fewer when memory is tight; counted 4× for conversion copies), accumulators (twice:
    a running task and a partial sum waiting for its merge), for Gram panels, the
    panel and its output block, and for a Gram-side metrics task every checkpoint's Grams
    beside its own work (:mod:`ftdyn.analysis.gram_memory`: cached decompositions, resampled
    Grams, the bootstrap's CKA coefficients a block of filters at a time). For 1, 2, 4,
    ... ``workers`` threads the planner sizes filter groups, checkpoint passes, Gram panels
    and bootstrap groups so one task fits limit / threads, and keeps the thread count with
    the smallest estimated time (decode bytes / 0.3 GB/s + float64 FLOPs / 15 GFLOP/s, per
    thread). Each task calls glibc ``malloc_trim`` when it ends so freed buffers do not stay
    resident; 128 MB of the limit are reserved for what tasks do not estimate (arenas, zarr's
    event loop). The interpreter, torch, Dask and zarr themselves (~0.6 GB RSS here) are not
    counted.
    With a ``distributed`` scheduler the cluster's threads run the same graph; the limit
    then sizes tasks and each worker's memory is the cluster's business.

Device (``device=``, default "auto": CUDA when present)
    Chunks are read and decoded on the CPU, copied to the device in their stored dtype,
    and everything after that (float64 conversion, statistics, merges, decompositions)
    runs there; only the metric values come back. On a CPU the float64 products bound
    the throughput (above); on a GPU they are cheap and reading the store is the bound.
    ``memory_limit`` then bounds what tasks hold in host memory (raw chunks, decode
    buffers), and 80 % of the GPU's memory bounds the float64 blocks, statistics and
    decompositions, so the plan can keep far more statistics at once (fewer passes).

Scheduling: threaded Dask by default; ``scheduler="tcp://HOST:PORT"`` submits the same
graph to ``dask.distributed.Client(address)`` (the stores must be readable from the
workers at the same paths); a ``distributed.Client`` object is accepted as well.

Outputs in ``out`` (see :mod:`ftdyn.results` for the schema and CSV columns):
``results.zarr``, ``distances.csv``, ``reusability.csv``, ``agreement.csv``,
``agreement_summary.csv``; written into a temporary folder inside ``out`` and
renamed into place at the end (results.zarr last), so an interrupted run leaves no
half-written file. The arguments and each store's fingerprint (checkpoint hashes,
probe, completeness, shapes) are hashed into the results' attrs: re-running with the
same arguments on the same stores prints "up to date" and returns the saved results.

Arguments: :class:`ftdyn.config.AnalyzeConfig` (presets, metrics, views, defaults).
Modules: :mod:`~ftdyn.analysis.inputs` (stores opened as experiments),
:mod:`~ftdyn.analysis.plan` (the memory planner; :mod:`~ftdyn.analysis.gram_memory` what a
Gram-side metrics task holds),
:mod:`~ftdyn.analysis.tasks` (the Dask tasks, one request in and one result out:
:mod:`~ftdyn.analysis.reading` of the store, :mod:`~ftdyn.analysis.rows` row-side statistics,
:mod:`~ftdyn.analysis.grams` Gram matrices, :mod:`~ftdyn.analysis.maps` the map view and pooled
features, :mod:`~ftdyn.analysis.task_results` what the metrics tasks return),
:mod:`~ftdyn.analysis.graph` (the graph and its scheduler),
:mod:`~ftdyn.analysis.collect` (task results -> the results Dataset),
:mod:`~ftdyn.analysis.run` (:func:`analyze` = ``execute(make_plan(...))``).
"""

from .._signature import takes_options
from ..config import METRIC_NAMES, PRESETS, AnalyzeConfig, parse_memory
from .run import AnalysisPlan, analyze, execute, make_plan

analyze = takes_options(AnalyzeConfig)(analyze)  # help() lists every option with its default

__all__ = [
    "analyze",
    "make_plan",
    "execute",
    "AnalysisPlan",
    "parse_memory",
    "PRESETS",
    "METRIC_NAMES",
]
