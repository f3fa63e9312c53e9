"""Fused bias + activation: y = clamp(act(x + b) * gain, -clamp, clamp), with the
conventions of StyleGAN2's ``bias_act`` (activations, default alpha and gain, clamp).

Three pieces, each differentiable by the next, so that second-order gradients (an R1
penalty through a network built from this op) are exact:

* forward:   y  = clamp(act(z) * gain),            z = x + b (b broadcast along ``dim``)
* gradient:  dz = dy * gain * act'(z) * m,          m = [|act(z) * gain| < clamp]
* its grad:  d(dz)/d(dy) is the gradient op again; d(dz)/dz = dy * gain * act''(z) * m

One Triton kernel computes all three (a compile-time ``MODE``), reading x, b and the
incoming gradients once and writing one tensor: the whole op is one pass over memory,
where eager PyTorch makes three to five. The math runs in float32 for fp16/bf16
tensors; results have the input's dtype. Any dense memory layout works as it is
(channels_last included): the channel of an element is ``(offset // stride[dim]) % C``.
Third-order gradients are not supported (they raise).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .triton_support import AVAILABLE, compute_dtype, grid1d, sigmoid, tanh, tl, triton

BLOCK = 1024


@dataclass(frozen=True)
class Activation:
    code: int  # the kernel's ACT constant
    def_alpha: float
    def_gain: float


ACTIVATIONS = {
    "linear": Activation(0, 0.0, 1.0),
    "relu": Activation(1, 0.0, math.sqrt(2)),
    "lrelu": Activation(2, 0.2, math.sqrt(2)),
    "tanh": Activation(3, 0.0, 1.0),
    "sigmoid": Activation(4, 0.0, 1.0),
    "elu": Activation(5, 0.0, 1.0),
    "selu": Activation(6, 0.0, 1.0),
    "softplus": Activation(7, 0.0, 1.0),
    "swish": Activation(8, 0.0, math.sqrt(2)),
}
_HALF = (torch.float16, torch.bfloat16)
_PIECEWISE_LINEAR = ("linear", "relu", "lrelu")


def resolve(act: str, alpha: float | None, gain: float | None, clamp: float | None):
    """(Activation, alpha, gain, clamp) with StyleGAN2's defaults filled in."""
    if act not in ACTIVATIONS:
        raise ValueError(f"act must be one of {', '.join(ACTIVATIONS)}, got {act!r}")
    spec = ACTIVATIONS[act]
    alpha = spec.def_alpha if alpha is None else float(alpha)
    gain = spec.def_gain if gain is None else float(gain)
    if clamp is not None and clamp < 0:
        raise ValueError(f"clamp must be >= 0 or None, got {clamp}")
    return spec, alpha, gain, clamp


def _bias_shape(x: torch.Tensor, b: torch.Tensor, dim: int) -> list[int]:
    if b.ndim != 1 or b.shape[0] != x.shape[dim]:
        raise ValueError(f"b must have shape [{x.shape[dim]}] (x.shape[{dim}]), "
                         f"got {tuple(b.shape)}")
    shape = [1] * x.ndim
    shape[dim] = -1
    return shape


# ------------------------------------------------------------------ reference

def _act_reference(z: torch.Tensor, act: str, alpha: float, inplace: bool) -> torch.Tensor:
    if act == "linear":
        return z
    if act == "relu":
        return F.relu(z, inplace=inplace)
    if act == "lrelu":
        return F.leaky_relu(z, alpha, inplace=inplace)
    if act == "tanh":
        return torch.tanh(z)
    if act == "sigmoid":
        return torch.sigmoid(z)
    if act == "elu":
        return F.elu(z)
    if act == "selu":
        return F.selu(z)
    if act == "softplus":
        return F.softplus(z)
    return F.silu(z)  # swish


def bias_act_reference(x: torch.Tensor, b: torch.Tensor | None = None, dim: int = 1,
                       act: str = "linear", alpha: float | None = None,
                       gain: float | None = None, clamp: float | None = None) -> torch.Tensor:
    """Plain differentiable PyTorch ops (math in float32, or float64 for float64 x;
    result in x's dtype). What runs on CPU by default, so it spares memory passes:
    the bias add also converts to float32, and relu/lrelu then work in place on that
    fresh tensor (their gradients need only their result, so autograd allows it).

    One exception to float32 math: half-precision x with linear, relu or lrelu and no
    gain or clamp stays in its dtype. The result is then the same (linear, relu) or
    within one rounding (lrelu), and the float32 round trip would cost a CPU training
    step a fifth more time in DCGAN's discriminator.
    """
    _, alpha, gain, clamp = resolve(act, alpha, gain, clamp)
    dtype = compute_dtype(x)
    if x.dtype in _HALF and act in _PIECEWISE_LINEAR and gain == 1 and clamp is None:
        dtype = x.dtype
    if b is not None:
        z = torch.add(x, b.to(dtype).reshape(_bias_shape(x, b, dim)))
    else:
        z = x.to(dtype)
    y = _act_reference(z, act, alpha, inplace=z is not x)
    if gain != 1:
        y = y * gain
    if clamp is not None:
        # hardtanh is clamp with the kernel's gradient mask (|y| < clamp, strict), in
        # one op each way (clamp's backward takes five)
        y = F.hardtanh(y, -clamp, clamp)
    return y.to(x.dtype)


