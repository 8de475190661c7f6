"""Looking at the paths a user gives (data, model, lookup, database, config, output folders) without tracebacks.

pathlib's ``exists()``, ``is_dir()`` and ``is_file()`` answer False for some failures to look (a symbolic
link loop) and raise for others (a folder on the way this user may not enter, a name longer than the file
system's 255 bytes), and ``resolve()`` raises ``RuntimeError`` on a loop. Every place that inspects a
user's path goes through this module, so each of these ends in one sentence that names what the path was
given as and what is wrong with it, raised as the caller's :class:`~allocator.errors.SparseallocError`.

Output folders that a writer replaces atomically (an export, a report) are checked here too, by one rule
(:func:`check_output_directory`): new, empty, or an earlier output of the same kind (recognised by a marker
file), writable by this user, and neither the working directory nor one of its parents.
"""

from __future__ import annotations

import errno
import json
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from allocator.errors import InputError, OutputError, SparseallocError

PathKind = Literal["missing", "file", "directory", "other"]

_REASONS = {
    errno.EACCES: "permission denied (this user may not enter a folder on its way, or read it)",
    errno.EPERM: "the operation is not permitted",
    errno.ENAMETOOLONG: "it is too long for the file system (a name in it over 255 bytes, or over 4096 in all)",
    errno.ELOOP: "it runs into a loop of symbolic links",
    errno.ENOTDIR: "a part of it is a file, not a folder",
    errno.ENOENT: "it does not exist",
    errno.EEXIST: "something is already there",
    errno.EISDIR: "it is a folder",
    errno.EROFS: "the file system is read-only",
    errno.ENOSPC: "the device is full",
}


def path_problem(error: BaseException) -> str:
    """What is wrong with a path, in words, from the error that looking at it (or using it) raised."""
    if isinstance(error, RuntimeError) and "symlink loop" in str(error).lower():  # pathlib.resolve() on Python 3.11
        return _REASONS[errno.ELOOP]
    code = getattr(error, "errno", None)
    if code in _REASONS:
        return _REASONS[code]
    text = str(getattr(error, "strerror", None) or error).strip().rstrip(".")
    return text[:1].lower() + text[1:] if text else type(error).__name__


@contextmanager
def path_errors(subject: str, *, error: type[SparseallocError] = InputError) -> Iterator[None]:
    """Turn an ``OSError`` (or pathlib's symlink-loop ``RuntimeError``) raised inside into ``error`` with the
    sentence ``"{subject}: {problem}."``; ``subject`` names the path and what it was given as, e.g.
    ``"Data source '/data/x.txt' cannot be read"``."""
    try:
        yield
    except OSError as raised:
        raise error(f"{subject}: {path_problem(raised)}.") from raised
    except RuntimeError as raised:
        if "symlink loop" not in str(raised).lower():
            raise
        raise error(f"{subject}: {path_problem(raised)}.") from raised


def path_kind(path: str | os.PathLike[str], subject: str, *, error: type[SparseallocError] = InputError) -> PathKind:
    """What is at ``path`` (symbolic links followed), as ``exists()``/``is_dir()``/``is_file()`` would say, but a
    failure to look (permission, an over-long name, a loop of links) is ``error`` with ``subject`` (see
    :func:`path_errors`) rather than a traceback or a silent "missing". Like ``exists()``, a path through a
    file (``notes.txt/x``) is missing."""
    with path_errors(subject, error=error):
        try:
            mode = os.stat(path).st_mode
        except (FileNotFoundError, NotADirectoryError):
            return "missing"
    if stat.S_ISDIR(mode):
        return "directory"
    return "file" if stat.S_ISREG(mode) else "other"


def resolved_path(path: str | os.PathLike[str], subject: str, *, error: type[SparseallocError] = InputError) -> Path:
    """``path`` made absolute, ``~`` expanded and symbolic links resolved; a loop is ``error`` with ``subject``."""
    with path_errors(subject, error=error):
        return Path(path).expanduser().resolve()


