"""Binary cross-entropy on logits: the PyTorch reference and its Triton kernel.

Both follow the numerically stable form

    loss = max(x, 0) - x * t + log1p(exp(-|x|))

evaluated in float32 whatever the input dtype, so that bf16/fp16 logits under autocast
give a float32 loss (a GAN's losses and D(x) statistics are logged and compared across
runs; half-precision reductions would make them noisy).

The kernel computes the gradient in the same pass as the loss, into a new buffer (never
over the logits: an R1 penalty may still need their graph), and the backward only
scales it. With ``create_graph`` the backward is recomputed from differentiable torch
ops instead, so second derivatives stay right.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .triton_support import AVAILABLE, compute_dtype, grid1d, sigmoid, softplus, tl, triton

REDUCTIONS = ("mean", "sum", "none")
BLOCK = 1024


def _check(input, target, weight, reduction) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    for name, t in (("target", target), ("weight", weight)):
        # torch's rule: target and weight must broadcast *to* input (it raises otherwise)
        if isinstance(t, torch.Tensor) and \
                torch.broadcast_shapes(t.shape, input.shape) != input.shape:
            raise ValueError(f"{name} of shape {tuple(t.shape)} does not broadcast to "
                             f"input {tuple(input.shape)}")


def bce_with_logits_reference(
    input: torch.Tensor,
    target: torch.Tensor | float,
    weight: torch.Tensor | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    _check(input, target, weight, reduction)
    x = input.to(compute_dtype(input))
    t = target.to(x.dtype) if isinstance(target, torch.Tensor) else float(target)
    # softplus(x) = max(x, 0) + log1p(exp(-|x|)), in torch's stable implementation; the
    # form spelled out with clamp and abs would give autograd a wrong gradient at x = 0
    loss = F.softplus(x) - x * t
    if weight is not None:
        loss = loss * weight.to(x.dtype)
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss


if AVAILABLE:
    @triton.jit
    def _bce_kernel(x_ptr, t_ptr, w_ptr, loss_ptr, partial_ptr, grad_ptr, n, t_scalar,
                    grad_scale, HAS_T: tl.constexpr, HAS_W: tl.constexpr,
                    REDUCE: tl.constexpr, BLOCK: tl.constexpr):
        pid = tl.program_id(0)
        off = pid * BLOCK + tl.arange(0, BLOCK)
        m = off < n
        x = tl.load(x_ptr + off, mask=m, other=0.0).to(tl.float32)
        if HAS_T:
            t = tl.load(t_ptr + off, mask=m, other=0.0).to(tl.float32)
        else:
            t = t_scalar
        loss = softplus(x) - x * t
        grad = sigmoid(x) - t
        if HAS_W:
            w = tl.load(w_ptr + off, mask=m, other=0.0).to(tl.float32)
            loss = loss * w
            grad = grad * w
        tl.store(grad_ptr + off, (grad * grad_scale).to(grad_ptr.dtype.element_ty), mask=m)
        if REDUCE:
            tl.store(partial_ptr + pid, tl.sum(tl.where(m, loss, 0.0), axis=0))
        else:
            tl.store(loss_ptr + off, loss.to(loss_ptr.dtype.element_ty), mask=m)


class _BCEWithLogits(torch.autograd.Function):
    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda")
    def forward(ctx, x, t, w, t_scalar: float, reduction: str):
        n = x.numel()
        scale = 1.0 / n if reduction == "mean" else 1.0
        grad = torch.empty_like(x)
        reduce = reduction != "none"
        dtype = compute_dtype(x)  # float32 for half inputs, as the reference
        loss = torch.empty(x.shape if not reduce else (0,), dtype=dtype, device=x.device)
        partial = torch.empty(grid1d(n, BLOCK)[0] if reduce else 0, dtype=torch.float32,
                              device=x.device)
        _bce_kernel[grid1d(n, BLOCK)](
            x, t if t is not None else x, w if w is not None else x, loss, partial, grad,
            n, t_scalar, scale, HAS_T=t is not None, HAS_W=w is not None, REDUCE=reduce,
            BLOCK=BLOCK)
        ctx.save_for_backward(grad, x, t, w)
        ctx.t_scalar, ctx.scale = t_scalar, scale
        if reduce:
            return (partial.sum() * scale).to(dtype)
        return loss

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx, grad_out):
        grad, x, t, w = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph: a differentiable recomputation
            target = t.float() if t is not None else ctx.t_scalar
            g = torch.sigmoid(x.float()) - target
            if w is not None:
                g = g * w.float()
            return (g * ctx.scale * grad_out).to(x.dtype), None, None, None, None
        return (grad * grad_out).to(x.dtype), None, None, None, None


def bce_with_logits_triton(
    input: torch.Tensor,
    target: torch.Tensor | float,
    weight: torch.Tensor | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """The Triton path; target and weight are broadcast to ``input`` and read alongside
    it. Gradients flow to ``input`` only: callers route targets or weights that require
    grad to the reference."""
    _check(input, target, weight, reduction)
    x = input.contiguous()
    t = (torch.broadcast_to(target, x.shape).contiguous()
         if isinstance(target, torch.Tensor) else None)
    w = torch.broadcast_to(weight, x.shape).contiguous() if weight is not None else None
    t_scalar = 0.0 if isinstance(target, torch.Tensor) else float(target)
    return _BCEWithLogits.apply(x, t, w, t_scalar, reduction)
