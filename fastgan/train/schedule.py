"""The learning-rate schedule: constant, then (``--lr-decay``) linearly down to zero
over the last fraction of training. ``fastgan train`` and the mode benchmark's
ensembles step their optimizers by the same schedule."""

from __future__ import annotations

import functools

import torch


def lr_scale(step: int, steps: int, decay: float) -> float:
    """1 until the last ``decay`` fraction of training, then linearly down to 0."""
    start = steps * (1.0 - decay)
    if decay <= 0 or step <= start:
        return 1.0
    return max(0.0, (steps - step) / (steps - start))


def _scale_after(index: int, steps: int, decay: float) -> float:
    # LambdaLR counts from 0 and is stepped after each training step: index i is the
    # scale for training step i + 1
    return lr_scale(index + 1, steps, decay)


def lr_scheduler(optimizer: torch.optim.Optimizer, steps: int,
                 decay: float) -> torch.optim.lr_scheduler.LambdaLR:
    """The schedule of a run of ``steps`` steps, stepped once after each step. Its state
    is its position only (the partial's fields are not saved), so a resumed run may
    change --steps."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, functools.partial(_scale_after, steps=steps, decay=decay))
