"""Where a benchmark writes its results by default: ``benchmarks/results/<date>-<machine>/``.

Every committed result lives in a folder named by the day it was measured and the machine
that measured it (``2026-12-02-h200``, ``2026-12-03-cpu``), so that a number in
`benchmarks/README.md` always links to the run that produced it and a later run never
overwrites an earlier one.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def machine_name(device: str = "cpu") -> str:
    """A short name for the machine behind `device`: the GPU's model (``h100``, ``h200``,
    ``a100``...) for a CUDA device, else ``cpu``."""
    if not device.startswith("cuda"):
        return "cpu"
    import torch

    name = torch.cuda.get_device_name(torch.device(device)).lower()
    model = re.search(r"\b([a-z]+\d{2,4}[a-z]?)\b", name.replace("nvidia", ""))
    return model.group(1) if model else re.sub(r"\W+", "-", name).strip("-")


def dated_folder(machine: str) -> Path:
    """``benchmarks/results/<today>-<machine>/``, created."""
    folder = RESULTS / f"{time.strftime('%Y-%m-%d')}-{machine}"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def dated_path(filename: str, device: str = "cpu") -> Path:
    """``benchmarks/results/<today>-<machine of device>/<filename>``, its folder created."""
    return dated_folder(machine_name(device)) / filename
