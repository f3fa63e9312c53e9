"""fastgan.kernels: the GAN hot-path ops as Triton kernels, each with its PyTorch
reference beside it (``bce.py``, ``gan_loss.py``, ``bias_act.py``).

This package depends on torch and triton alone, never on the rest of fastgan, so that
it could ship as a package of its own.

Dispatch, per call: ``FASTGAN_KERNELS=auto`` (default) runs the Triton kernels on CUDA
tensors and the references on CPU tensors; ``triton`` forces the kernels (on CPU
tensors they need ``TRITON_INTERPRET=1``, set before import: that is how the tests run
them here); ``torch`` forces the references. Calls the kernels do not cover (an empty
tensor, a target or weight that requires grad) take the reference.
"""

from __future__ import annotations

import os

import torch

from . import triton_support
from .bce import REDUCTIONS, bce_with_logits_reference, bce_with_logits_triton
from .bias_act import ACTIVATIONS, bias_act_reference, bias_act_triton
from .gan_loss import (
    d_loss_reference,
    d_loss_triton,
    g_loss_reference,
    g_loss_triton,
    rpgan_d_loss_reference,
    rpgan_d_loss_triton,
    rpgan_g_loss_reference,
    rpgan_g_loss_triton,
)

__all__ = ["bce_with_logits", "gan_d_loss", "gan_g_loss", "rpgan_d_loss", "rpgan_g_loss",
           "bias_act", "backend", "REDUCTIONS", "ACTIVATIONS"]

_BACKENDS = ("auto", "triton", "torch")


def backend() -> str:
    """The dispatch setting from FASTGAN_KERNELS (default auto)."""
    value = os.environ.get("FASTGAN_KERNELS", "auto").strip().lower() or "auto"
    if value not in _BACKENDS:
        raise ValueError(f"FASTGAN_KERNELS must be one of {_BACKENDS}, got {value!r}")
    return value


def use_triton(*tensors: torch.Tensor) -> bool:
    """Whether a call on these tensors runs the Triton kernel."""
    setting = backend()
    if setting == "torch" or any(t.numel() == 0 for t in tensors):
        return False
    if setting == "auto":
        return triton_support.AVAILABLE and all(t.is_cuda for t in tensors)
    triton_support.check_tensors(*tensors)
    return True


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
    extra = [t for t in (target, weight) if isinstance(t, torch.Tensor)]
    if use_triton(input) and not any(t.requires_grad for t in extra):
        return bce_with_logits_triton(input, target, weight, reduction)
    return bce_with_logits_reference(input, target, weight, reduction)


def gan_d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor):
    """Discriminator phase: (loss, mean D(x), mean D(G(z))), all float32 tensors."""
    if use_triton(real_logits, fake_logits):
        return d_loss_triton(real_logits, fake_logits)
    return d_loss_reference(real_logits, fake_logits)


def gan_g_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """Generator phase: the non-saturating loss BCE(D(G(z)), 1), float32."""
    if use_triton(fake_logits):
        return g_loss_triton(fake_logits)
    return g_loss_reference(fake_logits)


def rpgan_d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor):
    """Relativistic pairing loss (R3GAN), discriminator phase: mean softplus(-(D(x) -
    D(G(z)))) over logits paired elementwise (same shape). Returns (loss, mean D(x), mean
    D(G(z)), mean sigmoid(D(x) - D(G(z)))), all float32 tensors; the last is the one
    that reads as a probability under this loss (see gan_loss.py)."""
    if use_triton(real_logits, fake_logits):
        return rpgan_d_loss_triton(real_logits, fake_logits)
    return rpgan_d_loss_reference(real_logits, fake_logits)


def rpgan_g_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Relativistic pairing loss (R3GAN), generator phase: mean softplus(-(D(G(z)) -
    D(x))), float32. D(x) comes from the frozen D; it gets a gradient only if it
    requires one."""
    if use_triton(real_logits, fake_logits):
        return rpgan_g_loss_triton(real_logits, fake_logits)
    return rpgan_g_loss_reference(real_logits, fake_logits)


def bias_act(x: torch.Tensor, b: torch.Tensor | None = None, dim: int = 1,
             act: str = "linear", alpha: float | None = None, gain: float | None = None,
             clamp: float | None = None) -> torch.Tensor:
    """y = clamp(act(x + b) * gain, -clamp, clamp), b broadcast along ``dim``.

    StyleGAN2's conventions: ``act`` one of linear, relu, lrelu, tanh, sigmoid, elu,
    selu, softplus, swish; alpha (lrelu) defaults to 0.2; gain defaults to sqrt(2) for
    relu, lrelu and swish, else 1; ``clamp`` None means no clamping. First- and
    second-order gradients.
    """
    tensors = (x,) if b is None else (x, b)
    if use_triton(*tensors):
        return bias_act_triton(x, b, dim, act, alpha, gain, clamp)
    return bias_act_reference(x, b, dim, act, alpha, gain, clamp)
