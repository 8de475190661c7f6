"""A seeded synthetic stand-in for "perplexity of a per-block sparsity vector", with a known optimum.

Samplers are compared on it (tests, ``bench/synthetic.py``) because a real model costs seconds per trial
and its optimum is unknown. It is built to look like the real objective where that matters:

* positive and smooth, ``f(s) = f₀ · exp(h(s))``, so samplers model ``log f`` as they do perplexity;
* each block's damage grows convexly and blows up towards sparsity 1, ``φ(s) = −log(1 − s) − s``;
* sensitivity decreasing with depth (later blocks tolerate more sparsity, as WAS and TEAL observe) plus
  a few strongly sensitive blocks (the first two and the last), and seeded jitter per block;
* realistic, non-uniform block weights: every third block 1.5× the others (a model with a wider MLP in
  some blocks), so the weighted constraint differs from the plain mean;
* a coupling term: damage in early blocks compounds downstream, ``β·(vᵀs)²`` with ``v_b = exp(−b/τ)``.

So ``h(s) = Σ_b a_b φ(s_b) + β (vᵀs)²``: convex, and the constrained optimum is unique. It is computed
exactly from the KKT conditions: for fixed multipliers ``(λ, μ)`` each block solves
``a_b s/(1 − s) = λ w_b − μ v_b`` in closed form (then clipped to its bounds); ``λ`` is found by bisection
on the (monotone) equality ``wᵀs = t·Σw`` and ``μ`` by bisection on the fixed point ``μ = 2β·vᵀs``,
each to machine precision, and the result is put on the constraint by the exact projection.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from allocator import ConstraintSpace
from allocator.errors import InputError


@dataclass(frozen=True, kw_only=True)
class SyntheticObjective:
    """The synthetic objective on ``d`` blocks (default 30, like SmolLM2-135M) at model-level ``target``.

    Args:
        dim: Number of blocks ``d``.
        target: The model-level sparsity ``t`` of the constraint.
        seed: Seeds the per-block jitter of the sensitivities.
        base_value: ``f₀``, the value of the dense model (``s = 0``).
        lower: Lower block bound(s).
        upper: Upper block bound(s).
        coupling: ``β``, the strength of the early-block coupling.
    """

    dim: int = 30
    target: float = 0.5
    seed: int = 0
    base_value: float = 12.0
    lower: float = 0.0
    upper: float = 0.99
    coupling: float = 0.08
    space: ConstraintSpace = field(init=False, repr=False, compare=False)
    sensitivity: np.ndarray = field(init=False, repr=False, compare=False)
    coupling_vector: np.ndarray = field(init=False, repr=False, compare=False)
    _optimum: dict[str, Any] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.dim < 2:
            raise InputError(f"`dim` must be at least 2; got {self.dim!r}.")
        d = self.dim
        depth = np.arange(d) / (d - 1)
        weights = np.where(np.arange(d) % 3 == 2, 1.5, 1.0)
        rng = np.random.default_rng(self.seed)
        a = 0.06 * (1.6 - depth) * np.exp(0.3 * rng.standard_normal(d))
        a[0] *= 8.0
        a[1] *= 4.0
        a[-1] *= 5.0
        v = np.exp(-np.arange(d) / 4.0)
        object.__setattr__(
            self, "space", ConstraintSpace(weights=weights, target=self.target, lower=self.lower, upper=self.upper)
        )
        object.__setattr__(self, "sensitivity", a)
        object.__setattr__(self, "coupling_vector", v)

    # ------------------------------------------------------------------ evaluation

    def log_value(self, vector: Any) -> float:
        """``log f(s) = log f₀ + Σ_b a_b φ(s_b) + β (vᵀs)²`` for a ``d`` vector."""
        s = np.asarray(vector, dtype=np.float64)
        if s.shape != (self.dim,):
            raise InputError(f"`vector` must have {self.dim} entries; got shape {s.shape}.")
        phi = -np.log1p(-s) - s
        return float(
            math.log(self.base_value) + self.sensitivity @ phi + self.coupling * (self.coupling_vector @ s) ** 2
        )

    def __call__(self, vector: Any) -> float:
        """``f(s)``, the stand-in perplexity (positive)."""
        return math.exp(self.log_value(vector))

    # ------------------------------------------------------------------ the exact optimum

    @property
    def optimum(self) -> np.ndarray:
        """The constrained minimiser, a ``d`` array (computed once, exactly, from the KKT conditions)."""
        if "x" not in self._optimum:
            self._optimum["x"] = self._solve()
        return self._optimum["x"].copy()

    @property
    def optimal_value(self) -> float:
        """``f`` at :attr:`optimum`."""
        return self(self.optimum)

    def regret(self, value: float) -> float:
        """Simple regret ``value − f*`` (in the objective's units)."""
        return float(value) - self.optimal_value

    def _block_solution(self, lam: float, mu: float) -> np.ndarray:
        # a_b s/(1 − s) = q_b  ⇒  s = q_b/(a_b + q_b) for q_b > 0, else the smallest allowed value.
        q = lam * self.space.weight_array() - mu * self.coupling_vector
        s = np.where(q > 0, q / (self.sensitivity + np.maximum(q, 0.0)), 0.0)
        return np.clip(s, self.space.lower_array(), self.space.upper_array())

    def _lambda_for(self, mu: float) -> float:
        """λ with ``wᵀs(λ, μ) = c``, by bisection (``wᵀs`` is non-decreasing in λ)."""
        w, c = self.space.weight_array(), self.space.rhs
        lo, hi = -1.0, 1.0
        while w @ self._block_solution(hi, mu) < c:
            hi *= 2.0
        while w @ self._block_solution(lo, mu) > c:
            lo *= 2.0
        for _ in range(200):
            mid = 0.5 * (lo + hi)
            if mid in (lo, hi):
                break
            if w @ self._block_solution(mid, mu) < c:
                lo = mid
            else:
                hi = mid
        return 0.5 * (lo + hi)

    def _solve(self) -> np.ndarray:
        v, beta = self.coupling_vector, self.coupling

        def gap(mu: float) -> float:  # increasing in μ; zero at the KKT point
            return mu - 2.0 * beta * float(v @ self._block_solution(self._lambda_for(mu), mu))

        lo, hi = 0.0, 1.0
        while gap(hi) < 0:
            hi *= 2.0
        for _ in range(200):
            mid = 0.5 * (lo + hi)
            if mid in (lo, hi):
                break
            if gap(mid) < 0:
                lo = mid
            else:
                hi = mid
        mu = 0.5 * (lo + hi)
        return self.space.project(self._block_solution(self._lambda_for(mu), mu))


def run_sampler(
    name: str,
    *,
    objective: SyntheticObjective,
    seed: int,
    n_trials: int,
    storage: Any = None,
    **options: Any,
) -> np.ndarray:
    """Run ``n_trials`` of the sampler ``name`` on ``objective`` in a fresh Optuna study.

    The objective goes through :func:`~allocator.search.samplers.suggest_allocation` like a real one, so samplers
    that ignore the constraint are projected. Returns the ``n_trials`` values in trial order.
    """
    import optuna

    from allocator.search.samplers import create_sampler, suggest_allocation

    sampler = create_sampler(name, space=objective.space, seed=seed, **options)
    study = optuna.create_study(direction="minimize", sampler=sampler, storage=storage)
    limit = getattr(sampler, "max_trials", None)
    n = n_trials if limit is None else min(n_trials, int(limit))

    def func(trial: optuna.Trial) -> float:
        return objective(suggest_allocation(trial, objective.space))

    study.optimize(func, n_trials=n)
    return np.array([t.value for t in study.trials], dtype=np.float64)


def run_frontier(
    name: str,
    *,
    objectives: dict[float, SyntheticObjective],
    seed: int,
    n_trials: int,
    **options: Any,
) -> list[tuple[float, float]]:
    """Run ``n_trials`` of a frontier study (one objective per target) with sampler ``name``, as the study runner
    does: the sampler gives each trial its target, the vector is evaluated on that target's constraint.
    Returns ``(target, value)`` per trial, in trial order."""
    from allocator.search.samplers import create_frontier_sampler

    sampler = create_frontier_sampler(name, spaces={t: o.space for t, o in objectives.items()}, seed=seed, **options)
    return optimise_frontier(sampler, objectives=objectives, n_trials=n_trials)


def optimise_frontier(
    sampler: Any, *, objectives: dict[float, SyntheticObjective], n_trials: int
) -> list[tuple[float, float]]:
    """:func:`run_frontier` with a sampler already built (e.g. per-target samplers taking turns)."""
    import optuna

    from allocator.search import trial_attributes as attrs
    from allocator.search.samplers import suggest_allocation

    study = optuna.create_study(direction="minimize", sampler=sampler)

    def func(trial: optuna.Trial) -> float:
        trial.relative_params  # noqa: B018 - frontier bo chooses the target when it samples
        target = attrs.trial_target(trial)  # type: ignore[arg-type]
        assert target is not None
        return objectives[target](suggest_allocation(trial, objectives[target].space))

    study.optimize(func, n_trials=n_trials)
    return [(float(t.user_attrs[attrs.TARGET]), float(t.value)) for t in study.trials]
