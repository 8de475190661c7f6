"""Where a model runs and in what precision: ``device`` and ``dtype``, with ``auto`` for both.

``auto`` is CUDA with bfloat16 where a GPU is present, else the CPU with float32 (CPU kernels for bfloat16
matrix products are slow on most machines, and float32 is exact enough for comparing allocations). A device
that is not present (``cuda`` on a machine without a GPU, ``cuda:3`` on a machine with two) is refused with
one sentence before anything is loaded or stored.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from allocator.errors import InputError

if TYPE_CHECKING:
    import torch

#: What a study or command may ask for.
DEVICES_HELP = "auto, cpu, cuda, cuda:N or mps"
DTYPES: tuple[str, ...] = ("auto", "float32", "bfloat16", "float16")
_DEVICE_PATTERN = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


@dataclass(frozen=True)
class Placement:
    """A resolved device and dtype (names as torch spells them: ``cuda:0``, ``bfloat16``)."""

    device: str
    dtype: str

    @property
    def torch_dtype(self) -> torch.dtype:
        """The dtype as a ``torch.dtype``, for loading weights and building tensors in it."""
        import torch

        return getattr(torch, self.dtype)


def check_device_name(device: str) -> str:
    """``device`` if it is a name sparsealloc understands (whether it is present is checked later)."""
    if not _DEVICE_PATTERN.match(device):
        raise InputError(f"The device {device!r} is not one of {DEVICES_HELP}.")
    return device


def resolve_placement(device: str = "auto", dtype: str = "auto") -> Placement:
    """The concrete device and dtype for ``device`` and ``dtype``; a device that is not present is refused."""
    import torch

    check_device_name(device)
    if dtype not in DTYPES:
        raise InputError(f"The dtype {dtype!r} is not one of {', '.join(DTYPES)}.")
    cuda = torch.cuda.is_available()
    if device == "auto":
        device = "cuda:0" if cuda else "cpu"
    if device.startswith("cuda"):
        index = int(device.split(":")[1]) if ":" in device else 0
        if not cuda:
            raise InputError(f"The device {device!r} was asked for, but this machine has no CUDA GPU.")
        if index >= torch.cuda.device_count():
            raise InputError(
                f"The device {device!r} was asked for, but this machine has {torch.cuda.device_count()} CUDA GPU(s)."
            )
        device = f"cuda:{index}"
    if device == "mps" and not torch.backends.mps.is_available():
        raise InputError("The device 'mps' was asked for, but this machine has no Apple GPU.")
    if dtype == "auto":
        dtype = "bfloat16" if device.startswith("cuda") else "float32"
    return Placement(device=device, dtype=dtype)
