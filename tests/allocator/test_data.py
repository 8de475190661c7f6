from __future__ import annotations

import json

import pytest
import torch

from allocator import DataSourceError, InputError, load_text, tokenize_split


def test_pydoc_corpus_is_every_topic():
    from pydoc_data.topics import topics

    corpus = load_text("pydoc")
    assert corpus.kind == "pydoc"
    assert len(corpus.documents) == len(topics)
    assert corpus.n_characters == sum(len(t) for t in topics.values())


def test_pydoc_split_never_shares_a_topic_and_is_deterministic(tiny_tokenizer):
    corpus = load_text("pydoc")
    split = tokenize_split(corpus, tiny_tokenizer, seq_len=64, n_calibration=8, n_heldout=8, seed=3)
    again = tokenize_split(corpus, tiny_tokenizer, seq_len=64, n_calibration=8, n_heldout=8, seed=3)
    other = tokenize_split(corpus, tiny_tokenizer, seq_len=64, n_calibration=8, n_heldout=8, seed=4)
    assert split.split_unit == "document"
    assert split.calibration.shape == (8, 64) and split.heldout.shape == (8, 64)
    assert torch.equal(split.calibration, again.calibration) and torch.equal(split.heldout, again.heldout)
    assert split.calibration_hash != other.calibration_hash
    # No topic contributes text to both parts: decode each held-out sequence and look for it in calibration topics.
    topics_by_text = {doc: i for i, doc in enumerate(corpus.documents)}
    heldout_text = [tiny_tokenizer.decode(row) for row in split.heldout.tolist()]
    calibration_text = [tiny_tokenizer.decode(row) for row in split.calibration.tolist()]

    def owners(snippets):
        found = set()
        for snippet in snippets:
            middle = max(snippet.split("<eos>"), key=len)[:60]
            found |= {i for doc, i in topics_by_text.items() if middle in doc}
        return found

    assert owners(heldout_text).isdisjoint(owners(calibration_text))


def test_single_text_file_splits_by_sequence_without_overlap(tiny_tokenizer, text_file):
    split = tokenize_split(load_text(text_file), tiny_tokenizer, seq_len=32, n_calibration=6, n_heldout=6)
    assert split.split_unit == "sequence"
    calibration_rows = {tuple(r) for r in split.calibration.tolist()}
    assert calibration_rows.isdisjoint(tuple(r) for r in split.heldout.tolist())


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
        split = tokenize_split(corpus, tiny_tokenizer, seq_len=32, n_calibration=4, n_heldout=2)
        assert split.split_unit == "document"


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
    with pytest.raises(DataSourceError, match=r"has \d+ tokens; 2,048 are needed for 4 calibration and 4 held-out"):
        tokenize_split(load_text(path), tiny_tokenizer, seq_len=256, n_calibration=4, n_heldout=4)


def test_bad_sizes_are_refused(tiny_tokenizer):
    corpus = load_text("pydoc")
    with pytest.raises(InputError, match="`seq_len`"):
        tokenize_split(corpus, tiny_tokenizer, seq_len=1, n_calibration=1, n_heldout=1)
    with pytest.raises(InputError, match="`n_calibration`"):
        tokenize_split(corpus, tiny_tokenizer, seq_len=8, n_calibration=0, n_heldout=1)


def test_unknown_file_type_is_refused(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text("a,b\n")
    with pytest.raises(DataSourceError, match=r"neither \.txt nor \.jsonl"):
        load_text(path)
