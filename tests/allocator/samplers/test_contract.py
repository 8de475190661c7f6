"""Every sampler passes the one contract of ``allocator.testing.sampler_contract``."""

from __future__ import annotations

import pytest

from allocator.testing import sampler_contract as contract

# BO starts its model after 4 trials here (default 10) so the contract exercises the GP path.
SAMPLERS = {
    "uniform": {},
    "random": {},
    "tpe": {},
    "cmaes": {},
    "was": {},
    "evopress": {},
    "bo": {"n_initial": 4},
}


@pytest.fixture(params=sorted(SAMPLERS))
def make(request: pytest.FixtureRequest) -> contract.SamplerFactory:
    return contract.factory(request.param, **SAMPLERS[request.param])


@pytest.mark.parametrize("backend", ["memory", "sqlite"])
def test_proposals_satisfy_the_constraint(make: contract.SamplerFactory, backend: str, tmp_path) -> None:
    storage = None if backend == "memory" else f"sqlite:///{tmp_path / 'study.db'}"
    contract.check_feasible(make, storage=storage)


def test_same_seed_same_proposals(make: contract.SamplerFactory) -> None:
    contract.check_reproducible(make)


@pytest.mark.parametrize("backend", ["memory", "sqlite"])
def test_pending_trial_is_not_duplicated(make: contract.SamplerFactory, backend: str, tmp_path) -> None:
    storage = None if backend == "memory" else f"sqlite:///{tmp_path / 'study.db'}"
    contract.check_pending_not_duplicated(make, storage=storage)


def test_resumed_study_continues_identically(make: contract.SamplerFactory, tmp_path) -> None:
    contract.check_resumable(make, storage=f"sqlite:///{tmp_path / 'study.db'}")


def test_single_point_sampler_refuses_a_second_proposal(make: contract.SamplerFactory) -> None:
    contract.check_single_point(make)
