"""Resuming or extending a store: the call must describe the store it writes into (identity
fields, probe images), and the series is matched with the store's checkpoints (files replaced
before any of their activations were written, later epochs appended)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np

from ..config import ExtractConfig, arg
from ..errors import FtdynError, FtdynWarning
from .loading import _entry_record

#: Where a store records each identity field of :class:`ExtractConfig` (attribute keys, outermost
#: first), in the order a call that resumes or extends the store is checked against them.
_STORE_IDENTITY = {
    "arch": ("architecture",),
    "layers": ("layers",),
    "input_size": ("input_size",),
    "normalize": ("normalization",),
    "dtype": ("dtype",),
    "samples_per_chunk": ("samples_per_chunk",),
    "probe_seed": ("probe", "seed"),
    "per_class": ("probe", "per_class"),
    "max_samples": ("probe", "max_samples"),
}


def _float_normalization(values: dict) -> dict[str, list[float]]:
    return {k: [float(v) for v in values[k]] for k in ("mean", "std")}


def recorded_identity(attrs: dict) -> dict[str, Any]:
    """The identity fields of the store whose root attributes are ``attrs``, named like
    :meth:`ExtractConfig.identity` (``normalize``: the ``{"mean", "std"}`` the store records)."""
    recorded: dict[str, Any] = {}
    for name, keys in _STORE_IDENTITY.items():
        value: Any = attrs
        for key in keys:
            value = value.get(key) if isinstance(value, dict) else None
        recorded[name] = value
    recorded["layers"] = list(recorded["layers"])
    recorded["normalize"] = _float_normalization(recorded["normalize"])
    recorded["samples_per_chunk"] = int(recorded["samples_per_chunk"])
    return recorded


def _mismatch(out: Path, name: str, stored, given, config: ExtractConfig) -> str:
    """The one-line refusal of a call whose identity field ``name`` differs from the store's."""
    flag = arg(name)
    if name == "layers":
        return (
            f"{arg('out', out)}: existing store has layers {', '.join(stored)}, this call"
            f" {', '.join(given)}; pass the same {arg('layers')} options, or choose a new"
            f" {arg('out')}."
        )
    if name == "samples_per_chunk":
        return (
            f"{arg('samples_per_chunk', config.samples_per_chunk)}: the existing store {out} has"
            f" {stored} samples per chunk; drop {arg('samples_per_chunk')} or choose a new"
            f" {arg('out')}."
        )
    if name in ("probe_seed", "per_class", "max_samples"):
        shown, now = ("all" if v is None else v for v in (stored, given))
        return (
            f"{arg('out', out)}: existing store was extracted with {flag} {shown}, this call {now};"
            f" pass the same {flag}, or choose a new {arg('out')}."
        )
    what, hint = {
        "arch": ("architecture", f"pass the same series/{arg('arch')}"),
        "input_size": ("input size", f"pass {arg('input_size', stored)}"),
        "normalize": ("normalization", "use the same series"),
        "dtype": ("dtype", f"pass {arg('dtype', stored)}"),
    }[name]
    return (
        f"{arg('out', out)}: existing store has {what} {stored}, this call {given}; {hint}, or"
        f" choose a new {arg('out')}."
    )


def _check_store(
    out: Path, attrs: dict, given: dict[str, Any], config: ExtractConfig, probe: dict
) -> None:
    """Refuse a call that does not describe the store ``out`` (identity fields in
    :data:`_STORE_IDENTITY`
    order, then the probe images); ``samples_per_chunk`` left None takes the store's."""
    recorded = recorded_identity(attrs)
    for name in _STORE_IDENTITY:
        if name == "samples_per_chunk" and given[name] is None:
            continue
        if recorded[name] != given[name]:
            raise FtdynError(_mismatch(out, name, recorded[name], given[name], config))
    if attrs["probe"].get("fingerprint") != probe["fingerprint"]:
        raise FtdynError(
            f"{arg('out', out)}: the probe images differ from the store's (fingerprint mismatch:"
            f" other images in {arg('data', probe['data_dir'])} or changed files); use the same"
            f" {arg('data')}, or choose a new {arg('out')}."
        )
    if attrs.get("codec", "zstd") != config.codec:  # values do not depend on it: keep the store's
        warnings.warn(
            f"{arg('codec', config.codec)} ignored: the existing store {out} is compressed with "
            f"{attrs.get('codec', 'zstd')}.",
            FtdynWarning,
            stacklevel=2,
        )


def _reconcile(
    out: Path, attrs: dict, done: np.ndarray, entries: list, series: Path
) -> tuple[list[dict], list]:
    """Match the series with the store's checkpoints: (the store's records, where a file changed
    before any of its activations were written is taken as it is now; the entries to append)."""
    known = [dict(rec) for rec in attrs["checkpoints"]]
    index = {int(c["epoch"]): i for i, c in enumerate(known)}
    by_epoch = {int(e.epoch): e for e in entries}
    replaced = []
    for i, rec in enumerate(known):
        epoch = int(rec["epoch"])
        entry = by_epoch.get(epoch)
        if entry is None:
            if not done[i].all():
                raise FtdynError(
                    f"{arg('out', out)}: checkpoint epoch {epoch} ({rec['file']}) is not fully"
                    f" extracted and is no longer in {series}; restore the file, or choose a new"
                    f" {arg('out')}."
                )
            continue
        if entry.sha256 != rec.get("sha256") or (
            entry.sha256 is None and entry.label != rec.get("file")
        ):
            if not done[
                i
            ].any():  # nothing of it stored yet (e.g. the file was broken and has been fixed)
                known[i] = _entry_record(entry)
                replaced.append(entry.label)
                continue
            raise FtdynError(
                f"{arg('out', out)}: epoch {epoch} is {entry.label} (sha256"
                f" {str(entry.sha256)[:12]}) but the store holds {rec['file']} (sha256"
                f" {str(rec.get('sha256'))[:12]}) for it; pass the same series and {arg('source')},"
                f" or choose a new {arg('out')}."
            )
    if replaced:
        warnings.warn(
            f"{arg('out', out)}: {', '.join(replaced)} changed since the store was created, before"
            " any of its activations were written; using the new file(s).",
            FtdynWarning,
            stacklevel=2,
        )
    last = max(index)
    new = [e for e in entries if int(e.epoch) not in index]
    early = [e for e in new if int(e.epoch) < last]
    if early:
        names = ", ".join(f"epoch {e.epoch} ({e.label})" for e in early[:4])
        raise FtdynError(
            f"{arg('out', out)}: {names} would have to be inserted before the store's last epoch"
            f" {last}; a store can only be extended with later epochs: choose a new {arg('out')}."
        )
    return known, new
