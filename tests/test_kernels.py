import pytest
import torch
import torch.nn.functional as F

from fastgan import kernels


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("shape", [(7,), (3, 5, 2), (64, 1)])
def test_bce_matches_torch(shape, reduction):
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(shape, generator=g) * 5).requires_grad_()
    t = torch.rand(shape, generator=g)
    w = torch.rand(shape, generator=g)
    ours = kernels.bce_with_logits(x, t, w, reduction=reduction)
    ref = F.binary_cross_entropy_with_logits(x, t, w, reduction=reduction)
    torch.testing.assert_close(ours, ref)
    (g1,) = torch.autograd.grad(ours.sum(), x)
    (g2,) = torch.autograd.grad(ref.sum(), x)
    torch.testing.assert_close(g1, g2)


@pytest.mark.parametrize("target", [0.0, 1.0, 0.3])
def test_bce_float_target_and_extreme_logits(target):
    x = torch.tensor([-100.0, -20.0, 0.0, 20.0, 100.0], requires_grad=True)
    ours = kernels.bce_with_logits(x, target, reduction="none")
    ref = F.binary_cross_entropy_with_logits(x, torch.full_like(x, target), reduction="none")
    assert torch.isfinite(ours).all()
    torch.testing.assert_close(ours, ref)
    ours.sum().backward()
    assert torch.isfinite(x.grad).all()


def test_bce_broadcast_target_and_half_input_gives_fp32():
    x = torch.randn(4, 3).to(torch.bfloat16)
    t = torch.tensor([0.0, 1.0, 1.0])
    out = kernels.bce_with_logits(x, t)
    assert out.dtype == torch.float32
    ref = F.binary_cross_entropy_with_logits(x.float(), t.expand(4, 3))
    torch.testing.assert_close(out, ref)


def test_bce_rejects_bad_reduction_and_shapes():
    with pytest.raises(ValueError, match="reduction"):
        kernels.bce_with_logits(torch.zeros(3), 1.0, reduction="max")
    with pytest.raises(ValueError, match="broadcast"):
        kernels.bce_with_logits(torch.zeros(3), torch.zeros(2, 3))


def test_gan_losses_and_statistics():
    real = torch.tensor([[2.0], [0.0]])
    fake = torch.tensor([[-1.0], [3.0]])
    loss, d_real, d_fake = kernels.gan_d_loss(real, fake)
    expected = (F.binary_cross_entropy_with_logits(real, torch.ones_like(real))
                + F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake)))
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(d_real, torch.sigmoid(real).mean())
    torch.testing.assert_close(d_fake, torch.sigmoid(fake).mean())
    # Non-saturating G loss: -log sigmoid(D(G(z))).
    torch.testing.assert_close(kernels.gan_g_loss(fake), -F.logsigmoid(fake).mean())


def test_backend_setting_is_validated(monkeypatch):
    monkeypatch.setenv("FASTGAN_KERNELS", "cuda-magic")
    with pytest.raises(ValueError, match="FASTGAN_KERNELS"):
        kernels.bce_with_logits(torch.zeros(2), 1.0)
