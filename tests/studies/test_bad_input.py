"""The bad-input catalogue: each case ends in one sentence on stderr and exit status 2, and nothing is written
or lost (no database appears where none was, a study's trials and an export stay as they were)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from sqlalchemy import update
from sqlalchemy.orm import Session

from allocator.testing.tiny import build_tiny_model, save_model_dir
from storage import SCHEMA_VERSION, Database, Meta
from studies.cli import cli
from tests.studies.conftest import tiny_config


def run(*args: str):
    return CliRunner().invoke(cli, [str(a) for a in args])


def assert_refused(result, fragment: str) -> None:
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    # Progress lines may come first; the run ends in exactly one sentence: the error.
    assert len(errors) == 1 and lines[-1] == errors[0], result.stderr
    assert fragment in errors[0], errors[0]
    assert "Traceback" not in result.output


@pytest.fixture(scope="module")
def finished(tmp_path_factory, trained_tiny_dir):
    """A study with finished trials and an export, shared by the cases that need one."""
    root = tmp_path_factory.mktemp("finished")
    url = f"sqlite:///{root / 'study.db'}"
    path = root / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_config(trained_tiny_dir, trials=2)))
    for args in (
        ("study", "create", path),
        ("study", "run", "tiny"),
        ("study", "export", "tiny", "--out", root / "lookup"),
    ):
        result = run(*args, "--storage", url)
        assert result.exit_code == 0, result.output
    return {"url": url, "lookup": root / "lookup", "root": root}


def _config(tmp_path: Path, model_dir: Path, **overrides) -> Path:
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(tiny_config(model_dir, **overrides)))
    return path


def _create(tmp_path: Path, config: Path):
    url = f"sqlite:///{tmp_path / 'new.db'}"
    return run("study", "create", config, "--storage", url), tmp_path / "new.db"


# -- configuration -------------------------------------------------------------------------------------------
def test_missing_config(tmp_path):
    result, db = _create(tmp_path, tmp_path / "absent.yaml")
    assert_refused(result, "does not exist")
    assert not db.exists()


def test_unreadable_config(tmp_path):
    path = tmp_path / "binary.yaml"
    path.write_bytes(b"\xff\xfe\x00garbage")
    result, db = _create(tmp_path, path)
    assert_refused(result, "cannot be read")
    assert not db.exists()


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"colour": "blue"}, "unknown key `colour`"),
        ({"trials": "ten"}, "`trials`: Input should be a valid integer"),
        ({"sparsity": {"target": 1.5}}, "`sparsity.target`: Input should be less than 1"),
        ({"sparsity": {"target": 0.95, "upper": 0.9}}, "cannot reach the target 0.95"),
    ],
)
def test_invalid_configs(tmp_path, trained_tiny_dir, overrides, fragment):
    result, db = _create(tmp_path, _config(tmp_path, trained_tiny_dir, **overrides))
    assert_refused(result, fragment)
    assert not db.exists()


# -- models ----------------------------------------------------------------------------------------------------
def test_model_path_missing(tmp_path):
    result, _ = _create(tmp_path, _config(tmp_path, tmp_path / "no-model"))
    assert_refused(result, "neither an embedded model")


def test_not_a_causal_lm(tmp_path, tiny_tokenizer):
    from transformers import BertConfig, BertModel

    bert = save_model_dir(
        BertModel(BertConfig(num_hidden_layers=1, hidden_size=32, num_attention_heads=2, intermediate_size=64)),
        tiny_tokenizer,
        tmp_path / "bert",
    )
    result, _ = _create(tmp_path, _config(tmp_path, bert))
    assert_refused(result, "is not a causal language model")


def test_unsupported_architecture(tmp_path, tiny_tokenizer):
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = save_model_dir(
        GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=512)), tiny_tokenizer, tmp_path / "gpt2"
    )
    result, _ = _create(tmp_path, _config(tmp_path, gpt2))
    assert_refused(result, "Architecture 'gpt2' is not supported")


def test_truncated_gguf(tmp_path):
    path = tmp_path / "model.gguf"
    path.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\x02" * 40)
    result, _ = _create(tmp_path, _config(tmp_path, path))
    assert_refused(result, "could not be read (truncated, corrupt or unsupported)")


# -- data (refused by `study create`: nothing is stored) -------------------------------------------------------
#: Each unreadable data source: (file name, bytes; a name ending in "/" is a folder holding that file), and
#: what the refusal says.
BAD_DATA = {
    "empty file": ("data.txt", b"", "contains no text"),
    "blank file": ("data.txt", b"  \n\t\n", "contains no text"),
    "non-UTF-8 file": ("data.txt", "café au lait\n".encode("latin-1"), "is not UTF-8 text"),
    "binary file": ("data.txt", bytes(range(256)) * 8, "is not UTF-8 text"),
    "binary file that decodes": ("data.txt", b"\x7fELF\x02\x01\x01" + b"\x00" * 64, "holds NUL bytes"),
    "folder with no .txt": ("texts/notes.md", b"# not a text file\n", "holds no .txt files"),
    "malformed JSONL": ("data.jsonl", b'{"text": "fine"}\n{"text": oops}\n', "line 2 is not valid JSON"),
    "JSONL without the text field": ("data.jsonl", b'{"body": "fine"}\n', "has no string field 'text'"),
}


def _bad_data(tmp_path: Path, case: str) -> Path:
    name, content, _ = BAD_DATA[case]
    path = tmp_path / "data" / name
    path.parent.mkdir(parents=True)
    path.write_bytes(content)
    return path.parent if "/" in name else path


@pytest.fixture(scope="module")
def existing(tmp_path_factory, trained_tiny_dir):
    """A SQLite database holding one study, `other`: refused creations must leave it as the only one."""
    root = tmp_path_factory.mktemp("existing")
    url = f"sqlite:///{root / 'study.db'}"
    result = run("study", "create", _config(root, trained_tiny_dir, name="other"), "--storage", url)
    assert result.exit_code == 0, result.output
    return url


def assert_only_other(url: str) -> None:
    listed = run("study", "list", "--storage", url)
    assert listed.exit_code == 0, listed.output
    names = [line.split()[0] for line in listed.output.splitlines()[1:]]
    assert names == ["other"], listed.output


@pytest.mark.parametrize("key", ["source", "heldout", "ood"])
@pytest.mark.parametrize("case", list(BAD_DATA))
def test_create_refuses_unreadable_data(tmp_path, trained_tiny_dir, existing, key, case):
    config = _config(tmp_path, trained_tiny_dir, data={key: str(_bad_data(tmp_path, case))})
    result = run("study", "create", config, "--storage", existing)
    assert_refused(result, f"`data.{key}`: ")
    assert BAD_DATA[case][2] in result.stderr
    assert_only_other(existing)


def test_create_refuses_unreadable_data_before_a_database_appears(tmp_path, trained_tiny_dir):
    result, db = _create(
        tmp_path, _config(tmp_path, trained_tiny_dir, data={"ood": str(_bad_data(tmp_path, "binary file"))})
    )
    assert_refused(result, "is not UTF-8 text")
    assert not db.exists()


def test_create_refuses_unreadable_data_on_each_storage(tmp_path, trained_tiny_dir, storage_url):
    assert (
        run("study", "create", _config(tmp_path, trained_tiny_dir, name="other"), "--storage", storage_url).exit_code
        == 0
    )
    config = _config(tmp_path, trained_tiny_dir, data={"heldout": str(_bad_data(tmp_path, "malformed JSONL"))})
    assert_refused(run("study", "create", config, "--storage", storage_url), "line 2 is not valid JSON")
    assert_only_other(storage_url)


def test_readable_data_of_every_role_is_accepted(tmp_path, trained_tiny_dir, text_file):
    config = _config(tmp_path, trained_tiny_dir, data={"heldout": str(text_file), "ood": str(text_file)})
    result, _ = _create(tmp_path, config)
    assert result.exit_code == 0, result.output


def test_too_little_text_is_found_when_the_study_runs(tmp_path, trained_tiny_dir):
    # How many tokens a text makes is only known once it is tokenised: the first worker refuses it.
    data = tmp_path / "data.txt"
    data.write_text("just a few words")
    result, db = _create(tmp_path, _config(tmp_path, trained_tiny_dir, data={"source": str(data)}))
    assert result.exit_code == 0, result.output
    result = run("study", "run", "tiny", "--storage", f"sqlite:///{db}")
    assert_refused(result, "are needed for 4 heldout, 3 validation, 6 calibration, 10 search sequences")
    status = run("study", "status", "tiny", "--storage", f"sqlite:///{db}")
    assert "0/4 complete" in status.output


# -- sequence length past the model's positions (the tiny models take 512) -------------------------------------
def test_create_refuses_a_seq_len_past_the_models_positions(tmp_path, trained_tiny_dir, existing):
    config = _config(tmp_path, trained_tiny_dir, data={"seq_len": 513})
    result = run("study", "create", config, "--storage", existing)
    assert_refused(result, "`data.seq_len` is 513 but model")
    assert "takes at most 512 positions" in result.stderr
    assert_only_other(existing)


def test_create_accepts_a_seq_len_of_exactly_the_models_positions(tmp_path, trained_tiny_dir):
    result, _ = _create(tmp_path, _config(tmp_path, trained_tiny_dir, data={"seq_len": 512}))
    assert result.exit_code == 0, result.output


@pytest.mark.smollm2
@pytest.mark.parametrize("cache", ["converted", "header only"])
def test_create_reads_a_gguf_models_positions(tmp_path, cache):
    # From the cached conversion's config.json, or (nothing cached) from the GGUF header's context length.
    env = {"SPARSEALLOC_CACHE": str(tmp_path / "empty-cache")} if cache == "header only" else {}
    config = tmp_path / "study.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "name": "long",
                "model": "smollm2-135m",
                "data": {"seq_len": 8193},
                "sparsity": {"target": 0.5},
                "sampler": {"name": "random"},
            }
        )
    )
    result = CliRunner().invoke(
        cli, ["study", "create", str(config), "--storage", f"sqlite:///{tmp_path / 'x.db'}"], env=env
    )
    assert_refused(result, "takes at most 8192 positions")


def test_apply_refuses_a_seq_len_past_the_models_positions(finished, trained_tiny_dir):
    lookup = finished["lookup"]
    assert_refused(
        run("apply", "--lookup", lookup, "--model", trained_tiny_dir, "--seq-len", "513"), "`--seq-len` is 513"
    )
    accepted = run("apply", "--lookup", lookup, "--model", trained_tiny_dir, "--seq-len", "512", "--sequences", "1")
    assert accepted.exit_code == 0, accepted.output
    assert "perplexity" in accepted.output


def test_evaluate_refuses_a_seq_len_past_the_models_positions(trained_tiny_dir):
    result = run("evaluate", "--model", trained_tiny_dir, "--sparsity", "0.5", "--seq-len", "513")
    assert_refused(result, "takes at most 512 positions")


def test_run_refuses_a_stored_study_whose_seq_len_is_past_the_models_positions(tmp_path, trained_tiny_dir):
    # A study stored before `create` checked the length (written here through the storage API).
    import optuna

    from studies import parse_config

    url = f"sqlite:///{tmp_path / 'old.db'}"
    config = parse_config(tiny_config(trained_tiny_dir, data={"seq_len": 600}))
    database = Database(url, create=True)
    database.register_study(config.name, config.canonical(), config.digest())
    optuna.create_study(study_name=config.name, storage=database.optuna_storage)
    assert_refused(run("study", "run", "tiny", "--storage", url), "`data.seq_len` is 600 but model")
    assert "0/4 complete" in run("study", "status", "tiny", "--storage", url).output


# -- storage ----------------------------------------------------------------------------------------------------
def test_malformed_storage_url(tmp_path):
    assert_refused(run("study", "list", "--storage", "postgresql://u:pw@host:port/db"), "is malformed")


def test_unreachable_database():
    result = run("study", "list", "--storage", "postgresql+psycopg://root:hunter2@127.0.0.1:1/none")
    assert_refused(result, "Cannot open the database")
    assert "hunter2" not in result.output


def test_schema_from_a_newer_version(tmp_path):
    url = f"sqlite:///{tmp_path / 'future.db'}"
    database = Database(url)
    with Session(database.engine) as session, session.begin():
        session.execute(update(Meta).values(value=str(SCHEMA_VERSION + 1)))
    assert_refused(run("study", "list", "--storage", url), "newer than this sparsealloc supports")


def test_unknown_study(finished):
    assert_refused(run("study", "status", "nope", "--storage", finished["url"]), "No study named 'nope'")


def test_create_with_an_existing_name_and_another_config(finished, tmp_path, trained_tiny_dir):
    config = _config(tmp_path, trained_tiny_dir, trials=7)
    result = run("study", "create", config, "--storage", finished["url"])
    assert_refused(result, "already exists with a different configuration")
    assert "2/2 complete" in run("study", "status", "tiny", "--storage", finished["url"]).output


# -- lookups ---------------------------------------------------------------------------------------------------
def test_lookup_of_another_model(finished, tiny_tokenizer, tmp_path):
    other = save_model_dir(build_tiny_model("llama", len(tiny_tokenizer), n_layers=2), tiny_tokenizer, tmp_path / "m")
    assert_refused(run("apply", "--lookup", finished["lookup"], "--model", other), "made for another model")


def _damaged_lookup(finished, tmp_path: Path, text: str) -> Path:
    copy = tmp_path / "lookup"
    copy.mkdir()
    (copy / "lookup.json").write_text(text)
    return copy


def test_lookup_with_an_unknown_format_version(finished, tmp_path, trained_tiny_dir):
    lookup = json.loads((finished["lookup"] / "lookup.json").read_text())
    damaged = _damaged_lookup(finished, tmp_path, json.dumps({**lookup, "format": "sparsealloc.lookup/v2"}))
    assert_refused(run("apply", "--lookup", damaged, "--model", trained_tiny_dir), "this sparsealloc reads")


def test_lookup_corrupted_or_truncated(finished, tmp_path, trained_tiny_dir):
    text = (finished["lookup"] / "lookup.json").read_text()
    damaged = _damaged_lookup(finished, tmp_path, text[: len(text) // 2])
    assert_refused(run("apply", "--lookup", damaged, "--model", trained_tiny_dir), "corrupted or truncated")


def test_export_of_a_study_with_no_finished_trial(tmp_path, trained_tiny_dir):
    result, db = _create(tmp_path, _config(tmp_path, trained_tiny_dir))
    assert result.exit_code == 0
    result = run("study", "export", "tiny", "--out", tmp_path / "out", "--storage", f"sqlite:///{db}")
    assert_refused(result, "has no finished trial to export")
    assert not (tmp_path / "out").exists()


def test_report_of_a_study_with_no_finished_trial(tmp_path, trained_tiny_dir, storage_url, processes):
    # In a process of its own, so that a warning matplotlib prints would show (pytest captures them in-process).
    processes.run("study", "create", str(_config(tmp_path, trained_tiny_dir)), "--storage", storage_url)
    out = tmp_path / "report"
    output = processes.run("study", "report", "tiny", "--out", str(out), "--storage", storage_url, expect=2)
    lines = [line for line in output.splitlines() if line.strip()]
    assert lines == ["error: Study 'tiny' has no finished trial to report yet; run it first."], output
    assert not out.exists()
