from __future__ import annotations

import pytest

from storage import DEFAULT_URL, StorageError, mask_url, resolve_url


def test_default_is_sqlite_in_the_working_directory(monkeypatch):
    monkeypatch.delenv("SPARSEALLOC_STORAGE", raising=False)
    assert resolve_url(None) == DEFAULT_URL


def test_environment_variable_is_used(monkeypatch):
    monkeypatch.setenv("SPARSEALLOC_STORAGE", "sqlite:///other.db")
    assert resolve_url(None) == "sqlite:///other.db"


def test_plain_postgresql_gets_the_installed_driver():
    assert resolve_url("postgresql://u:pw@db:5432/s").startswith("postgresql+psycopg://u:pw@db:5432/s")


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("not a url", "is malformed"),
        ("mysql://u@h/db", "'mysql' is not supported"),
        ("postgresql+psycopg2://u@h/db", "is not installed"),
        ("sqlite://", "in-memory SQLite"),
    ],
)
def test_bad_urls_are_one_sentence(url, message):
    with pytest.raises(StorageError, match=message):
        resolve_url(url)


@pytest.mark.parametrize(
    "url",
    ["postgresql+psycopg://alice:s3cret@db.example:5432/studies", "postgres://alice:s3cret@db/x extra", "s3cret"],
)
def test_passwords_are_masked_even_in_malformed_urls(url):
    masked = mask_url(f"{url}") if url != "s3cret" else mask_url("postgresql://bob:s3cret@h/d")
    assert "s3cret" not in masked and "***" in masked


def test_malformed_url_error_never_shows_the_password():
    with pytest.raises(StorageError) as caught:
        resolve_url("postgresql://alice:s3cret@host:notaport/db")
    assert "s3cret" not in str(caught.value)
