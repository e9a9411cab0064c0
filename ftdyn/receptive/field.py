"""The result type, :class:`ReceptiveField` (size, jump and start per axis, a unit's centre and
box), and the mapping between feature-map cells and image pixels; conventions in
:mod:`ftdyn.receptive`."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import FtdynError


class ReceptiveFieldError(FtdynError, ValueError):
    """Receptive field cannot be computed (unknown layer, untraceable model, unsupported op)."""


def _pair(v) -> tuple[float, float]:
    if isinstance(v, (int, float)):
        return (float(v), float(v))
    a, b = v
    return (float(a), float(b))


@dataclass(frozen=True)
class ReceptiveField:
    """Receptive-field geometry of one layer; all pairs are ``(y, x)`` in input pixels.

    ``size``: extent of one unit's field (may exceed the input). ``jump``: distance
    between the centres of adjacent units. ``start``: centre of unit (0, 0) in
    pixel-index coordinates (pixel ``i`` has centre ``i``). ``map_size``: the
    feature map's (h, w) at ``input_size`` (informational; ``None`` if unknown).
    ``global_context``: units also see globally pooled context (SE blocks etc.),
    so their true dependence is the whole image.
    """

    size: tuple[float, float]
    jump: tuple[float, float]
    start: tuple[float, float]
    map_size: tuple[int, int] | None = None
    input_size: tuple[int, int] | None = None
    global_context: bool = False

    def __post_init__(self):
        object.__setattr__(self, "size", _pair(self.size))
        object.__setattr__(self, "jump", _pair(self.jump))
        object.__setattr__(self, "start", _pair(self.start))
        for name in ("map_size", "input_size"):
            v = getattr(self, name)
            if v is not None:
                object.__setattr__(self, name, (int(v[0]), int(v[1])))
        object.__setattr__(self, "global_context", bool(self.global_context))

    # -- geometry of single units ------------------------------------------------
    def center(self, u: float, v: float) -> tuple[float, float]:
        """Centre of unit (row ``u``, column ``v``) in input pixel-index coordinates."""
        return (self.start[0] + u * self.jump[0], self.start[1] + v * self.jump[1])

    def box(self, u: int, v: int, clip: tuple[int, int] | None = None) -> tuple[int, int, int, int]:
        """Half-open input box ``(y0, x0, y1, x1)`` of unit (``u``, ``v``).

        The field covers ``image[y0:y1, x0:x1]``; without ``clip`` the box may
        extend outside the image. With ``clip=(H, W)`` it is intersected with the
        image (possibly empty: ``y0 == y1``).
        """
        cy, cx = self.center(u, v)
        y0 = math.floor(cy - (self.size[0] - 1) / 2 + 1e-9)
        x0 = math.floor(cx - (self.size[1] - 1) / 2 + 1e-9)
        y1 = math.ceil(cy + (self.size[0] - 1) / 2 - 1e-9) + 1
        x1 = math.ceil(cx + (self.size[1] - 1) / 2 - 1e-9) + 1
        if clip is not None:
            h, w = int(clip[0]), int(clip[1])
            y0, y1 = min(max(y0, 0), h), min(max(y1, 0), h)
            x0, x1 = min(max(x0, 0), w), min(max(x1, 0), w)
        return (y0, x0, y1, x1)

    # -- serialisation -----------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (lists, floats, ints, bools); inverse of :meth:`from_dict`."""
        return {
            "size": list(self.size),
            "jump": list(self.jump),
            "start": list(self.start),
            "map_size": None if self.map_size is None else list(self.map_size),
            "input_size": None if self.input_size is None else list(self.input_size),
            "global_context": self.global_context,
            "convention": "pixel-index centres; box half-open; union at merges",
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ReceptiveField:
        return cls(
            size=tuple(d["size"]),
            jump=tuple(d["jump"]),
            start=tuple(d["start"]),
            map_size=None if d.get("map_size") is None else tuple(d["map_size"]),
            input_size=None if d.get("input_size") is None else tuple(d["input_size"]),
            global_context=bool(d.get("global_context", False)),
        )


def map_to_image(
    rf: ReceptiveField, h: int | None = None, w: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Input pixel-index coordinates of the centres of an ``h x w`` map's cells.

    Returns ``(ys, xs)``: ``ys[u] = start_y + u * jump_y`` (length ``h``) and
    ``xs[v] = start_x + v * jump_x`` (length ``w``), float64. ``h``/``w`` default
    to ``rf.map_size``. Independent of the map size the field was computed at.
    """
    if h is None or w is None:
        if rf.map_size is None:
            raise ReceptiveFieldError(
                "map_to_image: give h and w (this ReceptiveField has no map_size)"
            )
        h = rf.map_size[0] if h is None else h
        w = rf.map_size[1] if w is None else w
    ys = rf.start[0] + np.arange(int(h), dtype=np.float64) * rf.jump[0]
    xs = rf.start[1] + np.arange(int(w), dtype=np.float64) * rf.jump[1]
    return ys, xs


def image_to_map(rf: ReceptiveField, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Fractional map coordinates of every image pixel centre (inverse of :func:`map_to_image`).

    Returns ``(us, vs)`` with ``us[i] = (i - start_y) / jump_y`` for ``i < height``
    and ``vs[k] = (k - start_x) / jump_x`` for ``k < width``. Values outside
    ``[0, h-1]`` lie beyond the outermost cell centres.
    """
    us = (np.arange(int(height), dtype=np.float64) - rf.start[0]) / rf.jump[0]
    vs = (np.arange(int(width), dtype=np.float64) - rf.start[1]) / rf.jump[1]
    return us, vs


def _interp_axis(a: np.ndarray, coords: np.ndarray, axis: int) -> np.ndarray:
    n = a.shape[axis]
    if n == 1:
        return np.repeat(a, len(coords), axis=axis)
    c = np.clip(coords, 0.0, n - 1.0)
    i0 = np.minimum(np.floor(c).astype(np.int64), n - 2)
    t = c - i0
    shape = [1] * a.ndim
    shape[axis] = len(coords)
    t = t.reshape(shape)
    return np.take(a, i0, axis=axis) * (1.0 - t) + np.take(a, i0 + 1, axis=axis) * t


def upsample_to_image(fmap, rf: ReceptiveField, image_size: tuple[int, int] | int) -> np.ndarray:
    """Bilinearly resample feature map(s) ``(..., h, w)`` onto the image pixel grid.

    Each cell's value is placed at its receptive-field centre (not at a plain
    resize position) and interpolated linearly in between; pixels beyond the
    outermost centres take the edge value. Returns ``(..., H, W)`` float64.
    """
    a = np.asarray(fmap, dtype=np.float64)
    if a.ndim < 2:
        raise ReceptiveFieldError("upsample_to_image: the map needs at least 2 dims (..., h, w).")
    H, W = (
        (int(image_size), int(image_size))
        if isinstance(image_size, (int, np.integer))
        else map(int, image_size)
    )
    us, vs = image_to_map(rf, H, W)
    out = _interp_axis(a, us, a.ndim - 2)
    return _interp_axis(out, vs, a.ndim - 1)
