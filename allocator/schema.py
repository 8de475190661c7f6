"""The two pydantic bases every validated document of the project derives from, so each policy is written once.

- :class:`StrictModel`, for what a user writes (a study configuration, a sampler's options): strict types
  (``"1"`` is not ``1``), frozen, and an unknown key refused, since it is almost always a typo.
- :class:`StrictDocument`, for the files we write and read back (a lookup, a frontier index): strict types too,
  but extra keys allowed, so a reader of a format version ignores what a later writer of that version adds
  (provenance, say).

Only pydantic is imported here, so every layer (allocator's subpackages, studies) can use it.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

__all__ = ["StrictDocument", "StrictModel"]


class StrictModel(BaseModel):
    """Base of user-written settings: strict types, frozen, unknown keys refused."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class StrictDocument(BaseModel):
    """Base of the files we write and read back: strict types, extra keys allowed for later writers."""

    model_config = ConfigDict(strict=True, extra="allow")
