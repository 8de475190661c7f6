"""The random baseline: hit-and-run points indexed by trial number."""

from __future__ import annotations

import numpy as np
import optuna

from allocator import ConstraintSpace
from allocator.search.samplers import create_sampler, suggest_allocation

SPACE = ConstraintSpace(weights=[1.0, 2.0, 1.0, 3.0], target=0.4, lower=0.0, upper=0.9)


def _run(seed: int, n: int) -> np.ndarray:
    study = optuna.create_study(sampler=create_sampler("random", space=SPACE, seed=seed))
    study.optimize(lambda t: 1.0 + float(suggest_allocation(t, SPACE)[0]), n_trials=n)
    return np.array([t.user_attrs["vector"] for t in study.trials])


def test_points_are_feasible_distinct_and_seeded() -> None:
    a = _run(0, 20)
    assert all(SPACE.contains(x, tol=1e-9) for x in a)
    assert len({tuple(np.round(x, 12)) for x in a}) == 20
    np.testing.assert_array_equal(a, _run(0, 20))
    assert not np.allclose(a, _run(1, 20))


def test_points_cover_the_polytope() -> None:
    """Hit-and-run is uniform on the polytope: block means sit near the polytope's centroid, and each
    block ranges widely."""
    pts = _run(3, 60)
    assert np.all(pts.max(0) - pts.min(0) > 0.3)
    assert abs(float(SPACE.model_sparsity(pts.mean(0))) - 0.4) < 1e-9
