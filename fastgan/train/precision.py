"""Numeric precision: which one to use, and the autocast context around forward passes.

bf16 needs no loss scaling (it has fp32's exponent range), so autocast alone is enough.
fp16 does: each network gets its own loss scaler (engines.py). Losses and their
statistics are computed in fp32 by fastgan.kernels either way.
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


def resolve_precision(precision: str, device: torch.device, *, points: bool = False) -> str:
    """auto: bf16 where the device has it, except for 2-D points.

    The 2-D datasets are judged at a resolution of 0.03 around means of size 1 to 4,
    finer than bf16's 8-bit mantissa (spacing 0.0078 at 1, 0.03 at 4), and their tiny
    MLPs gain nothing from it: auto picks fp32 there.
    """
    if precision == "auto":
        return "bf16" if bf16_supported(device) and not points else "fp32"
    return precision


def autocast(precision: str, device: torch.device):
    """Autocast for the forward passes; a no-op context in fp32."""
    if precision in ("bf16", "fp16"):
        dtype = torch.bfloat16 if precision == "bf16" else torch.float16
        return torch.autocast(device_type=device.type, dtype=dtype)
    return contextlib.nullcontext()
