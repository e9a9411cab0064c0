"""Fine-tuning loop → a checkpoint series (``epoch_000.pt`` … ``epoch_T.pt``) + manifest.

:func:`train` fine-tunes every layer of a torchvision CNN with a new classifier head
on an ImageFolder dataset and saves one checkpoint per epoch. ``epoch_000.pt`` is
the source model with its new head *before any update*. After every checkpoint the
manifest (``manifest.json``) is rewritten, so an interrupted run always has a valid
manifest of its complete epochs and ``resume=True`` continues it.

Reproducibility: the shuffling of epoch ``e`` depends only on ``(seed, e)``, the
augmentation of sample ``i`` only on ``(seed, e, i)``, and the global torch RNG
(dropout) is re-seeded from ``(seed, e)`` at the start of each epoch. Each checkpoint
also stores the optimizer state and the RNG states. So on CPU, a run that is killed
and resumed ends with bit-identical weights to an uninterrupted run with the same
seed (same machine and thread count); on GPU, cuDNN kernels may differ slightly.

Modules: :mod:`.plan` (:func:`make_plan`: options, output folder, data), :mod:`.resume` (an
existing run folder and the checks a resumed run passes) and :mod:`.loop` (:func:`execute`,
:func:`train`: the epochs, checkpoints and manifest).
"""

from ..config import OPTIMIZERS, TrainConfig
from .loop import execute, train
from .plan import TrainPlan, make_config, make_plan
from .resume import recorded_identity

__all__ = [
    "OPTIMIZERS",
    "TrainConfig",
    "TrainPlan",
    "execute",
    "make_config",
    "make_plan",
    "recorded_identity",
    "train",
]
