"""Bridges from sparsealloc's exports to other tools: their own sparsifiers (NNCF), and evaluation harnesses.

Each integration is a submodule that imports its tool lazily, so importing it (and writing the tool's
file from a lookup) needs neither that tool nor torch: :mod:`allocator.integrations.nncf` turns a lookup
into per-site targets for NNCF's ``sparsify_activations``; :mod:`allocator.integrations.lm_eval` runs
lm-evaluation-harness's downstream tasks on a model with a lookup installed (``evaluate_tasks``).
"""

# Each integration is imported as its own submodule (``allocator.integrations.nncf``), never from here.
__all__: list[str] = []
