"""Every sampler passes the contract of ``allocator.testing.sampler_contract``, by capability.

Capabilities come from the registry: every sampler proposes feasible, reproducible points; samplers with
many points (no ``max_trials``) honour pending points; our block samplers keep no state; single-point
samplers refuse a second proposal. Each sampler runs exactly the classes its capabilities call for.
"""

from __future__ import annotations

import pytest

from allocator.samplers import BlockSampler, sampler_entry, sampler_names
from allocator.testing import sampler_contract as contract

# BO starts its model after 4 trials here (default 10) so the contract exercises the GP path. EvoPress's
# reference form proposes a whole generation per trial, evaluated by the study runner (its own tests); the
# contract runs it in its one-offspring-per-trial form.
OPTIONS = {"bo": {"n_initial": 4}, "evopress": {"stages": None}}


def _make(name: str) -> contract.SamplerFactory:
    return contract.factory(name, **OPTIONS.get(name, {}))


def _names(capability) -> list[str]:
    return [name for name in sampler_names() if capability(name)]


def _many_points(name: str) -> bool:
    return sampler_entry(name).max_trials is None


def _stateless(name: str) -> bool:
    factory = sampler_entry(name).factory
    return isinstance(factory, type) and issubclass(factory, BlockSampler)


def _single_point(name: str) -> bool:
    return sampler_entry(name).max_trials == 1


def test_every_sampler_has_a_capability_checked_beyond_the_basics():
    for name in sampler_names():
        assert _many_points(name) or _single_point(name), name


@pytest.mark.parametrize("name", sampler_names())
class TestEverySampler:
    @pytest.mark.parametrize("backend", ["memory", "sqlite"])
    def test_proposals_satisfy_the_constraint(self, name: str, backend: str, tmp_path) -> None:
        storage = None if backend == "memory" else f"sqlite:///{tmp_path / 'study.db'}"
        contract.check_feasible(_make(name), storage=storage)

    def test_same_seed_same_proposals(self, name: str) -> None:
        contract.check_reproducible(_make(name))


@pytest.mark.parametrize("name", _names(_many_points))
class TestSamplersWithManyPoints:
    @pytest.mark.parametrize("backend", ["memory", "sqlite"])
    def test_pending_trial_is_not_duplicated(self, name: str, backend: str, tmp_path) -> None:
        storage = None if backend == "memory" else f"sqlite:///{tmp_path / 'study.db'}"
        contract.check_pending_not_duplicated(_make(name), storage=storage)


@pytest.mark.parametrize("name", _names(_stateless))
class TestStatelessSamplers:
    def test_resumed_study_continues_identically(self, name: str, tmp_path) -> None:
        contract.check_resumable(_make(name), storage=f"sqlite:///{tmp_path / 'study.db'}")


@pytest.mark.parametrize("name", _names(_single_point))
class TestSinglePointSamplers:
    def test_a_second_proposal_is_refused(self, name: str) -> None:
        contract.check_single_point(_make(name))
