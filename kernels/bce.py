"""Binary cross-entropy on logits: the PyTorch reference implementation.

The Triton kernel (a later addition) must match this function; it is also what runs on
CPU tensors by default. The math follows the numerically stable form

    loss = max(x, 0) - x * t + log1p(exp(-|x|))

evaluated in float32 whatever the input dtype, so that bf16/fp16 logits under autocast
give a float32 loss (a GAN's losses and D(x) statistics are logged and compared across
runs; half-precision reductions would make them noisy).
"""

from __future__ import annotations

import torch

REDUCTIONS = ("mean", "sum", "none")


def bce_with_logits_reference(
    input: torch.Tensor,
    target: torch.Tensor | float,
    weight: torch.Tensor | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    x = input.float()
    if isinstance(target, torch.Tensor):
        t = target.float()
    else:
        t = float(target)
    loss = x.clamp_min(0) - x * t + torch.log1p(torch.exp(-x.abs()))
    if weight is not None:
        loss = loss * weight.float()
    if isinstance(target, torch.Tensor) or weight is not None:
        # Broadcasting may have grown the result beyond input's shape, exactly as torch's
        # own function does (it raises instead); keep torch's rule: target and weight must
        # broadcast *to* input.
        if loss.shape != x.shape:
            raise ValueError(
                f"target/weight of shape {tuple(loss.shape)} do not broadcast to input {tuple(x.shape)}"
            )
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss
