"""``bo``: constrained Bayesian optimisation of the block vector with BoTorch.

* **Model.** ``SingleTaskGP`` on ``−log(value)`` (we minimise the log of the screen's KL or perplexity;
  BoTorch maximises), inputs normalised to the block bounds (``Normalize``), outcome standardised
  (``Standardize``). The screen is the same sequences for every trial, so its value is deterministic, but as
  an estimate of the value on unseen text it is noisy, and a GP told it is exact chases the screen's
  quirks. The observation noise (``train_Yvar``) is therefore estimated from the trials promoted to fresh
  sequences: how far their screen value strays from their value on the fresh ones (:func:`screen_noise`).
  The kernel and priors are BoTorch 0.18's defaults for ``SingleTaskGP``: an ARD RBF kernel without output
  scale, with the dimension-scaled lengthscale prior ``LogNormal(√2 + ½·log d, √3)`` of Hvarfner et al.
  (2024), which keeps a vanilla GP sensible at 30–80 dimensions.
* **Acquisition.** ``qLogNoisyExpectedImprovement`` with q = 1; running trials of other workers are its
  ``X_pending``, which its default incremental mode joins to the incumbents, so the new point is scored
  by its improvement over the evaluated and the pending points jointly sampled (sequential greedy, never
  a joint constrained q-batch).
* **Optimisation on the constraint.** In the constraint's null space with L-BFGS-B (see ``_acqf``): every
  candidate the optimiser touches is feasible, and the proposal satisfies the equality to rounding error
  and the bounds exactly. Restarts are chosen among feasible raw samples: a hit-and-run pool of the
  polytope and perturbations of the best points.
* **Initial design.** The uniform vector, then a maximin (farthest-point) sequence from a large feasible
  pool: any prefix is space-filling, so the design adapts to how many workers ask at once. The pool is the
  whole polytope (``initial_design="maximin"``) or, with ``initial_design="local"``, the part of it within
  ``design_radius`` of the uniform vector in every coordinate (the default, ``"auto"``, in a study that
  searches the split): the uniform vector at the best split share is already a good allocation, and on
  SmolLM2 the polytope's far corners were KL 1-4 where the start was 0.35, evaluations spent learning what no
  search needs to know (``bench/results/allocators-parts/issue26-s0-50``).
* **Options** measured in ``bench/synthetic.py`` (d = 30, 50 evaluations): ``trust_region`` (a TuRBO-style
  box around the best point, lengthscale-shaped, grown on success and shrunk on failure, replayed from the
  history; it applies to the search of the full block vector, not to a few profile knots) and
  ``profile_knots`` (for the first ``profile_trials`` trials the GP and the search live on ``K``
  depth knots linearly interpolated across blocks; linear interpolation keeps the constraint linear in the
  knots, so the knot space is itself a ``ConstraintSpace``; later trials refine the full vector).

All tensor work runs on the CPU in float64 under a seeded ``torch.random.fork_rng``, so the proposal is a
function of the seed, the trial number and the history.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

import numpy as np
import optuna
import torch
from pydantic import Field

from allocator.errors import InfeasibleConstraintError, InputError, first_line
from allocator.search import trial_attributes as attrs
from allocator.search._constraint import ConstraintSpace
from allocator.search.samplers._acqf import AcqResult, optimize_nullspace, optimize_slsqp, select_starts
from allocator.search.samplers._base import BlockSampler, History, is_duplicate
from allocator.search.samplers._registry import SamplerOptions, register_sampler

if TYPE_CHECKING:
    from botorch.acquisition import AcquisitionFunction
    from botorch.models import SingleTaskGP
    from optuna.study import Study
    from optuna.trial import FrozenTrial

_DESIGN_SPARE = 16  # extra design points for workers that ask before the first results are in
_MIN_NOISE = 1e-6  # the observation variance of log(value) before the screen's noise can be estimated

# TuRBO's constants (Eriksson et al., 2019): initial, minimum and maximum side of the normalised box.
_TR_INIT, _TR_MIN, _TR_MAX = 0.8, 0.5**7, 1.6
# After a profile phase the best point is already good: the trust region starts smaller, to refine it.
_TR_INIT_REFINE = 0.2

# ``profile_knots="auto"``: a 4-knot depth profile first (the best variant at d = 30 and 50 evaluations in
# bench/results/synthetic.md), but only for models with enough blocks that 4 knots are a real reduction.
_AUTO_KNOTS, _AUTO_KNOTS_MIN_BLOCKS = 4, 12


def _model_errors() -> tuple[type[Exception], ...]:
    """The numerical failures of a GP fit or acquisition step (imported late: botorch is slow to import)."""
    from botorch.exceptions import ModelFittingError
    from gpytorch.utils.errors import NotPSDError

    return (ModelFittingError, NotPSDError, torch.linalg.LinAlgError)


def _resolve_knots(profile_knots: int | str | None, dim: int) -> int | None:
    if profile_knots == "auto":
        return _AUTO_KNOTS if dim >= _AUTO_KNOTS_MIN_BLOCKS else None
    return None if profile_knots is None else int(profile_knots)


def profile_matrix(dim: int, knots: int) -> np.ndarray:
    """The ``dim x knots`` matrix ``M`` of linear interpolation: block ``b`` at depth ``b/(dim−1)`` gets
    ``s_b = Σ_j M_bj k_j`` from knots evenly spaced in depth (hat functions; rows sum to 1, ``M ≥ 0``)."""
    if knots < 2 or knots > dim:
        raise InputError(f"`profile_knots` must be between 2 and the number of blocks ({dim}); got {knots}.")
    pos = np.linspace(0.0, 1.0, knots)
    depth = np.linspace(0.0, 1.0, dim) if dim > 1 else np.zeros(1)
    M = np.zeros((dim, knots))
    for b, x in enumerate(depth):
        j = min(int(np.searchsorted(pos, x, side="right")) - 1, knots - 2)
        frac = (x - pos[j]) / (pos[j + 1] - pos[j])
        M[b, j], M[b, j + 1] = 1.0 - frac, frac
    return M


def knot_space(space: ConstraintSpace, M: np.ndarray) -> ConstraintSpace | None:
    """The knots' own constraint space: ``Σ_j (Mᵀw)_j k_j = t·Σw`` with knot bounds that keep every block
    within its bounds (each block is a convex combination of two knots). None if that is infeasible."""
    lo, hi = space.lower_array(), space.upper_array()
    klo = np.array([lo[M[:, j] > 0].max() for j in range(M.shape[1])])
    khi = np.array([hi[M[:, j] > 0].min() for j in range(M.shape[1])])
    if np.any(klo > khi):
        return None
    try:
        return ConstraintSpace(weights=M.T @ space.weight_array(), target=space.target, lower=klo, upper=khi)
    except InfeasibleConstraintError:
        return None


@dataclass(frozen=True)
class SearchSpace:
    """Where one proposal is searched: a constraint space, and the linear map from it to block vectors."""

    space: ConstraintSpace
    to_blocks: np.ndarray | None  # ``d x K`` (profile knots), or None for the block space itself

    def blocks(self, X: np.ndarray) -> np.ndarray:
        """Points of this search space (``n x d`` or ``n x K``) to ``n x d`` block vectors: what the trials evaluate."""
        return X if self.to_blocks is None else X @ self.to_blocks.T

    def features(self, X: np.ndarray) -> np.ndarray:
        """Block vectors (``n x d``) to this search space's coordinates (least squares for knots)."""
        if self.to_blocks is None:
            return X
        return np.linalg.lstsq(self.to_blocks, X.T, rcond=None)[0].T


