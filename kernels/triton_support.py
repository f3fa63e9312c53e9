"""What the Triton kernels share: the import guard, the device check, stable math.

``TRITON_INTERPRET=1`` must be set before this package is imported: Triton decides
at decoration time whether a kernel is compiled for a GPU or interpreted on the CPU.
"""

from __future__ import annotations

import os

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # triton ships for Linux only; the PyTorch references still work
    triton = tl = None

AVAILABLE = triton is not None


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def check_tensors(*tensors: torch.Tensor) -> None:
    """Raise unless the Triton kernels can run on these tensors."""
    if not AVAILABLE:
        raise RuntimeError("FASTGAN_KERNELS=triton: triton is not installed")
    if not interpreting() and not all(t.is_cuda for t in tensors):
        raise RuntimeError("FASTGAN_KERNELS=triton on CPU tensors needs TRITON_INTERPRET=1 "
                           "in the environment before fastgan is imported")


def compute_dtype(t: torch.Tensor) -> torch.dtype:
    """float32 for half types (and float32), float64 stays float64. (A comparison, not
    torch.promote_types: that is a dispatched op, host time on every call.)"""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def grid1d(n: int, block: int) -> tuple[int]:
    return (max(1, triton.cdiv(n, block)),)


if AVAILABLE:
    @triton.jit
    def softplus(x):
        """log(1 + exp(x)), stable for any x: max(x, 0) + log(1 + exp(-|x|))."""
        return tl.maximum(x, 0.0) + tl.log(1.0 + tl.exp(-tl.abs(x)))

    @triton.jit
    def sigmoid(x):
        e = tl.exp(-tl.abs(x))  # never overflows
        return tl.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))

    @triton.jit
    def tanh(x):
        e = tl.exp(-2.0 * tl.abs(x))
        t = (1.0 - e) / (1.0 + e)
        return tl.where(x >= 0, t, -t)
