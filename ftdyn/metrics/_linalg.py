"""Shared numerics of :mod:`ftdyn.metrics`: input checks, float64 accumulation,
the eigen-decompositions and the nuclear norm, the two "cores" (row side and
Gram side) that every public function ends in.

Everything here works on torch float64 tensors with arbitrary leading batch
dimensions ``(...)`` and runs where the data lives (CPU threads, or CUDA when the
input tensor is on a CUDA device). Only float64 is used for products and
decompositions, so TF32 (a float32 mode) never applies.

Numerical conventions (documented once, used everywhere):

* ``EIG_CLIP = 1e-7``: netrep's clip of the eigenvalues of the *unnormalized*
  covariance ``XᵀX`` before ``λ^(-1/2)`` (absolute, so ``0 < α < 1`` depends on the
  activation scale, exactly like netrep).
* numerical null space: an eigenvalue ``λ ≤ NULL_FACTOR · dim · eps · λ_ref`` of a
  float64 Gram/covariance matrix is indistinguishable from rounding noise (the
  threshold is ≥250× the noise measured on exactly rank-deficient data); its direction is
  treated as an exact null direction, i.e. it contributes *exactly* zero to the
  whitened data, as it does in exact arithmetic (``X v = 0`` there, whatever the
  whitening weight). ``λ_ref`` is the largest eigenvalue, or the largest raw
  (uncentered) diagonal entry when the matrix was centered from raw moments.
* dead input: a matrix whose centered squared Frobenius norm is
  ``≤ DEAD_RTOL ·`` its raw squared norm (all-zero, or constant columns only) has
  no defined distance: the result is NaN for that element (never 0, never an
  exception). :func:`ftdyn.metrics.stats.dead_mask` reports which elements are dead.
"""

from __future__ import annotations

import math
import warnings
from typing import NamedTuple

import numpy as np
import torch

from ..devices import route

F64 = torch.float64
EPS = float(np.finfo(np.float64).eps)
EIG_CLIP = 1e-7
NULL_FACTOR = 10.0
DEAD_RTOL = 1e-10
#: bytes of float64 temporaries per block/chunk when casting/centering inputs (see plan_blocks)
CACHE_BYTES = 4 * 2**20
CHUNK_BYTES = 64 * 2**20
CHUNK_BYTES_MAX = 512 * 2**20
CHUNK_BYTES_CUDA = 1024 * 2**20
CHUNK_BYTES_MAX_CUDA = 4096 * 2**20
MIN_CHUNK_UNITS = 256
#: nuclear-norm route per device type (see :func:`nuclear_norm`); "svd" elsewhere
NUCLEAR_METHOD = {"cpu": "svd", "cuda": "eigh"}


# --------------------------------------------------------------------------- input
def as_tensor(X, name: str) -> torch.Tensor:
    """numpy array / torch tensor / array-like -> torch tensor (no copy when possible)."""
    if isinstance(X, torch.Tensor):
        t = X.detach()
    else:
        a = np.asarray(X)
        if a.dtype == object:
            raise ValueError(f"{name}: expected a numeric array, got dtype object")
        if (a.dtype.kind == "f" and a.dtype.itemsize > 8) or not a.dtype.isnative:
            a = a.astype(np.float64 if a.dtype.kind == "f" else a.dtype.newbyteorder("="))
        with warnings.catch_warnings():
            # read-only arrays (e.g. memory maps) are fine: inputs are never written to
            warnings.simplefilter("ignore", UserWarning)
            try:
                t = torch.from_numpy(a)
            except (TypeError, ValueError):  # negative strides, dtypes torch lacks
                t = torch.from_numpy(
                    np.ascontiguousarray(
                        a, dtype=np.float64 if a.dtype.kind not in "biuf" else None
                    )
                )
    if t.is_complex():
        raise ValueError(f"{name}: complex input is not supported")
    if not (
        t.is_floating_point()
        or t.dtype in (torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)
    ):
        raise ValueError(f"{name}: unsupported dtype {t.dtype}")
    if t.ndim < 2:
        raise ValueError(
            f"{name}: expected shape (rows, cols) or (..., rows, cols), got {tuple(t.shape)}"
        )
    if t.dtype == torch.bool:
        t = t.to(torch.uint8)
    if t.shape[-1] == 0 or t.shape[-2] == 0:
        raise ValueError(f"{name}: empty matrix of shape {tuple(t.shape)}")
    return t


