"""Numeric precision: which one to use, and the autocast context around forward passes.

bf16 needs no loss scaling (it has fp32's exponent range), so autocast alone is enough;
losses and their statistics are computed in fp32 by fastgan.kernels either way.
"""

from __future__ import annotations

import contextlib

import torch


def bf16_supported(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        # Without AVX512-BF16 or AMX, CPU bf16 is emulated and slower than fp32.
        cpu = torch.cpu
        for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
            fn = getattr(cpu, probe, None)
            if fn is not None and fn():
                return True
    return False


def resolve_precision(precision: str, device: torch.device) -> str:
    if precision == "auto":
        return "bf16" if bf16_supported(device) else "fp32"
    return precision


def autocast(precision: str, device: torch.device):
    """Autocast for the forward passes; a no-op context in fp32."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
