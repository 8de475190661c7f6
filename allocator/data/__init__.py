"""Text sources (files, folders, JSONL, saved datasets, the embedded corpora) and their deterministic
split into the four disjoint data roles: calibration, search, validation and held-out tokens.

Public names are imported on first use (``__getattr__``), so importing the package stays light.
"""

from __future__ import annotations

from allocator._lazy import lazy_attributes

# Public name -> module that defines it.
_LAZY: dict[str, str] = {
    "EMBEDDED_CORPORA": "allocator.data._sources",
    "ROLES": "allocator.data._sources",
    "TextCorpus": "allocator.data._sources",
    "TokenSets": "allocator.data._sources",
    "check_text_source": "allocator.data._sources",
    "load_text": "allocator.data._sources",
    "make_token_sets": "allocator.data._sources",
}

__all__ = sorted(_LAZY)
__getattr__ = lazy_attributes(__name__, _LAZY)
