"""Constrained BO: design, model, pending points, profile knots, trust region, and the headline comparison."""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import optuna
import pytest
import torch

from allocator import ConstraintSpace
from allocator.search import trial_attributes as attrs
from allocator.search.samplers import (
    BoSampler,
    collect_history,
    create_sampler,
    knot_space,
    profile_matrix,
    suggest_allocation,
)
from allocator.testing import SyntheticObjective, run_sampler

SPACE = ConstraintSpace(weights=[1.0, 2.0, 1.0, 1.5, 1.0, 3.0], target=0.4, lower=0.0, upper=0.9)
A = np.array([3.0, 1.0, 0.6, 0.5, 0.8, 2.0])


def _objective(trial: optuna.Trial) -> float:
    s = suggest_allocation(trial, SPACE)
    return float(10.0 * np.exp(A @ (-np.log1p(-s) - s)))


def test_initial_design_starts_at_uniform_and_spreads() -> None:
    sampler = create_sampler("bo", space=SPACE, seed=0, n_initial=5)
    study = optuna.create_study(sampler=sampler)
    study.optimize(_objective, n_trials=5)
    vecs = np.array([t.user_attrs["vector"] for t in study.trials])
    np.testing.assert_array_equal(vecs[0], np.full(6, 0.4))
    np.testing.assert_allclose(vecs, sampler.design()[:5])
    d = np.sqrt(((SPACE.normalize(vecs)[:, None] - SPACE.normalize(vecs)[None]) ** 2).sum(-1))
    assert d[np.triu_indices(5, 1)].min() > 0.2


@pytest.mark.parametrize("radius", [0.05, 0.15])
def test_a_local_design_stays_within_its_radius_of_the_uniform_vector_and_spreads_there(radius: float) -> None:
    sampler = create_sampler("bo", space=SPACE, seed=0, n_initial=6, initial_design="local", design_radius=radius)
    study = optuna.create_study(sampler=sampler)
    study.optimize(_objective, n_trials=6)
    vecs = np.array([t.user_attrs["vector"] for t in study.trials])
    np.testing.assert_array_equal(vecs[0], np.full(6, 0.4))
    assert np.abs(vecs - 0.4).max() <= radius + 1e-12 and np.abs(vecs[1:] - 0.4).max() > radius / 2
    np.testing.assert_allclose(vecs @ SPACE.weight_array(), SPACE.rhs, rtol=1e-12)
    assert len({tuple(np.round(v, 9)) for v in vecs}) == 6
    maximin = create_sampler("bo", space=SPACE, seed=0, n_initial=6)  # "auto" without a split search: maximin
    assert maximin.initial_design == "maximin" and np.abs(maximin.design()[1:6] - 0.4).max() > 0.3


def test_model_phase_proposals_are_exactly_feasible_and_improve() -> None:
    sampler = create_sampler("bo", space=SPACE, seed=0, n_initial=5)
    study = optuna.create_study(sampler=sampler)
    study.optimize(_objective, n_trials=12)
    for t in study.trials:
        assert t.user_attrs["projection_distance"] == 0.0
        vec = np.asarray(t.user_attrs["vector"])
        assert abs(vec @ SPACE.weight_array() - SPACE.rhs) <= 1e-12 * SPACE.rhs
        assert np.all(vec >= 0.0) and np.all(vec <= 0.9)
    values = [t.value for t in study.trials]
    assert min(values[5:]) < min(values[:5])
    # The fitted hyperparameters are stored for the next fit's warm start.
    hp = study.trials[-1].system_attrs[attrs.BO_GP]
    assert hp["phase"] == "full" and len(hp["raw_lengthscale"]) == 6


def test_a_failed_model_step_falls_back_to_the_design_and_is_recorded(monkeypatch) -> None:
    from gpytorch.utils.errors import NotPSDError

    def singular(*args, **kwargs):
        raise NotPSDError("Matrix not positive definite after repeatedly adding jitter")

    monkeypatch.setattr(BoSampler, "fit", singular)
    sampler = create_sampler("bo", space=SPACE, seed=0, n_initial=3)
    study = optuna.create_study(sampler=sampler)
    study.optimize(_objective, n_trials=6)
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    assert [attrs.BO_FALLBACK in t.system_attrs for t in study.trials] == [False] * 3 + [True] * 3
    assert study.trials[-1].system_attrs[attrs.BO_FALLBACK].startswith("NotPSDError: Matrix not positive definite")
    vecs = np.array([t.user_attrs["vector"] for t in study.trials])
    np.testing.assert_allclose(vecs @ SPACE.weight_array(), SPACE.rhs, rtol=1e-12)
    np.testing.assert_allclose(vecs, sampler.design()[:6])  # the next space-filling points, no duplicate


