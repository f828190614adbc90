"""Where and in which precision the training computes: the device and bf16 autocast or fp32."""

from __future__ import annotations

import os
import platform
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

import torch

__all__ = ["Compute"]


def _has_native_bf16(device: torch.device) -> bool:
    """CUDA devices that support bf16, or CPUs with AVX512-BF16 or AMX."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


@dataclass(frozen=True)
class Compute:
    """The training's device and compute precision (the weights always stay fp32)."""

    device: torch.device
    bf16: bool

    @classmethod
    def choose(cls, device: str, precision: str) -> Compute:
        """Resolve ``--device`` (``auto``: CUDA if available) and ``--precision`` (``auto``: bf16 where native)."""
        if device == "auto":
            chosen = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        else:
            chosen = torch.device(device)
        bf16 = _has_native_bf16(chosen) if precision == "auto" else precision == "bf16"
        return cls(chosen, bf16)

    @property
    def precision(self) -> str:
        """The precision as the log and the README name it."""
        return "bf16 autocast" if self.bf16 else "fp32"

    def device_name(self) -> str:
        """The GPU's name, or the CPU's architecture and core count."""
        if self.device.type == "cuda":
            return torch.cuda.get_device_name(self.device)
        return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"

    def autocast(self) -> AbstractContextManager:
        """bf16 autocast on the device when ``bf16``, else a no-op context."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16)
