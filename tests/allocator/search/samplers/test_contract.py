"""Every sampler, and every sampler's frontier variant, passes the contract of ``allocator.testing.sampler_contract``,
by capability.

Names and capabilities come from the registry, so a newly registered sampler is covered without a line here:
every sampler proposes feasible, reproducible points; samplers with many points (no ``max_trials``) honour
pending points; our block samplers keep no state; single-point samplers refuse a second proposal. Each sampler
runs exactly the classes its capabilities call for, once on one target and once as a frontier study's sampler.
"""

from __future__ import annotations

import pytest

from allocator.search.samplers import BlockSampler, sampler_entry, sampler_names
from allocator.testing import sampler_contract as contract

# BO starts its model after 4 trials here (default 10) so the contract exercises the GP path. EvoPress's
# reference form proposes a whole generation per trial, evaluated by the study runner (its own tests); the
# contract runs it in its one-offspring-per-trial form.
OPTIONS = {"bo": {"n_initial": 4}, "evopress": {"stages": None}}
# A frontier bo fits one GP across targets at every proposal: a lighter acquisition search keeps its checks short.
FRONTIER_OPTIONS = {**OPTIONS, "bo": {"n_initial": 4, "num_restarts": 2, "raw_samples": 64, "mc_samples": 32}}


def _make(name: str) -> contract.SamplerFactory:
    return contract.factory(name, **OPTIONS.get(name, {}))


def _make_frontier(name: str) -> contract.SamplerFactory:
    return contract.frontier_factory(name, **FRONTIER_OPTIONS.get(name, {}))


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


# ---------------------------------------------------------------------------- frontier variants


@pytest.mark.parametrize("name", sampler_names())
class TestEveryFrontierSampler:
    @pytest.mark.parametrize("backend", ["memory", "sqlite"])
    def test_every_trial_meets_its_own_target(self, name: str, backend: str, tmp_path) -> None:
        storage = None if backend == "memory" else f"sqlite:///{tmp_path / 'study.db'}"
        contract.check_frontier_feasible(_make_frontier(name), storage=storage)

    def test_same_seed_same_targets_and_proposals(self, name: str) -> None:
        contract.check_frontier_reproducible(_make_frontier(name))


@pytest.mark.parametrize("name", _names(_many_points))
class TestFrontierSamplersWithManyPoints:
    @pytest.mark.parametrize("backend", ["memory", "sqlite"])
    def test_pending_trials_are_not_duplicated_at_their_target(self, name: str, backend: str, tmp_path) -> None:
        storage = None if backend == "memory" else f"sqlite:///{tmp_path / 'study.db'}"
        contract.check_frontier_pending_not_duplicated(_make_frontier(name), storage=storage)


@pytest.mark.parametrize("name", _names(_stateless))
class TestStatelessFrontierSamplers:
    def test_resumed_study_continues_identically(self, name: str, tmp_path) -> None:
        contract.check_frontier_resumable(_make_frontier(name), storage=f"sqlite:///{tmp_path / 'study.db'}")


@pytest.mark.parametrize("name", _names(_single_point))
class TestSinglePointFrontierSamplers:
    def test_each_target_gets_its_point_then_a_proposal_is_refused(self, name: str) -> None:
        contract.check_frontier_single_point(_make_frontier(name))
