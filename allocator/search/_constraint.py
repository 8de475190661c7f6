"""The model-level sparsity constraint on a per-block vector, and the one projection onto it.

The study searches a vector ``s`` of ``d`` block sparsities. Every proposal must satisfy

    Σ_b w_b s_b = t · Σ_b w_b,      lower_b ≤ s_b ≤ upper_b   (b = 0 … d−1)

with ``w_b > 0`` the block's linear-layer weight count and ``t`` the model-level target. The feasible
set is a polytope of dimension ``d − 1`` (less where blocks are pinned, ``lower_b == upper_b``).

Samplers that know nothing of the constraint (Optuna's TPE and CMA-ES) are repaired by
:meth:`ConstraintSpace.project`, the exact Euclidean projection onto that polytope. It is computed from the
sorted breakpoints of a monotone piecewise-linear function, not by bisection to a tolerance, so the
equality holds to rounding error and the bounds hold exactly; projecting twice changes nothing.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from allocator.errors import InfeasibleConstraintError, InputError

if TYPE_CHECKING:
    import torch

# Tolerance on the target at the reachable boundary: a target this close to Σw·l/Σw (or Σw·u/Σw) is
# treated as the boundary itself, whose only feasible point is s = l (or s = u).
_BOUNDARY_RTOL = 1e-9
# Bounds of a block closer than this are treated as equal (the block is pinned).
_PIN_WIDTH = 1e-12


def _as_vector(value: Any, d: int, name: str) -> tuple[float, ...]:
    """Broadcast a scalar or a length-``d`` sequence to a tuple of ``d`` floats, naming ``name`` on error."""
    arr = np.asarray(value, dtype=np.float64)
    if arr.ndim == 0:
        arr = np.full(d, float(arr))
    elif arr.ndim != 1 or arr.shape[0] != d:
        raise InputError(
            f"`{name}` must be a scalar or a sequence of {d} values (one per block); got shape {arr.shape}."
        )
    if not np.all(np.isfinite(arr)):
        raise InputError(f"`{name}` must be finite; got {arr.tolist()}.")
    if np.any(arr < 0.0) or np.any(arr >= 1.0):
        bad = int(np.flatnonzero((arr < 0.0) | (arr >= 1.0))[0])
        raise InputError(f"`{name}` must lie in [0, 1); block {bad} has {arr[bad]!r}.")
    return tuple(float(v) for v in arr)


@dataclass(frozen=True, kw_only=True)
class ConstraintSpace:
    """The feasible block vectors of a study: ``Σ_b w_b s_b = t·Σ_b w_b`` and ``l_b ≤ s_b ≤ u_b``.

    Inputs are validated once, here, so that every method can assume a consistent, feasible space.
    The arrays are stored as tuples so the space is hashable (samplers cache polytope samples per space).

    Args:
        weights: The ``d`` positive block weights ``w_b`` (each block's total linear-layer weight count).
        target: The model-level sparsity ``t``, in (0, 1).
        lower: Lower bound(s) ``l_b``, a scalar or ``d`` values in [0, 1).
        upper: Upper bound(s) ``u_b``, a scalar or ``d`` values in [0, 1), with ``l_b ≤ u_b`` (bounds
            closer than 1e-12 are taken as equal: the block is pinned).

    Raises:
        InputError: A parameter is malformed or out of range (the message names it).
        InfeasibleConstraintError: ``t`` is outside the reachable range ``[Σw·l/Σw, Σw·u/Σw]``.
    """

    weights: Sequence[float]
    target: float
    lower: float | Sequence[float] = 0.0
    upper: float | Sequence[float] = 0.99
    _cache: dict[str, Any] = field(default_factory=dict, init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        w = np.asarray(self.weights, dtype=np.float64)
        if w.ndim != 1 or w.shape[0] < 1:
            raise InputError(
                f"`weights` must be a non-empty one-dimensional sequence of block weights; got shape {w.shape}."
            )
        bad = np.flatnonzero(~np.isfinite(w) | (w <= 0.0))
        if bad.size:
            raise InputError(f"`weights` must be finite and positive; block {int(bad[0])} has {w[bad[0]]!r}.")
        d = int(w.shape[0])
        try:
            t = float(self.target)
        except (TypeError, ValueError):
            raise InputError(f"`target` must be a number in (0, 1); got {self.target!r}.") from None
        if not (math.isfinite(t) and 0.0 < t < 1.0):
            raise InputError(f"`target` must be a finite number strictly between 0 and 1; got {t!r}.")
        lower = _as_vector(self.lower, d, "lower")
        upper = _as_vector(self.upper, d, "upper")
        for b, (lo, hi) in enumerate(zip(lower, upper, strict=True)):
            if lo > hi:
                raise InputError(f"`lower` must not exceed `upper`; block {b} has lower {lo} > upper {hi}.")
        # Bounds closer than _PIN_WIDTH are one value: the block is pinned (no sparsity resolution is finer).
        upper = tuple(lo if hi - lo <= _PIN_WIDTH else hi for lo, hi in zip(lower, upper, strict=True))
        object.__setattr__(self, "weights", tuple(float(v) for v in w))
        object.__setattr__(self, "target", t)
        object.__setattr__(self, "lower", lower)
        object.__setattr__(self, "upper", upper)
        lo_t, hi_t = self.reachable_range()
        slack = _BOUNDARY_RTOL * max(1.0, t)
        if t < lo_t - slack or t > hi_t + slack:
            raise InfeasibleConstraintError(
                f"The target model-level sparsity {t:g} is not reachable within the per-block bounds: "
                f"the reachable range is [{lo_t:.6g}, {hi_t:.6g}]."
            )

    # ------------------------------------------------------------------ basic views

    @property
    def dim(self) -> int:
        """The number of blocks ``d``."""
        return len(self.weights)

    @property
    def param_names(self) -> tuple[str, ...]:
        """The Optuna parameter names, ``("block_0", "block_1", …)``, in block order."""
        return tuple(f"block_{b}" for b in range(self.dim))

    def weight_array(self) -> np.ndarray:
        """The weights ``w`` as a ``d`` float64 array (a fresh copy)."""
        return np.array(self.weights, dtype=np.float64)

    def lower_array(self) -> np.ndarray:
        """The lower bounds ``l`` as a ``d`` float64 array (a fresh copy)."""
        return np.array(self.lower, dtype=np.float64)

    def upper_array(self) -> np.ndarray:
        """The upper bounds ``u`` as a ``d`` float64 array (a fresh copy)."""
        return np.array(self.upper, dtype=np.float64)

    def bounds_array(self) -> np.ndarray:
        """A ``2 x d`` array ``[l; u]``, BoTorch's ``bounds`` layout."""
        return np.stack([self.lower_array(), self.upper_array()])

    @property
    def rhs(self) -> float:
        """The equality's right-hand side ``c = t·Σ_b w_b``."""
        return self.target * math.fsum(self.weights)

    def reachable_range(self) -> tuple[float, float]:
        """The model-level sparsities reachable within the bounds, ``[Σw·l/Σw, Σw·u/Σw]``."""
        w, total = self.weights, math.fsum(self.weights)
        lo = math.fsum(wb * lb for wb, lb in zip(w, self.lower, strict=True)) / total
        hi = math.fsum(wb * ub for wb, ub in zip(w, self.upper, strict=True)) / total
        return lo, hi

    @property
    def free_mask(self) -> np.ndarray:
        """A ``d`` boolean array, True where a block can move (``l_b < u_b``)."""
        return self.lower_array() < self.upper_array()

    @property
    def is_singleton(self) -> bool:
        """True when the polytope is one point: every block pinned, one block free, or t at the boundary."""
        lo_t, hi_t = self.reachable_range()
        slack = _BOUNDARY_RTOL * max(1.0, self.target)
        return int(self.free_mask.sum()) <= 1 or self.target <= lo_t + slack or self.target >= hi_t - slack

    def uniform_vector(self) -> np.ndarray:
        """Every block at the target, ``s_b = t``, projected onto the constraint if a bound excludes it."""
        return self.project(np.full(self.dim, self.target))

    def center(self) -> np.ndarray:
        """The point ``l + α(u − l)`` with the one ``α ∈ [0, 1]`` that meets the equality.

        It lies in the polytope's relative interior unless the polytope is a single point, which makes it
        the start of a hit-and-run chain and a null-space origin.
        """
        lo_t, hi_t = self.reachable_range()
        alpha = 0.0 if hi_t <= lo_t else min(1.0, max(0.0, (self.target - lo_t) / (hi_t - lo_t)))
        lo, hi = self.lower_array(), self.upper_array()
        return self.project(lo + alpha * (hi - lo))

    # ------------------------------------------------------------------ membership

    def model_sparsity(self, vector: Any) -> np.ndarray | float:
        """The model-level sparsity ``Σ_b w_b s_b / Σ_b w_b`` of a ``d`` vector (a float) or ``... x d`` array."""
        x = np.asarray(vector, dtype=np.float64)
        self._check_shape(x, "vector")
        value = x @ self.weight_array() / math.fsum(self.weights)
        return float(value) if x.ndim == 1 else value

    def contains(self, vector: Any, tol: float = 1e-6) -> bool:
        """True if ``|model_sparsity(s) − t| ≤ tol`` and ``l_b − tol ≤ s_b ≤ u_b + tol`` for every block."""
        x = np.asarray(vector, dtype=np.float64)
        self._check_shape(x, "vector")
        if x.ndim != 1 or not np.all(np.isfinite(x)):
            return False
        in_bounds = bool(np.all(x >= self.lower_array() - tol) and np.all(x <= self.upper_array() + tol))
        return in_bounds and abs(float(self.model_sparsity(x)) - self.target) <= tol

    def _check_shape(self, x: np.ndarray, name: str) -> None:
        if x.ndim < 1 or x.shape[-1] != self.dim:
            raise InputError(f"`{name}` must have {self.dim} entries (one per block); got shape {x.shape}.")

    # ------------------------------------------------------------------ projection

    def project(self, vector: Any) -> np.ndarray:
        """The Euclidean projection of a ``d`` vector (or each row of an ``n x d`` array) onto the polytope.

        Solves ``min ‖s − y‖²`` subject to ``wᵀs = c``, ``l ≤ s ≤ u``. The KKT conditions give
        ``s_b(λ) = clip(y_b − λ w_b, l_b, u_b)``; ``g(λ) = wᵀs(λ)`` is continuous, non-increasing and
        piecewise linear with breakpoints ``(y_b − l_b)/w_b`` and ``(y_b − u_b)/w_b``. We evaluate ``g`` at
        the sorted breakpoints, find the segment where it crosses ``c``, and solve the linear piece for ``λ``
        in closed form. The result meets the bounds exactly and the equality to rounding error
        (≤ 1e-12 relative in practice).
        """
        y = np.asarray(vector, dtype=np.float64)
        self._check_shape(y, "vector")
        if not np.all(np.isfinite(y)):
            raise InputError("`vector` must be finite to be projected onto the constraint.")
        w, lo, hi = self.weight_array(), self.lower_array(), self.upper_array()
        flat = y.reshape(-1, self.dim)
        out = np.stack([_project_one(row, w, lo, hi, self.rhs) for row in flat])
        return out.reshape(y.shape)

    def project_torch(self, X: torch.Tensor) -> torch.Tensor:
        """The same projection for a ``... x d`` tensor, differentiable almost everywhere.

        The active set (which blocks sit at a bound) is found without gradients from the sorted
        breakpoints; ``λ`` is then recomputed in closed form on that set with autograd on, so the gradient is
        the exact derivative of the piecewise-linear map (used inside acquisition optimisation).
        """
        return _project_torch(X, self.weight_array(), self.lower_array(), self.upper_array(), self.rhs, _BOUNDARY_RTOL)

    # ------------------------------------------------------------------ BoTorch conversion

    def botorch_bounds(self, *, normalized: bool = False) -> torch.Tensor:
        """A ``2 x d`` float64 tensor of bounds: ``[l; u]``, or ``[0; 1]`` in the normalised space."""
        import torch

        if normalized:
            return torch.stack([torch.zeros(self.dim), torch.ones(self.dim)]).to(torch.float64)
        return torch.tensor(self.bounds_array(), dtype=torch.float64)

    def botorch_equality_constraints(
        self, *, normalized: bool = True
    ) -> list[tuple[torch.Tensor, torch.Tensor, float]]:
        """The equality as BoTorch's ``[(indices, coefficients, rhs)]`` meaning ``Σ_i x[indices_i]·coef_i = rhs``.

        In the raw space it is ``Σ_b w_b s_b = t·Σw``. In the normalised space ``s = l + (u − l)·z`` (what a
        model with a ``Normalize`` input transform to these bounds sees, and what ``optimize_acqf`` gets with
        unit bounds) the same equality reads

            Σ_b w_b (u_b − l_b) z_b = t·Σw − Σ_b w_b l_b.

        Pinned blocks (``u_b = l_b``) have a zero coefficient and are left out of ``indices``.
        """
        import torch

        w, lo, hi = self.weight_array(), self.lower_array(), self.upper_array()
        if normalized:
            idx = np.flatnonzero(self.free_mask)
            coef = w[idx] * (hi[idx] - lo[idx])
            rhs = self.rhs - math.fsum(w * lo)
        else:
            idx = np.arange(self.dim)
            coef, rhs = w, self.rhs
        return [(torch.tensor(idx, dtype=torch.long), torch.tensor(coef, dtype=torch.float64), float(rhs))]

    # ------------------------------------------------------------------ sampling

    def sample(self, n: int, *, seed: int, start: Any = None, pool_size: int | None = None) -> np.ndarray:
        """``n`` space-filling feasible points, an ``n x d`` array, deterministic for a ``seed``.

        Hit-and-run (BoTorch's ``HitAndRunPolytopeSampler`` with the equality constraint) is uniform on the
        polytope but not space-filling: a few dozen uniform points leave holes and clumps. So we draw a pool
        of ``pool_size`` (default ``max(256, 16·n)``) chain points and select greedily by maximin distance
        in the normalised space ``z = (s − l)/(u − l)``: each new point is the pool point farthest from all
        points chosen so far. ``start`` (a ``k x d`` array, e.g. the uniform vector) counts as already chosen
        and is not returned.
        """
        if n < 0:
            raise InputError(f"`n` must be a non-negative integer; got {n!r}.")
        if n == 0:
            return np.zeros((0, self.dim))
        if self.is_singleton:
            return np.repeat(self.center()[None, :], n, axis=0)
        size = int(pool_size) if pool_size is not None else max(256, 16 * n)
        pool = self.polytope_pool(seed=seed, size=max(size, n))
        chosen = np.zeros((0, self.dim)) if start is None else np.asarray(start, dtype=np.float64)
        chosen = chosen.reshape(-1, self.dim)
        order = maximin_order(self.normalize(pool), self.normalize(chosen), n)
        return pool[order]

    def polytope_pool(self, *, seed: int, size: int, n_burnin: int | None = None, n_thinning: int = 8) -> np.ndarray:
        """``size`` hit-and-run points of the polytope (a ``size x d`` array), cached per space and seed."""
        burnin = n_burnin if n_burnin is not None else 200 + 20 * int(self.free_mask.sum())
        key = ("pool", int(seed), int(size), int(burnin), int(n_thinning))
        return self.memoised(key, lambda: _hit_and_run(self, seed=seed, n=size, n_burnin=burnin, n_thinning=n_thinning))

    def memoised(self, key: Hashable, compute: Callable[[], np.ndarray]) -> np.ndarray:
        """A copy of the array ``compute()`` gives, computed once per ``key`` for this space (at most 17 kept).

        Pools of polytope points and samplers' initial designs are seeded, so the same key always gives the
        same array; samplers built anew for every trial (one per process or worker) reuse it instead of
        drawing it again.
        """
        cached = self._cache.get(key)
        if cached is None:
            cached = compute()
            if len(self._cache) > 16:
                self._cache.clear()
            self._cache[key] = cached
        return cached.copy()

    def normalize(self, vector: Any) -> np.ndarray:
        """``z = (s − l)/(u − l)`` per block (pinned blocks map to 0)."""
        lo, hi = self.lower_array(), self.upper_array()
        span = np.where(hi > lo, hi - lo, 1.0)
        return (np.asarray(vector, dtype=np.float64) - lo) / span


def maximin_order(pool: np.ndarray, chosen: np.ndarray, n: int) -> np.ndarray:
    """Indices of ``n`` rows of ``pool`` picked greedily, each farthest from ``chosen`` and earlier picks.

    Args:
        pool: An ``m x d`` array of candidates.
        chosen: A ``k x d`` array of points already in the design (may be empty).
        n: How many to pick (at most ``m``).
    """
    m = pool.shape[0]
    n = min(n, m)
    picks: list[int] = []
    if chosen.shape[0]:
        dist = np.min(((pool[:, None, :] - chosen[None, :, :]) ** 2).sum(-1), axis=1)
    else:
        # No anchor: the first pick is the pool point nearest the pool's centroid, then spread out.
        first = int(np.argmin(((pool - pool.mean(0)) ** 2).sum(-1))) if n else 0
        picks.append(first)
        dist = ((pool - pool[first]) ** 2).sum(-1)
        dist[first] = -np.inf
    while len(picks) < n:
        i = int(np.argmax(dist))
        picks.append(i)
        dist = np.minimum(dist, ((pool - pool[i]) ** 2).sum(-1))
        dist[picks] = -np.inf  # a pick is never picked again
    return np.asarray(picks[:n], dtype=np.int64)


def _project_one(y: np.ndarray, w: np.ndarray, lo: np.ndarray, hi: np.ndarray, c: float) -> np.ndarray:
    """Exact projection of one ``d`` vector onto ``{wᵀs = c, lo ≤ s ≤ hi}`` (see ``ConstraintSpace.project``)."""
    g_max = float(w @ hi)  # λ → −∞: every block at its upper bound
    g_min = float(w @ lo)  # λ → +∞: every block at its lower bound
    scale = _BOUNDARY_RTOL * max(abs(c), 1e-300)
    if c >= g_max - scale:
        return hi.copy()
    if c <= g_min + scale:
        return lo.copy()
    free = hi > lo
    bps = np.unique(np.concatenate([(y[free] - lo[free]) / w[free], (y[free] - hi[free]) / w[free]]))
    # g at every breakpoint, shape (k,): non-increasing in λ.
    g = (np.clip(y[None, :] - bps[:, None] * w[None, :], lo, hi) * w).sum(-1)
    # First breakpoint where g ≤ c; the crossing lies in [bps[k-1], bps[k]] (or beyond the ends).
    k = int(np.searchsorted(-g, -c, side="left"))
    if k == 0:
        lam_ref = bps[0] - 1.0
    elif k == len(bps):
        lam_ref = bps[-1] + 1.0
    else:
        lam_ref = 0.5 * (bps[k - 1] + bps[k])
    lam = _solve_lambda(y, w, lo, hi, c, lam_ref)
    s = np.clip(y - lam * w, lo, hi)
    return _polish(s, w, lo, hi, c)


def _solve_lambda(y: np.ndarray, w: np.ndarray, lo: np.ndarray, hi: np.ndarray, c: float, lam_ref: float) -> float:
    """λ on the linear piece of ``g`` containing ``lam_ref``: free blocks move, clipped ones stay at a bound."""
    z = y - lam_ref * w
    inside = (z > lo) & (z < hi)
    clipped = np.where(z <= lo, lo, hi)
    num = float(w[inside] @ y[inside]) + float(w[~inside] @ clipped[~inside]) - c
    den = float(w[inside] @ w[inside])
    return num / den if den > 0 else lam_ref


def _polish(s: np.ndarray, w: np.ndarray, lo: np.ndarray, hi: np.ndarray, c: float) -> np.ndarray:
    """Remove the last rounding error of ``wᵀs − c`` by moving interior blocks along ``w`` (bounds kept)."""
    for _ in range(3):
        r = c - math.fsum(w * s)
        if r == 0.0:
            break
        inside = (s > lo) & (s < hi)
        if not inside.any():
            break
        step = np.where(inside, r * w / float(w[inside] @ w[inside]), 0.0)
        s = np.clip(s + step, lo, hi)
    return s


def _project_torch(
    X: torch.Tensor, w_np: np.ndarray, lo_np: np.ndarray, hi_np: np.ndarray, c: float, rtol: float
) -> torch.Tensor:
    """Batched, autograd-friendly version of :func:`_project_one` for a ``... x d`` tensor."""
    import torch

    d = w_np.shape[0]
    if X.shape[-1] != d:
        raise InputError(f"`X` must have {d} entries in its last dimension (one per block); got {tuple(X.shape)}.")
    w = torch.as_tensor(w_np, dtype=X.dtype, device=X.device)
    lo = torch.as_tensor(lo_np, dtype=X.dtype, device=X.device)
    hi = torch.as_tensor(hi_np, dtype=X.dtype, device=X.device)
    g_max, g_min = float(w_np @ hi_np), float(w_np @ lo_np)
    scale = rtol * max(abs(c), 1e-300)
    if c >= g_max - scale:
        return hi.expand_as(X).clone() + 0.0 * X
    if c <= g_min + scale:
        return lo.expand_as(X).clone() + 0.0 * X
    batch_shape = X.shape[:-1]
    Y = X.reshape(-1, d)
    with torch.no_grad():
        bps = torch.cat([(Y - lo) / w, (Y - hi) / w], dim=-1)  # (B, 2d)
        bps, _ = torch.sort(bps, dim=-1)
        S = torch.clamp(Y[:, None, :] - bps[:, :, None] * w, lo, hi)  # (B, 2d, d)
        g = (S * w).sum(-1)  # (B, 2d), non-increasing along the last dim
        # k = number of breakpoints with g > c: the crossing lies in [bps[k-1], bps[k]].
        k = (g > c).sum(-1)
        idx_lo = (k - 1).clamp(min=0, max=2 * d - 1)
        idx_hi = k.clamp(max=2 * d - 1)
        b_lo = bps.gather(-1, idx_lo[:, None]).squeeze(-1)
        b_hi = bps.gather(-1, idx_hi[:, None]).squeeze(-1)
        lam_ref = torch.where(k == 0, b_lo - 1.0, torch.where(k == 2 * d, b_hi + 1.0, 0.5 * (b_lo + b_hi)))
        Z = Y - lam_ref[:, None] * w
        inside = (lo < Z) & (hi > Z)
        clipped = torch.where(lo >= Z, lo, hi)
    wi = w * inside  # (B, d): weights of the free blocks, zero elsewhere
    num = (wi * Y).sum(-1) + (w * clipped * (~inside)).sum(-1) - c
    den = (wi * w).sum(-1)
    lam = torch.where(den > 0, num / torch.where(den > 0, den, torch.ones_like(den)), lam_ref)
    out = torch.clamp(Y - lam[:, None] * w, lo, hi)
    return out.reshape(*batch_shape, d)


def _hit_and_run(space: ConstraintSpace, *, seed: int, n: int, n_burnin: int, n_thinning: int) -> np.ndarray:
    """``n`` points of BoTorch's hit-and-run chain on the polytope, pinned blocks held at their value."""
    import torch
    from botorch.utils.sampling import HitAndRunPolytopeSampler

    free = np.flatnonzero(space.free_mask)
    base = space.center()
    if space.is_singleton:
        return np.repeat(base[None, :], n, axis=0)
    w = space.weight_array()
    pinned = ~space.free_mask
    rhs = space.rhs - math.fsum(w[pinned] * space.lower_array()[pinned])
    with torch.device("cpu"):
        bounds = torch.tensor(space.bounds_array()[:, free], dtype=torch.float64)
        C = torch.tensor(w[free][None, :], dtype=torch.float64)
        rhs_t = torch.tensor([[rhs]], dtype=torch.float64)
        sampler = HitAndRunPolytopeSampler(
            bounds=bounds,
            equality_constraints=(C, rhs_t),
            n_burnin=n_burnin,
            n_thinning=n_thinning,
            seed=int(seed) % (2**31 - 1),
        )
        draws = sampler.draw(n).numpy()
    out = np.repeat(base[None, :], n, axis=0)
    out[:, free] = draws
    # The chain drifts off the equality by rounding only; the projection removes it and pins the bounds.
    return space.project(out)