class BoOptions(SamplerOptions):
    """Options of ``bo``.

    Attributes:
        n_initial: Trials of the initial design (uniform vector first, then maximin) before the GP.
        initial_design: ``"maximin"`` draws the design from the whole polytope; ``"local"`` from the box of side
            ``2·design_radius`` around the uniform vector (intersected with the polytope); ``"auto"`` (default)
            is local in a study that searches the split (whose uniform vector is at the best share found) and
            maximin otherwise.
        design_radius: The half side of the local design's box, in sparsity (or depth-knot) units.
        trust_region: Restrict each search of the full vector to a TuRBO-style box around the best point.
        trust_region_init: The box's initial side in the normalised space (default 0.8, TuRBO's, or 0.2
            after a profile phase, whose best point only needs refining).
        profile_knots: If set, the first ``profile_trials`` trials search ``profile_knots`` depth knots;
            ``"auto"`` (default) means 4 knots for models of at least 12 blocks and none below that.
        profile_trials: Completed trials after which a profile search switches to the full vector.
        num_restarts: L-BFGS-B restarts.
        raw_samples: Feasible points scored to choose the restarts (a hit-and-run pool of this size, plus
            perturbations of the best points).
        mc_samples: Quasi-Monte-Carlo samples of qLogNEI.
        noise_variance: The observation variance of ``log(value)``; ``"auto"`` estimates it from the trials
            promoted to fresh sequences (:func:`screen_noise`), and uses 1e-6 until three such trials exist.
        round_iters: L-BFGS-B iterations per round of the null-space optimiser.
        max_rounds: Re-anchored rounds of the null-space optimiser (see ``_acqf.optimize_nullspace``).
        target_choice: Frontier studies only: ``"gain"`` (default) spends each evaluation on the target of the
            highest expected improvement per cost; ``"turn"`` lets the targets take turns, the GP across
            targets still proposing the vector (see ``_bo_frontier``).
        optimizer: ``"nullspace"`` (default) or ``"slsqp"`` (BoTorch's ``optimize_acqf`` with the equality
            constraint; slower, kept for comparison).
    """

    n_initial: int = Field(default=10, ge=1)
    initial_design: Literal["auto", "maximin", "local"] = "auto"
    design_radius: float = Field(default=0.1, gt=0.0, le=1.0)
    trust_region: bool = False
    trust_region_init: float | None = Field(default=None, gt=0.0, le=_TR_MAX)
    profile_knots: Annotated[int, Field(ge=2)] | Literal["auto"] | None = "auto"
    profile_trials: int = Field(default=30, ge=0)
    num_restarts: int = Field(default=8, ge=1)
    raw_samples: int = Field(default=512, ge=1)
    mc_samples: int = Field(default=128, ge=1)
    noise_variance: Annotated[float, Field(gt=0.0, allow_inf_nan=False)] | Literal["auto"] = "auto"
    round_iters: int = Field(default=25, ge=1)
    max_rounds: int = Field(default=2, ge=1)
    optimizer: Literal["nullspace", "slsqp"] = "nullspace"
    target_choice: Literal["gain", "turn"] = "gain"


