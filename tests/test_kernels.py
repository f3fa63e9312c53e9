"""The kernels against their PyTorch references and torch's own functions.

Every test of an op runs twice: FASTGAN_KERNELS=torch (the reference) and =triton (the
Triton kernels: compiled on a GPU machine, interpreted on CPU tensors here, see
conftest.py). On a GPU machine the tensors live on the GPU.
"""

import math

import pytest
import torch
import torch.nn.functional as F

from fastgan import kernels
from fastgan.kernels.bias_act import bias_act_reference
from fastgan.kernels.gan_loss import (
    d_loss_reference,
    rpgan_d_loss_reference,
    rpgan_g_loss_reference,
)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
ACTS = list(kernels.ACTIVATIONS)


@pytest.fixture(params=["torch", "triton"])
def backend(request, monkeypatch):
    monkeypatch.setenv("FASTGAN_KERNELS", request.param)
    return request.param


def rand(*shape, seed=0, scale=1.0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g) * scale).to(DEVICE, dtype)


def grads(out, inputs, grad_out=None):
    return torch.autograd.grad(out, inputs, grad_out, allow_unused=True)


# ------------------------------------------------------------------ BCE

@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("shape", [(7,), (3, 5, 2), (64, 1), (33, 17)])
def test_bce_matches_torch(backend, shape, reduction):
    x = rand(*shape, scale=5).requires_grad_()
    t = rand(*shape, seed=1).sigmoid()
    w = rand(*shape, seed=2).abs()
    ours = kernels.bce_with_logits(x, t, w, reduction=reduction)
    ref = F.binary_cross_entropy_with_logits(x, t, w, reduction=reduction)
    torch.testing.assert_close(ours, ref)
    g_out = torch.rand_like(ref) if reduction == "none" else None
    torch.testing.assert_close(grads(ours, x, g_out), grads(ref, x, g_out))


@pytest.mark.parametrize("target", [0.0, 1.0, 0.3])
def test_bce_float_target_and_extreme_logits(backend, target):
    x = torch.tensor([-100.0, -20.0, 0.0, 20.0, 100.0], device=DEVICE, requires_grad=True)
    ours = kernels.bce_with_logits(x, target, reduction="none")
    ref = F.binary_cross_entropy_with_logits(x, torch.full_like(x, target), reduction="none")
    assert torch.isfinite(ours).all()
    torch.testing.assert_close(ours, ref)
    (g,) = grads(ours.sum(), x)
    torch.testing.assert_close(g, grads(ref.sum(), x)[0])
    assert torch.isfinite(g).all()


def test_bce_non_contiguous_broadcast_and_half(backend):
    x = rand(5, 8, scale=3).t()  # [8, 5], not contiguous
    assert not x.is_contiguous()
    t = torch.tensor([0.0, 1.0, 1.0, 0.0, 1.0], device=DEVICE)  # broadcast along rows
    torch.testing.assert_close(kernels.bce_with_logits(x, t),
                               F.binary_cross_entropy_with_logits(x, t.expand(8, 5)))
    for dtype in (torch.bfloat16, torch.float16):
        xh = x.to(dtype).requires_grad_()
        out = kernels.bce_with_logits(xh, t, reduction="sum")
        assert out.dtype == torch.float32  # the loss in fp32 for half inputs
        ref = F.binary_cross_entropy_with_logits(xh.float(), t.expand(8, 5), reduction="sum")
        torch.testing.assert_close(out, ref)
        (g,) = grads(out, xh)
        assert g.dtype == dtype


def test_bce_keeps_float64(backend):
    x = rand(9, dtype=torch.float64)
    out = kernels.bce_with_logits(x, 0.25, reduction="none")
    assert out.dtype == kernels.bce_with_logits(x, 0.25).dtype == torch.float64
    torch.testing.assert_close(out, F.binary_cross_entropy_with_logits(
        x, torch.full_like(x, 0.25), reduction="none"), rtol=1e-6, atol=1e-6)