def make_directory(path: str | os.PathLike[str], subject: str, *, error: type[SparseallocError] = OutputError) -> Path:
    """``path`` as an existing directory, created (with its parents) if missing; anything else is ``error``."""
    target = Path(path)
    kind = path_kind(target, subject, error=error)
    if kind == "missing":
        with path_errors(subject, error=error):
            target.mkdir(parents=True, exist_ok=True)
    elif kind != "directory":
        raise error(f"{subject}: it exists and is not a directory.")
    return target


def check_writable_place(path: Path, subject: str, *, error: type[SparseallocError] = OutputError) -> None:
    """Refuse to write ``path`` (replaced by a rename in its folder) unless this user may: its folder, or the
    nearest existing folder above a new one, must be a directory this user can write; an existing ``path``
    itself must be writable too (a folder made read-only is the user's word that it must not change).

    Permissions are the kernel's (``os.access``): root may write almost anywhere, as with any other tool.
    """
    kind = path_kind(path, subject, error=error)
    if kind != "missing" and not os.access(path, os.W_OK):
        raise error(f"{subject}: it is read-only to this user.")
    folder = path.parent
    while path_kind(folder, subject, error=error) == "missing" and folder != folder.parent:
        folder = folder.parent
    if path_kind(folder, subject, error=error) != "directory":
        raise error(f"{subject}: {str(folder)!r} is not a directory.")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise error(f"{subject}: its folder {str(folder)!r} is read-only to this user.")


@dataclass(frozen=True)
class OutputKind:
    """What one kind of output directory holds, so that an earlier one is recognised (and replaced) and a folder
    holding anything else is refused rather than deleted."""

    noun: str  # "export", "report": in "Cannot write the export to ..."
    marker: str  # a JSON file the writer puts in every output, whose "format" starts with one of `formats`
    formats: tuple[str, ...]
    entries: frozenset[str]  # every name an output of this kind may hold (the marker included)
    prefixes: tuple[str, ...] = ()  # and names starting with these (a frontier export's `target-0.40/`)

    def holds_only_its_own(self, directory: Path, names: set[str]) -> bool:
        """Whether ``names`` (the entries of ``directory``) are this kind's, with its marker in place."""
        foreign = {name for name in names - self.entries if not name.startswith(self.prefixes)}
        return self.marker in names and not foreign and _has_format(directory / self.marker, self.formats)


def _has_format(path: Path, formats: tuple[str, ...]) -> bool:
    try:
        found = json.loads(path.read_text(encoding="utf-8")).get("format", "")
        return isinstance(found, str) and found.startswith(formats)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        return False


def check_output_directory(directory: str | os.PathLike[str], kind: OutputKind) -> Path:
    """The absolute ``directory``, if ``kind``'s writer may replace it atomically: new, empty or an earlier output
    of the same kind, writable by this user (:func:`check_writable_place`), and neither the working directory
    nor one of its parents. Everything else is one :class:`~allocator.errors.OutputError` sentence."""
    subject = f"Cannot write the {kind.noun} to {str(directory)!r}"
    target = resolved_path(directory, subject, error=OutputError)
    subject = f"Cannot write the {kind.noun} to {str(target)!r}"
    here = resolved_path(Path.cwd(), subject, error=OutputError)
    if target == here or target in here.parents:
        raise OutputError(f"{subject}: it is the working directory or holds it.")
    found = path_kind(target, subject, error=OutputError)
    if found not in ("missing", "directory"):
        raise OutputError(f"{subject}: it exists and is not a directory.")
    check_writable_place(target, subject)
    if found == "missing":
        return target
    with path_errors(subject, error=OutputError):
        names = {entry.name for entry in target.iterdir()}
    if names and not kind.holds_only_its_own(target, names):
        raise OutputError(
            f"{subject}: it holds files that are not a sparsealloc {kind.noun}; give a new or empty directory, "
            f"or an earlier {kind.noun} to replace."
        )
    return target
