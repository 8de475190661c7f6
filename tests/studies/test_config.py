from __future__ import annotations

import pytest
import yaml

from allocator import InputError
from studies import load_config, parse_config
from tests.studies.conftest import tiny_config


def test_minimal_config_gets_every_default(tmp_path):
    config = parse_config({"name": "s", "sparsity": {"target": 0.4}})
    assert config.model.source == "smollm2-135m" and config.model.device == "auto"
    assert config.sampler.name == "bo" and config.trials == 30
    assert config.data.source == "pydoc" and config.sparsity.split == "uniform"
    assert config.search.objective == "kl" and config.search.rule == "quantile"
    assert config.canonical()["sparsity"]["upper"] == 0.9


def test_storage_is_returned_apart_and_not_part_of_the_identity(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"name": "s", "sparsity": {"target": 0.4}, "storage": "sqlite:///x.db"}))
    config, storage = load_config(path)
    assert storage == "sqlite:///x.db" and "storage" not in config.canonical()
    assert config.digest() == parse_config({"name": "s", "sparsity": {"target": 0.4}}).digest()


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda c: c.update(colour="blue"), "unknown key `colour`"),
        (lambda c: c["sampler"].update(opts={}), "unknown key `sampler.opts`"),
        (lambda c: c.update(trials="many"), "`trials`: Input should be a valid integer"),
        (lambda c: c["sparsity"].update(target=1.2), "`sparsity.target`: Input should be less than 1"),
        (lambda c: c["sparsity"].update(target=0), "`sparsity.target`: Input should be greater than 0"),
        (lambda c: c["sparsity"].update(upper=[0.5, 1.5]), "`sparsity.upper.1`: Input should be less than 1"),
        (lambda c: c["sampler"].update(name="sobol"), "`sampler.name`: unknown sampler 'sobol'; valid names are"),
        (lambda c: c.pop("sparsity"), "missing required key `sparsity`"),
        (lambda c: c["sampler"].update(name="greedy"), "sampler `greedy` needs `sparsity.split: greedy`"),
        (lambda c: c.update(trials=True), "`trials`: Input should be a valid integer"),
        (lambda c: c.update(trials=4.0), "`trials`: Input should be a valid integer"),
        (lambda c: c["sparsity"].update(target=float("nan")), "`sparsity.target`: Input should be a finite number"),
        (lambda c: c["data"].update(seed=2**70), "`data.seed`: Input should be less than or equal to 4294967295"),
        (lambda c: c.update(seed=-1), "`seed`: Input should be greater than or equal to 0"),
        (
            lambda c: c["sampler"].update(name="bo", options={"n_inital": 5}),
            "`sampler`: Unknown option `n_inital` for sampler 'bo'; valid options are n_initial",
        ),
        (
            lambda c: c["sampler"].update(name="bo", options={"n_initial": "5"}),
            "Option `n_initial` of sampler 'bo': Input should be a valid integer",
        ),
        (lambda c: c.update(name="bad name!"), "`name`: String should match pattern"),
    ],
)
def test_every_error_names_its_key(tmp_path, mutate, message):
    config = tiny_config(tmp_path)
    mutate(config)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(InputError) as caught:
        load_config(path)
    text = str(caught.value)
    assert message in text and text.startswith(str(path)) and "\n" not in text


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    path = tmp_path / "broken.yaml"
    path.write_text("name: [unclosed\n")
    with pytest.raises(InputError, match="is not valid YAML at line"):
        load_config(path)
    path.write_text("- a list\n")
    with pytest.raises(InputError, match="should be a mapping"):
        load_config(path)


def test_yaml_is_parsed_safely(tmp_path):
    path = tmp_path / "evil.yaml"
    path.write_text("name: !!python/object/apply:os.system ['echo pwned']\nsparsity: {target: 0.5}\n")
    with pytest.raises(InputError, match="is not valid YAML"):
        load_config(path)


def test_a_key_given_twice_is_refused(tmp_path):
    path = tmp_path / "twice.yaml"
    path.write_text("name: s\nsparsity: {target: 0.5}\ntrials: 4\ntrials: 40\n")
    with pytest.raises(InputError, match=r"has a duplicate key 'trials' at line 4"):
        load_config(path)
    path.write_text("name: s\nsparsity: {target: 0.5, target: 0.6}\n")
    with pytest.raises(InputError, match=r"duplicate key 'target' at line 2"):
        load_config(path)


def test_stored_configs_are_read_back_without_the_sampler_registry():
    stored = parse_config({"name": "s", "sparsity": {"target": 0.4}}).canonical()
    assert parse_config(stored, stored=True).canonical() == stored


