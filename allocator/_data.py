"""Text sources and their deterministic split into calibration and held-out token sequences.

Sources: a ``.txt`` file or a folder of them, a ``.jsonl`` file (one JSON object per line with a ``text``
field), a Hugging Face dataset saved with ``save_to_disk``, and the embedded corpus ``pydoc`` (CPython's
``pydoc_data.topics``: 79 help topics, ~465K characters, present in every CPython install).

The split keeps calibration and held-out data disjoint at the coarsest unit the source has: whole documents
(topics, files, records) when there are several, whole sequences otherwise. Held-out perplexity then measures
how an allocation found on calibration data generalises, not how well it memorised it.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from allocator.errors import DataSourceError, InputError

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase

EMBEDDED_CORPORA: tuple[str, ...] = ("pydoc",)


@dataclass(frozen=True)
class TextCorpus:
    """Documents of one source, in a stable order."""

    source: str
    kind: str  # "pydoc" | "txt" | "jsonl" | "hf-dataset"
    documents: tuple[str, ...]

    @property
    def n_characters(self) -> int:
        return sum(len(doc) for doc in self.documents)


@dataclass(frozen=True)
class TokenSplit:
    """Calibration and held-out token sequences (``n x seq_len`` int64 tensors) with their provenance."""

    calibration: torch.Tensor
    heldout: torch.Tensor
    source: str
    seed: int
    split_unit: str  # "document" or "sequence": what the two parts never share
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def seq_len(self) -> int:
        return int(self.calibration.shape[1])

    @property
    def calibration_hash(self) -> str:
        return _tokens_hash(self.calibration)

    @property
    def heldout_hash(self) -> str:
        return _tokens_hash(self.heldout)

    def describe(self) -> dict[str, Any]:
        """Provenance recorded with calibrations, trials and lookups."""
        return {
            "source": self.source,
            "seed": self.seed,
            "split_unit": self.split_unit,
            "seq_len": self.seq_len,
            "calibration_sequences": int(self.calibration.shape[0]),
            "heldout_sequences": int(self.heldout.shape[0]),
            "calibration_hash": self.calibration_hash,
            "heldout_hash": self.heldout_hash,
            **self.provenance,
        }


def _tokens_hash(tokens: torch.Tensor) -> str:
    import torch

    return hashlib.sha256(tokens.to(torch.int64).contiguous().numpy().tobytes()).hexdigest()


def check_text_source(source: str | os.PathLike[str]) -> None:
    """Check that ``source`` names a readable kind of text source, without reading it."""
    _locate_text(source)


def _locate_text(source: str | os.PathLike[str]) -> tuple[str, Path | None]:
    """The kind of a text source (``pydoc``, ``hf-dataset``, ``txt-folder``, ``jsonl``, ``txt``) and its path."""
    name = str(source)
    if name in EMBEDDED_CORPORA:
        return "pydoc", None
    path = Path(source).expanduser()
    if not path.exists():
        raise DataSourceError(
            f"Data source {name!r} is neither an embedded corpus ({', '.join(EMBEDDED_CORPORA)}) nor an existing path."
        )
    if path.is_dir():
        if (path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file():
            return "hf-dataset", path
        return "txt-folder", path
    if path.suffix.lower() == ".jsonl":
        return "jsonl", path
    if path.suffix.lower() == ".txt":
        return "txt", path
    raise DataSourceError(
        f"Data file {name!r} is neither .txt nor .jsonl; give a text file, a folder of them, a .jsonl file "
        "or a dataset saved with save_to_disk."
    )


def load_text(source: str | os.PathLike[str], *, text_field: str = "text") -> TextCorpus:
    """Read a text source into documents; every unreadable or empty source is one clear error."""
    name = str(source)
    kind, path = _locate_text(source)
    if kind == "pydoc":
        return _load_pydoc()
    assert path is not None
    if kind == "hf-dataset":
        corpus = _load_hf_dataset(path, text_field=text_field)
    elif kind == "txt-folder":
        corpus = _load_txt_folder(path)
    elif kind == "jsonl":
        corpus = _load_jsonl(path, text_field=text_field)
    else:
        corpus = TextCorpus(source=name, kind="txt", documents=(_read_text(path),))
    documents = tuple(doc for doc in corpus.documents if doc.strip())
    if not documents:
        raise DataSourceError(f"Data source {name!r} contains no text.")
    return TextCorpus(source=name, kind=corpus.kind, documents=documents)


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise DataSourceError(f"Data file {str(path)!r} is not UTF-8 text ({error.reason}).") from error
    except OSError as error:
        raise DataSourceError(f"Data file {str(path)!r} cannot be read: {error.strerror}.") from error


def _load_pydoc() -> TextCorpus:
    from pydoc_data.topics import topics

    # Sorted by topic name so the order, and hence the split, does not depend on dict order.
    return TextCorpus(source="pydoc", kind="pydoc", documents=tuple(topics[key] for key in sorted(topics)))


def _load_txt_folder(path: Path) -> TextCorpus:
    files = sorted(p for p in path.rglob("*.txt") if p.is_file())
    if not files:
        raise DataSourceError(f"Data folder {str(path)!r} holds no .txt files and is not a saved dataset.")
    return TextCorpus(source=str(path), kind="txt", documents=tuple(_read_text(p) for p in files))


def _load_jsonl(path: Path, *, text_field: str) -> TextCorpus:
    documents: list[str] = []
    for number, line in enumerate(_read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise DataSourceError(f"{path} line {number} is not valid JSON ({error.msg}).") from error
        if not isinstance(record, dict) or not isinstance(record.get(text_field), str):
            raise DataSourceError(f"{path} line {number} has no string field {text_field!r}.")
        documents.append(record[text_field])
    return TextCorpus(source=str(path), kind="jsonl", documents=tuple(documents))


def _load_hf_dataset(path: Path, *, text_field: str) -> TextCorpus:
    try:
        from datasets import DatasetDict, load_from_disk
    except ImportError as error:  # pragma: no cover - datasets is a dependency
        raise DataSourceError("Reading a saved dataset needs the `datasets` package.") from error
    try:
        dataset = load_from_disk(str(path))
    except (OSError, ValueError) as error:
        raise DataSourceError(f"Dataset {str(path)!r} cannot be read: {error}") from error
    if isinstance(dataset, DatasetDict):
        split = "train" if "train" in dataset else sorted(dataset)[0]
        dataset = dataset[split]
    if text_field not in dataset.column_names:
        raise DataSourceError(
            f"Dataset {str(path)!r} has no column {text_field!r} (columns: {', '.join(dataset.column_names)})."
        )
    return TextCorpus(
        source=str(path), kind="hf-dataset", documents=tuple(str(t) for t in dataset[text_field] if t is not None)
    )


def tokenize_split(
    corpus: TextCorpus,
    tokenizer: PreTrainedTokenizerBase,
    *,
    seq_len: int,
    n_calibration: int,
    n_heldout: int,
    seed: int = 0,
) -> TokenSplit:
    """Cut ``corpus`` into ``n_calibration`` calibration and ``n_heldout`` held-out sequences of ``seq_len``.

    Documents are tokenised separately and joined with the EOS token. With several documents, a seeded
    shuffle of the documents fills the held-out part first (until it holds ``n_heldout`` sequences) and gives
    the rest to calibration, so the two never share a document (for ``pydoc``: a topic). With one document,
    or when the documents cannot be divided so, the joined stream is cut into sequences and those are divided.
    Within each part, sequences are non-overlapping windows drawn by the same seed. Same inputs, same tokens.
    """
    import torch

    if seq_len < 2:
        raise InputError(f"The value of `seq_len` should be at least 2, got {seq_len}.")
    if n_calibration < 1:
        raise InputError(f"The value of `n_calibration` should be a positive integer, got {n_calibration}.")
    if n_heldout < 0:
        raise InputError(f"The value of `n_heldout` should be a non-negative integer, got {n_heldout}.")
    generator = torch.Generator().manual_seed(seed)
    eos = tokenizer.eos_token_id
    token_docs = [
        tokenizer(doc, add_special_tokens=False)["input_ids"] + ([eos] if eos is not None else [])
        for doc in corpus.documents
    ]
    total = sum(len(doc) for doc in token_docs)
    needed = (n_calibration + n_heldout) * seq_len
    if total < needed:
        raise DataSourceError(
            f"Data source {corpus.source!r} has {total:,} tokens; {needed:,} are needed for {n_calibration} "
            f"calibration and {n_heldout} held-out sequences of {seq_len} tokens."
        )
    parts = _split_documents(token_docs, seq_len, n_calibration, n_heldout, generator) if len(token_docs) > 1 else None
    if parts is not None:
        split_unit = "document"
        calibration = _draw_windows(parts[0], seq_len, n_calibration, generator)
        heldout = _draw_windows(parts[1], seq_len, n_heldout, generator)
    else:
        split_unit = "sequence"
        stream = torch.tensor([tok for doc in token_docs for tok in doc], dtype=torch.int64)
        n_windows = stream.numel() // seq_len
        windows = stream[: n_windows * seq_len].view(n_windows, seq_len)
        order = torch.randperm(n_windows, generator=generator)
        heldout = windows[order[:n_heldout].sort().values]
        calibration = windows[order[n_heldout : n_heldout + n_calibration].sort().values]
    return TokenSplit(
        calibration=calibration,
        heldout=heldout,
        source=corpus.source,
        seed=seed,
        split_unit=split_unit,
        provenance={"kind": corpus.kind, "documents": len(corpus.documents), "tokens": total},
    )


def _split_documents(
    token_docs: list[list[int]], seq_len: int, n_calibration: int, n_heldout: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Held-out and calibration token streams made of whole documents, or None if they cannot be filled."""
    import torch

    order = torch.randperm(len(token_docs), generator=generator).tolist()
    heldout_docs: list[int] = []
    heldout_tokens = 0
    while heldout_tokens < n_heldout * seq_len and order:
        index = order.pop(0)
        heldout_docs.append(index)
        heldout_tokens += len(token_docs[index])
    calibration_tokens = sum(len(token_docs[i]) for i in order)
    if heldout_tokens < n_heldout * seq_len or calibration_tokens < n_calibration * seq_len:
        return None

    def stream(indices: list[int]) -> torch.Tensor:
        return torch.tensor([tok for i in sorted(indices) for tok in token_docs[i]], dtype=torch.int64)

    return stream(order), stream(heldout_docs)


def _draw_windows(stream: torch.Tensor, seq_len: int, count: int, generator: torch.Generator) -> torch.Tensor:
    """``count`` non-overlapping ``seq_len`` windows of ``stream``, chosen by ``generator``, in stream order."""
    import torch

    n_windows = stream.numel() // seq_len
    if count == 0:
        return torch.empty(0, seq_len, dtype=torch.int64)
    # A random offset so windows do not always start at the first token of the part.
    offset = int(torch.randint(0, stream.numel() - n_windows * seq_len + 1, (1,), generator=generator))
    windows = stream[offset : offset + n_windows * seq_len].view(n_windows, seq_len)
    chosen = torch.randperm(n_windows, generator=generator)[:count].sort().values
    return windows[chosen].clone()
