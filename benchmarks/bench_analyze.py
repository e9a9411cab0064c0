"""Benchmark ``ftdyn analyze``: peak memory within --memory-limit and throughput vs the I/O floor.

Generates a synthetic float16 store (one layer, planted checkpoints: relu(base + s_t·noise)),
larger than the memory the analysis may use, then in fresh subprocesses:

1. ``baseline``: imports ftdyn.analysis (torch, dask, zarr) and nothing else (with a CUDA
   ``--device``: also starts CUDA, cuBLAS and cuSOLVER): the process's own peak RSS,
   which the memory limit does not cover;
2. ``read``: reads every (checkpoint, sample chunk) block of the layer once with the same
   number of threads and the same zarr calls as the analysis: the I/O + decompression floor;
3. ``analyze`` per view (``channels``: pwsm; ``filter``: procrustes + cka, the default preset),
   with ``--memory-limit``.

Peak memory = each child's ``ru_maxrss`` (getrusage(RUSAGE_SELF) printed by the child;
the parent also reports getrusage(RUSAGE_CHILDREN), the max over all children).
Throughput = uncompressed activation bytes / wall time.

    python benchmarks/bench_analyze.py --size-gb 2 --memory-limit 512MB [--json out.json]
    # statistics on the GPU:
    python benchmarks/bench_analyze.py --size-gb 4 --memory-limit 1GB --device cuda
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from _results import command_line, write_result

ROOT = Path(__file__).resolve().parents[1]


def make_store(
    path: Path,
    size_gb: float,
    shape: tuple[int, int, int],
    T: int,
    spc: int | None,
    codec: str,
    seed: int = 0,
) -> dict:
    import numpy as np
    import torch

    from ftdyn.store import LayerSpec, StoreSpec, StoreWriter, create_store

    C, H, W = shape
    per_image = C * H * W * 2
    n = max(8, int(size_gb * 1e9 / (T * per_image)))
    spec = StoreSpec(
        architecture="vgg19",
        layers=[LayerSpec("features.26", C, H, W)],
        checkpoints=[
            {"epoch": e, "file": f"epoch_{e:03d}.pt", "sha256": f"{e:064d}"} for e in range(T)
        ],
        images=np.zeros((n, 4, 4, 3), dtype=np.uint8),
        labels=np.arange(n) % 10,
        class_names=[f"c{i}" for i in range(10)],
        image_paths=[f"{i}.png" for i in range(n)],
        input_size=4,
        normalization={"mean": [0.0] * 3, "std": [1.0] * 3},
        probe={"seed": seed},
        dtype="float16",
        codec=codec,
        samples_per_chunk=spc,
        model="synthetic",
        dataset="bench",
    )
    t0 = time.perf_counter()
    create_store(path, spec)
    writer = StoreWriter(path)
    gen = torch.Generator().manual_seed(seed)
    scales = [0.0] + [0.05 * 2**t for t in range(T - 1)]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(2) as pool:
        futures = []
        for c in range(writer.n_chunks):
            rows = writer.chunk_slice(c)
            k = rows.stop - rows.start
            base = torch.randn((k, C, H, W), generator=gen) + 0.3
            noise = torch.randn((k, C, H, W), generator=gen)
            for t in range(T):
                act = torch.relu(base + scales[t] * noise).half().numpy()
                futures.append(pool.submit(writer.write_region, t, c, {"features.26": act}))
            while len(futures) > 4:
                futures.pop(0).result()
        for f in futures:
            f.result()
    disk = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return {
        "samples": n,
        "checkpoints": T,
        "shape": list(shape),
        "samples_per_chunk": writer.samples_per_chunk,
        "chunks": writer.n_chunks,
        "activation_bytes": n * T * per_image,
        "bytes_on_disk": disk,
        "codec": codec,
        "generate_s": time.perf_counter() - t0,
    }


CHILD_PRELUDE = textwrap.dedent("""
    import json, resource, sys, time
    sys.path.insert(0, {root!r})
    def report(**kw):
        kw["maxrss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        print("RESULT " + json.dumps(kw))
""")

BASELINE = CHILD_PRELUDE + textwrap.dedent("""
    import ftdyn, ftdyn.analysis, torch, dask, zarr, xarray  # noqa: what analyze imports
    device = {device!r}
    if device.startswith("cuda") or device == "auto" and torch.cuda.is_available():
        # the CUDA context and the cuBLAS/cuSOLVER libraries are not data either
        a = torch.eye(8, dtype=torch.float64, device="cuda" if device == "auto" else device)
        torch.linalg.eigh(a @ a)
        torch.cuda.synchronize()
    report(kind="baseline")
""")

READ = CHILD_PRELUDE + textwrap.dedent("""
    from concurrent.futures import ThreadPoolExecutor
    import numpy as np
    from ftdyn.analysis.inputs import Source
    from ftdyn.analysis.tasks import read_block
    path, var, n, spc, C, H, W, T, threads = {args!r}
    src = Source(path, var, spc, n, C, H, W, 2)
    t0 = time.perf_counter()
    def one(job):
        t, c = job
        return int(read_block(src, t, c).numel())
    with ThreadPoolExecutor(threads) as pool:
        total = sum(pool.map(one, [(t, c) for c in range(src.n_chunks) for t in range(T)]))
    report(kind="read", seconds=time.perf_counter() - t0, values=total)
""")

ANALYZE = CHILD_PRELUDE + textwrap.dedent("""
    import ftdyn
    import torch
    store, out, view, metrics, limit, workers, device = {args!r}
    t0 = time.perf_counter()
    ds = ftdyn.analyze(store, out=out, views=view, metrics=metrics, memory_limit=limit,
                       workers=workers,
                       progress=False, overwrite=True, device=device)
    seconds = time.perf_counter() - t0
    gpu = torch.cuda.max_memory_allocated() if ds.attrs["device"].startswith("cuda") else None
    report(kind="analyze", view=view, seconds=seconds, plan=json.loads(ds.attrs["plan"]),
           threads=int(ds.attrs["threads"]), device=ds.attrs["device"], gpu_peak_bytes=gpu,
           distance=ds["distance"].values.tolist())
""")


def run_child(code: str) -> dict:
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"child failed:\n{proc.stderr[-3000:]}")
    line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT ") :])


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--size-gb",
        type=float,
        default=2.0,
        help="uncompressed float16 activations (all checkpoints)",
    )
    p.add_argument(
        "--memory-limit", default=None, help="analyze --memory-limit (default: size / 4)"
    )
    p.add_argument("--shape", default="128,28,28", help="layer C,H,W")
    p.add_argument("--checkpoints", type=int, default=4)
    p.add_argument("--samples-per-chunk", type=int, default=None, help="default: ~32 MB chunks")
    p.add_argument("--codec", default="zstd", choices=["zstd", "lz4"])
    p.add_argument("--views", default="channels,filter")
    p.add_argument("--workers", type=int, default=None)
    p.add_argument(
        "--device",
        default="cpu",
        help=(
            "analyze --device (cpu, cuda, auto); the read-once floor is "
            "always measured on the CPU (decode only)"
        ),
    )
    p.add_argument(
        "--dir", default=None, help="where to put the store (default: a temp folder, removed)"
    )
    p.add_argument("--json", default=None, help="write the results as JSON to this file")
    p.add_argument(
        "--reuse", action="store_true", help="reuse the store already in --dir (same options)"
    )
    p.add_argument("--generate-only", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    shape = tuple(int(x) for x in a.shape.split(","))
    # child: keeps the parent's RSS (inherited by later children's ru_maxrss) small
    if a.generate_only:
        sys.path.insert(0, str(ROOT))
        print(
            "RESULT "
            + json.dumps(
                make_store(
                    Path(a.dir) / "bench.zarr",
                    a.size_gb,
                    shape,
                    a.checkpoints,
                    a.samples_per_chunk,
                    a.codec,
                )
            )
        )
        return {}
    workers = a.workers or os.cpu_count() or 1
    limit = a.memory_limit or f"{int(a.size_gb * 1e9 / 4)}"
    tmp = Path(a.dir or tempfile.mkdtemp(prefix="ftdyn-bench-"))
    tmp.mkdir(parents=True, exist_ok=True)
    store = tmp / "bench.zarr"
    try:
        saved = tmp / "bench-info.json"
        reuse = a.reuse and saved.exists() and store.exists()
        if not reuse and store.exists():
            shutil.rmtree(store)
        gen = [
            sys.executable,
            __file__,
            "--generate-only",
            "--dir",
            str(tmp),
            "--size-gb",
            str(a.size_gb),
            "--shape",
            a.shape,
            "--checkpoints",
            str(a.checkpoints),
            "--codec",
            a.codec,
        ]
        if a.samples_per_chunk:
            gen += ["--samples-per-chunk", str(a.samples_per_chunk)]
        if reuse:
            info = json.loads(saved.read_text())
        else:
            proc = subprocess.run(gen, capture_output=True, text=True)
            if proc.returncode != 0:
                raise SystemExit(f"store generation failed:\n{proc.stderr[-3000:]}")
            info = json.loads(
                [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")][-1][7:]
            )
            saved.write_text(json.dumps(info))
        print(f"store: {info}", file=sys.stderr)
        base = run_child(BASELINE.format(root=str(ROOT), device=a.device))
        read = run_child(
            READ.format(
                root=str(ROOT),
                args=(
                    str(store),
                    "features_26",
                    info["samples"],
                    info["samples_per_chunk"],
                    *shape,
                    a.checkpoints,
                    workers,
                ),
            )
        )
        gb = info["activation_bytes"] / 1e9
        read_rate = gb / read["seconds"]
        print(f"read once: {read['seconds']:.1f} s, {read_rate:.3f} GB/s", file=sys.stderr)
        runs = []
        metrics = {
            "channels": ["pwsm"],
            "filter": ["procrustes", "cka"],
            "flat": ["cka"],
            "pooled": ["pwsm"],
            "map": ["procrustes"],
        }
        for view in a.views.split(","):
            # never time an "up to date" re-run
            shutil.rmtree(tmp / f"out-{view}", ignore_errors=True)
            r = run_child(
                ANALYZE.format(
                    root=str(ROOT),
                    args=(
                        str(store),
                        str(tmp / f"out-{view}"),
                        view,
                        metrics[view],
                        limit,
                        workers,
                        a.device,
                    ),
                )
            )
            r["gb_per_s"] = gb / r["seconds"]
            r["fraction_of_read_rate"] = r["gb_per_s"] / read_rate
            r["peak_minus_baseline_bytes"] = r["maxrss_bytes"] - base["maxrss_bytes"]
            r.pop("distance", None)
            runs.append(r)
            print(
                f"analyze {view}: {r['seconds']:.1f} s, {r['gb_per_s']:.3f} GB/s "
                f"({100 * r['fraction_of_read_rate']:.0f}% of read-once), peak RSS "
                f"{r['maxrss_bytes'] / 1e9:.2f} GB (baseline {base['maxrss_bytes'] / 1e9:.2f} GB), "
                f"threads {r['threads']}, device {r['device']}"
                + (f", GPU peak {r['gpu_peak_bytes'] / 1e9:.2f} GB" if r["gpu_peak_bytes"] else ""),
                file=sys.stderr,
            )
        result = {
            "store": info,
            "memory_limit": limit,
            "workers": workers,
            "cpu_count": os.cpu_count(),
            "load_average": os.getloadavg(),
            "baseline_maxrss_bytes": base["maxrss_bytes"],
            "read_once_s": read["seconds"],
            "read_once_gb_per_s": read_rate,
            "read_maxrss_bytes": read["maxrss_bytes"],
            "analyze": runs,
            "children_maxrss_bytes": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024,
        }
        if a.json:
            Path(a.json).write_text(json.dumps(result, indent=2))
        print(json.dumps(result, indent=2))
        write_result("bench_analyze", result, command_line())
        return result
    finally:
        if a.dir is None:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