def test_bce_empty_and_bad_arguments(backend):
    empty = torch.zeros(0, device=DEVICE)
    assert kernels.bce_with_logits(empty, 1.0, reduction="sum").item() == 0
    assert kernels.bce_with_logits(empty, 1.0, reduction="none").shape == (0,)
    assert math.isnan(kernels.bce_with_logits(empty, 1.0).item())  # as torch: mean of nothing
    with pytest.raises(ValueError, match="reduction"):
        kernels.bce_with_logits(torch.zeros(3, device=DEVICE), 1.0, reduction="max")
    with pytest.raises(ValueError, match="broadcast"):
        kernels.bce_with_logits(torch.zeros(3, device=DEVICE), torch.zeros(2, 3, device=DEVICE))


def test_bce_gradient_is_a_new_buffer(backend):
    """The logits' graph stays usable: nothing is written over them."""
    x = rand(16, 1, scale=4).requires_grad_()
    before = x.detach().clone()
    loss = kernels.bce_with_logits(x * 2, 1.0)
    (g,) = grads(loss, x)
    assert torch.equal(x.detach(), before) and g.data_ptr() != x.data_ptr()


# ------------------------------------------------------------------ GAN losses

@pytest.mark.parametrize("n", [1, 7, 1500])
def test_gan_losses_and_statistics(backend, n):
    real = rand(n, 1, scale=3).requires_grad_()
    fake = rand(n, 1, seed=1, scale=3).requires_grad_()
    loss, d_real, d_fake = kernels.gan_d_loss(real, fake)
    expected = (F.binary_cross_entropy_with_logits(real, torch.ones_like(real))
                + F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake)))
    assert loss.dtype == d_real.dtype == d_fake.dtype == torch.float32
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(d_real, torch.sigmoid(real).mean())
    torch.testing.assert_close(d_fake, torch.sigmoid(fake).mean())
    torch.testing.assert_close(grads(loss, (real, fake)), grads(expected, (real, fake)))
    g_loss = kernels.gan_g_loss(fake)
    g_expected = -F.logsigmoid(fake).mean()  # non-saturating: -log D(G(z))
    torch.testing.assert_close(g_loss, g_expected)
    torch.testing.assert_close(grads(g_loss, fake), grads(g_expected, fake))


def test_gan_losses_half_logits_and_extremes(backend):
    real = torch.tensor([[100.0], [-100.0], [0.5]], device=DEVICE, dtype=torch.bfloat16)
    fake = torch.tensor([[-100.0], [100.0], [0.0]], device=DEVICE, dtype=torch.bfloat16)
    loss, d_real, d_fake = kernels.gan_d_loss(real.requires_grad_(), fake.requires_grad_())
    ref, ref_real, ref_fake = d_loss_reference(real, fake)
    torch.testing.assert_close(loss, ref)
    torch.testing.assert_close(d_real, ref_real)
    torch.testing.assert_close(d_fake, ref_fake)
    assert torch.isfinite(loss) and all(torch.isfinite(g).all() for g in grads(loss, (real, fake)))


# ------------------------------------------------------------------ relativistic pairing

def softplus_pairing(a, b):
    """R3GAN's loss spelled out with torch's own ops: mean softplus(-(a - b)), in fp32."""
    return F.softplus(-(a.float() - b.float())).mean()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("n", [1, 3, 1025])  # 1025: a second, masked chunk of the kernel
