"""CPU cost of a training step and of an extraction forward pass, contiguous vs channels_last.

Decides which memory format ``ftdyn.devices.memory_format`` picks per architecture on CPU.
Run (2 cores, a few minutes): ``python benchmarks/bench_memory_format.py --threads 2``;
prints one JSON line per (arch, format) with the median seconds per batch.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torchvision
from _results import command_line, write_result

ARCHS = ("mobilenet_v2", "resnet18", "resnet50", "vgg11", "densenet121")


def _time(fn, repeats: int) -> float:
    fn()  # warm-up (allocations, oneDNN primitive caches)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure(arch: str, fmt: torch.memory_format, *, batch: int, size: int, repeats: int) -> dict:
    torch.manual_seed(0)
    model = torchvision.models.get_model(arch, weights=None, num_classes=10).to(memory_format=fmt)
    x = torch.randn(batch, 3, size, size).contiguous(memory_format=fmt)
    y = torch.randint(0, 10, (batch,))
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)

    def step():
        model.train()
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()

    def forward():
        model.eval()
        with torch.inference_mode():
            model(x)

    return {
        "arch": arch,
        "format": str(fmt).split(".")[-1],
        "batch": batch,
        "size": size,
        "train_step_s": round(_time(step, repeats), 4),
        "forward_s": round(_time(forward, repeats), 4),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--archs", nargs="+", default=list(ARCHS))
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    for arch in args.archs:
        for fmt in (torch.contiguous_format, torch.channels_last):
            rows.append(measure(arch, fmt, batch=args.batch, size=args.size, repeats=args.repeats))
            print(json.dumps(rows[-1]), flush=True)
    write_result("bench_memory_format", {"rows": rows}, command_line())


if __name__ == "__main__":
    main()
