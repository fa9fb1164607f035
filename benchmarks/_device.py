"""What the figures were measured on, named the same way by every benchmark script."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def device_name(device: str = "cpu") -> str:
    """GPU name (with CUDA version) for cuda devices; CPU model name and usable cores otherwise."""
    if device.startswith("cuda"):
        import torch

        return f"{torch.cuda.get_device_name(torch.device(device))} (CUDA {torch.version.cuda})"
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{model} ({cores} cores)"