def test_rpgan_losses_statistics_and_gradients(backend, n, dtype):
    real = rand(n, 1, scale=3, dtype=dtype).requires_grad_()
    fake = rand(n, 1, seed=1, scale=3, dtype=dtype).requires_grad_()
    a, b = real.detach().float(), fake.detach().float()
    out = kernels.rpgan_d_loss(real, fake)
    assert [t.dtype for t in out] == [torch.float32] * 4
    assert not any(t.requires_grad for t in out[1:])  # statistics carry no graph
    expected = softplus_pairing(real, fake)
    stats = (torch.sigmoid(a).mean(), torch.sigmoid(b).mean(), torch.sigmoid(a - b).mean())
    torch.testing.assert_close(out, (expected, *stats))
    torch.testing.assert_close(out, rpgan_d_loss_reference(real, fake))
    d_grads = grads(out[0], (real, fake))
    assert [g.dtype for g in d_grads] == [dtype, dtype]
    torch.testing.assert_close(d_grads, grads(expected, (real, fake)))
    torch.testing.assert_close(d_grads, grads(rpgan_d_loss_reference(real, fake)[0],
                                              (real, fake)))
    # G phase: the same pairing, the other way round, with gradients for both logits
    g_loss = kernels.rpgan_g_loss(real, fake)
    g_expected = softplus_pairing(fake, real)
    assert g_loss.dtype == torch.float32
    torch.testing.assert_close(g_loss, g_expected)
    torch.testing.assert_close(g_loss, rpgan_g_loss_reference(real, fake))
    g_grads = grads(g_loss, (real, fake))
    torch.testing.assert_close(g_grads, grads(g_expected, (real, fake)))
    # D frozen: D(x) needs no gradient, and G's is unchanged
    g_frozen = kernels.rpgan_g_loss(real.detach(), fake)
    torch.testing.assert_close(grads(g_frozen, fake), g_grads[1:])


def test_rpgan_extremes_and_what_the_statistics_mean(backend):
    """Finite at saturated logits; the loss and sigmoid(D(x) - D(G(z))) ignore a common
    shift of the logits, the mean sigmoid of each does not (see gan_loss.py)."""
    real = torch.tensor([[100.0], [-100.0], [0.5], [30.0]], device=DEVICE,
                        dtype=torch.bfloat16, requires_grad=True)
    fake = torch.tensor([[-100.0], [100.0], [0.0], [30.0]], device=DEVICE,
                        dtype=torch.bfloat16, requires_grad=True)
    out = kernels.rpgan_d_loss(real, fake)
    torch.testing.assert_close(out, rpgan_d_loss_reference(real, fake))
    for loss in (out[0], kernels.rpgan_g_loss(real, fake)):
        assert torch.isfinite(loss)
        assert all(torch.isfinite(g).all() for g in grads(loss, (real, fake)))
    real, fake = rand(64, 1, scale=2), rand(64, 1, seed=1, scale=2)
    loss, d_real, d_fake, d_pair = kernels.rpgan_d_loss(real, fake)
    s_loss, s_real, s_fake, s_pair = kernels.rpgan_d_loss(real + 4, fake + 4)
    torch.testing.assert_close((s_loss, s_pair), (loss, d_pair))
    assert s_real > d_real + 0.1 and s_fake > d_fake + 0.1


def test_rpgan_pairs_logits_of_one_shape(backend):
    column = torch.zeros(4, 1, device=DEVICE)
    for other in (torch.zeros(4, device=DEVICE), torch.zeros(5, 1, device=DEVICE)):
        with pytest.raises(ValueError, match="pairs real and fake logits elementwise"):
            kernels.rpgan_d_loss(column, other)
        with pytest.raises(ValueError, match="pairs real and fake logits elementwise"):
            kernels.rpgan_g_loss(other, column)


@pytest.mark.parametrize("phase", ["d", "g"])
def test_rpgan_second_order_matches_autograd(phase, monkeypatch):
    """create_graph through either path gives autograd's own second derivatives."""
    op = kernels.rpgan_d_loss if phase == "d" else kernels.rpgan_g_loss
    results = {}
    for setting in ("torch", "triton", "autograd"):
        monkeypatch.setenv("FASTGAN_KERNELS", "torch" if setting == "autograd" else setting)
        real = rand(5, 1, scale=2).requires_grad_()
        fake = rand(5, 1, seed=1, scale=2).requires_grad_()
        if setting == "autograd":
            loss = softplus_pairing(*((real, fake) if phase == "d" else (fake, real)))
        else:
            loss = op(real, fake)
            loss = loss[0] if phase == "d" else loss
        gr, gf = torch.autograd.grad(loss, (real, fake), create_graph=True)
        scalar = (gr ** 2).sum() + (gf * rand(5, 1, seed=2)).sum()
        results[setting] = (gr.detach(), gf.detach(), *torch.autograd.grad(scalar, (real, fake)))
    for setting in ("torch", "triton"):
        torch.testing.assert_close(results[setting], results["autograd"], msg=setting)