@register_sampler("bo", summary="constrained Bayesian optimisation (BoTorch): GP, qLogNEI in the null space")
class BoSampler(BlockSampler):
    """Constrained BO: a GP on log perplexity, qLogNEI, acquisition optimised in the constraint's null space.

    Args:
        space: The constraint space.
        seed: The seed.
        options: :class:`BoOptions` (or its fields as keywords).
    """

    Options: ClassVar[type[SamplerOptions]] = BoOptions
    options: BoOptions

    def __init__(
        self, *, space: ConstraintSpace, seed: int | None = None, options: BoOptions | None = None, **values: Any
    ) -> None:
        super().__init__(space=space, seed=seed, options=options, **values)
        self._knots = _resolve_knots(self.options.profile_knots, space.dim)
        self._profile: ConstraintSpace | None = None
        self._M: np.ndarray | None = None
        if self._knots is not None:
            M = profile_matrix(space.dim, self._knots)
            self._profile = knot_space(space, M)
            self._M = M if self._profile is not None else None

    @property
    def profile_knots(self) -> int | None:
        """The depth knots of the profile phase (the option, ``"auto"`` resolved for this space), or None."""
        return self._knots

    @property
    def profile_map(self) -> np.ndarray | None:
        """The ``d x K`` interpolation matrix from the profile's knots to blocks, or None without a profile phase
        (none asked for, or the knots cannot keep every block within its bounds)."""
        return self._M

    @property
    def trust_region_init(self) -> float:
        """The trust region's initial side: the option, else 0.8 (TuRBO's), or 0.2 after a profile phase."""
        if self.options.trust_region_init is not None:
            return self.options.trust_region_init
        return _TR_INIT if self._knots is None else _TR_INIT_REFINE

    @property
    def initial_design(self) -> Literal["maximin", "local"]:
        """The design's pool: the option, ``"auto"`` resolved (local when the sampler searches the split)."""
        if self.options.initial_design == "auto":
            return "local" if self._split is not None else "maximin"
        return self.options.initial_design

    # ------------------------------------------------------------------ proposal

    def propose(self, study: Study, trial: FrozenTrial, history: History) -> np.ndarray:
        """A design point until ``n_initial`` trials have finished, then the best new candidate of a GP step; a failed
        model step falls back to the next design point and is recorded on the trial."""
        rng = self.rng(trial)
        with torch.device("cpu"), torch.random.fork_rng(), single_threaded(), warnings.catch_warnings():
            # Near-duplicate points with a tiny fixed noise make GPyTorch add jitter; that is expected.
            warnings.filterwarnings("ignore", message="A not p.d., added jitter")
            # The fixed noise (default 1e-6) is deliberate: the objective is deterministic.
            warnings.filterwarnings("ignore", message="Very small noise values detected")
            torch.manual_seed(int(rng.integers(2**31)))
            if history.n < max(self.options.n_initial, 2):
                return self.next_design_point(history, rng)
            search = self.search_space(history)
            try:
                result = self._model_step(study, trial, history, search, rng)
            except _model_errors() as error:
                # One failed GP fit (a numerically singular history, say) must not stop a long study: this
                # trial takes the next space-filling point instead, and the failure is recorded on it.
                reason = f"{type(error).__name__}: {first_line(error)}"
                attrs.set_system_attr(study, trial, attrs.BO_FALLBACK, reason)
                optuna.logging.get_logger(__name__).warning(
                    f"Trial {trial.number}: the bo model step failed ({reason}); proposing a space-filling point."
                )
                return self.next_design_point(history, rng)
        seen = history.seen()
        for x in result.X:
            candidate = self.space.project(search.blocks(x[None, :])[0])
            if not is_duplicate(candidate, seen, tol=1e-7):
                return candidate
        return self.next_design_point(history, rng)

    def _model_step(
        self, study: Study, trial: FrozenTrial, history: History, search: SearchSpace, rng: np.random.Generator
    ) -> AcqResult:
        """Fit the GP, build the acquisition and optimise it over the constraint."""
        phase = _phase(search)
        warm = latest_hyperparameters((*history.trials, *history.pending_trials), phase, search.space.dim)
        model = self.fit(history, search, warm_start=warm)
        attrs.set_system_attr(study, trial, attrs.BO_GP, gp_hyperparameters(model, phase))
        acqf = self.acquisition(model, history, search, seed=int(rng.integers(2**31)))
        return self.optimize(acqf, self.acquisition_box(history, search, model), history, search, rng)

    def search_space(self, history: History) -> SearchSpace:
        """Where this proposal searches: the depth profile's knots during the profile phase, else the full vector."""
        if self._profile is not None and history.n < self.options.profile_trials:
            return SearchSpace(space=self._profile, to_blocks=self._M)
        return SearchSpace(space=self.space, to_blocks=None)

    # ------------------------------------------------------------------ initial design

    def design(self) -> np.ndarray:
        """The initial design, an ``(n_initial + spare) x d`` array: uniform vector, then maximin order."""
        n_initial = self.options.n_initial
        key = ("bo-design", self.seed, n_initial, self._knots, self.initial_design, self.options.design_radius)
        return self.space.memoised(key, lambda: self._draw_design(n_initial))

    def _draw_design(self, n_initial: int) -> np.ndarray:
        profile = self._profile is not None and self._M is not None
        space = self._profile if profile else self.space
        assert space is not None
        first = space.uniform_vector()[None, :]
        rest = self.design_space(space).sample(n_initial + _DESIGN_SPARE - 1, seed=self.seed, start=first)
        design = np.concatenate([first, rest])
        return self.space.project(design @ self._M.T) if profile else design

    def design_space(self, space: ConstraintSpace) -> ConstraintSpace:
        """Where the design after the uniform vector is drawn: ``space`` itself, or for a local design its part
        within ``design_radius`` of the uniform vector in every coordinate."""
        if self.initial_design == "maximin":
            return space
        center, radius = space.uniform_vector(), self.options.design_radius
        lower = np.maximum(space.lower_array(), center - radius)
        upper = np.minimum(space.upper_array(), center + radius)
        return ConstraintSpace(weights=space.weights, target=space.target, lower=lower, upper=upper)

    def next_design_point(self, history: History, rng: np.random.Generator) -> np.ndarray:
        """The first point of the initial design not yet evaluated or pending (else an unseen polytope point)."""
        seen = history.seen()
        for x in self.design():
            if not is_duplicate(x, seen, tol=1e-7):
                return x
        pool = self.space.polytope_pool(seed=self.seed, size=self.options.raw_samples)
        for i in rng.permutation(pool.shape[0]):
            if not is_duplicate(pool[i], seen, tol=1e-7):
                return pool[i]
        return self.space.project(pool[0] + 1e-3 * rng.standard_normal(self.space.dim))

    # ------------------------------------------------------------------ model and acquisition

    def fit(
        self, history: History, search: SearchSpace | None = None, *, warm_start: dict | None = None
    ) -> SingleTaskGP:
        """The GP of ``−log(value)`` on the search coordinates, hyperparameters fitted by marginal likelihood.

        ``warm_start`` (hyperparameters stored with an earlier proposal of this study) starts L-BFGS-B
        there instead of at the prior's mode: the fit then converges in a few dozen iterations instead of
        a few hundred, which is most of a proposal's cost (``bench/sampler_overhead.py`` measures both).
        """
        search = search or SearchSpace(space=self.space, to_blocks=None)
        return fit_gp(
            search.features(history.X),
            -history.log_y(),
            search.space.bounds_array(),
            noise=self.observation_noise(history),
            warm_start=warm_start,
        )

    def acquisition(
        self, model: SingleTaskGP, history: History, search: SearchSpace | None = None, *, seed: int = 0
    ) -> AcquisitionFunction:
        """qLogNEI on the evaluated points, with the pending points of running trials as ``X_pending``."""
        search = search or SearchSpace(space=self.space, to_blocks=None)
        pending = search.features(history.pending) if history.pending.shape[0] else None
        return log_nei(model, search.features(history.X), pending, mc_samples=self.options.mc_samples, seed=seed)

    def observation_noise(self, history: History) -> float:
        """The observation variance of ``log(value)``: the option, or the estimate from promoted trials."""
        return self.noise_of(history.trials)

    def noise_of(self, trials: Iterable[FrozenTrial]) -> float:
        """The observation variance of ``log(value)`` for a GP on ``trials``: the option, or the estimate from
        those of them promoted to fresh sequences (:func:`screen_noise`)."""
        if self.options.noise_variance != "auto":
            return float(self.options.noise_variance)
        estimate = screen_noise(trials)
        return _MIN_NOISE if estimate is None else max(_MIN_NOISE, estimate)

    # ------------------------------------------------------------------ acquisition optimisation

    def raw_points(
        self, box: ConstraintSpace, history: History, search: SearchSpace, rng: np.random.Generator
    ) -> np.ndarray:
        """Feasible candidates in ``box`` (search coordinates) to choose restarts from: a hit-and-run pool
        (of the search space; projected into a trust region), plus Gaussian perturbations of the five best
        points along the constraint at several scales."""
        raw_samples = self.options.raw_samples
        base = search.space.polytope_pool(seed=self.seed, size=raw_samples)
        if box is not search.space:
            lo, hi = box.lower_array(), box.upper_array()
            base = box.project(lo + (hi - lo) * rng.random((raw_samples, box.dim)))
        feats = search.features(history.X)
        best = feats[np.argsort(history.y, kind="stable")[:5]]
        span = box.upper_array() - box.lower_array()
        local = []
        for x in best:
            for scale in (0.01, 0.03, 0.1, 0.3):
                mask = rng.random((16, box.dim)) < min(1.0, 20.0 / box.dim)
                step = rng.standard_normal((16, box.dim)) * scale * span * mask
                local.append(x[None, :] + step)
        local_pts = box.project(np.clip(np.concatenate(local), box.lower_array() - 1.0, box.upper_array() + 1.0))
        return np.concatenate([base, local_pts, box.project(best)])

    def optimize(
        self,
        acqf: AcquisitionFunction,
        box: ConstraintSpace,
        history: History,
        search: SearchSpace,
        rng: np.random.Generator,
    ) -> AcqResult:
        """Maximise ``acqf`` over ``box`` from restarts chosen among :meth:`raw_points`."""
        raw = self.raw_points(box, history, search, rng)
        o = self.options
        starts, _ = select_starts(acqf, raw, o.num_restarts)
        if o.optimizer == "slsqp":
            return optimize_slsqp(acqf, box, starts)
        return optimize_nullspace(acqf, box, starts, round_iters=o.round_iters, max_rounds=o.max_rounds)

    # ------------------------------------------------------------------ trust region

    def trust_region_length(self, history: History) -> float:
        """The TuRBO side length after replaying the history in trial order (success: a new best by
        more than 1e-3 in log value; 3 successes double it, ``max(4, d)`` failures halve it; below the
        minimum it restarts at the initial length). Replay starts where the full-vector search starts:
        after the initial design, or after the profile phase."""
        order = np.argsort(history.numbers, kind="stable")
        logs = np.log(history.y[order])
        fail_tol = max(4, self.space.dim)
        length, succ, fail = self.trust_region_init, 0, 0
        n_initial, profile_trials = self.options.n_initial, self.options.profile_trials
        first = n_initial if self._profile is None else max(n_initial, profile_trials)
        best = float(np.min(logs[:first])) if logs.size else math.inf
        for v in logs[first:]:
            if v < best - 1e-3:
                succ, fail = succ + 1, 0
            else:
                succ, fail = 0, fail + 1
            best = min(best, float(v))
            if succ >= 3:
                length, succ = min(2.0 * length, _TR_MAX), 0
            elif fail >= fail_tol:
                length, fail = length / 2.0, 0
            if length < _TR_MIN:
                length = self.trust_region_init
        return length

    def acquisition_box(self, history: History, search: SearchSpace, model: SingleTaskGP) -> ConstraintSpace:
        """The part of ``search.space`` the acquisition is optimised over: TuRBO's trust region around the best
        point when enabled on the full vector (a few knots are searched whole), else the whole space."""
        if not (self.options.trust_region and search.to_blocks is None):
            return search.space
        return self._trust_region(history, search, model)

    def _trust_region(self, history: History, search: SearchSpace, model: SingleTaskGP) -> ConstraintSpace:
        length = self.trust_region_length(history)
        sp = search.space
        center = sp.normalize(search.features(history.X)[int(np.argmin(history.y))])
        ls = model.covar_module.lengthscale.detach().reshape(-1).numpy()
        # TuRBO's lengthscale-shaped box (weights of geometric mean 1), clipped so that poorly determined
        # lengthscales (few points off a profile's subspace) cannot collapse or explode a side.
        weights = np.clip(ls / np.exp(np.mean(np.log(ls))), 0.25, 4.0)
        zlo = np.clip(center - 0.5 * length * weights, 0.0, 1.0)
        zhi = np.clip(center + 0.5 * length * weights, 0.0, 1.0)
        lo, hi = sp.lower_array(), sp.upper_array()
        try:
            return ConstraintSpace(
                weights=sp.weights,
                target=sp.target,
                lower=np.minimum(lo + (hi - lo) * zlo, hi),
                upper=np.minimum(lo + (hi - lo) * zhi, hi),
            )
        except InfeasibleConstraintError:
            return sp


