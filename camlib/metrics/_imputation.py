"""The linear system behind ROAD's imputation, solved matrix-free in torch.

For removed pixels :math:`p` (mask :math:`m_p = 1`) of an ``H x W`` image the
unknowns :math:`x_p` satisfy

.. math::
    d_p\\, x_p - \\sum_{o} w_o\\, m_{p+o}\\, x_{p+o} = \\sum_{o} w_o\\, (1 - m_{p+o})\\, I_{p+o},
    \\qquad d_p = \\sum_{o:\\, p+o \\in \\Omega} w_o,

a weighted mean of the neighbours. The matrix is never formed: it is applied
as a masked stencil (shifted slices of a padded tensor) to ``[N, C, H, W]``
batches, one system per image and channel, all solved together in double
precision on the images' device.

* Symmetric weightings give a symmetric positive (semi-)definite matrix, a
  principal submatrix of a weighted graph Laplacian. It is solved with
  conjugate gradients preconditioned by a geometric multigrid V-cycle
  (bilinear interpolation, Galerkin coarse operators, damped Jacobi
  smoothing, a dense Cholesky inverse on the coarsest grid), which needs tens
  of iterations where plain CG needs hundreds on 224 x 224 images.
* Other weightings use BiCGSTAB without preconditioning.

Both start from zero, so removed regions that touch no kept pixel (their
right-hand side is 0) stay 0: the minimum-norm solution.

On the CPU, symmetric weightings are solved directly instead (``solver="auto"``):
the systems of a whole chunk are assembled as one block-diagonal sparse matrix,
factorised once by SciPy's SuperLU and solved for every channel at once, which
is several times faster there than the iterations (SciPy comes with
scikit-learn, a dependency). Regions that touch no kept pixel are left out of
the factorisation and set to 0, as the iterative solvers leave them.
"""

from __future__ import annotations

import warnings
from typing import Callable, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

__all__ = ["SOLVERS", "linear_infill"]

#: The values of ``solver``: ``"auto"`` (direct on the CPU for symmetric
#: weightings when SciPy is importable, else iterative), ``"direct"`` (SciPy's
#: SuperLU, on the CPU) and ``"iterative"`` (CG/BiCGSTAB in torch, on the images' device).
SOLVERS = ("auto", "direct", "iterative")

#: The solves stop at this residual relative to the right-hand side.
RTOL = 1e-7
#: Grids with at most this many pixels are solved densely (coarsest level) or
#: by plain CG (whole images).
_COARSEST = 64

#: On the CPU, images are solved in groups of about this many values.
_CPU_GROUP_ELEMENTS = 2**19

