"""The WAS reproduction: monotone chained parametrisation, soft band penalty, internal TPE study."""

from __future__ import annotations

import numpy as np
import optuna
import pytest

from allocator import ConstraintSpace
from allocator.search import trial_attributes as attrs
from allocator.search.samplers import WasSampler, create_sampler, suggest_allocation

SPACE = ConstraintSpace(weights=np.ones(12), target=0.5)


def _study(seed: int = 0, n: int = 15, **options) -> tuple[optuna.Study, WasSampler]:
    sampler = create_sampler("was", space=SPACE, seed=seed, **options)
    study = optuna.create_study(sampler=sampler)
    study.optimize(lambda t: float(np.exp(suggest_allocation(t, SPACE) @ np.linspace(2, 0.5, 12))), n_trials=n)
    return study, sampler


def test_chained_bounds_follow_was() -> None:
    sampler = create_sampler("was", space=SPACE, seed=0)  # ±4 points, WAS's published range
    assert sampler.bounds(0, None) == pytest.approx((0.46, 0.5))
    assert sampler.bounds(1, 0.49) == pytest.approx((0.49, 0.495))
    assert sampler.bounds(5, 0.538) == pytest.approx((0.538, 0.54))  # capped at t + 0.04
    assert sampler.bounds(6, 0.54) == pytest.approx((0.54, 0.54))  # pinned once the cap is reached
    code = create_sampler("was", space=SPACE, seed=0, start_width=0.02, cap=0.02)  # WAS's code
    assert code.bounds(0, None) == pytest.approx((0.48, 0.5))
    assert code.bounds(5, 0.518) == pytest.approx((0.518, 0.52))
    # The chain ignores per-block bounds; the band test and the projection apply them.
    tight = create_sampler("was", space=ConstraintSpace(weights=[1, 1], target=0.3, upper=[0.9, 0.2]), seed=0)
    assert tight.bounds(1, 0.29) == pytest.approx((0.29, 0.295))
    assert tight.miss(np.array([0.3, 0.3])) == pytest.approx(0.05)


def test_raw_parameters_are_monotone_in_band_and_stored() -> None:
    study, sampler = _study()
    for t in study.trials:
        raw = np.asarray(t.system_attrs[attrs.WAS_PARAMS])
        assert np.all(np.diff(raw) >= -1e-12) and np.all(np.diff(raw) <= 0.005 + 1e-12)
        assert raw[0] >= 0.46 - 1e-12 and raw.max() <= 0.54 + 1e-12
        assert sampler.miss(raw) <= 0.01
        np.testing.assert_allclose(t.user_attrs["vector"], SPACE.project(raw))
        for rejected in t.system_attrs[attrs.WAS_REJECTED]:
            assert sampler.score(np.asarray(rejected)) is not None


def test_penalty_is_was_band_rule() -> None:
    sampler = create_sampler("was", space=SPACE, seed=0)
    assert sampler.score(np.full(12, 0.505)) is None
    assert sampler.score(np.full(12, 0.52)) == pytest.approx(3 * 2500 * 0.02)


def test_internal_study_is_rebuilt_from_storage() -> None:
    study, sampler = _study(n=12)
    trial = study.ask()
    inner, running = sampler._rebuild(study, trial._cached_frozen_trial)
    n_rejected = sum(len(t.system_attrs[attrs.WAS_REJECTED]) for t in study.trials[:12])
    assert len(inner.trials) == 12 + n_rejected
    assert not running
    inner_values = [t.value for t in inner.trials]
    for t in study.trials[:12]:  # each evaluated trial is told to TPE against its raw parameters
        assert t.value in inner_values
        match = next(i for i in inner.trials if i.value == t.value)
        np.testing.assert_allclose(list(match.params.values()), t.system_attrs[attrs.WAS_PARAMS])