def check_finite(t: torch.Tensor, name: str, sums: torch.Tensor | None = None) -> None:
    """Raise ValueError if ``t`` holds NaN/Inf.

    ``sums`` (float64 sums over any axis of ``t``, already computed by the caller) makes
    the common case free: finite float64 sums imply finite entries (float16/32 values
    cannot overflow a float64 sum); only when a sum is not finite is ``t`` scanned.
    """
    if not t.is_floating_point():
        return
    if sums is not None and bool(torch.isfinite(sums).all()):
        return
    n_nan = int(torch.isnan(t).sum())
    n_inf = int(torch.isinf(t).sum())
    if n_nan or n_inf:
        raise ValueError(
            f"{name} contains {n_nan} NaN and {n_inf} infinite value(s) out of {t.numel()}; "
            "similarity metrics need finite activations"
        )
    if sums is not None:
        raise ValueError(f"{name}: values too large, their float64 sums overflow")


def check_pair(X: torch.Tensor, Y: torch.Tensor) -> tuple[int, ...]:
    """Same rows, same device, broadcastable batch dims; returns the batch shape."""
    if X.shape[-2] != Y.shape[-2]:
        raise ValueError(
            "X and Y must have the same number of rows (the same inputs in the same order); "
            f"got {X.shape[-2]} and {Y.shape[-2]} (shapes {tuple(X.shape)}, {tuple(Y.shape)})"
        )
    if X.device != Y.device:
        raise ValueError(f"X and Y are on different devices ({X.device}, {Y.device})")
    try:
        return tuple(torch.broadcast_shapes(X.shape[:-2], Y.shape[:-2]))
    except RuntimeError:
        raise ValueError(
            f"batch dimensions of X {tuple(X.shape[:-2])} and Y {tuple(Y.shape[:-2])} "
            "do not broadcast"
        ) from None


