from __future__ import annotations

import json

import pytest
import torch

from allocator import ROLES, DataSourceError, InputError, load_text, make_token_sets

FOUR = {"calibration": 6, "search": 10, "validation": 4, "heldout": 4}


def test_pydoc_corpus_is_every_topic():
    from pydoc_data.topics import topics

    corpus = load_text("pydoc")
    assert corpus.kind == "pydoc"
    assert len(corpus.documents) == len(topics)
    assert corpus.n_characters == sum(len(t) for t in topics.values())


def test_the_four_roles_never_share_a_document_and_are_deterministic(tiny_tokenizer):
    corpus = load_text("pydoc")
    sets = make_token_sets(corpus, tiny_tokenizer, seq_len=64, counts=FOUR, seed=3)
    again = make_token_sets(corpus, tiny_tokenizer, seq_len=64, counts=FOUR, seed=3)
    other = make_token_sets(corpus, tiny_tokenizer, seq_len=64, counts=FOUR, seed=4)
    assert sets.unit == "document" and set(sets.sets) == set(ROLES)
    for role, count in FOUR.items():
        assert sets[role].shape == (count, 64)
        assert torch.equal(sets[role], again[role])
    assert sets.hash("search") != other.hash("search")
    # The recorded documents are disjoint, cover every document, and the search role took the rest.
    owners = [set(sets.documents[role]) for role in ROLES]
    assert all(a.isdisjoint(b) for i, a in enumerate(owners) for b in owners[i + 1 :])
    assert set().union(*owners) == set(range(len(corpus.documents)))
    # And the text says the same: no sequence of one role is found in another role's documents.
    docs = corpus.documents

    def owners_of(role):
        found = set()
        for row in sets[role].tolist():
            middle = max(tiny_tokenizer.decode(row).split("<eos>"), key=len)[:60]
            found |= {i for i, doc in enumerate(docs) if middle in doc}
        return found

    texts = {role: owners_of(role) for role in ROLES}
    for role in ROLES:
        assert texts[role] <= set(sets.documents[role]), role


def test_text_folder_and_jsonl_and_saved_dataset(tiny_tokenizer, tmp_path):
    from datasets import Dataset

    paragraphs = [f"Paragraph {i} talks about sparse activations and thresholds. " * 20 for i in range(6)]
    folder = tmp_path / "folder"
    folder.mkdir()
    for i, text in enumerate(paragraphs):
        (folder / f"{i}.txt").write_text(text)
    jsonl = tmp_path / "data.jsonl"
    jsonl.write_text("\n".join(json.dumps({"text": t, "id": i}) for i, t in enumerate(paragraphs)) + "\n\n")
    Dataset.from_dict({"text": paragraphs}).save_to_disk(str(tmp_path / "dataset"))
    for source, kind in [(folder, "txt"), (jsonl, "jsonl"), (tmp_path / "dataset", "hf-dataset")]:
        corpus = load_text(source)
        assert corpus.kind == kind and corpus.documents == tuple(paragraphs)
        sets = make_token_sets(corpus, tiny_tokenizer, seq_len=32, counts={"calibration": 4, "heldout": 2})
        assert sets.unit == "document"


def test_missing_source_is_refused(tmp_path):
    with pytest.raises(DataSourceError, match="neither an embedded corpus"):
        load_text(tmp_path / "missing.txt")


@pytest.mark.parametrize("content", ["", "   \n\n  "])
def test_empty_text_is_refused(tmp_path, content):
    path = tmp_path / "empty.txt"
    path.write_text(content)
    with pytest.raises(DataSourceError, match="contains no text"):
        load_text(path)


def test_malformed_jsonl_names_the_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "fine"}\n\n{"text": "also fine"}\n{"text": broken\n')
    with pytest.raises(DataSourceError, match="line 4 is not valid JSON"):
        load_text(path)
    path.write_text('{"text": "fine"}\n{"body": "no text"}\n')
    with pytest.raises(DataSourceError, match="line 2 has no string field 'text'"):
        load_text(path)


def test_too_short_text_says_how_many_tokens_are_needed(tiny_tokenizer, tmp_path):
    path = tmp_path / "short.txt"
    path.write_text("Only a few words here.")
    with pytest.raises(DataSourceError, match=r"has \d+ tokens; 2,048 are needed for 4 heldout, 4 calibration"):
        make_token_sets(load_text(path), tiny_tokenizer, seq_len=256, counts={"calibration": 4, "heldout": 4})


def test_bad_sizes_are_refused(tiny_tokenizer):
    corpus = load_text("pydoc")
    with pytest.raises(InputError, match="`seq_len`"):
        make_token_sets(corpus, tiny_tokenizer, seq_len=1, counts={"calibration": 1})
    with pytest.raises(InputError, match="Sequence counts"):
        make_token_sets(corpus, tiny_tokenizer, seq_len=8, counts={"calibration": 0})
    with pytest.raises(InputError, match="Sequence counts"):
        make_token_sets(corpus, tiny_tokenizer, seq_len=8, counts={"training": 3})


def test_unknown_file_type_is_refused(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text("a,b\n")
    with pytest.raises(DataSourceError, match=r"neither \.txt nor \.jsonl"):
        load_text(path)
