"""The sampler registry: one list of names, typed options refused with one sentence naming the option."""

from __future__ import annotations

import optuna
import pytest

from allocator import ConstraintSpace, InputError
from allocator.search import trial_attributes as attrs
from allocator.search.samplers import (
    BoOptions,
    ProposalSampler,
    SamplerOptions,
    TargetsInTurn,
    create_frontier_sampler,
    create_sampler,
    parse_options,
    register_frontier,
    register_sampler,
    sampler_entry,
    sampler_names,
    suggest_allocation,
)

SPACE = ConstraintSpace(weights=[1.0, 2.0, 3.0], target=0.4, lower=0.0, upper=0.9)
SPACES = {t: ConstraintSpace(weights=[1.0, 2.0, 3.0], target=t, lower=0.0, upper=0.9) for t in (0.3, 0.5)}


def test_every_registered_name_builds_a_sampler() -> None:
    names = sampler_names()
    assert set(names) == {"uniform", "greedy", "random", "tpe", "cmaes", "was", "evopress", "bo"}
    for name in names:
        assert isinstance(create_sampler(name, space=SPACE, seed=0), optuna.samplers.BaseSampler)


def test_unknown_names_list_the_valid_ones() -> None:
    with pytest.raises(InputError) as info:
        create_sampler("grid", space=SPACE, seed=0)
    assert "Unknown sampler 'grid'" in str(info.value)
    assert "uniform, greedy, random, tpe, cmaes, was, evopress, bo" in str(info.value)


@pytest.mark.parametrize(
    ("name", "options", "fragment"),
    [
        ("bo", {"trust_regions": True}, "Unknown option `trust_regions` for sampler 'bo'; valid options are n_initial"),
        ("bo", {"n_initial": True}, "Option `n_initial` of sampler 'bo': Input should be a valid integer"),
        ("bo", {"n_initial": "10"}, "Option `n_initial` of sampler 'bo': Input should be a valid integer"),
        ("bo", {"noise_variance": float("nan")}, "Input should be a finite number"),
        ("bo", {"optimizer": "adam"}, "Input should be 'nullspace' or 'slsqp'"),
        ("bo", {"profile_knots": 1}, "Option `profile_knots` of sampler 'bo'"),
        ("evopress", {"offspring": 0}, "greater than or equal to 1"),
        ("was", {"band": -0.1}, "greater than or equal to 0"),
        ("uniform", {"anything": 1}, "valid options are none"),
        ("tpe", {"n_startup": 3}, "valid options are n_startup_trials"),
    ],
)
def test_bad_options_are_one_sentence_naming_the_option(name: str, options: dict, fragment: str) -> None:
    with pytest.raises(InputError) as info:
        parse_options(name, options)
    assert fragment in str(info.value)
    assert str(info.value).count(". ") == 0  # one sentence
    with pytest.raises(InputError):
        create_sampler(name, space=SPACE, seed=0, **options)


def test_options_are_typed_models_with_their_defaults() -> None:
    options = parse_options("bo", {"n_initial": 4})
    assert isinstance(options, BoOptions) and options.n_initial == 4 and options.optimizer == "nullspace"
    sampler = create_sampler("bo", space=SPACE, seed=0, n_initial=4)
    assert sampler.options == options


def test_a_sampler_registered_twice_is_refused() -> None:
    with pytest.raises(RuntimeError, match="already registered"):
        register_sampler("bo")(lambda **kwargs: None)


def test_greedy_is_the_uniform_point_that_needs_the_greedy_split() -> None:
    entry = sampler_entry("greedy")
    assert entry.site_split == "greedy" and entry.max_trials == 1
    assert sampler_entry("uniform").site_split is None
    assert issubclass(sampler_entry("uniform").options, SamplerOptions)


def test_seed_and_space_are_checked() -> None:
    with pytest.raises(InputError, match="`seed`"):
        create_sampler("random", space=SPACE, seed=1.5)
    with pytest.raises(InputError, match="`space`"):
        create_sampler("random", space=[1, 2, 3], seed=0)


def test_every_sampler_has_a_frontier_variant_its_capability_declares() -> None:
    """Only ``bo`` learns across targets; every other sampler runs once per target, the targets in turn."""
    assert [name for name in sampler_names() if sampler_entry(name).learns_across_targets] == ["bo"]
    for name in sampler_names():
        sampler = create_frontier_sampler(name, spaces=SPACES, seed=0)
        if sampler_entry(name).learns_across_targets:
            assert isinstance(sampler, ProposalSampler) and not isinstance(sampler, TargetsInTurn)
            assert sampler.options == parse_options(name)
            continue
        assert isinstance(sampler, TargetsInTurn) and sampler.targets == (0.3, 0.5)
        for target in sampler.targets:  # the registry's own single-target sampler, on that target's space
            inner = sampler.sampler_for(target)
            assert type(inner) is type(create_sampler(name, space=SPACES[target], seed=0))
            assert getattr(inner, "space", SPACES[target]) is SPACES[target]


def test_the_name_is_written_once_and_recorded_on_every_proposal() -> None:
    for name in sampler_names():
        entry = sampler_entry(name)
        for factory in (entry.factory, entry.frontier):
            assert not isinstance(factory, type) or factory.name == name
    for make in (
        lambda: create_sampler("evopress", space=SPACE, seed=0),
        lambda: create_frontier_sampler("bo", spaces=SPACES, seed=0, n_initial=2),
    ):
        study = optuna.create_study(sampler=make())
        trial = study.ask()
        trial.relative_params  # noqa: B018 - the proposal is made (and its sampler recorded) when the trial samples
        space = SPACES.get(attrs.trial_target(trial), SPACE)  # type: ignore[arg-type]
        suggest_allocation(trial, space)
        assert study.trials[0].system_attrs[attrs.SAMPLER] in ("evopress", "bo")


def test_frontier_options_are_validated_like_the_samplers() -> None:
    for name in ("bo", "random"):
        with pytest.raises(InputError) as info:
            create_frontier_sampler(name, spaces=SPACES, seed=0, bogus=1)
        assert f"Unknown option `bogus` for sampler '{name}'" in str(info.value)
    with pytest.raises(InputError, match="Unknown sampler 'grid'"):
        create_frontier_sampler("grid", spaces=SPACES, seed=0)


def test_a_frontier_variant_is_registered_once_for_a_registered_sampler() -> None:
    with pytest.raises(RuntimeError, match="already has its own frontier variant"):
        register_frontier("bo")(lambda **kwargs: None)
    with pytest.raises(RuntimeError, match="is not registered"):
        register_frontier("grid")(lambda **kwargs: None)
