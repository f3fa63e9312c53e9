"""The GAN losses and the statistics logged with them: the PyTorch reference and one
Triton kernel per phase, for two losses.

Non-saturating (``gan_d_loss``, ``gan_g_loss``): D loss BCE(D(x), 1) + BCE(D(G(z)), 0),
G loss BCE(D(G(z)), 1). The statistics are the mean of sigmoid(logits): D(x) on real
images and D(G(z)) on generated ones, 0.5 when D can no longer tell them apart.

Relativistic pairing (``rpgan_d_loss``, ``rpgan_g_loss``; R3GAN, Huang et al., NeurIPS
2024): real and fake logits are paired elementwise (same shape, so the same batch size)
and only their difference counts: D loss mean softplus(-(D(x) - D(G(z)))), G loss mean
softplus(-(D(G(z)) - D(x))). Both losses depend on both logits, so both phases return
gradients for both: in the G phase D(x) normally carries no graph (D is frozen and x
needs no gradient) and autograd never asks for it, but the op stays the exact derivative
of its loss whatever graph the caller builds; the kernel writes it in the same pass and
the backward skips scaling it when the real logits do not require grad.

Under rpgan the statistics D(x) and D(G(z)) are still the mean sigmoid of the raw
logits, which fastgan logs for every loss, but they are no longer probabilities of
being real: the loss does not change when every logit shifts by the same amount, so
D(x) and D(G(z)) can drift together anywhere in (0, 1) at no cost, and neither their
values nor their gap measures how well D separates real from fake. The meaningful
quantity is mean sigmoid(D(x) - D(G(z))), the probability D gives a real image of being
more real than its paired fake: 0.5 when D cannot tell them apart, 1 when it always
can. ``rpgan_d_loss`` returns it as a fourth statistic.

Everything is returned as float32 tensors, with no host synchronisation, so the
training loop can accumulate them on the device and read them only when it logs.

The kernel does a phase in one launch: one program walks the logits (a batch of [N, 1]
logits is far too small to split, and one program sums in a fixed order, so the result
is the same run after run), writing the loss, the statistics and the gradients. Eager
PyTorch needs a dozen launches for the same.
"""

from __future__ import annotations

import torch

from .bce import bce_with_logits_reference
from .triton_support import AVAILABLE, compute_dtype, sigmoid, softplus, tl, triton

BLOCK = 1024


def d_loss_reference(real_logits: torch.Tensor, fake_logits: torch.Tensor):
    """(loss, mean D(x), mean D(G(z))) for the discriminator phase."""
    loss = (bce_with_logits_reference(real_logits, 1.0)
            + bce_with_logits_reference(fake_logits, 0.0))
    return loss, _mean_sigmoid(real_logits), _mean_sigmoid(fake_logits)


def g_loss_reference(fake_logits: torch.Tensor) -> torch.Tensor:
    """Non-saturating generator loss: -log D(G(z)), i.e. BCE(D(G(z)), 1)."""
    return bce_with_logits_reference(fake_logits, 1.0)


def _mean_sigmoid(logits: torch.Tensor) -> torch.Tensor:
    """A logged statistic: float32 and outside any graph."""
    with torch.no_grad():
        return torch.sigmoid(logits.float()).mean()


def _check_pair(real: torch.Tensor, fake: torch.Tensor) -> None:
    """The pairing is elementwise: a [N, 1] against a [N] would broadcast to [N, N]."""
    if real.shape != fake.shape:
        raise ValueError(f"rpgan pairs real and fake logits elementwise: shapes "
                         f"{tuple(real.shape)} and {tuple(fake.shape)} differ")