def fit_gp(
    X: np.ndarray, Y: np.ndarray, bounds: np.ndarray, *, noise: float, warm_start: dict | None = None
) -> SingleTaskGP:
    """A ``SingleTaskGP`` on ``n x k`` inputs ``X`` (normalised to the ``2 x k`` ``bounds``) and ``n`` values
    ``Y`` (standardised) with fixed observation variance ``noise``, hyperparameters fitted by marginal
    likelihood from ``warm_start`` (stored hyperparameters) or from the prior's mode. A column whose bounds
    coincide (a pinned block) maps to a constant 0."""
    from botorch.fit import fit_gpytorch_mll
    from botorch.models import SingleTaskGP
    from botorch.models.transforms import Normalize, Standardize
    from gpytorch.mlls import ExactMarginalLogLikelihood

    X_t = torch.as_tensor(X, dtype=torch.float64)
    Y_t = torch.as_tensor(Y, dtype=torch.float64).reshape(-1, 1)
    b = torch.as_tensor(bounds, dtype=torch.float64).clone()
    b[1] = torch.where(b[1] <= b[0], b[0] + 1.0, b[1])
    model = SingleTaskGP(
        X_t,
        Y_t,
        train_Yvar=torch.full_like(Y_t, noise),
        input_transform=Normalize(d=X_t.shape[-1], bounds=b),
        outcome_transform=Standardize(m=1),
    )
    if warm_start is not None:
        with torch.no_grad():
            model.covar_module.raw_lengthscale.copy_(
                torch.as_tensor(warm_start["raw_lengthscale"], dtype=torch.float64).reshape(
                    model.covar_module.raw_lengthscale.shape
                )
            )
            model.mean_module.raw_constant.fill_(float(warm_start["mean"]))
    fit_gpytorch_mll(ExactMarginalLogLikelihood(model.likelihood, model), optimizer_kwargs={"options": {"ftol": 1e-6}})
    return model