def test_other_errors_of_the_model_step_are_not_swallowed(monkeypatch) -> None:
    def broken(*args, **kwargs):
        raise ValueError("a bug, not a numerical failure")

    monkeypatch.setattr(BoSampler, "fit", broken)
    study = optuna.create_study(sampler=create_sampler("bo", space=SPACE, seed=0, n_initial=2))
    study.optimize(_objective, n_trials=2)
    with pytest.raises(ValueError, match="a bug"):
        study.optimize(_objective, n_trials=1)


def test_model_defaults_are_botorch_dimension_scaled_priors_with_fixed_noise() -> None:
    from gpytorch.kernels import RBFKernel
    from gpytorch.likelihoods import FixedNoiseGaussianLikelihood
    from gpytorch.priors import LogNormalPrior

    sampler = create_sampler("bo", space=SPACE, seed=0, n_initial=4)
    study = optuna.create_study(sampler=sampler)
    study.optimize(_objective, n_trials=4)
    hist = collect_history(study, study.ask()._cached_frozen_trial, SPACE)
    model = sampler.fit(hist)
    assert isinstance(model.covar_module, RBFKernel)
    prior = model.covar_module.lengthscale_prior
    assert isinstance(prior, LogNormalPrior)
    assert float(prior.loc) == pytest.approx(2**0.5 + 0.5 * np.log(6))
    assert float(prior.scale) == pytest.approx(3**0.5)
    assert isinstance(model.likelihood, FixedNoiseGaussianLikelihood)
    # The model sees −log(value), standardised.
    np.testing.assert_allclose(
        model.outcome_transform.untransform(model.train_targets.unsqueeze(-1))[0].squeeze(-1).numpy(),
        -np.log(hist.y),
        rtol=1e-10,
    )


def test_running_trials_are_pending_points_of_the_acquisition() -> None:
    sampler = create_sampler("bo", space=SPACE, seed=0, n_initial=4)
    study = optuna.create_study(sampler=sampler)
    study.optimize(_objective, n_trials=6)
    running = study.ask()
    pending = suggest_allocation(running, SPACE)
    current = study.ask()
    hist = collect_history(study, current._cached_frozen_trial, SPACE)
    acqf = sampler.acquisition(sampler.fit(hist), hist)
    # qLogNEI's incremental mode joins the pending points to the incumbents (sequential greedy).
    np.testing.assert_allclose(acqf._full_X_baseline[-1:].numpy(), pending[None, :])
    proposal = suggest_allocation(current, SPACE)
    assert np.max(np.abs(proposal - pending)) > 1e-3


def test_profile_matrix_and_knot_space() -> None:
    M = profile_matrix(30, 4)
    assert M.shape == (30, 4) and np.all(M >= 0)
    np.testing.assert_allclose(M.sum(1), 1.0)
    np.testing.assert_allclose(M[[0, 29]], [[1, 0, 0, 0], [0, 0, 0, 1]])
    space = ConstraintSpace(weights=np.linspace(1, 2, 30), target=0.5, lower=0.1, upper=0.9)
    ks = knot_space(space, M)
    assert ks is not None
    # wᵀ(M k) = (Mᵀw)ᵀ k: a feasible knot vector gives a feasible block vector.
    for k in ks.sample(5, seed=0):
        assert space.contains(M @ k, tol=1e-12)
    with pytest.raises(ValueError, match="`profile_knots`"):
        profile_matrix(30, 1)


def test_default_profile_is_four_knots_only_for_deep_models() -> None:
    deep = ConstraintSpace(weights=np.ones(30), target=0.5, lower=0.0, upper=0.9)
    assert create_sampler("bo", space=deep, seed=0).profile_knots == 4
    assert create_sampler("bo", space=SPACE, seed=0).profile_knots is None  # 6 blocks: the full vector
    assert create_sampler("bo", space=deep, seed=0, profile_knots=None).profile_knots is None
    with pytest.raises(ValueError, match="`profile_knots`"):
        create_sampler("bo", space=deep, seed=0, profile_knots="many")


