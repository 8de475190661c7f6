"""NNCF as a consumer of our exports: a lookup's per-site sparsities as targets for NNCF's sparsify_activations.

NNCF (``nncf.experimental.torch.sparsify_activations``) zeroes the entries of a linear layer's input whose
|x| is at most a threshold, which it calibrates itself, per layer, as the running quantile of |x| at that
layer's target sparsity over a calibration set (with the layers before it already sparsified). It takes the
targets as ``{TargetScope(names=[node]): sparsity}`` and has no search: a lookup supplies the per-site
targets a study chose. The lookup's own thresholds are not used.

NNCF names a layer by its node in the graph it traces. NNCF 3.4's tracer joins the attribute names of the
modules on the call stack, dropping a module that is not a child of its caller; a decoder block sits in a
``ModuleList`` that is never called itself, so ``layers.{i}`` drops out and NNCF's per-name call counter
tells the blocks apart: block ``b``'s ``q_proj`` is ``model/self_attn/q_proj/linear/{b}``. These names
follow from the lookup's architecture and block count alone, so ``nncf.json`` is written without nncf or
torch (the tests check them against the graph NNCF builds).

Two things NNCF does differently from a study, recorded in ``nncf.json`` and warned about by
:func:`sparsify`: it ranks entries by |x| alone (a ``weight_aware`` lookup's sparsities were chosen for
|x|·‖W[:, j]‖), and it sparsifies every token (a study may have sparsified only the last part of a prompt).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

from allocator.errors import InputError, NNCFNotInstalledError, OutputError
from allocator.export import check_lookup
from allocator.model import SITE_NAMES, site_module_path

NNCF_FORMAT = "sparsealloc.nncf/v1"
NNCF_FILE = "nncf.json"
NNCF_REQUIREMENT = "nncf==3.4.*"
NNCF_FUNCTION = "nncf.experimental.torch.sparsify_activations.sparsify_activations"


def nncf_scope(architecture: str, block: int, site: str) -> str:
    """The NNCF graph node of ``site`` (one of :data:`allocator.SITE_NAMES`) in block ``block``.

    For the HF layout (body ``model``, blocks ``model.layers``): the site's module path inside its block,
    with ``/`` for ``.``, then ``linear`` (the traced op) and the block index (NNCF's call counter).
    """
    return f"model/{site_module_path(architecture, site).replace('.', '/')}/linear/{block}"


def _site_targets(lookup: dict[str, Any]) -> list[dict[str, Any]]:
    """One ``{block, site, scope, sparsity}`` per site of every block, in block then site order.

    Checks the lookup first, as every reader does (:func:`allocator.export._lookup_checks.check_lookup`), so that a
    hand-made, truncated or meaningless lookup dict is one sentence naming the field rather than a
    ``KeyError`` or NNCF targets that are not the study's.
    """
    check_lookup(lookup, "The lookup")
    architecture = lookup["model"]["architecture"]
    return [
        {
            "block": b,
            "site": site,
            "scope": nncf_scope(architecture, b, site),
            "sparsity": float(block["sites"][site]["sparsity"]),
        }
        for b, block in enumerate(lookup["blocks"])
        for site in SITE_NAMES
    ]


def _divergences(lookup: dict[str, Any]) -> list[str]:
    """Where applying the lookup with NNCF differs from what the study evaluated, one sentence each."""
    notes = []
    if lookup.get("score", {}).get("kind", "magnitude") != "magnitude":
        notes.append(
            f"The lookup's score is {lookup['score']['kind']!r}, but NNCF ranks inputs by |x| alone: it meets "
            "each site's sparsity with other entries zeroed than the study's."
        )
    fraction = float(lookup.get("sparsify_fraction", 1.0))
    if fraction < 1.0:
        notes.append(
            f"The study sparsified only the last {fraction:g} of each prompt's tokens; NNCF sparsifies every token."
        )
    return notes


def nncf_document(lookup: dict[str, Any]) -> dict[str, Any]:
    """The ``nncf.json`` document for ``lookup`` (plain JSON: needs neither nncf nor torch)."""
    targets = _site_targets(lookup)  # checks the lookup first
    return {
        "format": NNCF_FORMAT,
        "about": (
            f"Per-site activation sparsity targets for NNCF's {NNCF_FUNCTION} ({NNCF_REQUIREMENT}), from a "
            "sparsealloc lookup: give it {TargetScope(names=[t['scope']]): t['sparsity'] for t in targets}. "
            "NNCF calibrates its own thresholds of |x| on your data; the lookup's thresholds are not used."
        ),
        "nncf": {
            "requirement": NNCF_REQUIREMENT,
            "function": NNCF_FUNCTION,
            "scope": "TargetScope(names=[scope])",
            "scope_names": "NNCF 3.4 torch graph nodes: the site's module path in its block, "
            "'/'-separated, under 'model/', then 'linear/<block index>'",
        },
        "model": lookup["model"],
        "lookup": {key: lookup.get(key) for key in ("format", "created_at", "target_sparsity", "achieved_sparsity")},
        "score": lookup.get("score", {}).get("kind"),
        "sparsify_fraction": lookup.get("sparsify_fraction"),
        "notes": _divergences(lookup),
        "targets": targets,
    }


def write_nncf_file(directory: Path, lookup: dict[str, Any]) -> None:
    """Write ``nncf.json`` for ``lookup`` into ``directory`` atomically (beside ``lookup.json``, say).

    Pure JSON, so an export can carry NNCF's targets where neither nncf nor torch is installed; it fits
    :func:`allocator.write_lookup`'s ``extra`` callback as ``lambda d: write_nncf_file(d, lookup)``.
    """
    from allocator import atomic_write_bytes

    text = json.dumps(nncf_document(lookup), indent=2, allow_nan=False) + "\n"
    path = Path(directory) / NNCF_FILE
    try:
        atomic_write_bytes(path, text.encode("utf-8"))
    except OSError as error:
        raise OutputError(f"Cannot write {str(path)!r}: {error.strerror or error}.") from error


def nncf_targets(lookup: dict[str, Any], model: Any) -> dict[str, float]:
    """NNCF node name -> target sparsity, one entry per site of every block, for ``model``.

    Checks first that ``model`` (a transformers causal LM, not yet wrapped by NNCF: its hooks change the
    fingerprint) is the one the lookup was made for, since NNCF would apply any lookup of the same
    architecture without complaint.
    """
    from allocator.export import check_lookup_model  # imports torch: not needed to write nncf.json

    check_lookup_model(lookup, model)  # and the lookup's block count and weighted means against the model's
    return {target["scope"]: target["sparsity"] for target in _site_targets(lookup)}


def _import_nncf() -> tuple[Any, Any, Any]:
    """nncf, its ``TargetScope`` and ``sparsify_activations``; or one sentence saying how to install nncf."""
    try:
        import nncf
        from nncf.experimental.torch.sparsify_activations import TargetScope, sparsify_activations
    except ImportError:
        raise NNCFNotInstalledError("NNCF is not installed; `pip install sparsealloc[nncf]`.") from None
    return nncf, TargetScope, sparsify_activations


def _as_dataset(nncf: Any, dataset: Any, model: Any, batch_size: int) -> Any:
    """``dataset`` as an ``nncf.Dataset`` of model inputs: as given, or a token tensor cut into batches."""
    import torch

    if isinstance(dataset, nncf.Dataset):
        return dataset
    if not isinstance(dataset, torch.Tensor):
        return nncf.Dataset(dataset)  # items are passed to the model as NNCF does: dict -> kwargs, tuple -> args
    if dataset.dim() != 2 or dataset.shape[0] == 0 or batch_size < 1:
        raise InputError(
            "The calibration tokens should be a non-empty n x seq_len tensor and `batch_size` positive, got shape "
            f"{tuple(dataset.shape)} and {batch_size}."
        )
    device = next(model.parameters()).device
    batches = [
        {"input_ids": dataset[start : start + batch_size].to(device), "use_cache": False}  # (B, T)
        for start in range(0, dataset.shape[0], batch_size)
    ]
    return nncf.Dataset(batches)


def sparsify(
    model: Any,
    lookup_dir: str | Path,
    dataset: Any,
    *,
    batch_size: int = 8,
    sparsity: float | None = None,
    **kwargs: Any,
) -> Any:
    """Sparsify ``model``'s linear inputs with NNCF at the lookup's per-site sparsities; returns NNCF's model.

    ``dataset`` calibrates NNCF's thresholds: an ``nncf.Dataset`` of model inputs, any iterable NNCF can wrap
    as one, or a ``n x seq_len`` tensor of token ids (run in batches of ``batch_size`` rows). ``kwargs`` go
    to NNCF's ``sparsify_activations`` (``ignored_scope``). NNCF averages each layer's per-batch quantiles
    with more weight on the last batches (an exponential moving average, alpha 0.2), so a few large batches
    calibrate better than many small ones.

    ``sparsity`` picks the point of a frontier export (interpolated between targets, as
    :func:`allocator.frontier_point` does); for a single-target lookup it must be None or its target.

    The lookup is read and checked first (format, completeness, and that ``model`` is the lookup's model);
    NNCF then wraps ``model`` in place, so the returned model is ``model`` itself with NNCF's hooks, whose
    ``ActivationsSparsifier`` modules hold each layer's calibrated ``running_threshold``.
    """
    nncf, target_scope, sparsify_activations = _import_nncf()
    from allocator import frontier_point

    lookup = frontier_point(lookup_dir, sparsity)
    targets = nncf_targets(lookup, model)
    for note in _divergences(lookup):
        warnings.warn(note, UserWarning, stacklevel=2)
    scopes = {target_scope(names=[name]): share for name, share in targets.items()}
    return sparsify_activations(model, _as_dataset(nncf, dataset, model, batch_size), scopes, **kwargs)


def nncf_sparsifiers(model: Any) -> dict[str, Any]:
    """NNCF's ``ActivationsSparsifier`` modules of a sparsified model, by graph node.

    NNCF installs each as a pre-hook module named ``__nncf_hooks.pre_hooks.<node>__<port>.0``.
    """
    prefix = "__nncf_hooks.pre_hooks."
    return {
        name.removeprefix(prefix).rsplit("__", 1)[0]: module
        for name, module in model.named_modules()
        if name.startswith(prefix) and type(module).__name__ == "ActivationsSparsifier"
    }


def _count_zeros(model: Any) -> tuple[dict[str, list[int]], list[Any]]:
    """Forward hooks on NNCF's sparsifiers counting ``[zeros, entries]`` of their outputs, by node."""
    zeros: dict[str, list[int]] = {}
    handles = []
    for node, sparsifier in nncf_sparsifiers(model).items():

        def count(module: Any, args: Any, output: Any, node: str = node) -> None:
            counts = zeros.setdefault(node, [0, 0])
            counts[0] += int((output == 0).sum())
            counts[1] += output.numel()

        handles.append(sparsifier.register_forward_hook(count))
    return zeros, handles


def measured_site_sparsity(model: Any, tokens: Any, *, batch_size: int = 8) -> dict[str, float]:
    """Per NNCF node, the share of zeros in what its linear layer really reads (its sparsifier's output), over
    a forward pass of ``tokens`` (an ``n x seq_len`` tensor). NNCF's mask acts inside the module's forward, so
    a pre-hook on the layer itself would see the dense input."""
    import torch

    zeros, handles = _count_zeros(model)
    device = next(model.parameters()).device
    try:
        with torch.no_grad():
            for start in range(0, tokens.shape[0], batch_size):
                model(input_ids=tokens[start : start + batch_size].to(device), use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    return {node: zero / total for node, (zero, total) in zeros.items()}


def evaluate(model: Any, tokens: Any, *, reference: Any = None, batch_size: int = 8) -> Any:
    """Perplexity, and KL to ``reference`` (an :class:`allocator.DenseReference` of ``tokens``), of an
    NNCF-sparsified model, through the model's own top-level forward.

    NNCF runs its hooks only inside the wrapped model's ``forward``; :func:`allocator.evaluate_tokens` by
    default calls the model's body and LM head directly (to chunk the head), which would skip them and measure
    the dense model. The returned :class:`allocator.Evaluation`'s ``measured_sparsity`` is the share of zeros
    over every entry NNCF's sparsifiers output (entry-weighted, not parameter-weighted; per site:
    :func:`measured_site_sparsity`).
    """
    from allocator import ModelAdapter, evaluate_tokens

    zeros, handles = _count_zeros(model)

    def share_of_zeros() -> float:
        zero, total = (sum(counts[i] for counts in zeros.values()) for i in (0, 1))
        return zero / total if total else 0.0

    try:
        return evaluate_tokens(
            ModelAdapter(model),
            tokens,
            reference=reference,
            batch_size=batch_size,
            measured_sparsity=share_of_zeros,
            whole_forward=True,
        )
    finally:
        for handle in handles:
            handle.remove()