# ------------------------------------------------------------------ kernel

if AVAILABLE:
    @triton.jit
    def _bias_act_kernel(x_ptr, b_ptr, g1_ptr, g2_ptr, out_ptr, n, C, stride_c, alpha, gain,
                         clamp, ACT: tl.constexpr, MODE: tl.constexpr, HAS_B: tl.constexpr,
                         HAS_CLAMP: tl.constexpr, BLOCK: tl.constexpr):
        """MODE 0: y; 1: dz = g1 * gain * act'(z) * m; 2: g2 * g1 * gain * act''(z) * m."""
        off = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        msk = off < n
        z = tl.load(x_ptr + off, mask=msk, other=0.0).to(tl.float32)
        if HAS_B:
            z += tl.load(b_ptr + (off // stride_c) % C, mask=msk, other=0.0).to(tl.float32)
        pos = z > 0.0
        if ACT == 0:  # linear
            a = z
            d1 = tl.full(z.shape, 1.0, tl.float32)
            d2 = tl.zeros(z.shape, tl.float32)
        elif ACT == 1:  # relu
            a = tl.where(pos, z, 0.0)
            d1 = tl.where(pos, 1.0, 0.0)
            d2 = tl.zeros(z.shape, tl.float32)
        elif ACT == 2:  # lrelu
            a = tl.where(pos, z, z * alpha)
            d1 = tl.where(pos, 1.0, alpha)
            d2 = tl.zeros(z.shape, tl.float32)
        elif ACT == 3:  # tanh
            a = tanh(z)
            d1 = 1.0 - a * a
            d2 = -2.0 * a * d1
        elif ACT == 4:  # sigmoid
            a = sigmoid(z)
            d1 = a * (1.0 - a)
            d2 = d1 * (1.0 - 2.0 * a)
        elif ACT == 5:  # elu
            e = tl.exp(tl.minimum(z, 0.0))
            a = tl.where(pos, z, e - 1.0)
            d1 = tl.where(pos, 1.0, e)
            d2 = tl.where(pos, 0.0, e)
        elif ACT == 6:  # selu
            e = tl.exp(tl.minimum(z, 0.0))
            a = tl.where(pos, 1.0507009873554805 * z, 1.7580993408473766 * (e - 1.0))
            d1 = tl.where(pos, 1.0507009873554805, 1.7580993408473766 * e)
            d2 = tl.where(pos, 0.0, 1.7580993408473766 * e)
        elif ACT == 7:  # softplus
            s = sigmoid(z)
            a = tl.maximum(z, 0.0) + tl.log(1.0 + tl.exp(-tl.abs(z)))
            d1 = s
            d2 = s * (1.0 - s)
        else:  # swish: z * sigmoid(z)
            s = sigmoid(z)
            a = z * s
            d1 = s * (1.0 + z * (1.0 - s))
            d2 = s * (1.0 - s) * (2.0 + z * (1.0 - 2.0 * s))
        y = a * gain
        if MODE == 0:
            if HAS_CLAMP:
                y = tl.minimum(tl.maximum(y, -clamp), clamp)
            out = y
        else:
            g1 = tl.load(g1_ptr + off, mask=msk, other=0.0).to(tl.float32)
            if MODE == 1:
                out = g1 * gain * d1
            else:
                g2 = tl.load(g2_ptr + off, mask=msk, other=0.0).to(tl.float32)
                out = g2 * g1 * gain * d2
            if HAS_CLAMP:
                out = tl.where(tl.abs(y) < clamp, out, 0.0)
        tl.store(out_ptr + off, out.to(out_ptr.dtype.element_ty), mask=msk)


def _dense(t: torch.Tensor) -> torch.Tensor:
    if t.is_contiguous() or (t.ndim == 4 and t.is_contiguous(memory_format=torch.channels_last)):
        return t
    return t.contiguous()


def _like(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``t`` in the memory layout of ``x``, so one offset indexes both."""
    return t if t.stride() == x.stride() else torch.empty_like(x).copy_(t)


def _launch(mode: int, x, b, g1, g2, dim: int, code: int, alpha: float, gain: float,
            clamp: float) -> torch.Tensor:
    out = torch.empty_like(x)  # the same dense layout as x
    n = x.numel()
    if n == 0:
        return out
    _bias_act_kernel[grid1d(n, BLOCK)](
        x, b if b is not None else x, _like(g1, x) if g1 is not None else x,
        _like(g2, x) if g2 is not None else x, out, n, x.shape[dim] if x.ndim else 1,
        x.stride(dim) if x.ndim else 1, alpha, gain, max(clamp, 0.0), ACT=code, MODE=mode,
        HAS_B=b is not None, HAS_CLAMP=clamp >= 0, BLOCK=BLOCK)
    return out


def _bias_grad(dz: torch.Tensor, b: torch.Tensor | None, dim: int):
    if b is None:
        return None
    dims = [d for d in range(dz.ndim) if d != dim]
    # accumulate in float32 without a float32 copy of dz (a full extra write and read)
    return dz.sum(dims, dtype=torch.float32).to(b.dtype) if dims else dz.to(b.dtype)


# The three modes as torch.library custom ops: torch.compile sees each as one opaque
# node (fullgraph works), and each op's autograd is the next op, which is what makes
# the gradient itself differentiable. ``clamp`` < 0 means no clamp (the schema has no
# optional floats). The second-order op has no autograd: third order raises.

@torch.library.custom_op("fastgan::bias_act", mutates_args=())
def _bias_act_op(x: torch.Tensor, b: torch.Tensor | None, dim: int, code: int, alpha: float,
                 gain: float, clamp: float) -> torch.Tensor:
    return _launch(0, x, b, None, None, dim, code, alpha, gain, clamp)


@torch.library.custom_op("fastgan::bias_act_grad", mutates_args=())
def _bias_act_grad_op(dy: torch.Tensor, x: torch.Tensor, b: torch.Tensor | None, dim: int,
                      code: int, alpha: float, gain: float, clamp: float) -> torch.Tensor:
    return _launch(1, x, b, dy, None, dim, code, alpha, gain, clamp)


@torch.library.custom_op("fastgan::bias_act_grad2", mutates_args=())
def _bias_act_grad2_op(d_dz: torch.Tensor, dy: torch.Tensor, x: torch.Tensor,
                       b: torch.Tensor | None, dim: int, code: int, alpha: float,
                       gain: float, clamp: float) -> torch.Tensor:
    return _launch(2, x, b, dy, d_dz, dim, code, alpha, gain, clamp)


for _op in (_bias_act_op, _bias_act_grad_op, _bias_act_grad2_op):
    _op.register_fake(lambda *args: torch.empty_like(args[-7]))  # x comes 7th from the end


def _save(ctx, inputs, output):
    *tensors, dim, code, alpha, gain, clamp = inputs
    ctx.save_for_backward(*tensors)
    ctx.params = (dim, code, alpha, gain, clamp)


def _backward(ctx, dy):
    x, b = ctx.saved_tensors
    dz = _bias_act_grad_op(dy, x, b, *ctx.params)
    db = _bias_grad(dz, b, ctx.params[0]) if ctx.needs_input_grad[1] else None
    return (dz, db) + (None,) * 5


def _grad_backward(ctx, d_dz):
    dy, x, b = ctx.saved_tensors
    need_dy, need_x, need_b = ctx.needs_input_grad[:3]
    d_dy = _bias_act_grad_op(d_dz, x, b, *ctx.params) if need_dy else None
    d_x = _bias_act_grad2_op(d_dz, dy, x, b, *ctx.params) if need_x or need_b else None
    d_b = _bias_grad(d_x, b, ctx.params[0]) if need_b else None
    return (d_dy, d_x, d_b) + (None,) * 5


_bias_act_op.register_autograd(_backward, setup_context=_save)
_bias_act_grad_op.register_autograd(_grad_backward, setup_context=_save)


def bias_act_triton(x: torch.Tensor, b: torch.Tensor | None = None, dim: int = 1,
                    act: str = "linear", alpha: float | None = None,
                    gain: float | None = None, clamp: float | None = None) -> torch.Tensor:
    spec, alpha, gain, clamp = resolve(act, alpha, gain, clamp)
    dim = dim % x.ndim if x.ndim else 0
    if b is not None:
        _bias_shape(x, b, dim)
        b = b.contiguous()
    return _bias_act_op(_dense(x), b, dim, spec.code, alpha, gain,
                        -1.0 if clamp is None else float(clamp))
