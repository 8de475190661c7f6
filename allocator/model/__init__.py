"""The model side: loading causal LMs (local Hugging Face directories, GGUF files, the embedded SmolLM2),
where they run (device, dtype), and the adapters that find each decoder block and its seven sparsified
sites. Knows nothing of sparsity, data or search.

Public names are imported on first use (``__getattr__``), so importing the package stays light.
"""

from __future__ import annotations

from allocator._lazy import lazy_attributes

# Public name -> module that defines it.
_LAZY: dict[str, str] = {
    "INPUT_GROUPS": "allocator.model._adapters",
    "ModelAdapter": "allocator.model._adapters",
    "SITE_NAMES": "allocator.model._adapters",
    "SUPPORTED_ARCHITECTURES": "allocator.model._adapters",
    "Site": "allocator.model._adapters",
    "site_module_path": "allocator.model._adapters",
    "DTYPES": "allocator.model._device",
    "Placement": "allocator.model._device",
    "resolve_placement": "allocator.model._device",
    "EMBEDDED_MODELS": "allocator.model._loading",
    "LoadedModel": "allocator.model._loading",
    "ModelShape": "allocator.model._loading",
    "check_model_source": "allocator.model._loading",
    "check_seq_len": "allocator.model._loading",
    "load_model": "allocator.model._loading",
    "model_fingerprint": "allocator.model._loading",
    "model_shape": "allocator.model._loading",
}

__all__ = sorted(_LAZY)
__getattr__ = lazy_attributes(__name__, _LAZY)