Weighting = Sequence[Tuple[Tuple[int, int], float]]


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-system inner product over the last two dims: ``[N, C, H, W] -> [N, C]``."""
    return torch.linalg.vecdot(a.flatten(-2), b.flatten(-2))


def _ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """``num / den``, 0 where ``den`` is 0."""
    ok = den != 0
    return torch.where(ok, num / torch.where(ok, den, torch.ones_like(den)), torch.zeros_like(num))


def _col(v: torch.Tensor) -> torch.Tensor:
    return v[..., None, None]


# -- operators --------------------------------------------------------------------------


class _FineOperator:
    """The masked stencil on the image grid; ``missing`` is ``[N, 1, H, W]`` float."""

    def __init__(self, weighting: Weighting, missing: torch.Tensor) -> None:
        self.weighting = tuple(weighting)
        self.radius = max(max(abs(dy), abs(dx)) for (dy, dx), _ in self.weighting)
        self.missing = missing
        self.shape = tuple(missing.shape[-2:])
        ones = torch.ones(1, 1, *self.shape, dtype=missing.dtype, device=missing.device)
        #: Sum of the weights of each pixel's in-image neighbours.
        self.degree = self.neighbour_sum(ones)
        self.diagonal = missing * self.degree
        # Jacobi on a weighted Laplacian: |off-diagonal| row sums <= diagonal.
        self.omega = 2.0 / 3.0

    def neighbour_sum(self, v: torch.Tensor) -> torch.Tensor:
        """``sum_o w_o v[p + o]``, 0 outside the image."""
        r = self.radius
        h, w = self.shape
        padded = F.pad(v, (r, r, r, r))
        out = torch.zeros_like(v)
        for (dy, dx), weight in self.weighting:
            out.add_(padded[..., r + dy : r + dy + h, r + dx : r + dx + w], alpha=weight)
        return out

    def apply(self, v: torch.Tensor) -> torch.Tensor:
        """The matrix times ``v``; ``v`` must be 0 on kept pixels."""
        return self.missing * (self.degree * v - self.neighbour_sum(v))

    def apply_masked(self, v: torch.Tensor) -> torch.Tensor:
        """``M A M v``: the matrix extended by zero rows and columns on kept pixels."""
        return self.apply(self.missing * v)


class _CoarseOperator:
    """A variable-coefficient stencil: ``(A v)_p = sum_o c_o(p) v_{p+o}``."""

    def __init__(self, fields: List[Tuple[Tuple[int, int], torch.Tensor]], radius: int) -> None:
        self.fields = fields
        self.radius = radius
        self.shape = tuple(fields[0][1].shape[-2:])
        self.diagonal = dict(fields)[(0, 0)]
        off_sum = sum(field.abs() for offset, field in fields if offset != (0, 0))
        # Damping from Gershgorin's bound on the spectrum of D^-1 A, which keeps
        # the smoother convergent (and the V-cycle positive definite).
        bound = _ratio(self.diagonal + off_sum, self.diagonal).flatten(1).amax(dim=1).clamp_min(1.0)
        self.omega = (4.0 / 3.0 / bound)[:, None, None, None]

    def apply(self, v: torch.Tensor) -> torch.Tensor:
        r = self.radius
        h, w = self.shape
        padded = F.pad(v, (r, r, r, r))
        out: Optional[torch.Tensor] = None
        for (dy, dx), field in self.fields:
            term = padded[..., r + dy : r + dy + h, r + dx : r + dx + w]
            out = field * term if out is None else out.addcmul_(field, term)
        return out

    apply_masked = apply


# -- grid transfer (bilinear, coarse points on even fine indices) --------------------------


def _prolong_last(c: torch.Tensor, fine: int) -> torch.Tensor:
    coarse = c.shape[-1]
    f = c.new_empty(*c.shape[:-1], fine)
    f[..., 0::2] = c
    interior = coarse - 1
    odd = f[..., 1::2]
    if interior > 0:
        odd[..., :interior] = 0.5 * (c[..., :-1] + c[..., 1:])
    if fine % 2 == 0:
        odd[..., -1] = c[..., -1]
    return f


def _restrict_last(f: torch.Tensor, coarse: int) -> torch.Tensor:
    c = f[..., 0::2].clone()
    odd = f[..., 1::2]
    interior = coarse - 1
    if interior > 0:
        c[..., :-1].add_(odd[..., :interior], alpha=0.5)
        c[..., 1:].add_(odd[..., :interior], alpha=0.5)
    if f.shape[-1] % 2 == 0:
        c[..., -1].add_(odd[..., -1])
    return c


def prolong(c: torch.Tensor, fine_shape: Tuple[int, int]) -> torch.Tensor:
    """Bilinear interpolation from the coarse grid ``ceil(H/2) x ceil(W/2)`` to ``H x W``."""
    c = _prolong_last(c, fine_shape[1])
    return _prolong_last(c.transpose(-1, -2), fine_shape[0]).transpose(-1, -2)


def restrict(f: torch.Tensor, coarse_shape: Tuple[int, int]) -> torch.Tensor:
    """The transpose of :func:`prolong`."""
    f = _restrict_last(f, coarse_shape[1])
    return _restrict_last(f.transpose(-1, -2), coarse_shape[0]).transpose(-1, -2)


def _coarse_shape(shape: Tuple[int, int]) -> Tuple[int, int]:
    return ((shape[0] + 1) // 2, (shape[1] + 1) // 2)


def _galerkin(apply_masked: Callable, radius: int, fine_shape, n: int, device, dtype) -> _CoarseOperator:
    """``P^T A P`` as a stencil, found by probing with a colouring of the coarse grid.

    Points of one colour are ``2 rc + 1`` apart, so each row of ``P^T A P``
    meets at most one of them: applying the operator to the sum of one colour's
    basis vectors reads off one coefficient per row.
    """
    coarse_radius = (radius + 2) // 2
    k = 2 * coarse_radius + 1
    hc, wc = _coarse_shape(fine_shape)
    colour = (torch.arange(hc, device=device)[:, None] % k) * k + torch.arange(wc, device=device)[None, :] % k
    probes = (colour[None] == torch.arange(k * k, device=device)[:, None, None]).to(dtype)[None]
    responses = restrict(apply_masked(prolong(probes, fine_shape)), (hc, wc))
    responses = responses.expand(n, *responses.shape[1:])
    iy = torch.arange(hc, device=device)[:, None]
    ix = torch.arange(wc, device=device)[None, :]
    fields = []
    for dy in range(-coarse_radius, coarse_radius + 1):
        for dx in range(-coarse_radius, coarse_radius + 1):
            index = (((iy + dy) % k) * k + (ix + dx) % k).expand(n, 1, hc, wc)
            fields.append(((dy, dx), responses.gather(1, index)))
    return _CoarseOperator(fields, coarse_radius)


def _dense_pinv(op: _CoarseOperator, n: int) -> torch.Tensor:
    """Inverse of a small stencil operator on its reachable points, ``[N, P, P]`` for ``P = h * w``."""
    h, w = op.shape
    size = h * w
    device, dtype = op.diagonal.device, op.diagonal.dtype
    matrix = torch.zeros(n, size, size, device=device, dtype=dtype)
    iy, ix = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
    for (dy, dx), field in op.fields:
        ok = (iy + dy >= 0) & (iy + dy < h) & (ix + dx >= 0) & (ix + dx < w)
        rows = (iy * w + ix)[ok]
        cols = ((iy + dy) * w + (ix + dx))[ok]
        matrix[:, rows, cols] += field[:, 0][:, ok]
    matrix = 0.5 * (matrix + matrix.transpose(1, 2))
    # Rows of coarse points no removed pixel reaches are 0: make them identity rows
    # (their residual is always 0). A relative 1e-10 shift keeps Cholesky safe.
    diagonal = matrix.diagonal(dim1=1, dim2=2)
    scale = diagonal.abs().amax(dim=1, keepdim=True).clamp_min(1e-300)
    shift = torch.where(diagonal > 0, 1e-10 * scale, torch.ones_like(diagonal))
    factor, info = torch.linalg.cholesky_ex(matrix + torch.diag_embed(shift))
    inverse = torch.cholesky_inverse(factor)
    failed = info != 0
    if bool(failed.any()):
        # Not positive definite (dependent coarse basis functions): pseudo-inverse.
        values, vectors = torch.linalg.eigh(matrix[failed])
        keep = values > 1e-12 * values.abs().amax(dim=1, keepdim=True).clamp_min(1e-300)
        inv_values = torch.where(
            keep, 1.0 / torch.where(keep, values, torch.ones_like(values)), torch.zeros_like(values)
        )
        inverse[failed] = (vectors * inv_values[:, None, :]) @ vectors.transpose(1, 2)
    return inverse


class _Multigrid:
    """A symmetric V(1,1)-cycle used as the preconditioner of CG."""

    def __init__(self, fine: _FineOperator) -> None:
        n = fine.missing.shape[0]
        device, dtype = fine.missing.device, fine.missing.dtype
        self.levels: list = [fine]
        op = fine
        while op.shape[0] * op.shape[1] > _COARSEST:
            op = _galerkin(op.apply_masked, op.radius, op.shape, n, device, dtype)
            self.levels.append(op)
        self.coarsest = _dense_pinv(op, n)
        self.inverse_diagonals = [
            _ratio(torch.ones_like(level.diagonal), level.diagonal) for level in self.levels
        ]

    def __call__(self, r: torch.Tensor) -> torch.Tensor:
        return self._cycle(0, r)

    def _cycle(self, depth: int, r: torch.Tensor) -> torch.Tensor:
        if depth == len(self.levels) - 1:
            # At most _COARSEST unknowns: a broadcast product, cheaper than a BLAS call.
            flat = r.flatten(-2)[..., None, :]
            return (self.coarsest[:, None] * flat).sum(dim=-1).reshape(r.shape)
        op = self.levels[depth]
        smooth = op.omega * self.inverse_diagonals[depth]
        z = smooth * r
        residual = r - op.apply_masked(z)
        coarse = self.levels[depth + 1].shape
        correction = prolong(self._cycle(depth + 1, restrict(residual, coarse)), op.shape)
        if depth == 0:
            correction = op.missing * correction
        z = z + correction
        return z + smooth * (r - op.apply_masked(z))


# -- Krylov solvers ----------------------------------------------------------------------------


def _warn_unconverged(count: int, total: int, max_iter: int) -> None:
    warnings.warn(
        f"ROAD imputation: {count} of {total} linear solves did not reach a relative residual of {RTOL:g} "
        f"within {max_iter} iterations; the imputed values may be inaccurate",
        RuntimeWarning,
        stacklevel=5,
    )


def _conjugate_gradient(
    apply: Callable, b: torch.Tensor, precondition: Optional[Callable], max_iter: int
) -> torch.Tensor:
    """(Preconditioned) CG for every ``[H, W]`` system of ``b``; converged systems are frozen."""
    tol2 = RTOL**2 * _dot(b, b)
    x = torch.zeros_like(b)
    r = b.clone()
    rr = _dot(r, r)
    active = rr > tol2
    z = precondition(r) if precondition is not None else r
    p = z.clone()
    rz = _dot(r, z)
    for _ in range(max_iter):
        if not bool(active.any()):
            return x
        ap = apply(p)
        alpha = torch.where(active, _ratio(rz, _dot(p, ap)), torch.zeros_like(rz))
        x.addcmul_(_col(alpha), p)
        r.addcmul_(_col(alpha), ap, value=-1)
        rr = _dot(r, r)
        active = active & (rr > tol2)
        z = precondition(r) if precondition is not None else r
        rz_new = _dot(r, z)
        p = z + _col(_ratio(rz_new, rz)) * p
        rz = rz_new
    if bool(active.any()):
        _warn_unconverged(int(active.sum()), active.numel(), max_iter)
    return x


def _bicgstab(apply: Callable, b: torch.Tensor, max_iter: int) -> torch.Tensor:
    """BiCGSTAB for every ``[H, W]`` system of ``b`` (non-symmetric weightings)."""
    tol2 = RTOL**2 * _dot(b, b)
    x = torch.zeros_like(b)
    r = b.clone()
    r_hat = r.clone()
    p = torch.zeros_like(b)
    v = torch.zeros_like(b)
    ones = torch.ones_like(tol2)
    rho, alpha, omega = ones, ones, ones
    active = _dot(r, r) > tol2
    failed = torch.zeros_like(active)
    for _ in range(max_iter):
        if not bool(active.any()):
            break
        rho_new = _dot(r_hat, r)
        beta = _ratio(rho_new, rho) * _ratio(alpha, omega)
        p = r + _col(beta) * (p - _col(omega) * v)
        v = apply(p)
        alpha = _ratio(rho_new, _dot(r_hat, v))
        s = r - _col(alpha) * v
        t = apply(s)
        omega = _ratio(_dot(t, s), _dot(t, t))
        step = _col(alpha) * p + _col(omega) * s
        x = x + _col(active.to(x.dtype)) * step
        r = torch.where(_col(active), s - _col(omega) * t, r)
        rho = rho_new
        converged = _dot(r, r) <= tol2
        # A breakdown (rho or omega at 0) ends that system's iteration unconverged.
        broken = active & ~converged & ((rho_new == 0) | (omega == 0))
        failed |= broken
        active = active & ~converged & ~broken
    failed |= active
    if bool(failed.any()):
        _warn_unconverged(int(failed.sum()), failed.numel(), max_iter)
    return x


def _is_symmetric(weighting: Weighting) -> bool:
    table = dict(weighting)
    return all(table.get((-dy, -dx)) == w for (dy, dx), w in weighting)


def _scipy_available() -> bool:
    try:
        import scipy.sparse.linalg  # noqa: F401
    except ImportError:  # pragma: no cover - SciPy comes with scikit-learn
        return False
    return True


def _choose_solver(solver: str, device: torch.device, weighting: Weighting) -> str:
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")
    symmetric = _is_symmetric(weighting)
    if solver == "direct":
        if not symmetric:
            raise ValueError(
                "solver='direct' needs a symmetric weighting (each offset (dy, dx) with the same weight as "
                "(-dy, -dx)); use solver='iterative' (BiCGSTAB) for this one"
            )
        if not _scipy_available():  # pragma: no cover
            raise ImportError("solver='direct' needs SciPy (pip install scipy); or use solver='iterative'")
        return "direct"
    if solver == "auto" and device.type == "cpu" and symmetric and _scipy_available():
        return "direct"
    return "iterative"


def _direct_infill(images: torch.Tensor, missing: torch.Tensor, weighting: Weighting) -> torch.Tensor:
    """Solve every image's system with one sparse LU factorisation (SciPy, CPU, symmetric weightings).

    The unknowns of all images form one block-diagonal matrix; its connected
    blocks that touch no kept pixel have a zero right-hand side and a singular
    matrix, so they are left out and set to 0 (the minimum-norm solution).
    """
    import numpy as np
    from scipy.sparse import csc_matrix
    from scipy.sparse.csgraph import connected_components
    from scipy.sparse.linalg import splu

    n, channels, height, width = images.shape
    holes = missing.cpu().numpy().reshape(-1)
    values = images.detach().cpu().to(torch.float64).numpy()
    flat_values = values.transpose(1, 0, 2, 3).reshape(channels, -1)  # [C, N*H*W]
    index = np.flatnonzero(holes)
    count = index.size
    position = np.full(holes.size, -1, dtype=np.int64)
    position[index] = np.arange(count)
    image_of, rest = np.divmod(index, height * width)
    ys, xs = np.divmod(rest, width)
    diagonal = np.zeros(count)
    rhs = np.zeros((count, channels))
    touches = np.zeros(count, dtype=bool)
    rows, cols, entries = [np.arange(count)], [np.arange(count)], []
    for (dy, dx), weight in weighting:
        ny, nx = ys + dy, xs + dx
        inside = np.flatnonzero((ny >= 0) & (ny < height) & (nx >= 0) & (nx < width))
        diagonal[inside] += weight
        neighbour = image_of[inside] * (height * width) + ny[inside] * width + nx[inside]
        removed = holes[neighbour]
        rows.append(inside[removed])
        cols.append(position[neighbour[removed]])
        entries.append(np.full(int(removed.sum()), -weight))
        kept_rows, kept_neighbours = inside[~removed], neighbour[~removed]
        touches[kept_rows] = True
        for channel in range(channels):
            rhs[:, channel] += np.bincount(
                kept_rows, weights=weight * flat_values[channel, kept_neighbours], minlength=count
            )
    matrix = csc_matrix(
        (np.concatenate([diagonal, *entries]), (np.concatenate(rows), np.concatenate(cols))), shape=(count, count)
    )
    _, labels = connected_components(matrix, directed=False)
    solvable = np.isin(labels, np.unique(labels[touches]))
    solution = np.zeros((count, channels))
    if solvable.any():
        keep = np.flatnonzero(solvable)
        system = matrix[keep][:, keep].tocsc()
        solution[keep] = splu(system).solve(np.ascontiguousarray(rhs[keep])).reshape(keep.size, channels)
    filled = flat_values.copy()
    filled[:, index] = solution.T
    out = torch.from_numpy(filled.reshape(channels, n, height, width).transpose(1, 0, 2, 3).copy())
    return out.to(device=images.device, dtype=images.dtype)


def linear_infill(
    images: torch.Tensor, missing: torch.Tensor, weighting: Weighting, solver: str = "auto"
) -> torch.Tensor:
    """Replace the ``missing`` pixels by the solution of the imputation system.

    Args:
        images: ``[N, C, H, W]`` floating-point images.
        missing: ``[N, H, W]`` bool, True where a pixel is removed.
        weighting: ``((dy, dx), weight)`` pairs with positive weights.
        solver: one of :data:`SOLVERS`.

    Returns:
        ``[N, C, H, W]`` in ``images``' dtype: the kept pixels unchanged, the
        removed ones imputed (no noise).
    """
    n, channels, height, width = images.shape
    if _choose_solver(solver, images.device, weighting) == "direct":
        if missing.numel() == 0 or not bool(missing.any()):
            return images.clone()
        return _direct_infill(images, missing, weighting)
    if missing.numel() == 0 or not bool(missing.any()):
        return images.clone()
    # On the CPU, solve a few images at a time: the iterations are memory-bound
    # and run several times faster when their vectors stay in cache.
    group = n if images.device.type != "cpu" else max(1, _CPU_GROUP_ELEMENTS // (channels * height * width))
    if group < n:
        return torch.cat(
            [
                linear_infill(images[i : i + group], missing[i : i + group], weighting, "iterative")
                for i in range(0, n, group)
            ]
        )
    # Only the removed pixels' bounding box, widened by the stencil's reach, takes
    # part in the system; the crop keeps the image's borders where they matter.
    reach = max(max(abs(dy), abs(dx)) for (dy, dx), _ in weighting)
    rows = missing.any(dim=2).any(dim=0).nonzero().flatten()
    cols = missing.any(dim=1).any(dim=0).nonzero().flatten()
    top, bottom = max(int(rows[0]) - reach, 0), min(int(rows[-1]) + reach + 1, height)
    left, right = max(int(cols[0]) - reach, 0), min(int(cols[-1]) + reach + 1, width)
    if (bottom - top, right - left) != (height, width):
        out = images.clone()
        out[..., top:bottom, left:right] = linear_infill(
            images[..., top:bottom, left:right], missing[..., top:bottom, left:right], weighting, "iterative"
        )
        return out
    dtype = torch.float32 if images.device.type == "mps" else torch.float64
    holes = missing[:, None].to(dtype)
    fine = _FineOperator(weighting, holes)
    values = images.to(dtype)
    b = holes * fine.neighbour_sum(values * (1 - holes))
    if _is_symmetric(weighting):
        small = height * width <= _COARSEST
        precondition = None if small else _Multigrid(fine)
        max_iter = height * width + 10 if small else 500
        x = _conjugate_gradient(fine.apply, b, precondition, max_iter)
    else:
        x = _bicgstab(fine.apply, b, 20 * (height + width) + 100)
    return torch.where(missing[:, None], x.to(images.dtype), images)