def _pair_difference(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """D(x) - D(G(z)) in the compute dtype: half logits are subtracted in float32."""
    return real.to(compute_dtype(real)) - fake.to(compute_dtype(fake))


def _rpgan_reference(real_logits: torch.Tensor, fake_logits: torch.Tensor, g_phase: bool):
    """(loss, mean D(x), mean D(G(z)), mean sigmoid(D(x) - D(G(z)))) for one phase."""
    _check_pair(real_logits, fake_logits)
    diff = _pair_difference(real_logits, fake_logits)
    # softplus(-d) = BCE(d, 1) (D: real above fake), softplus(d) = BCE(d, 0) (G: fake above)
    loss = bce_with_logits_reference(diff, 0.0 if g_phase else 1.0)
    return loss, _mean_sigmoid(real_logits), _mean_sigmoid(fake_logits), _mean_sigmoid(diff)


def rpgan_d_loss_reference(real_logits: torch.Tensor, fake_logits: torch.Tensor):
    """(loss, mean D(x), mean D(G(z)), mean sigmoid(D(x) - D(G(z)))) for D's phase."""
    return _rpgan_reference(real_logits, fake_logits, False)


def rpgan_g_loss_reference(real_logits: torch.Tensor, fake_logits: torch.Tensor
                           ) -> torch.Tensor:
    """R3GAN's generator loss: mean softplus(-(D(G(z)) - D(x)))."""
    return _rpgan_reference(real_logits, fake_logits, True)[0]


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

    @triton.jit
    def _rpgan_kernel(real_ptr, fake_ptr, loss_ptr, d_real_ptr, d_fake_ptr, d_pair_ptr,
                      g_real_ptr, g_fake_ptr, n, G_PHASE: tl.constexpr, BLOCK: tl.constexpr):
        loss = tl.zeros([BLOCK], tl.float32)
        acc_real = tl.zeros([BLOCK], tl.float32)
        acc_fake = tl.zeros([BLOCK], tl.float32)
        acc_pair = tl.zeros([BLOCK], tl.float32)
        inv = 1.0 / n
        for start in range(0, n, BLOCK):
            off, m, r, s_real = _chunk(real_ptr, start, n, BLOCK)
            _, _, f, s_fake = _chunk(fake_ptr, start, n, BLOCK)
            d = r - f
            s_pair = sigmoid(d)
            if G_PHASE:  # softplus(-(D(G(z)) - D(x))) = softplus(d)
                loss += tl.where(m, softplus(d), 0.0) * inv
                g = s_pair * inv
            else:  # softplus(-(D(x) - D(G(z)))) = softplus(-d)
                loss += tl.where(m, softplus(-d), 0.0) * inv
                g = (s_pair - 1.0) * inv
            acc_real += tl.where(m, s_real, 0.0)
            acc_fake += tl.where(m, s_fake, 0.0)
            acc_pair += tl.where(m, s_pair, 0.0)
            # the loss is a function of d alone: d/d real = g, d/d fake = -g
            tl.store(g_real_ptr + off, g.to(g_real_ptr.dtype.element_ty), mask=m)
            tl.store(g_fake_ptr + off, (-g).to(g_fake_ptr.dtype.element_ty), mask=m)
        tl.store(d_real_ptr, tl.sum(acc_real, axis=0) * inv)
        tl.store(d_fake_ptr, tl.sum(acc_fake, axis=0) * inv)
        tl.store(d_pair_ptr, tl.sum(acc_pair, axis=0) * inv)
        tl.store(loss_ptr, tl.sum(loss, axis=0))


# Each phase as torch.library custom ops, so that torch.compile traces a step that uses
# them (one opaque node each, fullgraph works): the forward returns the loss, the
# statistics and the gradients the same pass computed; the backward scales those.
# Both ops take (real, fake, g_phase) and end their outputs with the two gradients.

def _empty_outputs(real: torch.Tensor, fake: torch.Tensor, statistics: int):
    """The loss and ``statistics`` float32 scalars, then d loss / d real and / d fake."""
    scalars = tuple(torch.empty((), dtype=torch.float32, device=fake.device)
                    for _ in range(1 + statistics))
    return (*scalars, torch.empty_like(real), torch.empty_like(fake))


def _save_gradients(ctx, inputs, output):
    """Shared setup_context: only the loss is differentiable."""
    real, fake, g_phase = inputs
    ctx.save_for_backward(real, fake, output[-2], output[-1])
    ctx.mark_non_differentiable(*output[1:])
    ctx.g_phase = g_phase


@torch.library.custom_op("fastgan::gan_loss", mutates_args=())
def _gan_loss_op(real: torch.Tensor, fake: torch.Tensor, g_phase: bool
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, mean D(x), mean D(G(z)), d loss / d real, d loss / d fake)."""
    out = _empty_outputs(real, fake, 2)
    _gan_loss_kernel[(1,)](real, fake, *out, real.numel(), fake.numel(), G_PHASE=g_phase,
                           BLOCK=BLOCK)
    return out


@_gan_loss_op.register_fake
def _gan_loss_shapes(real, fake, g_phase):
    return _empty_outputs(real, fake, 2)


def _gan_loss_backward(ctx, grad_loss, _d_real, _d_fake, _g_real, _g_fake):
    """The loss's gradients, scaled by the incoming one."""
    real, fake, g_real, g_fake = ctx.saved_tensors
    if torch.is_grad_enabled():  # create_graph: a differentiable recomputation
        g_fake = (torch.sigmoid(fake.float()) - float(ctx.g_phase)) / fake.numel()
        g_real = (torch.sigmoid(real.float()) - 1.0) / max(real.numel(), 1)
    grad_real = None if ctx.g_phase else (g_real * grad_loss).to(real.dtype)
    return grad_real, (g_fake * grad_loss).to(fake.dtype), None


_gan_loss_op.register_autograd(_gan_loss_backward, setup_context=_save_gradients)


@torch.library.custom_op("fastgan::rpgan_loss", mutates_args=())
def _rpgan_loss_op(real: torch.Tensor, fake: torch.Tensor, g_phase: bool
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                              torch.Tensor, torch.Tensor]:
    """(loss, mean D(x), mean D(G(z)), mean sigmoid(D(x) - D(G(z))), d loss / d real,
    d loss / d fake)."""
    _check_pair(real, fake)  # the kernel reads both at the same offsets
    out = _empty_outputs(real, fake, 3)
    _rpgan_kernel[(1,)](real, fake, *out, real.numel(), G_PHASE=g_phase, BLOCK=BLOCK)
    return out


@_rpgan_loss_op.register_fake
def _rpgan_loss_shapes(real, fake, g_phase):
    _check_pair(real, fake)
    return _empty_outputs(real, fake, 3)


def _rpgan_backward(ctx, grad_loss, *_statistics_and_gradients):
    """The loss's gradients, scaled by the incoming one; none for logits that need none
    (D(x) in the G phase, as a rule), which saves a launch."""
    real, fake, g_real, g_fake = ctx.saved_tensors
    if torch.is_grad_enabled():  # create_graph: a differentiable recomputation
        # d loss / d (D(x) - D(G(z))): sigmoid(d) - 1 for D, sigmoid(d) for G
        g_real = (torch.sigmoid(_pair_difference(real, fake)) - float(not ctx.g_phase)
                  ) / real.numel()
        g_fake = -g_real
    grad_real = (g_real * grad_loss).to(real.dtype) if ctx.needs_input_grad[0] else None
    grad_fake = (g_fake * grad_loss).to(fake.dtype) if ctx.needs_input_grad[1] else None
    return grad_real, grad_fake, None


_rpgan_loss_op.register_autograd(_rpgan_backward, setup_context=_save_gradients)


def d_loss_triton(real_logits: torch.Tensor, fake_logits: torch.Tensor):
    loss, d_real, d_fake, _, _ = _gan_loss_op(real_logits.contiguous(),
                                              fake_logits.contiguous(), False)
    return loss, d_real, d_fake


def g_loss_triton(fake_logits: torch.Tensor) -> torch.Tensor:
    fake = fake_logits.contiguous()
    return _gan_loss_op(fake[:0], fake, True)[0]


def rpgan_d_loss_triton(real_logits: torch.Tensor, fake_logits: torch.Tensor):
    return _rpgan_loss_op(real_logits.contiguous(), fake_logits.contiguous(), False)[:4]


def rpgan_g_loss_triton(real_logits: torch.Tensor, fake_logits: torch.Tensor
                        ) -> torch.Tensor:
    return _rpgan_loss_op(real_logits.contiguous(), fake_logits.contiguous(), True)[0]
