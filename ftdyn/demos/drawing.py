"""How the stand-in images of :mod:`ftdyn.demos.domains` are drawn, in numpy: value noise,
signed distance shapes, textured natural backgrounds, placed objects with shading and shadows,
and fruits on a plain background. Every function draws from the random stream it is given, so an
image depends only on that stream.
"""

from __future__ import annotations

import colorsys
from collections.abc import Callable, Sequence
from functools import cache, lru_cache
from typing import NamedTuple

import numpy as np

# What can be drawn; the domains take their class names from these, in this (priority) order.
SOURCE_SHAPES = ("circle", "square", "triangle", "star", "cross", "ring", "ellipse", "hexagon")
SIMILAR_SHAPES = (
    "crescent",
    "arrow",
    "heart",
    "diamond",
    "l_shape",
    "trapezoid",
    "bolt",
    "semicircle",
)
SCENES = ("sky", "grass", "water", "sand", "rock", "bricks")
FRUITS = ("apple", "banana", "grapes", "lemon", "strawberry", "cherry", "orange", "pear")


# ----------------------------------------------------------------------------------------------
# small numeric helpers


class _Grid(NamedTuple):
    size: int
    x: np.ndarray  # (S, S) normalized coordinates in [-1, 1], x to the right
    y: np.ndarray  # (S, S) y downwards
    px: float  # one pixel in normalized units


@lru_cache(maxsize=8)
def _grid(size: int) -> _Grid:
    c = ((np.arange(size, dtype=np.float32) + 0.5) / size) * 2.0 - 1.0
    y, x = np.meshgrid(c, c, indexing="ij")
    x.setflags(write=False)
    y.setflags(write=False)
    return _Grid(size, x, y, 2.0 / size)


@lru_cache(maxsize=64)
def _interp_matrix(size: int, cells: int) -> np.ndarray:
    """(size, cells+1) smooth-step interpolation weights from a lattice to pixels."""
    t = (np.arange(size, dtype=np.float64) + 0.5) / size * cells
    i0 = np.minimum(np.floor(t).astype(int), cells - 1)
    f = t - i0
    f = f * f * (3 - 2 * f)
    w = np.zeros((size, cells + 1), dtype=np.float32)
    w[np.arange(size), i0] = 1 - f
    w[np.arange(size), i0 + 1] = f
    w.setflags(write=False)
    return w


def _noise(
    rng: np.random.Generator,
    size: int,
    cells_y: Sequence[int],
    cells_x: Sequence[int],
    persistence: float = 0.55,
) -> np.ndarray:
    """Fractal value noise (sum of smooth lattice octaves), zero mean, unit std."""
    out = np.zeros((size, size), dtype=np.float32)
    amp = 1.0
    for gy, gx in zip(cells_y, cells_x, strict=True):
        gy, gx = max(1, int(gy)), max(1, int(gx))
        lattice = rng.standard_normal((gy + 1, gx + 1)).astype(np.float32)
        out += amp * (_interp_matrix(size, gy) @ lattice @ _interp_matrix(size, gx).T)
        amp *= persistence
    out -= out.mean()
    out /= out.std() + 1e-6
    return out


def _fractal(
    rng: np.random.Generator, size: int, base: int = 2, octaves: int = 5, persistence: float = 0.55
) -> np.ndarray:
    cells = [base * 2**k for k in range(octaves) if base * 2**k <= size]
    return _noise(rng, size, cells, cells, persistence)


def _smoothstep(a: float, b: float, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - a) / (b - a), 0.0, 1.0)
    return t * t * (3 - 2 * t)


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.array(
        colorsys.hsv_to_rgb(h % 1.0, float(np.clip(s, 0, 1)), float(np.clip(v, 0, 1))),
        dtype=np.float32,
    )