def test_backend_setting_is_validated(monkeypatch):
    monkeypatch.setenv("FASTGAN_KERNELS", "cuda-magic")
    with pytest.raises(ValueError, match="FASTGAN_KERNELS"):
        kernels.bce_with_logits(torch.zeros(2), 1.0)


# ------------------------------------------------------------------ bias_act

def torch_bias_act(x, b, dim, act, alpha=None, gain=None, clamp=None):
    """torch's own functions, spelled out independently of the reference."""
    spec = kernels.ACTIVATIONS[act]
    alpha = spec.def_alpha if alpha is None else alpha
    gain = spec.def_gain if gain is None else gain
    shape = [1] * x.ndim
    shape[dim] = -1
    z = x.float() + (b.float().reshape(shape) if b is not None else 0)
    fn = {"linear": lambda v: v, "relu": torch.relu, "lrelu": lambda v: F.leaky_relu(v, alpha),
          "tanh": torch.tanh, "sigmoid": torch.sigmoid, "elu": F.elu, "selu": torch.selu,
          "softplus": F.softplus, "swish": lambda v: v * torch.sigmoid(v)}[act]
    y = fn(z) * gain
    return (y.clamp(-clamp, clamp) if clamp is not None else y).to(x.dtype)


LAYOUTS = {
    "odd": lambda: rand(3, 5, 7, 9, scale=2),
    "channels_last": lambda: rand(2, 6, 5, 3, scale=2).to(memory_format=torch.channels_last),
    "transposed": lambda: rand(6, 11, scale=2).t(),  # [11, 6], not contiguous
    "matrix": lambda: rand(13, 4, scale=2),
}


@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("clamp", [None, 0.7])
def test_bias_act_matches_torch(backend, act, clamp):
    for name, make in LAYOUTS.items():
        x = make().requires_grad_()
        b = rand(x.shape[1], seed=3).requires_grad_()
        y = kernels.bias_act(x, b, act=act, clamp=clamp)
        ref = torch_bias_act(x, b, 1, act, clamp=clamp)
        torch.testing.assert_close(y, ref, msg=f"{name}: forward")
        g = rand(*x.shape, seed=4)
        torch.testing.assert_close(grads(y, (x, b), g), grads(ref, (x, b), g),
                                   msg=f"{name}: backward")
        if name == "channels_last":
            assert y.is_contiguous(memory_format=torch.channels_last)


def test_bias_act_options(backend):
    x = rand(4, 3, 5, scale=2)
    b = rand(5, seed=1)
    # b along the last dim, explicit alpha and gain, no b at all
    torch.testing.assert_close(kernels.bias_act(x, b, dim=2, act="lrelu", alpha=0.1, gain=1.0),
                               torch_bias_act(x, b, 2, "lrelu", alpha=0.1, gain=1.0))
    torch.testing.assert_close(kernels.bias_act(x, None, act="swish"),
                               torch_bias_act(x, None, 1, "swish"))
    # StyleGAN2's lrelu defaults: alpha 0.2, gain sqrt(2)
    torch.testing.assert_close(kernels.bias_act(x, act="lrelu"),
                               F.leaky_relu(x, 0.2) * math.sqrt(2))
    empty = torch.zeros(0, 3, device=DEVICE)
    assert kernels.bias_act(empty, torch.zeros(3, device=DEVICE), act="relu").shape == (0, 3)
    with pytest.raises(ValueError, match="act must be one of"):
        kernels.bias_act(x, act="gelu")
    with pytest.raises(ValueError, match="b must have shape"):
        kernels.bias_act(x, torch.zeros(4, device=DEVICE))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_bias_act_half(backend, dtype):
    x = rand(4, 8, 3, 3, scale=2, dtype=dtype).requires_grad_()
    b = rand(8, seed=1).requires_grad_()
    y = kernels.bias_act(x, b, act="lrelu", clamp=1.5)
    assert y.dtype == dtype
    ref = torch_bias_act(x.detach().float(), b.detach(), 1, "lrelu", clamp=1.5)
    torch.testing.assert_close(y.float(), ref, atol=1e-2, rtol=1e-2)
    gx, gb = grads(y.float().sum(), (x, b))
    assert gx.dtype == dtype and gb.dtype == torch.float32


