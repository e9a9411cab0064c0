"""Extraction throughput beside its ceiling, measured in the same run.

    ceiling = min(hooked-forward throughput of the same model and batch (with the
                  device->host copies of the captured activations),
                  disk write bandwidth / stored bytes per image)

The script builds a synthetic probe ImageFolder and a checkpoint series (random
weights, slightly drifted per epoch) in a work folder, measures the two ceiling
terms, runs ``ftdyn.extract`` into a fresh store and reports images/s of the
extraction loop (from the store's ``runs`` attribute) and its ratio to the ceiling.
A few diagnostics explain a gap: single-thread compression speed of the codec on
real activations, the compression ratio, and the hooked forward without copies.

Examples::

    # CPU, small resolution (the 2-core development machine)
    python benchmarks/bench_extract.py --arch resnet50 --size 64 --images 128 --device cpu
    # the GPU target: ResNet50 at 224 px, default layers (goal: ratio >= 0.5)
    python benchmarks/bench_extract.py --arch resnet50 --size 224 --images 2048 --device cuda --json
    bench.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import torch
from _results import command_line, write_result

import ftdyn
from ftdyn import checkpoints as ck
from ftdyn.data import normalize
from ftdyn.extraction import DTYPES, default_writers, full_precision, human_bytes
from ftdyn.models import IMAGENET_MEAN, IMAGENET_STD, LayerCapture, build_model, replace_head
from ftdyn.store import dir_size


def make_probe(root: Path, n: int, size: int, classes: int = 4, seed: int = 0) -> Path:
    """``n`` smooth random RGB images (``size`` px) in ``classes`` class folders."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for i in range(n):
        folder = root / f"class_{i % classes}"
        folder.mkdir(parents=True, exist_ok=True)
        low = rng.integers(0, 256, (max(2, size // 8), max(2, size // 8), 3), dtype=np.uint8)
        img = Image.fromarray(low).resize((size, size), Image.BICUBIC)
        noise = rng.integers(-20, 21, (size, size, 3))
        arr = np.clip(np.asarray(img, dtype=np.int16) + noise, 0, 255).astype(np.uint8)
        Image.fromarray(arr).save(folder / f"img_{i:05d}.png", compress_level=1)
    return root


def make_series(
    folder: Path, arch: str, epochs: int, size: int, classes: int = 4, seed: int = 0
) -> None:
    torch.manual_seed(seed)
    model = build_model(arch)
    replace_head(model, classes)
    entries = []
    for epoch in range(epochs):
        if epoch:
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(0.01 * torch.randn_like(p) * p.abs().mean())
        name = ck.checkpoint_filename(epoch)
        sha = ck.save_checkpoint(folder / name, model.state_dict(), epoch=epoch)
        entries.append({"epoch": epoch, "file": name, "sha256": sha})
    ck.write_manifest(
        folder,
        {
            "format": "ftdyn-series",
            "format_version": 1,
            "architecture": arch,
            "num_classes": classes,
            "classes": [f"class_{i}" for i in range(classes)],
            "input_size": size,
            "normalization": {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)},
            "epochs": entries,
            "ftdyn_version": ftdyn.__version__,
            "torch_version": torch.__version__,
            "dataset": {"path": "synthetic"},
        },
    )


def hooked_forward_rate(
    arch: str,
    size: int,
    images: np.ndarray,
    layers: list[str],
    batch_size: int,
    dtype: torch.dtype,
    device: torch.device,
    copies: bool,
    repeats: int,
) -> float:
    """Images/s of forward passes with all layers captured (and copied to pinned host memory)."""
    model = build_model(arch).to(device).eval()
    capture = LayerCapture(model, layers, dtype=dtype)
    x_all = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    cuda = device.type == "cuda"
    if cuda:
        x_all = x_all.pin_memory()
    n = x_all.shape[0]

    def one_pass() -> None:
        for start in range(0, n, batch_size):
            with torch.inference_mode():
                x = normalize(
                    x_all[start : start + batch_size].to(device, non_blocking=True),
                    IMAGENET_MEAN,
                    IMAGENET_STD,
                )
                model(x)
                outs = capture.pop()
                if copies and cuda:
                    for t in outs.values():
                        torch.empty(t.shape, dtype=t.dtype, pin_memory=True).copy_(
                            t, non_blocking=True
                        )
        if cuda:
            torch.cuda.synchronize()

    with full_precision():  # as in extraction: no TF32
        one_pass()  # warm-up (cuDNN algorithm selection, allocator)
        t0 = time.perf_counter()
        for _ in range(repeats):
            one_pass()
        seconds = time.perf_counter() - t0
    capture.close()
    return n * repeats / seconds


def disk_write_bandwidth(folder: Path, total_bytes: int, file_bytes: int, fsync: bool) -> float:
    """Bytes/s writing incompressible files the way zarr writes chunks (temp file + rename)."""
    folder.mkdir(parents=True, exist_ok=True)
    block = np.random.default_rng(1).integers(0, 256, file_bytes, dtype=np.uint8).tobytes()
    count = max(1, total_bytes // file_bytes)
    t0 = time.perf_counter()
    for i in range(count):
        tmp = folder / f".{i}.{uuid.uuid4().hex}"
        with open(tmp, "wb") as fh:
            fh.write(block)
            if fsync:
                fh.flush()
                os.fsync(fh.fileno())
        tmp.replace(folder / f"{i}")
    seconds = time.perf_counter() - t0
    shutil.rmtree(folder)
    return count * file_bytes / seconds


def compression(store: Path) -> dict:
    """Single-thread Blosc encode speed (MB/s of raw input) and ratio on the first stored chunk of
    each
    layer, for the store's codec settings and alternatives."""
    import zarr
    from numcodecs import Blosc

    ds = ftdyn.open_store(store)
    chunks = []
    for var in ds.attrs["layer_variables"].values():
        arr = zarr.open_array(store / var, mode="r")
        chunks.append(np.ascontiguousarray(arr[0, : arr.chunks[1]]))
    raw = sum(c.nbytes for c in chunks)
    table = {}
    for name, codec in (
        ("zstd_clevel1", Blosc("zstd", 1, Blosc.SHUFFLE)),
        ("zstd_clevel3", Blosc("zstd", 3, Blosc.SHUFFLE)),
        ("lz4_clevel5", Blosc("lz4", 5, Blosc.SHUFFLE)),
    ):
        codec.encode(chunks[0])  # warm-up
        t0 = time.perf_counter()
        encoded = sum(len(codec.encode(c)) for c in chunks)
        seconds = time.perf_counter() - t0
        table[name] = {
            "encode_MBps_1thread": round(raw / seconds / 1e6, 1),
            "ratio": round(raw / encoded, 3),
        }
    return table


def write_path_rate(store: Path, work: Path, writers: int, codec: str, regions: int) -> float:
    """Raw MB/s that ``writers`` threads push through zarr (encode + write, as StoreWriter does),
    writing real stored chunks of every layer into a scratch array group."""
    from concurrent.futures import ThreadPoolExecutor

    import zarr

    from ftdyn.store.schema import _compressors

    ds = ftdyn.open_store(store)
    group = zarr.open_group(work / "writepath.zarr", mode="w", zarr_format=3)
    jobs = []
    for var in ds.attrs["layer_variables"].values():
        src = zarr.open_array(store / var, mode="r")
        chunk = np.ascontiguousarray(src[0:1, : src.chunks[1]])
        dst = group.create_array(
            var,
            shape=(regions, *chunk.shape[1:]),
            chunks=chunk.shape,
            dtype=chunk.dtype,
            compressors=_compressors(codec),
            fill_value=np.nan,
        )
        dst = dst.with_config({"write_empty_chunks": True})
        jobs += [(dst, i, chunk) for i in range(regions)]

    def put(job):
        dst, i, chunk = job
        dst[i : i + 1] = chunk

    t0 = time.perf_counter()
    with ThreadPoolExecutor(writers) as pool:
        list(pool.map(put, jobs))
    seconds = time.perf_counter() - t0
    raw = sum(job[2].nbytes for job in jobs)
    shutil.rmtree(work / "writepath.zarr", ignore_errors=True)
    return raw / seconds / 1e6


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnet50")
    parser.add_argument("--size", type=int, default=64, help="input size in pixels")
    parser.add_argument("--images", type=int, default=128, help="probe images")
    parser.add_argument("--checkpoints", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--dtype", default="float16", choices=sorted(DTYPES))
    parser.add_argument("--codec", default="zstd", choices=["zstd", "lz4"])
    parser.add_argument(
        "--writers", type=int, default=None, help=f"default: {default_writers()} here"
    )
    parser.add_argument("--chunk-samples", type=int, default=None)
    parser.add_argument(
        "--layer", action="append", default=None, help="default: the architecture's defaults"
    )
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (CPU)")
    parser.add_argument(
        "--repeats", type=int, default=2, help="timed passes of the hooked-forward ceiling"
    )
    parser.add_argument(
        "--fsync", action="store_true", help="fsync in the disk test (zarr does not)"
    )
    parser.add_argument(
        "--workdir", type=Path, default=None, help="default: a temporary folder (removed)"
    )
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    from ftdyn.devices import resolve_device

    device = resolve_device(args.device)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="ftdyn-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        t0 = time.perf_counter()
        probe = make_probe(work / "probe", args.images, args.size)
        series = work / "series"
        make_series(series, args.arch, args.checkpoints, args.size)
        prep = time.perf_counter() - t0

        store = work / "store.zarr"
        t0 = time.perf_counter()
        ftdyn.extract(
            series,
            data=probe,
            out=store,
            layers=args.layer,
            batch_size=args.batch_size,
            dtype=args.dtype,
            codec=args.codec,
            samples_per_chunk=args.chunk_samples,
            device=str(device),
            writers=args.writers,
            progress=False,
        )
        end_to_end = time.perf_counter() - t0
        ds = ftdyn.open_store(store)
        run = ds.attrs["runs"][-1]
        layers = list(ds.attrs["layers"])
        images = ds["images"].values
        processed = args.images * args.checkpoints
        act_bytes = sum(dir_size(store / var) for var in ds.attrs["layer_variables"].values())
        stored_per_image = act_bytes / processed
        raw_per_image = (
            sum(int(np.prod(ds[v].shape[2:])) for v in ds.attrs["layer_variables"].values())
            * np.dtype(args.dtype).itemsize
        )
        comp = compression(store)
        store_codec = ds.attrs.get("codec", args.codec)
        used = comp["zstd_clevel1" if store_codec == "zstd" else "lz4_clevel5"]

        dtype_t = DTYPES[args.dtype]
        fwd_copy = hooked_forward_rate(
            args.arch,
            args.size,
            images,
            layers,
            args.batch_size,
            dtype_t,
            device,
            copies=True,
            repeats=args.repeats,
        )
        fwd_bare = (
            hooked_forward_rate(
                args.arch,
                args.size,
                images,
                layers,
                args.batch_size,
                dtype_t,
                device,
                copies=False,
                repeats=args.repeats,
            )
            if device.type == "cuda"
            else fwd_copy
        )
        write_path = {
            w: write_path_rate(store, work, w, args.codec, regions=max(2 * w, 8))
            for w in sorted({1, run["writers"]})
        }
        disk_total = int(min(max(act_bytes, 64 * 2**20), 2 * 2**30))
        chunk_bytes = int(
            min(32 * 2**20, max(2**20, stored_per_image * (ds.attrs["samples_per_chunk"])))
        )
        disk_bw = disk_write_bandwidth(work / "disktest", disk_total, chunk_bytes, args.fsync)
        disk_rate = disk_bw / stored_per_image
        ceiling = min(fwd_copy, disk_rate)
        result = {
            "arch": args.arch,
            "size": args.size,
            "images": args.images,
            "checkpoints": args.checkpoints,
            "batch_size": args.batch_size,
            "dtype": args.dtype,
            "codec": args.codec,
            "layers": layers,
            "writers": run["writers"],
            "device": str(device),
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "samples_per_chunk": ds.attrs["samples_per_chunk"],
            "extract_images_per_s": run["images_per_s"],
            "extract_end_to_end_images_per_s": processed / end_to_end,
            "hooked_forward_with_copies_images_per_s": fwd_copy,
            "hooked_forward_no_copies_images_per_s": fwd_bare,
            "disk_write_MBps": disk_bw / 1e6,
            "disk_fsync": args.fsync,
            "raw_MB_per_image": raw_per_image / 1e6,
            "stored_MB_per_image": stored_per_image / 1e6,
            "compression": comp,
            "write_path_MBps_by_writers": write_path,
            "disk_limited_images_per_s": disk_rate,
            "ceiling_images_per_s": ceiling,
            "ratio_to_ceiling": run["images_per_s"] / ceiling,
            "store_size": human_bytes(dir_size(store)),
            "prep_seconds": prep,
        }
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    print(
        f"{args.arch} @ {args.size}px, {args.images} images x {args.checkpoints} checkpoints, batch"
        f" {args.batch_size}, {args.dtype}/{args.codec}, {result['writers']} writers on"
        f" {result['device_name']}"
    )
    print(
        f"  extraction:                {result['extract_images_per_s']:9.1f} images/s "
        f"(end to end incl. setup {result['extract_end_to_end_images_per_s']:.1f})"
    )
    print(
        f"  hooked forward (+copies):  {fwd_copy:9.1f} images/s"
        + (f"  (no copies {fwd_bare:.1f})" if device.type == "cuda" else "")
    )
    print(
        f"  disk:                      {disk_bw / 1e6:9.1f} MB/s / {stored_per_image / 1e6:.3f} MB"
        f" stored per image ({raw_per_image / 1e6:.3f} MB raw, ratio {used['ratio']:.2f}) ="
        f" {disk_rate:.1f} images/s"
    )
    for name, row in comp.items():
        print(
            f"  codec {name:<13} 1 thread: {row['encode_MBps_1thread']:7.1f} MB/s raw, ratio"
            f" {row['ratio']:.2f}"
        )
    for w, mbps in write_path.items():
        print(
            f"  zarr write path, {w:2d} writers: {mbps:7.1f} MB/s raw ="
            f" {mbps * 1e6 / raw_per_image:.1f} images/s"
        )
    print(
        f"  ceiling:                   {ceiling:9.1f} images/s  ->  ratio"
        f" {result['ratio_to_ceiling']:.2f}"
    )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    write_result("bench_extract", result, command_line())
    return result


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
