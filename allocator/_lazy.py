"""Lazy re-exports: a package's public names imported from their modules on first use.

Heavy modules (torch, transformers, botorch) load only when a name that needs them is first read, so
``import allocator`` and the command line's ``--help`` stay fast, and each subpackage lists its public
names in one ``name -> module`` table that is also its ``__all__``.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any


def lazy_attributes(package: str, table: Mapping[str, str]) -> Callable[[str], Any]:
    """A module-level ``__getattr__`` for ``package`` that imports ``table[name]`` and caches the value."""

    def __getattr__(name: str) -> Any:
        module_name = table.get(name)
        if module_name is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module_name), name)
        setattr(sys.modules[package], name, value)
        return value

    return __getattr__
