"""The synthetic objective: positive, seeded, with an exactly known constrained optimum."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import minimize

from allocator import InputError
from allocator.testing import SyntheticObjective


def test_values_are_positive_seeded_and_shaped_like_perplexity() -> None:
    f = SyntheticObjective()
    assert f.dim == 30 and f.space.dim == 30
    assert f(np.zeros(30)) == pytest.approx(f.base_value)
    u = f.space.uniform_vector()
    assert f(u) > f.optimal_value > f.base_value > 0
    assert SyntheticObjective(seed=1).sensitivity.tolist() != f.sensitivity.tolist()
    assert SyntheticObjective().sensitivity.tolist() == f.sensitivity.tolist()
    # A few strongly sensitive blocks: the first two and the last stand out of the depth trend.
    a = f.sensitivity
    assert a[0] > 3 * np.median(a) and a[-1] > 2 * np.median(a)
    # Non-uniform weights.
    assert len(set(f.space.weights)) == 2
    with pytest.raises(InputError, match="`vector`"):
        f(np.zeros(29))


def test_optimum_is_feasible_and_beats_a_general_solver() -> None:
    f = SyntheticObjective()
    x = f.optimum
    assert f.space.contains(x, tol=1e-12)
    w = f.space.weight_array()
    res = minimize(
        f.log_value,
        f.space.uniform_vector(),
        method="SLSQP",
        bounds=list(zip(f.space.lower, f.space.upper, strict=True)),
        constraints=[{"type": "eq", "fun": lambda s: float(w @ s) - f.space.rhs, "jac": lambda s: w}],
        options={"ftol": 1e-14, "maxiter": 1000},
    )
    assert f.log_value(x) <= f.log_value(f.space.project(res.x)) + 1e-10
    np.testing.assert_allclose(x, f.space.project(res.x), atol=1e-5)


def test_optimum_satisfies_kkt() -> None:
    f = SyntheticObjective(dim=12, target=0.4, seed=3)
    x = f.optimum
    s = x
    grad = f.sensitivity * s / (1 - s) + 2 * f.coupling * (f.coupling_vector @ s) * f.coupling_vector
    w = f.space.weight_array()
    free = (s > f.space.lower_array() + 1e-9) & (s < f.space.upper_array() - 1e-9)
    lam = grad[free] / w[free]
    np.testing.assert_allclose(lam, lam.mean(), rtol=1e-8)
    at_lower = s <= f.space.lower_array() + 1e-9
    assert np.all(grad[at_lower] >= lam.mean() * w[at_lower] - 1e-9)


def test_regret() -> None:
    f = SyntheticObjective()
    assert f.regret(f.optimal_value) == 0.0
    assert f.regret(f(f.space.uniform_vector())) > 10