def test_profile_phase_searches_knots_then_the_full_vector() -> None:
    space = ConstraintSpace(weights=np.ones(12), target=0.4, lower=0.0, upper=0.9)
    sampler = create_sampler("bo", space=space, seed=0, n_initial=4, profile_knots=3, profile_trials=7)
    study = optuna.create_study(sampler=sampler)
    study.optimize(lambda t: float(np.exp(suggest_allocation(t, space) @ np.linspace(2, 0.2, 12))), n_trials=9)
    M = profile_matrix(12, 3)
    for t in study.trials[:7]:  # design and profile phase: piecewise linear in depth
        x = np.asarray(t.user_attrs["vector"])
        k = np.linalg.lstsq(M, x, rcond=None)[0]
        np.testing.assert_allclose(M @ k, x, atol=1e-9)
    assert study.trials[5].system_attrs[attrs.BO_GP]["phase"] == "knots3"
    assert study.trials[8].system_attrs[attrs.BO_GP]["phase"] == "full"


def test_trust_region_length_replays_successes_and_failures() -> None:
    sampler = BoSampler(space=SPACE, seed=0, n_initial=2, trust_region=True)
    hist = collect_history(optuna.create_study(), optuna.create_study().ask()._cached_frozen_trial, SPACE)

    def with_values(values: list[float]):
        n = len(values)
        return type(hist)(
            X=np.tile(SPACE.uniform_vector(), (n, 1)),
            y=np.array(values),
            numbers=np.arange(n),
            pending=hist.pending,
            trials=(),
            pending_trials=(),
        )

    assert sampler.trust_region_length(with_values([5.0, 4.0])) == pytest.approx(0.8)
    assert sampler.trust_region_length(with_values([5.0, 4.0, 3.0, 2.0, 1.0])) == pytest.approx(1.6)
    six_failures = [5.0, 4.0] + [6.0] * 6
    assert sampler.trust_region_length(with_values(six_failures)) == pytest.approx(0.4)


def test_trust_region_proposals_stay_near_the_best() -> None:
    sampler = create_sampler("bo", space=SPACE, seed=0, n_initial=5, trust_region=True)
    study = optuna.create_study(sampler=sampler)
    study.optimize(_objective, n_trials=9)
    for k in range(5, 9):
        before = study.trials[:k]
        best = np.asarray(min(before, key=lambda t: t.value).user_attrs["vector"])
        x = np.asarray(study.trials[k].user_attrs["vector"])
        assert np.max(np.abs(SPACE.normalize(x) - SPACE.normalize(best))) <= 0.8 * 5 + 1e-9


def test_options_are_validated() -> None:
    with pytest.raises(ValueError, match="`n_initial`"):
        create_sampler("bo", space=SPACE, seed=0, n_initial=0)
    with pytest.raises(ValueError, match="`optimizer`"):
        create_sampler("bo", space=SPACE, seed=0, optimizer="adam")
    with pytest.raises(ValueError, match="`noise_variance`"):
        create_sampler("bo", space=SPACE, seed=0, noise_variance=-1.0)


def test_sampler_leaves_torch_state_alone() -> None:
    threads = torch.get_num_threads()
    torch.manual_seed(1234)
    expected = torch.rand(3)
    torch.manual_seed(1234)
    study = optuna.create_study(sampler=create_sampler("bo", space=SPACE, seed=0, n_initial=3))
    study.optimize(_objective, n_trials=5)
    np.testing.assert_array_equal(torch.rand(3).numpy(), expected.numpy())
    assert torch.get_num_threads() == threads


# ---------------------------------------------------------------------------- the headline comparison

#: ``bo`` must beat each baseline's median final regret by at least this factor (5 seeds, 50 evaluations).
MARGIN = 2.0


def _final_regret(job: tuple[str, int]) -> float:
    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    name, seed = job
    objective = SyntheticObjective()
    values = run_sampler(name, objective=objective, seed=seed, n_trials=50)
    return float(values.min() - objective.optimal_value)


@pytest.mark.slow
def test_bo_beats_the_baselines_on_the_synthetic_objective() -> None:
    """On the 30-block synthetic objective, ``bo``'s median regret after 50 evaluations (5 seeds) is at
    least ``MARGIN`` times smaller than that of ``random``, ``tpe``, ``was`` and ``evopress``."""
    names = ["bo", "random", "tpe", "was", "evopress"]
    jobs = [(name, seed) for name in names for seed in range(5)]
    with ProcessPoolExecutor(max_workers=min(2, os.cpu_count() or 1)) as pool:
        regrets = dict(zip(jobs, pool.map(_final_regret, jobs), strict=True))
    median = {name: float(np.median([regrets[(name, s)] for s in range(5)])) for name in names}
    for baseline in names[1:]:
        assert median["bo"] * MARGIN <= median[baseline], median
