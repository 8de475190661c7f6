"""The export formats an inference loader reads: the lookup (``sparsealloc.lookup/v1``) and its loader,
frontier exports (several targets, interpolated at load time), TEAL's histogram and lookup files, and
the atomic writes they all use.

Public names are imported on first use (``__getattr__``), so importing the package stays light.
"""

from __future__ import annotations

from allocator._lazy import lazy_attributes

# Public name -> module that defines it.
_LAZY: dict[str, str] = {
    "atomic_write_bytes": "allocator.export._files",
    "atomic_write_directory": "allocator.export._files",
    "FRONTIER_FORMAT": "allocator.export._frontier_lookup",
    "QUANTILE_LEVELS": "allocator.export._frontier_lookup",
    "build_frontier_index": "allocator.export._frontier_lookup",
    "frontier_point": "allocator.export._frontier_lookup",
    "interpolate_lookups": "allocator.export._frontier_lookup",
    "is_frontier": "allocator.export._frontier_lookup",
    "point_directory": "allocator.export._frontier_lookup",
    "quantile_table": "allocator.export._frontier_lookup",
    "read_frontier": "allocator.export._frontier_lookup",
    "LOOKUP_FORMAT": "allocator.export._lookup",
    "build_lookup": "allocator.export._lookup",
    "check_export_target": "allocator.export._lookup",
    "check_lookup_model": "allocator.export._lookup",
    "load_lookup": "allocator.export._loader",
    "lookup_thresholds": "allocator.export._lookup",
    "read_lookup": "allocator.export._lookup",
    "write_lookup": "allocator.export._lookup",
    "write_lookup_file": "allocator.export._lookup",
    "LOOKUP_TOLERANCE": "allocator.export._lookup_checks",
    "check_lookup": "allocator.export._lookup_checks",
    "write_teal_files": "allocator.export._teal",
    "write_teal_frontier_files": "allocator.export._teal",
}

__all__ = sorted(_LAZY)
__getattr__ = lazy_attributes(__name__, _LAZY)