def plan_blocks(
    b0: int, elems: int, n_units: int, bytes_per_unit: int, device: torch.device | None = None
) -> tuple[int, int]:
    """How to cut the work: (indices of batch dim 0 per block, units per chunk).

    ``b0``: size of batch dim 0, ``elems``: matrices per index of dim 0, ``n_units``: rows
    (row side) or columns (Gram side) to stream, ``bytes_per_unit``: float64 bytes of one
    unit of one matrix (pair). Small matrices are processed a few at a time so that a
    block's float64 temporaries stay in cache (~CACHE_BYTES); big ones are streamed in
    chunks of ~CHUNK_BYTES (few, large operations: fewer thread synchronizations), but a
    chunk keeps ≥ MIN_CHUNK_UNITS units (a GEMM with a short inner dimension runs several
    times slower) as long as that stays under CHUNK_BYTES_MAX.
    """
    cuda = device is not None and route(device) == "cuda"
    unit = max(1, bytes_per_unit) * max(1, elems)
    whole = unit * n_units
    if cuda:
        budget, hard = CHUNK_BYTES_CUDA, CHUNK_BYTES_MAX_CUDA
        if whole <= budget:
            return int(min(b0, max(1, budget // whole))), int(n_units)
    else:
        budget, hard = CHUNK_BYTES, CHUNK_BYTES_MAX
        if whole <= CACHE_BYTES:
            return int(min(b0, max(1, CACHE_BYTES // whole))), int(n_units)
        if whole <= budget:
            return 1, int(n_units)
    c = budget // unit
    if c < MIN_CHUNK_UNITS:
        c = min(MIN_CHUNK_UNITS, hard // unit)
    return 1, int(max(1, min(n_units, c)))


def blocked(X: torch.Tensor, Y: torch.Tensor | None, fn, n_units: int, bytes_per_unit: int):
    """Apply ``fn(Xb, Yb, chunk)`` to blocks along batch dim 0 and concatenate its outputs.

    X, Y are expanded (views) to their broadcast batch shape; a 2-D problem is one block.
    ``fn`` returns a tuple of tensors with the block's batch dims leading.
    """
    bshape = (
        tuple(X.shape[:-2])
        if Y is None
        else tuple(torch.broadcast_shapes(X.shape[:-2], Y.shape[:-2]))
    )
    Xe = X.expand(*bshape, *X.shape[-2:])
    Ye = None if Y is None else Y.expand(*bshape, *Y.shape[-2:])
    if not bshape:
        Xe = Xe[None]
        Ye = None if Ye is None else Ye[None]
    b0, elems = Xe.shape[0], math.prod(Xe.shape[1:-2])
    b, c = plan_blocks(b0, elems, n_units, bytes_per_unit, X.device)
    outs = [fn(Xe[i : i + b], None if Ye is None else Ye[i : i + b], c) for i in range(0, b0, b)]
    res = tuple(o[0] if len(outs) == 1 else torch.cat(o, 0) for o in zip(*outs, strict=True))
    return tuple(r[0] for r in res) if not bshape else res


def f64_copy(chunk: torch.Tensor) -> torch.Tensor:
    """A contiguous float64 copy of a chunk (safe to modify in place: inputs are never written)."""
    return chunk.to(F64, copy=True, memory_format=torch.contiguous_format)


def finish(t: torch.Tensor):
    """0-d -> python float; else numpy float64 array of the batch shape."""
    t = t.to(F64)
    if t.ndim == 0:
        return float(t)
    return t.cpu().numpy()


# ------------------------------------------------------------------------ products
def at_b(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``aᵀ b`` over the last two dims (float64 in, float64 out), with torch's BLAS.

    (numpy's ``a.T @ a`` maps to syrk and was up to 2× faster on an idle 2-core box, but
    its OpenBLAS threads slowed down 20× as soon as another process shared the cores;
    torch's BLAS stayed steady, so it is used on every device.)
    """
    return torch.matmul(a.mT, b)


def a_bt(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a bᵀ`` over the last two dims (float64)."""
    return torch.matmul(a, b.mT)


def sym(C: torch.Tensor) -> torch.Tensor:
    """(C + Cᵀ)/2, exactly symmetric; halved in place (one temporary of C's size, not two)."""
    S = C + C.mT
    S *= 0.5
    return S


def trace(C: torch.Tensor) -> torch.Tensor:
    return torch.diagonal(C, dim1=-2, dim2=-1).sum(-1)


def nuclear_norm(M: torch.Tensor, method: str = "auto") -> torch.Tensor:
    """Sum of singular values over the last two dims, accurate to ~eps·σ_max each.

    ``svd``: LAPACK/cuSOLVER singular values (CPU default). ``eigh``: eigenvectors V of
    the symmetric ``MᵀM`` (batched eigh is the fast route on CUDA), then ``σ_i = ‖M v_i‖``;
    taking norms of ``M v_i`` instead of ``sqrt(eigenvalue)`` keeps tiny singular values
    accurate to ~eps·σ_max instead of ~sqrt(eps)·σ_max.
    """
    if method == "auto":
        method = NUCLEAR_METHOD.get(route(M.device), "svd")
    if method == "svd":
        return torch.linalg.svdvals(M).sum(-1)
    if method == "eigh":
        m, k = M.shape[-2], M.shape[-1]
        if m < k:
            M = M.mT
        _, V = torch.linalg.eigh(sym(at_b(M, M)))
        return torch.linalg.vector_norm(torch.matmul(M, V), dim=-2).sum(-1)
    raise ValueError(f"unknown nuclear-norm method {method!r}; choose 'auto', 'svd' or 'eigh'")


def angle(cos: torch.Tensor) -> torch.Tensor:
    return torch.arccos(torch.clamp(cos, -1.0, 1.0))


def nan_where(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return torch.where(mask, torch.full_like(values, math.nan), values)


def _whiten_weights(
    lam: torch.Tensor, alpha: float, lam_ref: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-eigendirection whitening weight d and the eigenvalue floor at 0.

    d = α + (1-α)·max(λ, 1e-7)^(-1/2) (netrep), 0 on the numerical null space.
    """
    dim = lam.shape[-1]
    null = lam <= (NULL_FACTOR * max(dim, 1) * EPS) * lam_ref[..., None]
    lam_p = torch.clamp(lam, min=0.0)
    d = alpha + (1.0 - alpha) * torch.rsqrt(torch.clamp(lam, min=EIG_CLIP))
    d = torch.where(null, torch.zeros_like(d), d)
    lam_p = torch.where(null, torch.zeros_like(lam_p), lam_p)
    return d, lam_p


def check_alpha(alpha) -> float:
    try:
        a = float(alpha)
    except (TypeError, ValueError):
        raise ValueError(f"alpha must be a number in [0, 1], got {alpha!r}") from None
    if not (0.0 <= a <= 1.0):
        raise ValueError(f"alpha must be in [0, 1], got {alpha!r}")
    return a


# ----------------------------------------------------------------------- row core
class RowCore:
    """Centered covariances of one (batch of) pair(s): every row-side metric.

    Cxx = X̃ᵀX̃ (p×p), Cyy = ỸᵀỸ (q×q), Cxy = X̃ᵀỸ (p×q), float64, batch (...).
    ``rawx``/``rawy``: raw squared Frobenius norms (for the dead test);
    ``refx``/``refy``: scale of the rounding noise in C (largest raw diagonal entry when
    C was centered from raw moments, else None -> λ_max).
    :meth:`of_traces`: a core of the traces of Cxx and Cyy alone (Procrustes only).
    """

    def __init__(self, Cxx, Cyy, Cxy, rawx, rawy, refx=None, refy=None, nuc="auto"):
        self.Cxx, self.Cyy, self.Cxy = sym(Cxx), sym(Cyy), Cxy
        self._traces(trace(self.Cxx), trace(self.Cyy), rawx, rawy)
        self.refx, self.refy = refx, refy
        self.nuc = nuc

    @classmethod
    def of_traces(cls, trx, try_, Cxy, rawx, rawy, nuc="auto") -> RowCore:
        """A core that knows Cxx and Cyy only by their traces ``trx``/``try_``: Procrustes;
        PWSM and CKA raise ValueError."""
        core = cls.__new__(cls)
        core.Cxx = core.Cyy = core.refx = core.refy = None
        core.Cxy, core.nuc = Cxy, nuc
        core._traces(trx, try_, rawx, rawy)
        return core

    def _traces(self, trx, try_, rawx, rawy) -> None:
        # at least 0, like every centered trace (rounding can make it negative)
        self.trx, self.try_ = torch.clamp(trx, min=0.0), torch.clamp(try_, min=0.0)
        self.dead = (self.trx <= DEAD_RTOL * rawx) | (self.try_ <= DEAD_RTOL * rawy)

    def _full(self, metric: str) -> None:
        if self.Cxx is None:
            raise ValueError(
                f"{metric} needs the self-products XᵀX and YᵀY, not only their diagonals"
            )

    # PWSM ----------------------------------------------------------------------
    def _eig(self, C, ref):
        lam, V = torch.linalg.eigh(C)
        lam_ref = lam[..., -1].clamp(min=0.0)
        if ref is not None:
            lam_ref = torch.maximum(lam_ref, ref)
        return lam, V, lam_ref

    def _cos_eigh(self, Cxx, Cyy, Cxy, refx, refy, alpha):
        lx, Vx, rx = self._eig(Cxx, refx)
        ly, Vy, ry = self._eig(Cyy, refy)
        dx, lxp = _whiten_weights(lx, alpha, rx)
        dy, lyp = _whiten_weights(ly, alpha, ry)
        M = dx[..., :, None] * torch.matmul(torch.matmul(Vx.mT, Cxy), Vy) * dy[..., None, :]
        nx2 = (lxp * dx * dx).sum(-1)
        ny2 = (lyp * dy * dy).sum(-1)
        return nuclear_norm(M, self.nuc) / torch.sqrt(nx2 * ny2)

    def _cos_alpha0(self, Cxx, Cyy, Cxy, refx, refy):
        """α = 0 fast path: Cholesky whitening where it provably equals netrep's.

        With C = L Lᵀ, L⁻¹ Cxy L_y⁻ᵀ has the singular values of Cxx^(-1/2) Cxy Cyy^(-1/2)
        (they differ by orthogonal factors). Valid when no eigenvalue is clipped or null:
        λ_min ≥ 1/‖L⁻¹‖_F² is checked against both floors; other elements go through eigh.
        """
        p, q = Cxx.shape[-1], Cyy.shape[-1]
        Lx, infox = torch.linalg.cholesky_ex(Cxx)
        Ly, infoy = torch.linalg.cholesky_ex(Cyy)
        ok = (infox == 0) & (infoy == 0)
        Ix = torch.eye(p, dtype=F64, device=Cxx.device).expand_as(Cxx)
        Iy = torch.eye(q, dtype=F64, device=Cyy.device).expand_as(Cyy)
        # failed factorizations hold garbage: replace them by I before solving (each side in its
        # own batch shape: a reference X broadcast against several Y is solved once)
        Lx = torch.where((infox == 0)[..., None, None], Lx, Ix)
        Ly = torch.where((infoy == 0)[..., None, None], Ly, Iy)
        iLx = torch.linalg.solve_triangular(Lx, Ix, upper=False)
        iLy = torch.linalg.solve_triangular(Ly, Iy, upper=False)
        lminx = 1.0 / torch.linalg.matrix_norm(iLx) ** 2
        lminy = 1.0 / torch.linalg.matrix_norm(iLy) ** 2
        # trace >= λ_max: a conservative (larger) noise floor, so an element accepted here
        # has no eigenvalue the eigh route would clip or call null
        refx_ = trace(Cxx) if refx is None else torch.maximum(trace(Cxx), refx)
        refy_ = trace(Cyy) if refy is None else torch.maximum(trace(Cyy), refy)
        floor_x = torch.clamp(NULL_FACTOR * p * EPS * refx_, min=EIG_CLIP) * (1 + 1e-6)
        floor_y = torch.clamp(NULL_FACTOR * q * EPS * refy_, min=EIG_CLIP) * (1 + 1e-6)
        ok = ok & (lminx >= floor_x) & (lminy >= floor_y)
        M = torch.matmul(torch.matmul(iLx, Cxy), iLy.mT)
        if bool(ok.all()):
            return nuclear_norm(M, self.nuc) / math.sqrt(p * q)
        if not bool(ok.any()):  # eigh everywhere, each side decomposed in its own batch shape
            return self._cos_eigh(Cxx, Cyy, Cxy, refx, refy, 0.0)
        shape = tuple(M.shape[:-2])
        ok = torch.broadcast_to(ok, shape)
        # singular values only where Cholesky whitening holds (the costly part), eigh elsewhere
        cos = torch.zeros(shape, dtype=F64, device=M.device)
        cos[ok] = nuclear_norm(M[ok], self.nuc) / math.sqrt(p * q)
        bad = ~ok

        def sel(t, core):
            if t is None:
                return None
            return torch.broadcast_to(t, shape + tuple(t.shape[t.ndim - core :]))[bad]

        fixed = self._cos_eigh(
            sel(Cxx, 2), sel(Cyy, 2), sel(Cxy, 2), sel(refx, 0), sel(refy, 0), 0.0
        )
        # on the flattened batch, so that one pair (0-d) takes the same path as a batch
        return cos.flatten().index_put((bad.flatten(),), fixed).view(shape)

    def pwsm(self, alpha: float) -> torch.Tensor:
        self._full("PWSM")
        if alpha == 1.0:
            cos = nuclear_norm(self.Cxy, self.nuc) / torch.sqrt(self.trx * self.try_)
        elif alpha == 0.0:
            cos = self._cos_alpha0(self.Cxx, self.Cyy, self.Cxy, self.refx, self.refy)
        else:
            cos = self._cos_eigh(self.Cxx, self.Cyy, self.Cxy, self.refx, self.refy, alpha)
        return nan_where(angle(cos), self.dead)

    def procrustes(self) -> torch.Tensor:
        sim = nuclear_norm(self.Cxy, self.nuc) / torch.sqrt(self.trx * self.try_)
        return nan_where(torch.clamp(1.0 - sim, 0.0, 1.0), self.dead)

    def cka(self) -> torch.Tensor:
        self._full("CKA")
        num = torch.linalg.matrix_norm(self.Cxy) ** 2
        den = torch.linalg.matrix_norm(self.Cxx) * torch.linalg.matrix_norm(self.Cyy)
        return nan_where(torch.clamp(num / den, 0.0, 1.0), self.dead)

    #: (n, Σ‖x̃_i‖²‖ỹ_i‖², Σ‖x̃_i‖⁴, Σ‖ỹ_i‖⁴): per-row terms of the debiased estimator,
    #: set by the data route only (row statistics do not carry them)
    debiased_terms = None

    def cka_debiased(self) -> torch.Tensor:
        if self.debiased_terms is None:
            raise ValueError(
                "debiased CKA needs per-row norms, which row statistics do not carry; "
                "use linear_cka(X, Y, debiased=True) or the Gram side (cka_from_gram)"
            )
        n, dxy, dxx, dyy = self.debiased_terms
        mn = torch.linalg.matrix_norm
        return debiased_from_features(
            mn(self.Cxy) ** 2,
            mn(self.Cxx) ** 2,
            mn(self.Cyy) ** 2,
            dxy,
            dxx,
            dyy,
            self.trx,
            self.try_,
            n,
            self.dead,
        )


# ---------------------------------------------------------------------- Gram core
class GramEig(NamedTuple):
    """One model's Gram-side statistics after decomposition (reusable for any pair).

    ``lam`` (..., n) ascending eigenvalues and ``U`` (..., n, n) eigenvectors of the
    double-centered Gram matrix K̃ = H K H; ``null`` marks the numerical null space;
    ``tr`` = trace K̃ = ‖X̃‖_F²; ``dead`` marks dead inputs. All float64 / bool tensors.
    """

    lam: torch.Tensor
    U: torch.Tensor
    null: torch.Tensor
    tr: torch.Tensor
    dead: torch.Tensor


def double_center(K: torch.Tensor) -> torch.Tensor:
    """H sym(K) H with H = I - 11ᵀ/n, via the row means (H is never formed), exactly symmetric.

    Symmetrized first, then the symmetric (r_i + r_j) − m subtracted: two n×n temporaries
    instead of five (the Grams are large and memory-bound)."""
    S = sym(K)
    r = S.mean(-1, keepdim=True)
    shift = r + r.mT
    shift -= r.mean(-2, keepdim=True)
    S -= shift
    return S


def centered_trace(Kc: torch.Tensor) -> torch.Tensor:
    """Trace of a centered covariance or Gram matrix, at least 0 (rounding can make it
    negative)."""
    return torch.clamp(trace(Kc), min=0.0)


def gram_dead(Kc: torch.Tensor, raw_tr: torch.Tensor) -> torch.Tensor:
    """Dead test of a Gram: its centered trace vanishes next to its raw one (a constant input)."""
    return centered_trace(Kc) <= DEAD_RTOL * raw_tr


def raw_gram_dead(K: torch.Tensor) -> torch.Tensor:
    """:func:`gram_dead` of a raw Gram without centering it: tr(HKH) = tr K − 1ᵀK1/n."""
    raw = trace(K)
    return torch.clamp(raw - K.sum((-2, -1)) / K.shape[-1], min=0.0) <= DEAD_RTOL * raw


class GramCentered(NamedTuple):
    """One model's double-centered Gram matrix, for CKA with any other checkpoint (no
    decomposition): ``Kc`` (..., n, n) and ``dead`` (...) (the dead test of :class:`GramCore`)."""

    Kc: torch.Tensor
    dead: torch.Tensor
    norm: torch.Tensor  # ‖K̃‖_F, once for all pairs


def gram_centered_raw(K: torch.Tensor) -> GramCentered:
    """:class:`GramCentered` of a raw (uncentered) Gram matrix."""
    Kc = double_center(K)
    return GramCentered(Kc, gram_dead(Kc, trace(K)), torch.linalg.matrix_norm(Kc))


def gram_eig_centered(Kc: torch.Tensor, raw_tr: torch.Tensor, ref: torch.Tensor | None) -> GramEig:
    n = Kc.shape[-1]
    lam, U = torch.linalg.eigh(Kc)
    lam_ref = lam[..., -1].clamp(min=0.0)
    if ref is not None:
        lam_ref = torch.maximum(lam_ref, ref)
    null = lam <= (NULL_FACTOR * n * EPS) * lam_ref[..., None]
    return GramEig(lam, U, null, centered_trace(Kc), gram_dead(Kc, raw_tr))


def gram_eig_raw(K: torch.Tensor, Kc: torch.Tensor | None = None) -> GramEig:
    """Eigen-decomposition of a raw (uncentered) Gram matrix after double centering (``Kc``:
    its double-centered form where already computed)."""
    Kc = double_center(K) if Kc is None else Kc
    diag = torch.diagonal(K, dim1=-2, dim2=-1)
    return gram_eig_centered(Kc, diag.sum(-1), diag.amax(-1).clamp(min=0.0))


def _spectral_weights(e: GramEig, alpha: float) -> torch.Tensor:
    """Singular values of the whitened X̃·Z from those of X̃ (σ = sqrt λ of K̃):

    s = σ · (α + (1-α)·max(σ², 1e-7)^(-1/2)),   0 on the null space.
    (X̃ = Σ σ_i u_i v_iᵀ and Z = Σ d(σ_i²) v_i v_iᵀ + (null part, which X̃ annihilates),
    so X̃Z = Σ σ_i d(σ_i²) u_i v_iᵀ: same left singular vectors u_i = eigenvectors of K̃.)
    """
    lam_p = torch.where(e.null, torch.zeros_like(e.lam), torch.clamp(e.lam, min=0.0))
    sigma = torch.sqrt(lam_p)
    if alpha == 1.0:
        return sigma
    d = alpha + (1.0 - alpha) * torch.rsqrt(torch.clamp(e.lam, min=EIG_CLIP))
    return sigma * d


def _cross(ex: GramEig, ey: GramEig, sx: torch.Tensor, sy: torch.Tensor) -> torch.Tensor:
    """diag(sx) U_xᵀ U_y diag(sy); its singular values are those of (X̃Z_x)ᵀ(ỸZ_y)."""
    return sx[..., :, None] * torch.matmul(ex.U.mT, ey.U) * sy[..., None, :]


def gram_pwsm(ex: GramEig, ey: GramEig, alpha: float, nuc: str = "auto") -> torch.Tensor:
    sx, sy = _spectral_weights(ex, alpha), _spectral_weights(ey, alpha)
    num = nuclear_norm(_cross(ex, ey, sx, sy), nuc)
    den = torch.sqrt((sx * sx).sum(-1) * (sy * sy).sum(-1))
    return nan_where(angle(num / den), ex.dead | ey.dead)


def gram_procrustes(ex: GramEig, ey: GramEig, nuc: str = "auto") -> torch.Tensor:
    sx, sy = _spectral_weights(ex, 1.0), _spectral_weights(ey, 1.0)
    sim = nuclear_norm(_cross(ex, ey, sx, sy), nuc) / torch.sqrt(ex.tr * ey.tr)
    return nan_where(torch.clamp(1.0 - sim, 0.0, 1.0), ex.dead | ey.dead)


def gram_cka_eig(ex: GramEig, ey: GramEig) -> torch.Tensor:
    """⟨K̃,L̃⟩_F = ‖diag(σx) UxᵀUy diag(σy)‖_F², ‖K̃‖_F = ‖λ‖₂."""
    sx, sy = _spectral_weights(ex, 1.0), _spectral_weights(ey, 1.0)
    num = torch.linalg.matrix_norm(_cross(ex, ey, sx, sy)) ** 2
    den = torch.linalg.vector_norm(sx * sx, dim=-1) * torch.linalg.vector_norm(sy * sy, dim=-1)
    return nan_where(torch.clamp(num / den, 0.0, 1.0), ex.dead | ey.dead)


def gram_cka(
    Kc: torch.Tensor, Lc: torch.Tensor, dead: torch.Tensor, norms: tuple | None = None
) -> torch.Tensor:
    """Biased linear CKA ⟨K̃,L̃⟩/(‖K̃‖‖L̃‖) from double-centered Grams (no decomposition);
    ``norms`` = (‖K̃‖, ‖L̃‖) where already known."""
    num = (Kc * Lc).sum((-2, -1))
    nk, nl = norms or (torch.linalg.matrix_norm(Kc), torch.linalg.matrix_norm(Lc))
    return nan_where(torch.clamp(num / (nk * nl), 0.0, 1.0), dead)


def u_center(K: torch.Tensor) -> torch.Tensor:
    """U-centering (Székely & Rizzo 2014; Kornblith et al. 2019 ``center_gram(unbiased=True)``).

    Invariant to K -> K + a1ᵀ + 1aᵀ + c11ᵀ, so raw and centered Grams give the same result.
    """
    n = K.shape[-1]
    K = K.clone()  # one copy, then in place: these are (filters, n, n) blocks
    K.diagonal(dim1=-2, dim2=-1).zero_()
    means = K.sum(-2) / (n - 2)
    means -= means.sum(-1, keepdim=True) / (2 * (n - 1))
    K -= means[..., :, None]
    K -= means[..., None, :]
    K.diagonal(dim1=-2, dim2=-1).zero_()
    return K


def gram_cka_debiased(K: torch.Tensor, L: torch.Tensor, dead: torch.Tensor) -> torch.Tensor:
    """Debiased linear CKA (unbiased HSIC estimator, Song et al. 2012); needs n ≥ 4.

    Can be slightly negative (or NaN for n < 4); not clamped.
    """
    if K.shape[-1] < 4:
        return torch.full(dead.shape, math.nan, dtype=F64, device=K.device)
    Ku, Lu = u_center(K), u_center(L)
    return cka_u_centered(Ku, (Ku * Ku).sum((-2, -1)), Lu, (Lu * Lu).sum((-2, -1)), dead)


def cka_u_centered(Ku, kk, Lu, ll, dead: torch.Tensor) -> torch.Tensor:
    """Debiased linear CKA of two U-centered Grams (:func:`u_center`) and their squared norms
    ``kk``, ``ll`` (computed once per model when it meets several others); NaN where ``dead``."""
    return nan_where((Ku * Lu).sum((-2, -1)) / torch.sqrt(kk * ll), dead)


#: relative size below which an unbiased self-similarity is rounding of its terms
UNBIASED_RTOL = 1e-9


def debiased_from_features(hsic_xy, hsic_xx, hsic_yy, dot_xy, dot_xx, dot_yy, nx2, ny2, n, dead):
    """Kornblith et al.'s feature-space debiased CKA from accumulated terms.

    hsic_ab = ‖ÃᵀB̃‖_F², dot_ab = Σ_i ‖ã_i‖²‖b̃_i‖², na2 = ‖Ã‖_F² (centered rows).
    """
    if n < 4:
        return torch.full(dead.shape, math.nan, dtype=F64, device=dead.device)

    def helper(xty, dot, sx, sy):
        return xty - n / (n - 2.0) * dot + sx * sy / ((n - 1.0) * (n - 2.0))

    def resolved(xtx, dot, s2):
        """The unbiased self-similarity (a sum of squares, ≥ 0) where it stands above the
        rounding of the terms it is the difference of; NaN where not (a representation nearly
        constant over the rows: its estimate is rounding noise and could read as -1)."""
        value = helper(xtx, dot, s2, s2)
        scale = xtx.abs() + n / (n - 2.0) * dot.abs() + s2 * s2 / ((n - 1.0) * (n - 2.0))
        return torch.where(value > UNBIASED_RTOL * scale, value, torch.nan)

    num = helper(hsic_xy, dot_xy, nx2, ny2)
    den = torch.sqrt(resolved(hsic_xx, dot_xx, nx2) * resolved(hsic_yy, dot_yy, ny2))
    return nan_where(num / den, dead)


class GramCore:
    """Double-centered Gram matrices of one (batch of) pair(s): every Gram-side metric.

    ``K``/``L``: raw or centered Grams (``centered`` says which); the eigen-decompositions
    are computed on first use and cached.
    """

    def __init__(self, K, L, centered: bool, raw_trK=None, raw_trL=None, nuc="auto"):
        self.nuc = nuc
        if centered:
            self.Kc, self.Lc = sym(K), sym(L)
            self.refK = self.refL = None
            self.rawK, self.rawL = raw_trK, raw_trL
        else:
            self.Kc, self.Lc = double_center(K), double_center(L)
            dK, dL = torch.diagonal(K, dim1=-2, dim2=-1), torch.diagonal(L, dim1=-2, dim2=-1)
            self.rawK, self.rawL = dK.sum(-1), dL.sum(-1)
            self.refK, self.refL = dK.amax(-1).clamp(min=0.0), dL.amax(-1).clamp(min=0.0)
        self._ex = self._ey = None

    @property
    def ex(self) -> GramEig:
        if self._ex is None:
            self._ex = gram_eig_centered(self.Kc, self.rawK, self.refK)
        return self._ex

    @property
    def ey(self) -> GramEig:
        if self._ey is None:
            self._ey = gram_eig_centered(self.Lc, self.rawL, self.refL)
        return self._ey

    @property
    def dead(self) -> torch.Tensor:
        return gram_dead(self.Kc, self.rawK) | gram_dead(self.Lc, self.rawL)

    def pwsm(self, alpha: float) -> torch.Tensor:
        return gram_pwsm(self.ex, self.ey, alpha, self.nuc)

    def procrustes(self) -> torch.Tensor:
        return gram_procrustes(self.ex, self.ey, self.nuc)

    def cka(self) -> torch.Tensor:
        return gram_cka(self.Kc, self.Lc, self.dead)

    def cka_debiased(self) -> torch.Tensor:
        return gram_cka_debiased(self.Kc, self.Lc, self.dead)