@pytest.mark.parametrize("act", ACTS)
def test_bias_act_reference_gradcheck(act):
    """The reference is exact to second order in float64..."""
    x = rand(2, 3, 4, scale=2, dtype=torch.float64).requires_grad_()
    b = rand(3, seed=1, dtype=torch.float64).requires_grad_()
    x = x + 0.05 * torch.sign(x)  # away from the kinks of relu, lrelu, elu
    fn = lambda x, b: bias_act_reference(x, b, act=act, clamp=None)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, b))
    assert torch.autograd.gradgradcheck(fn, (x, b))


@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("clamp", [None, 0.7])
def test_bias_act_second_order_matches_reference(act, clamp, monkeypatch):
    """...and the Triton path gives the reference's second-order gradients."""
    results = {}
    for setting in ("torch", "triton"):
        monkeypatch.setenv("FASTGAN_KERNELS", setting)
        x = rand(3, 4, 5, scale=2).requires_grad_()
        b = rand(4, seed=1).requires_grad_()
        v = rand(3, 4, 5, seed=2)
        y = kernels.bias_act(x, b, act=act, clamp=clamp)
        gx, gb = torch.autograd.grad(y, (x, b), v, create_graph=True)
        # a scalar of the first-order gradients, differentiated again
        scalar = (gx ** 2).sum() + (gb ** 3).sum() + 0 * (x.sum() + b.sum())  # linear: 0
        second = torch.autograd.grad(scalar, (x, b))
        results[setting] = (gx.detach(), gb.detach(), *second)
    for ours, ref in zip(results["triton"], results["torch"]):
        torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-4)


def test_r1_through_bias_act_matches_plain_pytorch(backend):
    """R1 = |grad_x D(x)|^2 through a conv + bias_act + linear D, and its gradient."""
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 4, 3, bias=False).to(DEVICE)
    bias = torch.nn.Parameter(torch.randn(4, device=DEVICE) * 0.1)
    head = torch.nn.Linear(4 * 6 * 6, 1).to(DEVICE)
    x = rand(5, 3, 8, 8).requires_grad_()

    def r1(act_fn):
        logits = head(act_fn(conv(x)).flatten(1))
        (g,) = torch.autograd.grad(logits.sum(), x, create_graph=True)
        penalty = g.square().sum([1, 2, 3]).mean()
        return penalty, torch.autograd.grad(penalty, [conv.weight, bias, head.weight])

    ours, ours_grads = r1(lambda h: kernels.bias_act(h, bias, act="lrelu", gain=1.0))
    ref, ref_grads = r1(lambda h: F.leaky_relu(h + bias.reshape(1, -1, 1, 1), 0.2))
    torch.testing.assert_close(ours, ref)
    torch.testing.assert_close(ours_grads, ref_grads)


def test_dispatch_takes_the_path_it_says(monkeypatch):
    x = rand(4, 3).requires_grad_()
    b = rand(3, seed=1)
    logits = rand(6, 1).requires_grad_()
    names = {}
    for setting in ("torch", "triton"):
        monkeypatch.setenv("FASTGAN_KERNELS", setting)
        names[setting] = (type(kernels.bias_act(x, b, act="relu").grad_fn).__name__,
                          type(kernels.bce_with_logits(logits, 1.0).grad_fn).__name__,
                          type(kernels.gan_d_loss(logits, logits)[0].grad_fn).__name__,
                          type(kernels.rpgan_d_loss(logits, logits)[0].grad_fn).__name__)
    assert names["triton"] == ("GeneratedBackwardFor_fastgan_bias_act_defaultBackward",
                               "_BCEWithLogitsBackward",
                               "GeneratedBackwardFor_fastgan_gan_loss_defaultBackward",
                               "GeneratedBackwardFor_fastgan_rpgan_loss_defaultBackward")
    assert not set(names["torch"]) & set(names["triton"])
    monkeypatch.setenv("FASTGAN_KERNELS", "auto")  # auto: Triton on CUDA tensors only
    auto = type(kernels.bias_act(x, b, act="relu").grad_fn).__name__
    assert (auto == names["triton"][0]) == (DEVICE == "cuda")


