"""Acquisition optimisation on the constraint polytope: in its null space with L-BFGS-B (ours) or SLSQP.

BoTorch's ``optimize_acqf(..., equality_constraints=...)`` hands the constraint to SLSQP, jointly over all
restarts, which costs seconds per proposal at d = 30. We instead parametrise the polytope
``{wᵀs = c, l ≤ s ≤ u}``: in the normalised space ``s = l + (u − l)·z`` the equality reads ``aᵀz = r`` with
``a_b = w_b (u_b − l_b)``, and every point of the hyperplane is ``z = z₀ + N y`` with ``z₀`` a feasible point
and ``N`` an orthonormal basis of the null space of ``aᵀ`` (``d x (d − 1)``; zero rows for pinned blocks).
Any ``y`` is then sent to the polytope exactly by the projection ``P`` (which only has the bounds left to
enforce), so the acquisition ``α(P(l + (u − l)(z₀ + N y)))`` is a function of an unconstrained ``y``
that is feasible everywhere. We maximise it with BoTorch's batched L-BFGS-B (``gen_candidates_scipy``)
from restarts chosen among feasible raw samples. The map is piecewise linear, so gradients are exact
almost everywhere; points outside the box are folded onto its faces, where the acquisition's optimum
often lies (a block at a bound).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from botorch.acquisition import AcquisitionFunction
from botorch.exceptions.errors import CandidateGenerationError
from botorch.exceptions.warnings import OptimizationWarning
from botorch.generation.gen import gen_candidates_scipy
from botorch.optim import optimize_acqf
from botorch.optim.initializers import initialize_q_batch

from allocator.search._constraint import ConstraintSpace


@dataclass(frozen=True)
class NullSpaceMap:
    """The map ``y ↦ P(l + (u − l)(z₀ + N y))`` from ``R^m`` (``m = d_free − 1``) onto the polytope.

    Attributes:
        space: The constraint space.
        N: A ``d x m`` tensor with orthonormal columns spanning ``{z : aᵀz = 0}`` on the free blocks.
        z0: A ``d`` tensor, the normalised feasible origin (``space.center()``).
        lower: A ``d`` tensor of lower bounds ``l``.
        span: A ``d`` tensor ``u − l``.
    """

    space: ConstraintSpace
    N: torch.Tensor
    z0: torch.Tensor
    lower: torch.Tensor
    span: torch.Tensor

    @classmethod
    def build(cls, space: ConstraintSpace) -> NullSpaceMap:
        """The map for ``space``, its null-space basis from an SVD of the normalised constraint row."""
        free = np.flatnonzero(space.free_mask)
        lo, hi = space.lower_array(), space.upper_array()
        a = space.weight_array()[free] * (hi[free] - lo[free])
        # Rows 1… of Vᵀ in the SVD of the 1 x d_free matrix aᵀ span its null space, orthonormally.
        _, _, vh = np.linalg.svd(a[None, :] / np.linalg.norm(a))
        N = np.zeros((space.dim, max(free.size - 1, 0)))
        N[free, :] = vh[1:, :].T
        z0 = space.normalize(space.center())
        t = lambda v: torch.as_tensor(v, dtype=torch.float64)  # noqa: E731
        return cls(space=space, N=t(N), z0=t(z0), lower=t(lo), span=t(hi - lo))

    @property
    def m(self) -> int:
        """The dimension of ``y``."""
        return int(self.N.shape[1])

    def y_bounds(self) -> torch.Tensor:
        """A ``2 x m`` box containing the polytope's image: ``‖N y‖ = ‖y‖ ≤ √d`` as ``z ∈ [0, 1]^d``."""
        r = math.sqrt(max(int(self.space.free_mask.sum()), 1))
        return torch.stack([torch.full((self.m,), -r), torch.full((self.m,), r)]).to(torch.float64)

    def to_x(self, Y: torch.Tensor) -> torch.Tensor:
        """A ``... x m`` tensor of ``y`` to the ``... x d`` feasible points (differentiable a.e.)."""
        Z = self.z0 + Y @ self.N.T
        return self.space.project_torch(self.lower + self.span * Z)

    def to_y(self, X: torch.Tensor) -> torch.Tensor:
        """A ``... x d`` tensor of feasible points to their ``... x m`` coordinates ``Nᵀ(z − z₀)``."""
        span = torch.where(self.span > 0, self.span, torch.ones_like(self.span))
        Z = (X - self.lower) / span
        return (Z - self.z0) @ self.N


