"""Shared fixtures: tiny random-weight (and one briefly trained) Llama, Mistral and Qwen2 models, databases.

Tiny models are built from configs, never downloaded (:mod:`allocator.testing.tiny`); they are saved as
ordinary Hugging Face directories so tests go through the same public loading path users do.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from allocator.testing.tiny import build_tiny_model, build_tiny_tokenizer, save_model_dir

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

TINY_ARCHITECTURES = ("llama", "mistral", "qwen2")

# Tiny models run fastest on one thread, and several test processes must not oversubscribe two cores
# (an OpenMP pool on a busy core slows a tiny forward pass by tens of times).
torch.set_num_threads(1)
os.environ["OMP_NUM_THREADS"] = "1"  # inherited by the worker processes the tests start


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return build_tiny_tokenizer()


@pytest.fixture(scope="session", params=TINY_ARCHITECTURES)
def tiny_model_dir(request, tiny_tokenizer, tmp_path_factory) -> Path:
    """A saved random-weight tiny model directory, once per architecture."""
    model = build_tiny_model(request.param, len(tiny_tokenizer))
    return save_model_dir(model, tiny_tokenizer, tmp_path_factory.mktemp(f"tiny-{request.param}"))


@pytest.fixture(scope="session")
def trained_tiny_dir(tiny_tokenizer, tmp_path_factory) -> Path:
    """A tiny Llama trained for a few seconds on pydoc text, so sparsity has a measurable cost."""
    from pydoc_data.topics import topics

    torch.manual_seed(0)
    model = build_tiny_model("llama", len(tiny_tokenizer)).train()
    text = "\n".join(topics[key] for key in sorted(topics)[:40])
    ids = torch.tensor(tiny_tokenizer(text)["input_ids"])
    seq = 64
    windows = ids[: ids.numel() // seq * seq].view(-1, seq)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    for _ in range(150):
        batch = windows[torch.randint(0, windows.shape[0], (16,), generator=generator)]
        loss = model(input_ids=batch, labels=batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    return save_model_dir(model, tiny_tokenizer, tmp_path_factory.mktemp("tiny-trained"))


@pytest.fixture(scope="session")
def text_file(tmp_path_factory) -> Path:
    """A plain text file with enough pydoc text for small splits."""
    from pydoc_data.topics import topics

    path = tmp_path_factory.mktemp("text") / "corpus.txt"
    path.write_text("\n\n".join(topics[key] for key in sorted(topics)[40:60]), encoding="utf-8")
    return path


# -- databases: a fresh SQLite file, and a fresh PostgreSQL database per test on 127.0.0.1:5432 --------------
# PostgreSQL must be up (CI starts it): a missing server fails these tests instead of skipping them.


def _admin(statement: str) -> None:
    import psycopg

    with psycopg.connect("host=127.0.0.1 port=5432 dbname=test user=root", autocommit=True) as connection:
        connection.execute(statement)


@pytest.fixture
def postgres_url() -> Iterator[str]:
    name = f"sparsealloc_test_{uuid.uuid4().hex[:12]}"
    _admin(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg://root@127.0.0.1:5432/{name}"
    finally:
        _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'study.db'}"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def storage_url(request) -> str:
    """The same test on a real SQLite file and on the real PostgreSQL server."""
    return request.getfixturevalue(f"{request.param}_url")