def test_gan_losses_are_a_registered_op_that_compiles(monkeypatch):
    """The GAN loss kernel as a torch.library op: opcheck passes, torch.compile traces
    both phases' losses whole (fullgraph), values and gradients equal to eager, and the
    statistics carry no graph."""
    monkeypatch.setenv("FASTGAN_KERNELS", "triton")
    real, fake = rand(6, 1, scale=3), rand(6, 1, scale=3, seed=2)
    torch.library.opcheck(torch.ops.fastgan.gan_loss.default, (real, fake, False))
    torch.library.opcheck(torch.ops.fastgan.gan_loss.default, (fake[:0], fake, True))

    def phases(real, fake):
        loss_d, d_real, d_fake = kernels.gan_d_loss(real, fake)
        return loss_d + kernels.gan_g_loss(fake), d_real, d_fake

    compiled = torch.compile(phases, fullgraph=True, backend="aot_eager")
    re, fe = real.clone().requires_grad_(), fake.clone().requires_grad_()
    rc, fc = real.clone().requires_grad_(), fake.clone().requires_grad_()
    eager, ours = phases(re, fe), compiled(rc, fc)
    for a, b in zip(ours, eager):
        torch.testing.assert_close(a, b)
    assert not ours[1].requires_grad and not eager[1].requires_grad
    torch.testing.assert_close(grads(ours[0], (rc, fc)), grads(eager[0], (re, fe)))


# Unmarked: after the test above has warmed up torch.compile it takes ~3 s on this CPU
# (~12 s alone, most of it the first compile of the session)
def test_rpgan_losses_are_a_registered_op_that_compiles(monkeypatch):
    """As the non-saturating losses: opcheck passes for both phases, torch.compile
    traces them whole (fullgraph), values and gradients equal to eager."""
    monkeypatch.setenv("FASTGAN_KERNELS", "triton")
    real, fake = rand(6, 1, scale=3), rand(6, 1, scale=3, seed=2)
    for g_phase in (False, True):
        torch.library.opcheck(torch.ops.fastgan.rpgan_loss.default, (real, fake, g_phase))

    def phases(real, fake):
        loss_d, *stats = kernels.rpgan_d_loss(real, fake)
        return loss_d + 2 * kernels.rpgan_g_loss(real, fake), *stats

    compiled = torch.compile(phases, fullgraph=True, backend="aot_eager")
    re, fe = real.clone().requires_grad_(), fake.clone().requires_grad_()
    rc, fc = real.clone().requires_grad_(), fake.clone().requires_grad_()
    eager, ours = phases(re, fe), compiled(rc, fc)
    torch.testing.assert_close(ours, eager)
    assert not any(t.requires_grad for t in ours[1:])
    torch.testing.assert_close(grads(ours[0], (rc, fc)), grads(eager[0], (re, fe)))


def test_bias_act_is_a_registered_op_that_compiles(monkeypatch):
    """torch.library ops: opcheck passes, and torch.compile traces bias_act as one node
    (fullgraph), forward and backward equal to eager."""
    monkeypatch.setenv("FASTGAN_KERNELS", "triton")
    x = rand(2, 4, 3, 3, scale=2).to(memory_format=torch.channels_last)
    b = rand(4, seed=1)
    torch.library.opcheck(torch.ops.fastgan.bias_act.default, (x, b, 1, 2, 0.2, 1.0, 0.5))

    def f(x, b):
        return kernels.bias_act(x, b, act="lrelu", clamp=0.5)

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    xe, be = x.clone().requires_grad_(), b.clone().requires_grad_()
    xc, bc = x.clone().requires_grad_(), b.clone().requires_grad_()
    g = rand(2, 4, 3, 3, seed=5)
    torch.testing.assert_close(compiled(xc, bc), f(xe, be))
    torch.testing.assert_close(grads(compiled(xc, bc), (xc, bc), g), grads(f(xe, be), (xe, be), g))
