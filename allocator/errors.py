"""The project's error hierarchy.

Every failure a user can cause (a bad path, a bad number, a model we do not support, a lookup for another
model) raises a subclass of :class:`SparseallocError` whose message is one sentence naming what was wrong.
The command-line interface prints that sentence and exits with status 2; anything else is a bug and keeps
its traceback. Each class also subclasses the matching built-in, as BoTorch's ``InfeasibilityError`` does,
so callers that catch ``ValueError`` or ``FileNotFoundError`` keep working.
"""

from __future__ import annotations


class SparseallocError(Exception):
    """Base class of every error a user can cause."""


class InputError(SparseallocError, ValueError):
    """A value given by the user is out of range or malformed."""


class ModelSourceError(SparseallocError, ValueError):
    """A model source cannot be found, read or converted."""


class UnsupportedArchitectureError(SparseallocError, ValueError):
    """The model is a causal LM whose block layout sparsealloc does not know."""


class DataSourceError(SparseallocError, ValueError):
    """A text source cannot be found or read, or holds too little text."""


class InfeasibleConstraintError(SparseallocError, ValueError):
    """No per-block vector within the bounds reaches the requested model-level sparsity."""


class LookupFileError(SparseallocError, ValueError):
    """A lookup file is malformed, of an unknown format version, or for another model."""


class NNCFNotInstalledError(SparseallocError, ImportError):
    """The optional ``nncf`` package is needed (``pip install sparsealloc[nncf]``) and not installed."""


class OutputError(SparseallocError, OSError):
    """An output (an export, a report) cannot be written where it was asked for."""


def first_line(error: BaseException) -> str:
    """The first line of an error's message, for one-sentence reports (a driver's error wrapped by SQLAlchemy
    speaks through its ``orig``); the error's type name when the message is empty."""
    lines = str(getattr(error, "orig", None) or error).strip().splitlines()
    return lines[0] if lines else type(error).__name__
