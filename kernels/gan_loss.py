"""The non-saturating GAN losses and the statistics logged with them: the PyTorch
reference and one Triton kernel per phase.

D loss: BCE(D(x), 1) + BCE(D(G(z)), 0); G loss: BCE(D(G(z)), 1). The statistics are the
mean of sigmoid(logits): D(x) on real images and D(G(z)) on generated ones, 0.5 when D
can no longer tell them apart. Everything is returned as float32 tensors, with no host
synchronisation, so the training loop can accumulate them on the device and read them
only when it logs.

The kernel does a phase in one launch: one program walks the logits (a batch of [N, 1]
logits is far too small to split, and one program sums in a fixed order, so the result
is the same run after run), writing the loss, both statistics and the gradients. Eager
PyTorch needs a dozen launches for the same.
"""

from __future__ import annotations

import torch

from .bce import bce_with_logits_reference
from .triton_support import AVAILABLE, sigmoid, softplus, tl, triton

BLOCK = 1024


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


if AVAILABLE:
    @triton.jit
    def _chunk(ptr, start, n, BLOCK: tl.constexpr):
        """Offsets, mask, logits (fp32) and their sigmoid, for one chunk of a phase."""
        off = start + tl.arange(0, BLOCK)
        m = off < n
        x = tl.load(ptr + off, mask=m, other=0.0).to(tl.float32)
        return off, m, x, sigmoid(x)

    @triton.jit
    def _gan_loss_kernel(real_ptr, fake_ptr, loss_ptr, d_real_ptr, d_fake_ptr,
                         g_real_ptr, g_fake_ptr, n_real, n_fake,
                         G_PHASE: tl.constexpr, BLOCK: tl.constexpr):
        loss = tl.zeros([BLOCK], tl.float32)
        if not G_PHASE:  # BCE(D(x), 1) = softplus(-x)
            acc = tl.zeros([BLOCK], tl.float32)
            inv = 1.0 / n_real
            for start in range(0, n_real, BLOCK):
                off, m, x, s = _chunk(real_ptr, start, n_real, BLOCK)
                loss += tl.where(m, softplus(-x), 0.0) * inv
                acc += tl.where(m, s, 0.0)
                tl.store(g_real_ptr + off, ((s - 1.0) * inv).to(g_real_ptr.dtype.element_ty),
                         mask=m)
            tl.store(d_real_ptr, tl.sum(acc, axis=0) * inv)
        else:  # no real logits: every output is still defined (0)
            tl.store(d_real_ptr, 0.0)
        acc = tl.zeros([BLOCK], tl.float32)
        inv = 1.0 / n_fake
        for start in range(0, n_fake, BLOCK):
            off, m, x, s = _chunk(fake_ptr, start, n_fake, BLOCK)
            if G_PHASE:  # BCE(D(G(z)), 1): the non-saturating G loss
                loss += tl.where(m, softplus(-x), 0.0) * inv
                g = (s - 1.0) * inv
            else:  # BCE(D(G(z)), 0) = softplus(x)
                loss += tl.where(m, softplus(x), 0.0) * inv
                g = s * inv
            acc += tl.where(m, s, 0.0)
            tl.store(g_fake_ptr + off, g.to(g_fake_ptr.dtype.element_ty), mask=m)
        tl.store(d_fake_ptr, tl.sum(acc, axis=0) * inv)
        tl.store(loss_ptr, tl.sum(loss, axis=0))


# The phase as torch.library custom ops, so that torch.compile traces a step that uses
# them (one opaque node each, fullgraph works): the forward returns the loss, both
# statistics and the gradients the same pass computed; the backward scales those.

@torch.library.custom_op("fastgan::gan_loss", mutates_args=())
def _gan_loss_op(real: torch.Tensor, fake: torch.Tensor, g_phase: bool
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, mean D(x), mean D(G(z)), d loss / d real, d loss / d fake)."""
    loss, d_real, d_fake = (torch.empty((), dtype=torch.float32, device=fake.device)
                            for _ in range(3))
    g_real, g_fake = torch.empty_like(real), torch.empty_like(fake)
    _gan_loss_kernel[(1,)](real, fake, loss, d_real, d_fake, g_real, g_fake, real.numel(),
                           fake.numel(), G_PHASE=g_phase, BLOCK=BLOCK)
    return loss, d_real, d_fake, g_real, g_fake


@_gan_loss_op.register_fake
def _gan_loss_shapes(real, fake, g_phase):
    scalar = fake.new_empty((), dtype=torch.float32)
    return scalar, scalar.clone(), scalar.clone(), torch.empty_like(real), torch.empty_like(fake)


def _gan_loss_save(ctx, inputs, output):
    real, fake, g_phase = inputs
    ctx.save_for_backward(real, fake, output[3], output[4])
    ctx.mark_non_differentiable(*output[1:])
    ctx.g_phase = g_phase


def _gan_loss_backward(ctx, grad_loss, _d_real, _d_fake, _g_real, _g_fake):
    """Only the loss is differentiable: its gradients, scaled by the incoming one."""
    real, fake, g_real, g_fake = ctx.saved_tensors
    if torch.is_grad_enabled():  # create_graph: a differentiable recomputation
        g_fake = (torch.sigmoid(fake.float()) - float(ctx.g_phase)) / fake.numel()
        g_real = (torch.sigmoid(real.float()) - 1.0) / max(real.numel(), 1)
    grad_real = None if ctx.g_phase else (g_real * grad_loss).to(real.dtype)
    return grad_real, (g_fake * grad_loss).to(fake.dtype), None


_gan_loss_op.register_autograd(_gan_loss_backward, setup_context=_gan_loss_save)


def d_loss_triton(real_logits: torch.Tensor, fake_logits: torch.Tensor):
    loss, d_real, d_fake, _, _ = _gan_loss_op(real_logits.contiguous(),
                                              fake_logits.contiguous(), False)
    return loss, d_real, d_fake


def g_loss_triton(fake_logits: torch.Tensor) -> torch.Tensor:
    fake = fake_logits.contiguous()
    return _gan_loss_op(fake[:0], fake, True)[0]
