"""The null-space acquisition optimiser against BoTorch's SLSQP path, on one fitted model."""

from __future__ import annotations

import importlib

import numpy as np
import optuna
import pytest
import torch

from allocator import ConstraintSpace
from allocator.search.samplers import (
    NullSpaceMap,
    collect_history,
    create_sampler,
    optimize_nullspace,
    optimize_slsqp,
    select_starts,
    suggest_allocation,
)

SPACE = ConstraintSpace(weights=[1.0, 2.0, 1.0, 1.5, 1.0, 3.0, 1.0, 2.0], target=0.4, lower=0.0, upper=0.9)


def test_null_space_map_is_exact_on_the_polytope() -> None:
    space = ConstraintSpace(
        weights=[1.0, 2.0, 3.0, 1.0], target=0.4, lower=[0.0, 0.2, 0.0, 0.1], upper=[0.9, 0.2, 0.8, 0.7]
    )
    nmap = NullSpaceMap.build(space)
    assert nmap.N.shape == (4, 2)  # one pinned block, one equality: 4 − 1 − 1 free directions
    np.testing.assert_allclose((nmap.N.T @ nmap.N).numpy(), np.eye(2), atol=1e-12)
    a = space.weight_array() * (space.upper_array() - space.lower_array())
    np.testing.assert_allclose(a @ nmap.N.numpy(), 0.0, atol=1e-12)
    X = torch.tensor(space.sample(6, seed=0))
    np.testing.assert_allclose(nmap.to_x(nmap.to_y(X)).numpy(), X.numpy(), atol=1e-12)
    far = nmap.to_x(torch.full((5, 2), 10.0, dtype=torch.float64))  # any y lands on the polytope
    assert all(space.contains(x, tol=1e-12) for x in far.numpy())


@pytest.fixture(scope="module")
def fitted() -> tuple:
    sampler = create_sampler("bo", space=SPACE, seed=0, n_initial=6)
    study = optuna.create_study(sampler=sampler)
    a = np.array([2.5, 1.0, 0.6, 0.5, 0.8, 0.3, 0.4, 2.0])
    study.optimize(lambda t: float(10 * np.exp(a @ (-np.log1p(-suggest_allocation(t, SPACE))))), n_trials=9)
    hist = collect_history(study, study.ask()._cached_frozen_trial, SPACE)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = sampler.fit(hist)
        acqf = sampler.acquisition(model, hist, seed=0)
        starts, _ = select_starts(acqf, SPACE.polytope_pool(seed=0, size=256), 6)
    return acqf, starts


def test_null_space_reaches_slsqp_value_with_feasible_candidates(fitted: tuple) -> None:
    acqf, starts = fitted
    ours = optimize_nullspace(acqf, SPACE, starts)
    ref = optimize_slsqp(acqf, SPACE, starts)
    assert all(SPACE.contains(x, tol=1e-12) for x in ours.X)
    assert ours.values[0] >= ref.values[0] - 1e-6
    assert ours.values[0] >= float(acqf(starts).max().detach())  # it improved on its starts


def test_a_failed_slsqp_polish_keeps_the_null_space_candidates(fitted: tuple, monkeypatch) -> None:
    """BoTorch's SLSQP path can raise (its projection hits an iteration limit); the proposal must not."""
    from botorch.exceptions.errors import CandidateGenerationError

    acqf_module = importlib.import_module(optimize_nullspace.__module__)

    acqf, starts = fitted
    unpolished = optimize_nullspace(acqf, SPACE, starts, polish=0)

    def failing_slsqp(*args, **kwargs):
        raise CandidateGenerationError("Optimization failed: Iteration limit reached")

    monkeypatch.setattr(acqf_module, "optimize_slsqp", failing_slsqp)
    result = optimize_nullspace(acqf, SPACE, starts)
    np.testing.assert_allclose(result.X, unpolished.X)
    assert all(SPACE.contains(x, tol=1e-12) for x in result.X)