def log_nei(
    model: Any, baseline: np.ndarray, pending: np.ndarray | None, *, mc_samples: int, seed: int
) -> AcquisitionFunction:
    """qLogNEI of ``model`` against the evaluated inputs ``baseline``, with the running trials' inputs as
    ``X_pending`` (joined to the incumbents by BoTorch's incremental mode)."""
    from botorch.acquisition.logei import qLogNoisyExpectedImprovement
    from botorch.sampling import SobolQMCNormalSampler

    return qLogNoisyExpectedImprovement(
        model=model,
        X_baseline=torch.as_tensor(baseline, dtype=torch.float64),
        X_pending=None if pending is None else torch.as_tensor(pending, dtype=torch.float64),
        sampler=SobolQMCNormalSampler(sample_shape=torch.Size([mc_samples]), seed=seed),
        prune_baseline=True,
        cache_root=True,
    )


def screen_noise(trials: Iterable[FrozenTrial]) -> float | None:
    """The variance of the screen's ``log(value)`` as an estimate of the value on unseen sequences, or None.

    For every one of the finished ``trials`` promoted to rung 1, ``d = log(rung-1 value) − log(screen value)``,
    each over its own sequences. Its spread over trials (about its mean: rung 1 may be easier or harder text for
    everyone) is the screen's error plus rung 1's, whose variances scale with ``1/n``:
    ``var(d) = σ²_screen · (1 + n_screen / n_rung1)``. Needs three promoted trials.
    """
    pairs = []
    for trial in trials:
        own, sizes = attrs.rung_own_values(trial), attrs.rung_sizes(trial)
        if len(own) >= 2 and len(sizes) >= 2 and own[0] > 0 and own[1] > 0:
            pairs.append((math.log(own[1]) - math.log(own[0]), sizes[0] / sizes[1]))
    if len(pairs) < 3:
        return None
    differences = np.array([d for d, _ in pairs])
    ratio = float(np.mean([r for _, r in pairs]))
    return float(np.var(differences, ddof=1)) / (1.0 + ratio)


