"""The sampler registry: one list of names, typed options refused with one sentence naming the option."""

from __future__ import annotations

import optuna
import pytest

from allocator import ConstraintSpace, InputError
from allocator.samplers import (
    BoOptions,
    SamplerOptions,
    create_sampler,
    parse_options,
    register_sampler,
    sampler_entry,
    sampler_names,
)

SPACE = ConstraintSpace(weights=[1.0, 2.0, 3.0], target=0.4, lower=0.0, upper=0.9)


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
