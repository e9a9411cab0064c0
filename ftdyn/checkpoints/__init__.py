"""ftdyn.checkpoints: find, order, verify and safely load checkpoint series (README, "Walk-through
on your own data" and "Checkpoints from elsewhere").

* :mod:`~ftdyn.checkpoints.saving` (used by training): the ftdyn checkpoint format,
  :func:`save_checkpoint` (atomic), :func:`rng_states`, and the series manifest
  (:func:`write_manifest` / :func:`read_manifest`).
* :mod:`~ftdyn.checkpoints.loading`: :func:`read_weights` reads any supported file (pickles only
  with ``weights_only=True`` unless trusted, safetensors) into :class:`Weights`, the main copy or
  an EMA / prefixed one.
* :mod:`~ftdyn.checkpoints.matching`: :func:`load_into_model` / :func:`load_state_into_model`
  match a state dict's keys to a model's and load it strictly, explaining any mismatch.
* :mod:`~ftdyn.checkpoints.layouts`: :func:`discover_series` returns the ordered
  :class:`CheckpointEntry` list of a folder (from its manifest, or from third-party files);
  :func:`check_not_transformers` refuses a Hugging Face ``transformers`` model folder.
"""

from .layouts import (
    CHECKPOINT_SUFFIXES,
    CheckpointEntry,
    check_not_transformers,
    checkpoint_files,
    checkpoint_stem,
    discover_series,
    load_source_weights,
)
from .loading import (
    EMA_KEYS,
    EMA_PREFIXES,
    Weights,
    load_checkpoint_payload,
    load_state_dict,
    read_stored_epoch,
    read_weights,
)
from .matching import infer_num_classes, load_into_model, load_state_into_model, match_keys
from .saving import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_FORMAT_VERSION,
    CHECKPOINT_PATTERN,
    CHECKPOINT_REGEX,
    MANIFEST_NAME,
    MANIFEST_REQUIRED_KEYS,
    SERIES_FORMAT,
    SERIES_FORMAT_VERSION,
    checkpoint_filename,
    read_manifest,
    rng_states,
    save_checkpoint,
    set_rng_states,
    sha256_file,
    to_weights_only,
    validate_manifest,
    write_manifest,
)

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_FORMAT_VERSION",
    "CHECKPOINT_PATTERN",
    "CHECKPOINT_REGEX",
    "CHECKPOINT_SUFFIXES",
    "EMA_KEYS",
    "EMA_PREFIXES",
    "MANIFEST_NAME",
    "MANIFEST_REQUIRED_KEYS",
    "SERIES_FORMAT",
    "SERIES_FORMAT_VERSION",
    "CheckpointEntry",
    "Weights",
    "check_not_transformers",
    "checkpoint_filename",
    "checkpoint_files",
    "checkpoint_stem",
    "discover_series",
    "infer_num_classes",
    "load_checkpoint_payload",
    "load_into_model",
    "load_source_weights",
    "load_state_dict",
    "load_state_into_model",
    "match_keys",
    "read_manifest",
    "read_stored_epoch",
    "read_weights",
    "rng_states",
    "save_checkpoint",
    "set_rng_states",
    "sha256_file",
    "to_weights_only",
    "validate_manifest",
    "write_manifest",
]
