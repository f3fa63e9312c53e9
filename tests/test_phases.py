import copy

import pytest
import torch

from fastgan.models.mlp import MLPDiscriminator, MLPGenerator
from fastgan.train import distributed
from fastgan.train.loop import lr_scale
from fastgan.train.phases import GANStep
from fastgan.train.precision import resolve_precision

CPU = distributed.Dist(rank=0, world=1, local_rank=0, device=torch.device("cpu"))


def _step(r1_gamma=0.0, r1_interval=4, lr=1.0):
    torch.manual_seed(0)
    G, D = MLPGenerator(z_dim=4, width=8), MLPDiscriminator(width=8)
    opt_G = torch.optim.SGD(G.parameters(), lr=lr)
    opt_D = torch.optim.SGD(D.parameters(), lr=lr)
    return GANStep(G, D, opt_G, opt_D, z_dim=4, dist=CPU, precision="fp32",
                   r1_gamma=r1_gamma, r1_interval=r1_interval)


def test_phases_and_intervals():
    assert [p.name for p in _step().phases] == ["D main", "G main"]
    step = _step(r1_gamma=1.0, r1_interval=3)
    assert [(p.name, p.interval) for p in step.phases] == [
        ("D main", 1), ("D reg", 3), ("G main", 1)]
    real = torch.randn(8, 2)
    for i in range(1, 4):
        step(real, i)
    names, means = step.take_stats()
    assert names == ["loss_D", "loss_G", "D(x)", "D(G(z))", "r1"]
    assert torch.isfinite(means).all()
    step(real, 4)  # no R1 at step 4: its statistic is absent, not NaN
    assert "r1" not in step.take_stats()[0]


def test_r1_step_matches_direct_computation():
    step = _step(r1_gamma=2.0, r1_interval=4, lr=0.1)
    D = step.D
    before = copy.deepcopy(D)
    real = torch.randn(8, 2)
    x = real.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(before(x).sum(), x, create_graph=True)
    penalty = g.square().sum(1).mean()
    (penalty * 2.0 / 2 * 4).backward()
    step.d_reg({"real": real})
    moved = 0
    for p_new, p_old in zip(D.parameters(), before.parameters()):
        if p_old.grad is None:  # the last bias does not change D's input gradient
            torch.testing.assert_close(p_new, p_old)
        else:
            torch.testing.assert_close(p_new, p_old - 0.1 * p_old.grad)
            moved += int(p_old.grad.abs().sum() > 0)
    assert moved >= 4
    _, means = step.take_stats()
    torch.testing.assert_close(means[0], penalty.detach())


def test_g_phase_leaves_d_untouched():
    step = _step()
    D_before = copy.deepcopy(step.D.state_dict())
    fake = step.G(torch.randn(8, 4))
    step.g_main({"fake": fake})
    for k, v in step.D.state_dict().items():
        assert torch.equal(v, D_before[k])
    assert all(p.requires_grad for p in step.D.parameters())
    assert all(p.grad is None for p in step.D.parameters())


def test_lr_scale():
    assert lr_scale(1, 100, 0.0) == lr_scale(100, 100, 0.0) == 1.0
    assert lr_scale(50, 100, 0.5) == 1.0
    assert lr_scale(75, 100, 0.5) == pytest.approx(0.5)
    assert lr_scale(100, 100, 0.5) == 0.0


def test_auto_precision_keeps_points_in_fp32():
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu, points=True) == "fp32"
    assert resolve_precision("bf16", cpu, points=True) == "bf16"
    assert resolve_precision("fp32", cpu) == "fp32"


@pytest.mark.parametrize("arch", ["mlp", "dcgan"])
def test_training_is_the_same_on_the_triton_path(arch, monkeypatch):
    """A few GAN steps, R1 included, on the reference ops and on the Triton kernels
    (interpreted here): the same parameters, within float32 tolerance."""
    from fastgan import models

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dist = distributed.Dist(rank=0, world=1, local_rank=0, device=device)
    results = {}
    for setting in ("torch", "triton"):
        monkeypatch.setenv("FASTGAN_KERNELS", setting)
        torch.manual_seed(0)
        g_kw, d_kw = models.model_kwargs(arch, res=8, z_dim=4, width=8)
        G = models.build_generator(arch, g_kw).to(device)
        D = models.build_discriminator(arch, d_kw).to(device)
        step = GANStep(G, D, torch.optim.Adam(G.parameters(), 1e-3),
                       torch.optim.Adam(D.parameters(), 1e-3), z_dim=4, dist=dist,
                       precision="fp32", r1_gamma=1.0, r1_interval=2)
        real = torch.randn(8, 2) if arch == "mlp" else torch.rand(8, 3, 8, 8) * 2 - 1
        real = real.to(device)
        for i in range(1, 6):
            step(real, i)
        names, means = step.take_stats()
        results[setting] = ([p.detach().clone() for p in [*G.parameters(), *D.parameters()]],
                            means)
    for ours, ref in zip(results["triton"][0], results["torch"][0]):
        torch.testing.assert_close(ours, ref, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(results["triton"][1], results["torch"][1], atol=1e-5, rtol=1e-4)
