"""ftdyn.store: the activation store, a Zarr v3 group of per-layer activations of every
checkpoint on the probe images.

* :mod:`~ftdyn.store.schema`: the layout (variables, dimensions, attributes, chunking), defined
  once: :class:`StoreSpec`, :class:`LayerSpec`, :func:`layer_var`, :func:`layer_dims`.
* :mod:`~ftdyn.store.validate`: :func:`open_store` (validated, Dask-backed, nothing loaded),
  :func:`validate_layout`, :func:`completeness`, :func:`decoding`, :func:`metadata_lock`,
  :func:`read_images`, :func:`info`.
* :mod:`~ftdyn.store.writing`: :func:`create_store`, :class:`StoreWriter` (fills it region by
  region) and the random-init baseline (:func:`add_random_init`, :func:`write_random_init`).
"""

from .schema import (
    COMPLETE,
    IMAGES,
    RANDOM_INIT,
    RANDOM_INIT_COMPLETE,
    RANDOM_INIT_DIM,
    REQUIRED_ATTRS,
    STORE_FORMAT,
    TOKEN_LAYERS,
    LayerSpec,
    StoreSpec,
    baseline_var,
    channel_block,
    layer_dims,
    layer_var,
    store_layers,
)
from .validate import (
    all_finite,
    chunk_on_disk,
    completeness,
    decoding,
    dir_size,
    has_random_init,
    info,
    metadata_lock,
    open_dataset,
    open_store,
    planned_regions,
    read_images,
    store_fingerprint,
    validate_layout,
)
from .writing import StoreWriter, add_random_init, create_store, write_random_init

__all__ = [
    "COMPLETE",
    "IMAGES",
    "RANDOM_INIT",
    "RANDOM_INIT_COMPLETE",
    "RANDOM_INIT_DIM",
    "REQUIRED_ATTRS",
    "STORE_FORMAT",
    "TOKEN_LAYERS",
    "LayerSpec",
    "StoreSpec",
    "StoreWriter",
    "add_random_init",
    "all_finite",
    "baseline_var",
    "channel_block",
    "chunk_on_disk",
    "completeness",
    "create_store",
    "decoding",
    "dir_size",
    "has_random_init",
    "info",
    "layer_dims",
    "layer_var",
    "metadata_lock",
    "open_dataset",
    "open_store",
    "planned_regions",
    "read_images",
    "store_fingerprint",
    "store_layers",
    "validate_layout",
    "write_random_init",
]
