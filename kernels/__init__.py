"""fastgan.kernels: the GAN hot-path ops, each with a PyTorch reference beside it.

This package depends on torch (and, later, triton) alone, never on the rest of fastgan,
so that it could ship as a package of its own.

Dispatch: ``FASTGAN_KERNELS=auto|triton|torch``. Only the PyTorch reference exists so
far, so every setting runs it; the variable is read here so that callers need not change
when the Triton kernels arrive.
"""

from __future__ import annotations

import os

import torch

from .bce import REDUCTIONS, bce_with_logits_reference
from .gan_loss import d_loss_reference, g_loss_reference

__all__ = ["bce_with_logits", "gan_d_loss", "gan_g_loss", "backend", "REDUCTIONS"]

_BACKENDS = ("auto", "triton", "torch")


def backend() -> str:
    """The dispatch setting from FASTGAN_KERNELS (default auto)."""
    value = os.environ.get("FASTGAN_KERNELS", "auto").strip().lower() or "auto"
    if value not in _BACKENDS:
        raise ValueError(f"FASTGAN_KERNELS must be one of {_BACKENDS}, got {value!r}")
    return value


def bce_with_logits(
    input: torch.Tensor,
    target: torch.Tensor | float,
    weight: torch.Tensor | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """``torch.nn.functional.binary_cross_entropy_with_logits`` semantics, fp32 result.

    ``target`` is a tensor broadcastable to ``input`` or a Python float (the GAN losses
    use 1.0 and 0.0, which saves materialising a target tensor).
    """
    backend()  # validate the setting even while only the reference exists
    return bce_with_logits_reference(input, target, weight, reduction)


def gan_d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor):
    """Discriminator phase: (loss, mean D(x), mean D(G(z))), all float32 tensors."""
    backend()
    return d_loss_reference(real_logits, fake_logits)


def gan_g_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """Generator phase: the non-saturating loss BCE(D(G(z)), 1), float32."""
    backend()
    return g_loss_reference(fake_logits)
