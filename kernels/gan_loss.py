"""The non-saturating GAN losses and the statistics logged with them: PyTorch reference.

D loss: BCE(D(x), 1) + BCE(D(G(z)), 0); G loss: BCE(D(G(z)), 1). The statistics are the
mean of sigmoid(logits): D(x) on real images and D(G(z)) on generated ones, 0.5 when D
can no longer tell them apart. Everything is returned as float32 tensors, with no host
synchronisation, so the training loop can accumulate them on the device and read them
only when it logs. A fused Triton kernel computing the same in one launch per phase is
to sit beside this reference.
"""

from __future__ import annotations

import torch

from .bce import bce_with_logits_reference


def d_loss_reference(real_logits: torch.Tensor, fake_logits: torch.Tensor):
    """(loss, mean D(x), mean D(G(z))) for the discriminator phase."""
    loss = (bce_with_logits_reference(real_logits, 1.0)
            + bce_with_logits_reference(fake_logits, 0.0))
    with torch.no_grad():
        d_real = torch.sigmoid(real_logits.float()).mean()
        d_fake = torch.sigmoid(fake_logits.float()).mean()
    return loss, d_real, d_fake


def g_loss_reference(fake_logits: torch.Tensor) -> torch.Tensor:
    """Non-saturating generator loss: -log D(G(z)), i.e. BCE(D(G(z)), 1)."""
    return bce_with_logits_reference(fake_logits, 1.0)
