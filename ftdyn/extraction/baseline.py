"""The random-init baseline: a seeded fresh model of the store's architecture replayed on the
probe images beside the checkpoints (the ceiling of the analysis's relative distances)."""

from __future__ import annotations

import numpy as np
import torch

from .. import data as data_mod
from ..config import arg
from ..errors import FtdynError
from ..models import LayerCapture, build_model
from ..progress import stage
from ..store import StoreWriter, add_random_init, all_finite, write_random_init
from .forward import DTYPES, full_precision
from .plan import ExtractPlan


def _extract_random_init(plan: ExtractPlan, writer: StoreWriter) -> None:
    """The random-init baseline: a seeded fresh architecture (head sized like the store's) replayed
    on the probe images; chunks already written by an interrupted run are kept."""
    out, seed, network = plan.out, plan.config.random_init_seed, plan.network
    done = add_random_init(
        out,
        seed=seed,
        architecture=network.arch,
        init=f"torch.manual_seed({seed}); the architecture's default constructor (own init)",
    )
    if done.all():
        return
    with torch.random.fork_rng(devices=[]):  # the caller's random state stays as it was
        torch.manual_seed(seed)
        model = build_model(network.arch, num_classes=writer.attrs.get("num_classes"))
    model.to(plan.device).eval()
    layers = list(network.layers)
    capture = LayerCapture(model, layers, dtype=DTYPES[plan.config.dtype], layouts=network.layouts)
    mean, std = network.normalization["mean"], network.normalization["std"]
    images, batch_size = plan.probe.images, plan.config.batch_size
    try:
        with torch.inference_mode(), full_precision():
            for chunk in np.flatnonzero(~done):
                rows = writer.chunk_slice(int(chunk))
                parts: dict[str, list[np.ndarray]] = {name: [] for name in layers}
                for start in range(rows.start, rows.stop, batch_size):
                    stop = min(start + batch_size, rows.stop)
                    x = torch.from_numpy(images[start:stop]).permute(0, 3, 1, 2).to(plan.device)
                    model(data_mod.normalize(x, mean, std))
                    for name, t in capture.pop().items():
                        parts[name].append(t.cpu().numpy())
                arrays = {name: np.concatenate(p) for name, p in parts.items()}
                bad = [name for name, a in arrays.items() if not all_finite(a)]
                if bad:
                    raise FtdynError(
                        f"{arg('random_init_baseline')}: the random network gave non-finite"
                        f" activations at {', '.join(bad)} (float16 overflow?); re-extract with"
                        f" {arg('dtype')} float32."
                    )
                write_random_init(out, int(chunk), arrays)
    finally:
        capture.close()
    stage(f"{out}: random-init baseline (seed {seed}) written.")