@pytest.mark.parametrize(
    ("target", "targets"),
    [
        (0.5, (0.5,)),
        ([0.5], (0.5,)),
        ([0.4, 0.5, 0.7], (0.4, 0.5, 0.7)),
        ({"from": 0.3, "to": 0.7, "step": 0.1}, (0.3, 0.4, 0.5, 0.6, 0.7)),
        ({"from": 0.45, "to": 0.55, "step": 0.05}, (0.45, 0.5, 0.55)),
    ],
)
def test_targets_parse_to_a_sorted_tuple(target, targets):
    config = parse_config({"name": "s", "sparsity": {"target": target}})
    assert config.sparsity.targets == targets
    assert config.sparsity.is_frontier == (len(targets) > 1)
    # The stored form reads back to the same study (a range is stored as the list it names).
    assert parse_config(config.canonical(), stored=True).digest() == config.digest()


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ([0.5, 0.4], "`sparsity.target`: targets must be listed in increasing order; 0.4 follows 0.5."),
        ([0.4, 0.4], "`sparsity.target`: the target 0.4 is given twice."),
        ([], "`sparsity.target`: the list of targets is empty; give at least one."),
        ([0.4, 1.0], "`sparsity.target.1`: Input should be less than 1."),
        ([0.4, True], "`sparsity.target.1`: Input should be a valid number"),
        ([0.1 * i for i in range(1, 10)] * 4, "at most 32 are allowed"),
        ({"from": 0.3, "to": 0.7}, "a target range needs `from`, `to` and `step`; `step` is missing."),
        ({"from": 0.3, "to": 0.7, "step": 0.15}, "`step` 0.15 does not divide the range from 0.3 to 0.7"),
        ({"from": 0.7, "to": 0.3, "step": 0.1}, "a target range needs `step` > 0 and `from` <= `to`"),
        ({"from": 0.3, "to": 0.7, "step": 0.1, "by": 1}, "unknown key `by` in a target range"),
        ({"from": 0.3, "to": 0.95, "step": 0.05}, "bounds [0.0, 0.9] cannot reach the target 0.95"),
    ],
)
def test_bad_targets_are_one_sentence_naming_the_key(target, message):
    with pytest.raises(InputError) as error:
        parse_config({"name": "s", "sparsity": {"target": target}})
    assert message in str(error.value) and "\n" not in str(error.value)


def test_every_target_must_be_reachable_under_per_block_bounds(trained_tiny_dir):
    """Per-block bounds are checked against the model's block count by `study create`, target by target."""
    from allocator.errors import InfeasibleConstraintError
    from studies import check_study

    config = parse_config(
        tiny_config(trained_tiny_dir, sparsity={"target": [0.2, 0.5], "lower": [0.6, 0.6, 0.0], "upper": 0.9})
    )
    reachable = r"sparsity 0.2 is not reachable .* the reachable range is \[0.4, "
    with pytest.raises(InfeasibleConstraintError, match=reachable):
        check_study(config)  # equal block weights: the lowest reachable sparsity is the lower bounds' mean, 0.4


def test_build_config_is_the_study_file_as_keyword_arguments():
    """Sections given as mappings (or a bare model and sampler name) build what the same YAML document parses to;
    what is left out, or None, takes the schema's default."""
    from studies import build_config

    document = {
        "name": "s",
        "model": "tiny-dir",
        "data": {"seq_len": 32, "search_sequences": 12},
        "sparsity": {"target": [0.3, 0.6], "split": "greedy"},
        "sampler": {"name": "greedy"},
        "search": {"screen_sequences": 4},
        "trials": 3,
    }
    built = build_config(
        "s",
        target=(0.3, 0.6),
        model="tiny-dir",
        data={"seq_len": 32, "search_sequences": 12, "heldout": None, "seed": None},
        sparsity={"split": "greedy"},
        sampler="greedy",
        search={"screen_sequences": 4},
        trials=3,
        seed=None,
    )
    assert built == parse_config(document) and built.digest() == parse_config(document).digest()
    assert built.data.seed == 0 and built.data.calibration_sequences == 64 and built.seed == 0
    assert build_config("m", target=0.5) == parse_config({"name": "m", "sparsity": {"target": 0.5}})
    assert build_config("m", target={"from": 0.4, "to": 0.6, "step": 0.1}).sparsity.targets == (0.4, 0.5, 0.6)


def test_build_config_refuses_as_a_study_file_does():
    from studies import build_config

    with pytest.raises(InputError, match=r"^bench-cell: `data.seq_len`: Input should be greater than or equal to 2\.$"):
        build_config("s", target=0.5, data={"seq_len": 1}, source="bench-cell")
    with pytest.raises(InputError, match=r"unknown key `search.screen`"):
        build_config("s", target=0.5, search={"screen": 4})
    with pytest.raises(InputError, match=r"`sampler.name`: unknown sampler 'sobol'"):
        build_config("s", target=0.5, sampler="sobol")
    with pytest.raises(TypeError, match="takes the target once"):
        build_config("s", target=0.5, sparsity={"target": 0.4})