def _mix(a: np.ndarray, b: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Per-pixel blend of colours a, b ((3,) or (S,S,3)) by t (S,S)."""
    return a + (b - a) * t[..., None]


def _rotate(x: np.ndarray, y: np.ndarray, angle: float) -> tuple[np.ndarray, np.ndarray]:
    c, s = np.cos(angle), np.sin(angle)
    return c * x + s * y, -s * x + c * y


# ----------------------------------------------------------------------------------------------
# signed distance functions in object coordinates (negative inside; objects fit in radius ~1)


def _sd_circle(x, y, r=1.0, cx=0.0, cy=0.0):
    return np.sqrt((x - cx) ** 2 + (y - cy) ** 2) - r


def _sd_box(x, y, hx, hy, cx=0.0, cy=0.0):
    qx, qy = np.abs(x - cx) - hx, np.abs(y - cy) - hy
    outside = np.sqrt(np.maximum(qx, 0) ** 2 + np.maximum(qy, 0) ** 2)
    return outside + np.minimum(np.maximum(qx, qy), 0)


def _sd_ellipse(x, y, a, b, cx=0.0, cy=0.0):
    # first-order approximation, exact enough for 1-px antialiasing
    k = np.sqrt(((x - cx) / a) ** 2 + ((y - cy) / b) ** 2)
    return (k - 1) * min(a, b)


def _smin(a, b, k: float):
    """Smooth union of two distance fields (blend radius k)."""
    h = np.maximum(k - np.abs(a - b), 0.0) / k
    return np.minimum(a, b) - h * h * k * 0.25


def _sd_polygon(x, y, verts: np.ndarray):
    """Exact signed distance to a simple polygon (vectorised over edges)."""
    px, py = x.reshape(1, -1), y.reshape(1, -1)
    vx, vy = verts[:, :1], verts[:, 1:]  # (E,1)
    nxt = np.roll(verts, -1, axis=0)
    ex, ey = nxt[:, :1] - vx, nxt[:, 1:] - vy
    wx, wy = px - vx, py - vy  # (E,N)
    h = np.clip((wx * ex + wy * ey) / (ex * ex + ey * ey), 0.0, 1.0)
    bx, by = wx - ex * h, wy - ey * h
    d2 = (bx * bx + by * by).min(axis=0)
    c1, c2, c3 = py >= vy, py < nxt[:, 1:], ex * wy > ey * wx
    inside = np.logical_xor.reduce((c1 == c2) & (c2 == c3), axis=0)
    return (np.where(inside, -1.0, 1.0) * np.sqrt(d2)).reshape(x.shape).astype(np.float32)


def _regular(n: int, r: float = 1.0, phase: float = -np.pi / 2) -> np.ndarray:
    a = phase + 2 * np.pi * np.arange(n) / n
    return np.stack([r * np.cos(a), r * np.sin(a)], -1)


def _star(n: int, r_out: float, r_in: float) -> np.ndarray:
    a = -np.pi / 2 + np.pi * np.arange(2 * n) / n
    r = np.where(np.arange(2 * n) % 2 == 0, r_out, r_in)
    return np.stack([r * np.cos(a), r * np.sin(a)], -1)


def _heart() -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, 36, endpoint=False)
    hx = 16 * np.sin(t) ** 3
    hy = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
    v = np.stack([hx, hy], -1) / 17.0
    v[:, 1] += 0.1
    return v


_POLY = {
    "triangle": _regular(3, 1.0, -np.pi / 2) + np.array([0.0, 0.2]),
    "star": _star(5, 1.0, 0.42) + np.array([0.0, 0.08]),
    "hexagon": _regular(6, 0.92, 0.0),
    "arrow": np.array(
        [
            [-0.9, -0.2],
            [0.15, -0.2],
            [0.15, -0.55],
            [0.95, 0.0],
            [0.15, 0.55],
            [0.15, 0.2],
            [-0.9, 0.2],
        ]
    ),
    "heart": _heart(),
    "diamond": np.array([[0.0, -1.0], [0.58, 0.0], [0.0, 1.0], [-0.58, 0.0]]),
    "l_shape": np.array(
        [[-0.55, -0.9], [-0.12, -0.9], [-0.12, 0.45], [0.7, 0.45], [0.7, 0.88], [-0.55, 0.88]]
    ),
    "trapezoid": np.array([[-0.95, 0.5], [0.95, 0.5], [0.45, -0.5], [-0.45, -0.5]]),
    "bolt": np.array(
        [
            [0.2, -1.0],
            [-0.55, 0.12],
            [-0.05, 0.12],
            [-0.25, 1.0],
            [0.55, -0.2],
            [0.05, -0.2],
            [0.35, -1.0],
        ]
    ),
}
_POLY = {k: np.asarray(v, dtype=np.float32) for k, v in _POLY.items()}


def _shape_sdf(shape: str, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    if shape in _POLY:
        return _sd_polygon(x, y, _POLY[shape])
    if shape == "circle":
        return _sd_circle(x, y, 0.9)
    if shape == "square":
        return _sd_box(x, y, 0.75, 0.75)
    if shape == "cross":
        return np.minimum(_sd_box(x, y, 0.92, 0.3), _sd_box(x, y, 0.3, 0.92))
    if shape == "ring":
        return np.abs(_sd_circle(x, y, 0.7)) - 0.24
    if shape == "ellipse":
        return _sd_ellipse(x, y, 1.0, 0.52)
    if shape == "crescent":
        return np.maximum(_sd_circle(x, y, 0.95), -_sd_circle(x, y, 0.8, 0.48, -0.12))
    if shape == "semicircle":
        return np.maximum(_sd_circle(x, y, 1.0, 0.0, 0.4), y - 0.4)
    raise KeyError(shape)


ALL_SHAPES = SOURCE_SHAPES + SIMILAR_SHAPES


@cache
def _extent(shape: str) -> float:
    """Largest distance from the origin of any point of a shape (object units)."""
    c = np.linspace(-1.5, 1.5, 241, dtype=np.float32)
    y, x = np.meshgrid(c, c, indexing="ij")
    inside = _shape_sdf(shape, x, y) < 0
    return float(np.hypot(x[inside], y[inside]).max()) + 0.02


# ----------------------------------------------------------------------------------------------
# backgrounds: (S,S,3) float32 in ~[0,1]


def _bg_sky(rng, g: _Grid) -> np.ndarray:
    S = g.size
    if rng.random() < 0.25:  # dusk
        top = _hsv(rng.uniform(0.58, 0.7), rng.uniform(0.4, 0.7), rng.uniform(0.35, 0.6))
        low = _hsv(rng.uniform(0.02, 0.11), rng.uniform(0.35, 0.7), rng.uniform(0.85, 1.0))
    else:
        top = _hsv(rng.uniform(0.55, 0.63), rng.uniform(0.45, 0.8), rng.uniform(0.6, 0.9))
        low = _hsv(rng.uniform(0.52, 0.6), rng.uniform(0.08, 0.3), rng.uniform(0.88, 1.0))
    tilt = rng.uniform(-0.3, 0.3)
    t = np.clip((g.y + tilt * g.x + 1) / 2 * rng.uniform(0.8, 1.3), 0, 1)
    img = _mix(top, low, t)
    n = _fractal(rng, S, base=int(rng.integers(1, 4)), octaves=5, persistence=0.6)
    cover = rng.uniform(-0.4, 1.2)
    cloud = _smoothstep(cover, cover + rng.uniform(0.8, 1.6), n)
    cloud_col = _hsv(0.1, rng.uniform(0.0, 0.12), rng.uniform(0.9, 1.0))
    shade = (0.82 + 0.18 * _smoothstep(-1, 2.5, n))[..., None]
    return _mix(img, cloud_col * shade, cloud * rng.uniform(0.7, 1.0))


def _bg_grass(rng, g: _Grid) -> np.ndarray:
    S = g.size
    dark = _hsv(rng.uniform(0.22, 0.33), rng.uniform(0.6, 0.9), rng.uniform(0.15, 0.35))
    light = _hsv(rng.uniform(0.17, 0.3), rng.uniform(0.5, 0.8), rng.uniform(0.6, 0.85))
    fine = max(4, S // int(rng.integers(2, 4)))
    blades = _noise(rng, S, [2, 3, 6], [fine, fine * 2 // 3, fine // 2], 0.7)
    patches = _fractal(rng, S, 2, 4)
    t = 1 / (1 + np.exp(-(1.6 * blades + 0.6 * patches)))
    img = _mix(dark, light, t)
    dry = _hsv(rng.uniform(0.1, 0.15), rng.uniform(0.4, 0.6), rng.uniform(0.55, 0.8))
    dry_t = _smoothstep(0.5, 2.0, _fractal(rng, S, 2, 3)) * rng.uniform(0.0, 0.7)
    return _mix(img, dry, dry_t)


def _bg_water(rng, g: _Grid) -> np.ndarray:
    S = g.size
    deep = _hsv(rng.uniform(0.5, 0.62), rng.uniform(0.6, 0.95), rng.uniform(0.25, 0.5))
    light = _hsv(rng.uniform(0.48, 0.58), rng.uniform(0.3, 0.6), rng.uniform(0.6, 0.85))
    _xr, yr = _rotate(g.x, g.y, rng.uniform(-0.2, 0.2))
    warp = _noise(rng, S, [6, 12], [2, 3], 0.5)
    freq = rng.uniform(4, 11)
    ripple = np.sin(np.pi * freq * yr + 1.2 * warp + rng.uniform(0, 2 * np.pi))
    depth = _fractal(rng, S, 1, 3)
    t = np.clip(0.5 + 0.25 * ripple + 0.2 * depth + 0.25 * (yr - 0.0), 0, 1)
    img = _mix(deep, light, t)
    glint = np.clip(ripple, 0, 1) ** 8 * _smoothstep(-0.5, 1.5, _fractal(rng, S, 2, 3))
    return _mix(img, np.ones(3, np.float32), glint * rng.uniform(0.4, 0.9))


def _bg_sand(rng, g: _Grid) -> np.ndarray:
    S = g.size
    h = rng.uniform(0.07, 0.12)
    shadow = _hsv(h, rng.uniform(0.4, 0.6), rng.uniform(0.45, 0.65))
    lit = _hsv(h + rng.uniform(-0.01, 0.02), rng.uniform(0.2, 0.4), rng.uniform(0.8, 0.97))
    xr, _yr = _rotate(g.x, g.y, rng.uniform(0, np.pi))
    warp = _fractal(rng, S, 1, 3)
    dunes = np.sin(np.pi * rng.uniform(1.0, 3.5) * xr + 1.5 * warp + rng.uniform(0, 2 * np.pi))
    ripples = np.sin(np.pi * rng.uniform(10, 20) * xr + 2.0 * warp)
    t = np.clip(0.55 + 0.3 * dunes + 0.06 * ripples + 0.08 * rng.standard_normal((S, S)), 0, 1)
    return _mix(shadow, lit, t.astype(np.float32))


def _bg_rock(rng, g: _Grid) -> np.ndarray:
    S = g.size
    h = rng.uniform(0.02, 0.14)
    s = rng.uniform(0.0, 0.25)
    dark = _hsv(h, s, rng.uniform(0.15, 0.35))
    light = _hsv(h, s * 0.7, rng.uniform(0.6, 0.85))
    n = _fractal(rng, S, int(rng.integers(2, 5)), 5, 0.6)
    ridged = 1 - np.abs(n) / 2.5
    t = np.clip(0.15 + 0.85 * ridged + 0.1 * _fractal(rng, S, 8, 3), 0, 1)
    img = _mix(dark, light, t)
    cracks = np.exp(-((_fractal(rng, S, 3, 3) / 0.12) ** 2))
    grain = (1 + 0.08 * rng.standard_normal((S, S))).astype(np.float32)[..., None]
    return _mix(img, dark * 0.6, cracks * 0.8) * grain


def _bg_bricks(rng, g: _Grid) -> np.ndarray:
    S = g.size
    xr, yr = _rotate(g.x, g.y, rng.uniform(-0.25, 0.25))
    bh = 2.0 / rng.uniform(5, 9)
    bw = bh * rng.uniform(1.8, 2.8)
    row = np.floor(yr / bh + 100).astype(np.int64)
    xs = xr + (row % 2) * bw / 2
    col = np.floor(xs / bw + 100).astype(np.int64)
    fu = (xs / bw + 100 - col) * bw
    fv = (yr / bh + 100 - row) * bh
    m = rng.uniform(0.025, 0.05)
    mortar = 1 - _smoothstep(
        m * 0.5, m, np.minimum(np.minimum(fu, bw - fu), np.minimum(fv, bh - fv))
    )
    table = rng.uniform(-1, 1, size=64).astype(np.float32)
    idx = (row * 7 + col * 13) % 64
    jit = table[idx]
    h = rng.uniform(0.0, 0.07)
    base = _hsv(h, rng.uniform(0.5, 0.8), rng.uniform(0.45, 0.7))
    alt = _hsv(h + 0.03, rng.uniform(0.4, 0.7), rng.uniform(0.25, 0.45))
    img = _mix(base, alt, np.clip(0.5 + 0.5 * jit, 0, 1))
    img = img * (1 + 0.12 * _fractal(rng, S, 4, 3))[..., None]
    mortar_col = _hsv(0.1, rng.uniform(0.0, 0.15), rng.uniform(0.55, 0.8))
    return _mix(img, mortar_col, mortar)


_BACKGROUNDS: dict[str, Callable[[np.random.Generator, _Grid], np.ndarray]] = {
    "sky": _bg_sky,
    "grass": _bg_grass,
    "water": _bg_water,
    "sand": _bg_sand,
    "rock": _bg_rock,
    "bricks": _bg_bricks,
}
assert tuple(_BACKGROUNDS) == SCENES


def _photometric(rng, img: np.ndarray) -> np.ndarray:
    """Camera-like jitter: exposure, saturation, a slight colour cast, vignetting, sensor noise."""
    gray = img.mean(axis=-1, keepdims=True)
    img = gray + (img - gray) * rng.uniform(0.75, 1.25)
    img = img * rng.uniform(0.85, 1.15) * (1 + rng.uniform(-0.05, 0.05, size=3)).astype(np.float32)
    return img


def _finish(rng, img: np.ndarray, g: _Grid, noise: float, vignette: bool = True) -> np.ndarray:
    vig = rng.uniform(0.0, 0.25)
    if vignette and vig > 0.05:
        img = img * (1 - vig * 0.5 * (g.x**2 + g.y**2))[..., None]
    img = img + rng.normal(0, noise, size=img.shape).astype(np.float32)
    return np.clip(img * 255 + 0.5, 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------------------------
# objects


class _Placement(NamedTuple):
    cx: float
    cy: float
    scale: float  # object radius in normalized image units (image half-width = 1)
    angle: float
    sx: float  # anisotropic stretch
    sy: float


def _object_coords(g: _Grid, pl: _Placement, dx: float = 0.0, dy: float = 0.0):
    xr, yr = _rotate(g.x - pl.cx - dx, g.y - pl.cy - dy, pl.angle)
    return xr / (pl.scale * pl.sx), yr / (pl.scale * pl.sy)


def _to_pixels(sdf_obj: np.ndarray, g: _Grid, pl: _Placement) -> np.ndarray:
    """Object-space distance -> distance in pixels."""
    return sdf_obj * (pl.scale * min(pl.sx, pl.sy) / g.px)


def _shape_sdf_px(
    shape: str, g: _Grid, pl: _Placement, dx: float = 0.0, dy: float = 0.0, pad_px: float = 1.0
) -> np.ndarray:
    """Signed distance in pixels to a placed shape, evaluated only in a window around it.

    Outside the window (farther than ``pad_px`` from the shape) the value is a large
    positive number, which is all the compositing needs.
    """
    S = g.size
    r = pl.scale * _extent(shape) * max(pl.sx, pl.sy)
    cx, cy = pl.cx + dx, pl.cy + dy

    def span(c):
        lo = int(np.floor((c - r + 1) * S / 2 - 0.5 - pad_px))
        hi = int(np.ceil((c + r + 1) * S / 2 - 0.5 + pad_px)) + 1
        return slice(max(lo, 0), min(hi, S))

    out = np.full((S, S), 1e4, np.float32)
    win = (span(cy), span(cx))
    if out[win].size:
        xr, yr = _rotate(g.x[win] - cx, g.y[win] - cy, pl.angle)
        out[win] = _to_pixels(
            _shape_sdf(shape, xr / (pl.scale * pl.sx), yr / (pl.scale * pl.sy)), g, pl
        )
    return out


def _contrasting_colour(rng, against: np.ndarray) -> np.ndarray:
    best, best_d = None, -1.0
    for _ in range(12):
        c = _hsv(rng.random(), rng.uniform(0.3, 1.0), rng.uniform(0.25, 1.0))
        d = float(np.abs(c - against).sum())
        if d > best_d:
            best, best_d = c, d
        if d > 0.6:
            break
    return best


def _paint_shape(
    rng, img: np.ndarray, cover: np.ndarray, g: _Grid, shape: str, pl: _Placement
) -> None:
    """Paint one shape object (random colour, surface pattern, shadow) in place."""
    S = g.size
    # soft drop shadow
    sdx, sdy = rng.uniform(0.02, 0.07), rng.uniform(0.03, 0.08)
    soft = rng.uniform(1.5, 3.5) * S / 64
    sd_sh = _shape_sdf_px(shape, g, pl, sdx, sdy, pad_px=10 * soft)
    shadow = 1 / (1 + np.exp(np.clip(sd_sh / soft, -30, 30)))
    img *= (1 - rng.uniform(0.25, 0.5) * shadow)[..., None]

    xo, yo = _object_coords(g, pl)
    sd = _shape_sdf_px(shape, g, pl)
    alpha = np.clip(0.5 - sd, 0.0, 1.0)
    inside = alpha > 0
    if not inside.any():
        return
    local = img[inside].mean(axis=0)
    c1 = _contrasting_colour(rng, local)
    style = rng.integers(0, 5)
    if style == 0:  # plain
        col = np.broadcast_to(c1, img.shape)
    elif style == 1:  # two-tone gradient
        c2 = _hsv(rng.random(), rng.uniform(0.3, 1.0), rng.uniform(0.3, 1.0))
        col = _mix(c1, c2, _smoothstep(-1.2, 1.2, xo * np.cos(rng.uniform(0, 6.3)) + yo))
    elif style == 2:  # mottled
        col = c1 * (1 + 0.25 * _fractal(rng, S, 4, 3))[..., None]
    elif style == 3:  # stripes
        c2 = c1 * rng.uniform(0.35, 0.7)
        f = rng.uniform(2.0, 4.0)
        col = _mix(c1, c2, (np.sin(np.pi * f * (xo + rng.uniform(0, 1))) > 0).astype(np.float32))
    else:  # spots
        c2 = _hsv(rng.random(), rng.uniform(0.2, 1.0), rng.uniform(0.1, 1.0))
        col = _mix(c1, c2, _smoothstep(0.6, 0.9, _fractal(rng, S, 8, 2)))
    # lighting: a directional gradient and a darker rim
    lx, ly = np.cos(rng.uniform(3.5, 4.5)), np.sin(rng.uniform(3.5, 4.5))
    light = 0.85 + 0.15 * np.clip(-(xo * lx + yo * ly), -1, 1)
    rim = 0.8 + 0.2 * _smoothstep(0.0, 2.5, -sd)
    col = col * (light * rim)[..., None]
    if rng.random() < 0.3:  # dark outline
        col = _mix(col, col * 0.3, _smoothstep(-2.0, -0.6, sd) * (sd < 0.5))
    img[:] = _mix(img, col, alpha)
    np.maximum(cover, alpha, out=cover)


def _random_placement(rng, shape: str, lo: float, hi: float, margin: float) -> _Placement:
    """Random size, stretch, rotation and position with the whole shape inside ``|x|, |y| <=
    margin``."""
    scale = float(rng.uniform(lo, hi))
    stretch = float(rng.uniform(0.85, 1.15))
    room = max(0.0, margin - scale * _extent(shape) * max(stretch, 1 / stretch))
    return _Placement(
        float(rng.uniform(-room, room)),
        float(rng.uniform(-room, room)),
        scale,
        float(rng.uniform(0, 2 * np.pi)),
        stretch,
        1 / stretch,
    )


def _render_object_scene(rng, g: _Grid, shape: str) -> tuple[np.ndarray, np.ndarray]:
    scene = SCENES[rng.integers(len(SCENES))]
    img = _photometric(rng, _BACKGROUNDS[scene](rng, g))
    cover = np.zeros((g.size, g.size), np.float32)
    # the object stays inside the central region |x|, |y| <= 0.78: an outer border of 11% of
    # the width on each side (7 px at 64 px) shows background only
    _paint_shape(rng, img, cover, g, shape, _random_placement(rng, shape, 0.3, 0.6, 0.78))
    return _finish(rng, img, g, rng.uniform(0.005, 0.025)), cover


def _render_scene(rng, g: _Grid, scene: str) -> tuple[np.ndarray, np.ndarray]:
    img = _photometric(rng, _BACKGROUNDS[scene](rng, g))
    cover = np.zeros((g.size, g.size), np.float32)
    for _ in range(rng.choice(3, p=[0.2, 0.5, 0.3])):
        shape = ALL_SHAPES[rng.integers(len(ALL_SHAPES))]
        _paint_shape(rng, img, cover, g, shape, _random_placement(rng, shape, 0.12, 0.3, 1.0))
    return _finish(rng, img, g, rng.uniform(0.005, 0.025)), cover


# ---- fruits (dissimilar domain) ----------------------------------------------------------------


def _apple_parts(j, rng, x: np.ndarray, y: np.ndarray, stem, leaf) -> list:
    body = np.minimum(_sd_circle(x, y, 0.7, -0.27, 0.08), _sd_circle(x, y, 0.7, 0.27, 0.08))
    col = (
        _hsv(j(-0.02, 0.02), j(0.7, 0.95), j(0.6, 0.85))
        if rng.random() < 0.8
        else _hsv(j(0.18, 0.25), j(0.6, 0.8), j(0.65, 0.85))
    )
    return [
        (_sd_box(x, y, 0.05, 0.22, 0.02, -0.72), stem, "flat"),
        (body, col, "body"),
        (_sd_ellipse(*_rotate(x - 0.22, y + 0.78, 0.5), 0.22, 0.09), leaf, "flat"),
    ]


def _banana_parts(j, rng, x: np.ndarray, y: np.ndarray, stem, leaf) -> list:
    body = np.maximum(_sd_circle(x, y, 1.0, 0.0, -0.25), -_sd_circle(x, y, 0.95, 0.0, -0.65))
    col = _hsv(j(0.12, 0.15), j(0.7, 0.95), j(0.85, 1.0))
    return [
        (body, col, "body"),
        (np.maximum(body, 0.86 - np.abs(x)), _hsv(0.08, 0.7, 0.3), "flat"),
    ]


def _grapes_parts(j, rng, x: np.ndarray, y: np.ndarray, stem, leaf) -> list:
    parts = []
    col = (
        _hsv(j(0.75, 0.85), j(0.5, 0.8), j(0.3, 0.55))
        if rng.random() < 0.7
        else _hsv(j(0.2, 0.26), j(0.5, 0.7), j(0.6, 0.8))
    )
    parts.append((_sd_box(x, y, 0.04, 0.2, 0.0, -0.85), stem, "flat"))
    rows = [(-0.55, 4), (-0.2, 4), (0.15, 3), (0.48, 2), (0.78, 1)]
    for yy, n in rows:
        for k in range(n):
            xx = (k - (n - 1) / 2) * 0.34 + j(-0.04, 0.04)
            parts.append(
                (_sd_circle(x, y, 0.2, xx, yy + j(-0.04, 0.04)), col * j(0.85, 1.1), "body")
            )
    return parts


def _lemon_parts(j, rng, x: np.ndarray, y: np.ndarray, stem, leaf) -> list:
    col = _hsv(j(0.13, 0.16), j(0.75, 0.95), j(0.85, 1.0))
    tips = np.minimum(_sd_ellipse(x, y, 0.2, 0.1, 0.8, 0.0), _sd_ellipse(x, y, 0.2, 0.1, -0.8, 0.0))
    return [(_smin(_sd_ellipse(x, y, 0.85, 0.62), tips, 0.15), col, "body")]


def _orange_parts(j, rng, x: np.ndarray, y: np.ndarray, stem, leaf) -> list:
    col = _hsv(j(0.06, 0.09), j(0.85, 1.0), j(0.85, 1.0))
    return [
        (_sd_circle(x, y, 0.88), col, "body"),
        (_sd_circle(x, y, 0.08, 0.0, -0.62), _hsv(0.2, 0.5, 0.4), "flat"),
    ]


def _pear_parts(j, rng, x: np.ndarray, y: np.ndarray, stem, leaf) -> list:
    col = _hsv(j(0.17, 0.24), j(0.55, 0.8), j(0.6, 0.85))
    body = _smin(_sd_circle(x, y, 0.6, 0.0, 0.35), _sd_circle(x, y, 0.34, 0.0, -0.34), 0.45)
    return [(_sd_box(x, y, 0.04, 0.2, 0.04, -0.8), stem, "flat"), (body, col, "body")]


def _cherry_parts(j, rng, x: np.ndarray, y: np.ndarray, stem, leaf) -> list:
    col = _hsv(j(0.97, 1.0), j(0.8, 1.0), j(0.45, 0.75))
    s1 = _sd_polygon(
        x, y, np.array([[0.05, -0.9], [0.12, -0.9], [-0.3, 0.2], [-0.38, 0.2]], np.float32)
    )
    s2 = _sd_polygon(
        x, y, np.array([[0.05, -0.9], [0.12, -0.9], [0.42, 0.25], [0.34, 0.25]], np.float32)
    )
    return [
        (np.minimum(s1, s2), _hsv(0.2, 0.6, 0.4), "flat"),
        (_sd_circle(x, y, 0.36, -0.36, 0.45), col, "body"),
        (_sd_circle(x, y, 0.36, 0.4, 0.5), col * 0.9, "body"),
    ]


def _strawberry_parts(j, rng, x: np.ndarray, y: np.ndarray, stem, leaf) -> list:
    col = _hsv(j(0.97, 1.01), j(0.8, 1.0), j(0.7, 0.95))
    tri = np.array([[-0.68, -0.35], [0.68, -0.35], [0.0, 0.78]], np.float32)
    body = _sd_polygon(x, y, tri) - 0.22
    seeds = (
        np.sqrt(((x * 6.5 + 0.5 * (np.floor(y * 6) % 2)) % 1 - 0.5) ** 2 + ((y * 6) % 1 - 0.5) ** 2)
        - 0.13
    )
    calyx = _sd_polygon(
        x,
        y,
        _star(5, 0.45, 0.15) * np.array([1.0, 0.5], np.float32)
        + np.array([0.0, -0.55], np.float32),
    )
    return [
        (body, col, "body"),
        (np.maximum(body + 0.05, seeds), _hsv(0.14, 0.6, 0.95), "flat"),
        (calyx, leaf, "flat"),
    ]


_FRUIT_PARTS = {
    "apple": _apple_parts,
    "banana": _banana_parts,
    "grapes": _grapes_parts,
    "lemon": _lemon_parts,
    "orange": _orange_parts,
    "pear": _pear_parts,
    "cherry": _cherry_parts,
    "strawberry": _strawberry_parts,
}


def _fruit_parts(fruit: str, rng, x: np.ndarray, y: np.ndarray):
    """[(sdf in object units, rgb, kind)] painted in order; kind in {'body', 'flat'}."""
    j = lambda a, b: float(rng.uniform(a, b))
    # stem and leaf colours are drawn for every fruit, so each fruit's random stream is unchanged
    stem = _hsv(j(0.07, 0.1), j(0.5, 0.8), j(0.25, 0.4))
    leaf = _hsv(j(0.25, 0.33), j(0.6, 0.9), j(0.4, 0.65))
    return _FRUIT_PARTS[fruit](j, rng, x, y, stem, leaf)  # KeyError: guarded by CLASSES


def _render_fruit(rng, g: _Grid, fruit: str) -> tuple[np.ndarray, np.ndarray]:
    S = g.size
    img = np.full((S, S, 3), rng.uniform(0.985, 1.0), np.float32)
    pl = _Placement(
        float(rng.uniform(-0.04, 0.04)),
        float(rng.uniform(-0.04, 0.04)),
        float(rng.uniform(0.66, 0.78)),
        float(rng.uniform(-0.35, 0.35)),
        float(rng.uniform(0.95, 1.05)),
        1.0,
    )
    xo, yo = _object_coords(g, pl)
    parts = _fruit_parts(fruit, rng, xo, yo)
    body = np.min(np.stack([p[0] for p in parts if p[2] == "body"]), axis=0)
    sd_body = _to_pixels(body, g, pl)
    # faint contact shadow below the fruit
    shadow = np.exp(-((g.x - pl.cx) ** 2 / 0.35 + (g.y - pl.cy - 0.78 * pl.scale) ** 2 / 0.02))
    img *= (1 - 0.12 * shadow * (sd_body > 0))[..., None]
    cover = np.zeros((S, S), np.float32)
    lx, ly = -0.35, -0.4  # highlight position (upper left) in object coordinates
    for sdf, col, kind in parts:
        sd = _to_pixels(sdf, g, pl)
        alpha = np.clip(0.5 - sd, 0, 1)
        if kind == "body":
            depth = np.sqrt(_smoothstep(-0.5, 0.45 * pl.scale / g.px, -sd))
            spec = np.exp(-((xo - lx) ** 2 + (yo - ly) ** 2) / 0.05)
            c = (
                col
                * (0.55 + 0.45 * depth)[..., None]
                * (1 + 0.04 * rng.standard_normal((S, S)))[..., None]
            )
            c = _mix(c, np.ones(3, np.float32), 0.45 * spec * depth)
        else:
            c = np.broadcast_to(col, img.shape)
        img = _mix(img, c, alpha)
        np.maximum(cover, alpha, out=cover)
    return _finish(rng, img, g, 0.004, vignette=False), cover