@contextlib.contextmanager
def single_threaded() -> Iterator[None]:
    """Run torch on one intra-op thread: the matrices of a proposal are small (n ≤ a few hundred), where
    threads gain nothing, and on a busy machine spinning threads made a GP fit many times slower."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _phase(search: SearchSpace) -> str:
    return "full" if search.to_blocks is None else f"knots{search.to_blocks.shape[1]}"


def gp_hyperparameters(model: SingleTaskGP, phase: str) -> dict:
    """What a proposal stores of its GP (``BO_GP``): the search phase it was fitted in, and the
    hyperparameters a later proposal of the same phase starts its fit from."""
    return {
        "phase": phase,
        "raw_lengthscale": [float(v) for v in model.covar_module.raw_lengthscale.detach().reshape(-1)],
        "mean": float(model.mean_module.raw_constant.detach()),
    }


def latest_hyperparameters(trials: Iterable[FrozenTrial], phase: str, size: int) -> dict | None:
    """The hyperparameters stored with the most recent of ``trials`` whose GP had the same ``phase`` and
    ``size`` inputs, if any."""
    best: tuple[int, dict] | None = None
    for t in trials:
        hp = attrs.bo_hyperparameters(t)
        if (
            hp is not None
            and hp.get("phase") == phase
            and len(hp.get("raw_lengthscale", ())) == size
            and (best is None or t.number > best[0])
        ):
            best = (t.number, hp)
    return None if best is None else best[1]
