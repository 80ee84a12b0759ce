"""The checks every command that loads a model runs first, in one order, so that a mistake
in `--model` or `--device` is answered in a second, not after a model load."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import ILReError, UnsupportedModelError
from .hub import check_cached, prepare_hub


def preflight(model: str | None, device: str | None) -> None:
    """Refuse a ``.gguf`` file that is not one, a device this machine does not have (None:
    none was named), and a Hugging Face id that the hub cannot serve and the cache does not
    hold. Prepares hub requests for a hub id, so it runs before anything imports
    ``huggingface_hub``."""
    check_gguf(model)
    from ..loading import is_hub_id  # torch, but neither transformers nor huggingface_hub

    why_offline = prepare_hub() if is_hub_id(model) else None
    if device is not None:
        check_device(device)
    if why_offline is not None:
        check_cached(str(model), why_offline)


def check_gguf(model: str | None) -> None:
    """Refuse a ``.gguf`` model file that does not start with the GGUF magic bytes, before
    the loader announces a conversion of it."""
    if model is None or Path(model).suffix != ".gguf":
        return
    try:
        with Path(model).expanduser().open("rb") as file:
            magic = file.read(4)
    except OSError:
        return  # missing or unreadable: the loader says which
    if magic != b"GGUF":
        raise UnsupportedModelError(
            f"{model} is not a GGUF file (no GGUF magic bytes at its start)"
        )


def parse_device(name: str) -> Any:
    """`name` as a ``torch.device``; refuses a name torch does not know."""
    import torch

    try:
        return torch.device(name)
    except (RuntimeError, ValueError):
        raise ILReError(f"unknown device {name!r}: use cpu, cuda, cuda:N or mps") from None


def check_device(name: str) -> None:
    """Refuse a device that torch does not know, or that this machine does not have."""
    import torch

    device = parse_device(name)
    if device.type == "cuda":
        if torch.version.cuda is None and torch.version.hip is None:
            raise ILReError(f"device {name!r}: this torch is built without CUDA; use --device cpu")
        count = torch.cuda.device_count()
        if count == 0:
            raise ILReError(f"device {name!r}: no CUDA device is available; use --device cpu")
        if device.index is not None and device.index >= count:
            raise ILReError(f"device {name!r}: there are {count} CUDA devices")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ILReError(f"device {name!r}: MPS is not available here; use --device cpu")
    elif device.type not in ("cpu", "cuda", "mps") and not _backend_available(device.type):
        raise ILReError(f"device {name!r} is not available here")


def _backend_available(kind: str) -> bool:
    """Whether torch reports a device of this kind (``xpu``, ...) as available."""
    import torch

    return bool(getattr(getattr(torch, kind, None), "is_available", lambda: False)())