class _OnNullSpace(AcquisitionFunction):
    """``α(P(z₀ + N y))`` as an acquisition function of ``y`` (a ``b x 1 x m`` tensor)."""

    def __init__(self, acqf: AcquisitionFunction, nullspace: NullSpaceMap) -> None:
        super().__init__(model=acqf.model)
        self.acqf = acqf
        self._map = nullspace

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        return self.acqf(self._map.to_x(X))


@dataclass(frozen=True)
class AcqResult:
    """Candidates from acquisition optimisation, best first.

    Attributes:
        X: A ``k x d`` float64 array of feasible candidates (one per restart), sorted by acquisition value.
        values: The ``k`` acquisition values.
    """

    X: np.ndarray
    values: np.ndarray


def evaluate_batched(acqf: AcquisitionFunction, X: torch.Tensor, batch: int = 256) -> torch.Tensor:
    """``acqf`` on an ``n x d`` tensor of points (each its own q = 1 batch), in chunks; an ``n`` tensor."""
    with torch.no_grad():
        return torch.cat([acqf(X[i : i + batch].unsqueeze(-2)) for i in range(0, X.shape[0], batch)])


def select_starts(acqf: AcquisitionFunction, raw: np.ndarray, num_restarts: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Restart points among ``raw`` (an ``n x d`` array of feasible points): the best by acquisition value
    plus Boltzmann draws (BoTorch's ``initialize_q_batch``). Returns a ``k x 1 x d`` tensor and the values."""
    X = torch.as_tensor(raw, dtype=torch.float64)
    vals = evaluate_batched(acqf, X)
    k = min(num_restarts, X.shape[0])
    starts, start_vals = initialize_q_batch(X.unsqueeze(-2), vals, n=k)
    best = int(torch.argmax(vals))
    if not torch.any(torch.all(starts[:, 0, :] == X[best], dim=-1)):
        starts[-1, 0, :] = X[best]
        start_vals[-1] = vals[best]
    return starts, start_vals


def optimize_nullspace(
    acqf: AcquisitionFunction,
    space: ConstraintSpace,
    starts: torch.Tensor,
    *,
    round_iters: int = 25,
    max_rounds: int = 2,
    keep: int = 4,
    tol: float = 1e-7,
    polish: int = 2,
    polish_iters: int = 50,
) -> AcqResult:
    """Maximise ``acqf`` over the polytope from ``starts`` (a ``k x 1 x d`` tensor of feasible points).

    Each start is mapped to null-space coordinates ``y``, the wrapped acquisition is maximised by batched
    L-BFGS-B within :meth:`NullSpaceMap.y_bounds`, and the result is mapped back through the exact
    (numpy) projection, so every candidate satisfies the constraint to rounding error.

    The projection folds everything outside the box onto its faces, so the wrapped acquisition is flat
    along the outward normal there and has kinks where a block reaches a bound; L-BFGS-B's curvature
    model breaks on them and its line search stops early. Two remedies, both measured against SLSQP from
    the same starts (``tests/allocator/search/samplers/test_acqf.py``, ``bench/sampler_overhead.py``):

    * short rounds (``round_iters``) with re-anchoring in between: each result is mapped to its feasible
      point and to that point's own ``y``, which removes the fold and resets the curvature memory; rounds
      continue on the ``keep`` best while the best value improves by at least ``tol``;
    * a final polish of the ``polish`` best candidates by SLSQP with the equality constraint, from a start
      that is already nearly optimal (so a few iterations, unlike SLSQP from raw starts); its result is
      projected back onto the constraint exactly; if BoTorch's SLSQP path fails, the unpolished
      candidates stand.
    """
    result = _optimize_on(acqf, space, starts, round_iters)
    for _ in range(max_rounds - 1):
        again = torch.as_tensor(result.X[:keep], dtype=torch.float64).unsqueeze(-2)
        refined = _optimize_on(acqf, space, again, round_iters)
        improved = refined.values[0] >= result.values[0] + tol
        result = _merge(refined, result)
        if not improved:
            break
    if polish > 0:
        top = torch.as_tensor(result.X[:polish], dtype=torch.float64).unsqueeze(-2)
        try:
            with warnings.catch_warnings(record=True):
                result = _merge(optimize_slsqp(acqf, space, top, maxiter=polish_iters), result)
        except CandidateGenerationError:
            # BoTorch gives up when SLSQP ends slightly off the constraint and its own projection hits
            # an iteration limit (seen once in 20 demo proposals). The polish is only a refinement: the
            # null-space candidates are feasible already, so the proposal goes on without it.
            pass
    return result


def _merge(first: AcqResult, second: AcqResult) -> AcqResult:
    X = np.concatenate([first.X, second.X])
    values = np.concatenate([first.values, second.values])
    order = np.argsort(-values, kind="stable")
    return AcqResult(X=X[order], values=values[order])


def _optimize_on(acqf: AcquisitionFunction, space: ConstraintSpace, starts: torch.Tensor, maxiter: int) -> AcqResult:
    nmap = NullSpaceMap.build(space)
    wrapped = _OnNullSpace(acqf, nmap)
    yb = nmap.y_bounds()
    Y0 = nmap.to_y(starts).clamp(yb[0], yb[1])
    with warnings.catch_warnings(record=True) as caught:
        # Early stops of a round are expected (see above): the next round resumes from the result.
        # BoTorch forces its OptimizationWarning to "always", so we record them rather than filter.
        Y, _ = gen_candidates_scipy(
            initial_conditions=Y0,
            acquisition_function=wrapped,
            lower_bounds=yb[0],
            upper_bounds=yb[1],
            options={"maxiter": maxiter},
        )
    for w in caught:
        if not issubclass(w.category, OptimizationWarning):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    with torch.no_grad():
        X = space.project(nmap.to_x(Y).reshape(-1, space.dim).numpy())
    return rank_candidates(acqf, X)


def optimize_slsqp(
    acqf: AcquisitionFunction,
    space: ConstraintSpace,
    starts: torch.Tensor,
    *,
    maxiter: int | None = None,
) -> AcqResult:
    """The reference: ``optimize_acqf`` with the equality constraint (SLSQP), from the same ``starts``.

    Its results meet the equality only to SLSQP's tolerance; they are projected before being ranked, so
    both optimisers are compared on feasible points. ``maxiter=None`` keeps BoTorch's default (2000).
    """
    X, _ = optimize_acqf(
        acq_function=acqf,
        bounds=space.botorch_bounds(),
        q=1,
        num_restarts=starts.shape[0],
        batch_initial_conditions=starts,
        equality_constraints=space.botorch_equality_constraints(normalized=False),
        options={} if maxiter is None else {"maxiter": maxiter},
        return_best_only=False,
        retry_on_optimization_warning=False,
    )
    return rank_candidates(acqf, space.project(X.detach().reshape(-1, space.dim).numpy()))


def rank_candidates(acqf: AcquisitionFunction, X: np.ndarray) -> AcqResult:
    """The ``k x d`` candidates ``X`` sorted by their acquisition value, best first, so that a sampler can take the best
    one it has not evaluated yet."""
    vals = evaluate_batched(acqf, torch.as_tensor(X, dtype=torch.float64)).numpy()
    order = np.argsort(-vals, kind="stable")
    return AcqResult(X=X[order], values=vals[order])
