import copy
import math

import pytest
import torch
import torch.nn.functional as F

from fastgan.models.mlp import MLPDiscriminator, MLPGenerator
from fastgan.train import distributed, engines, phases
from fastgan.train.phases import GANStep, MicroBatch, Objective, StepBatch, gradient_penalty
from fastgan.train.precision import resolve_precision
from fastgan.train.schedule import lr_scale

CPU = distributed.Dist(rank=0, world=1, local_rank=0, device=torch.device("cpu"))


def _engines(G, D, opt_G, opt_D, *, dist=CPU, precision="fp32", accum=1, grad_clip=0.0):
    opts = engines.EngineOptions(strategy="none", precision=precision, micro_batch=8,
                                 accum=accum, grad_clip=grad_clip)
    return engines.build(G, D, opt_G, opt_D, opts, dist)


def _step(r1_gamma=0.0, r1_interval=4, lr=1.0, accum=1, precision="fp32", grad_clip=0.0,
          loss="bce", r2_gamma=0.0):
    torch.manual_seed(0)
    G, D = MLPGenerator(z_dim=4, width=8), MLPDiscriminator(width=8)
    opt_G = torch.optim.SGD(G.parameters(), lr=lr)
    opt_D = torch.optim.SGD(D.parameters(), lr=lr)
    G_eng, D_eng = _engines(G, D, opt_G, opt_D, precision=precision, accum=accum,
                            grad_clip=grad_clip)
    return GANStep(G_eng, D_eng, dist=CPU, precision=precision, accum=accum,
                   objective=Objective(loss, r1_gamma, r2_gamma, r1_interval))


def _z(n=8, seed=1):
    return torch.randn(n, 4, generator=torch.Generator().manual_seed(seed))


def test_phases_and_intervals():
    assert [p.name for p in _step().phases] == ["D main", "G main"]
    step = _step(r1_gamma=1.0, r1_interval=3)
    assert [(p.name, p.interval) for p in step.phases] == [
        ("D main", 1), ("D reg", 3), ("G main", 1)]
    real = torch.randn(8, 2)
    for i in range(1, 4):
        step(real, _z(), i)
    stats = step.take_stats()
    assert list(stats) == ["loss_D", "loss_G", "D(x)", "D(G(z))", "r1", "grad_G", "grad_D"]
    assert "D(x,G(z))" not in stats and "r2" not in stats  # rpgan's and R2's alone
    assert stats["grad_G"] > 0 and stats["grad_D"] > 0  # norms of the main phases' steps
    assert all(math.isfinite(v) for v in stats.values())
    step(real, _z(), 4)  # no R1 at step 4: its statistic is absent, not NaN
    assert "r1" not in step.take_stats()


def test_r1_step_matches_direct_computation():
    step = _step(r1_gamma=2.0, r1_interval=4, lr=0.1)
    D = step.D.module
    before = copy.deepcopy(D)
    real = torch.randn(8, 2)
    x = real.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(before(x).sum(), x, create_graph=True)
    penalty = g.square().sum(1).mean()
    assert gradient_penalty(g).item() == pytest.approx(penalty.item(), rel=1e-6)
    (penalty * 2.0 / 2 * 4).backward()
    step.d_reg(StepBatch([MicroBatch(real, None)]))
    moved = 0
    for p_new, p_old in zip(D.parameters(), before.parameters()):
        if p_old.grad is None:  # the last bias does not change D's input gradient
            torch.testing.assert_close(p_new, p_old)
        else:
            torch.testing.assert_close(p_new, p_old - 0.1 * p_old.grad)
            moved += int(p_old.grad.abs().sum() > 0)
    assert moved >= 4
    assert step.take_stats()["r1"] == pytest.approx(penalty.item(), rel=1e-6)


def test_rpgan_step_matches_direct_computation():
    """--loss rpgan: D steps on softplus(-(D(x) - D(G(z)))), then G on
    softplus(-(D(G(z)) - D(x))) through the updated D; D(x,G(z)) is logged."""
    step = _step(loss="rpgan", lr=0.1)
    G, D = step.G.module, step.D.module
    G0, D0 = copy.deepcopy(G), copy.deepcopy(D)
    real, z = torch.randn(8, 2), _z()
    step(real, z, 1)
    fake = G0(z).detach()
    d_loss = F.softplus(-(D0(real) - D0(fake))).mean()
    pair = torch.sigmoid(D0(real) - D0(fake)).mean()
    d_grads = torch.autograd.grad(d_loss, list(D0.parameters()))
    D1 = copy.deepcopy(D0)
    with torch.no_grad():
        for p, grad in zip(D1.parameters(), d_grads):
            p -= 0.1 * grad
    g_loss = F.softplus(-(D1(G0(z)) - D1(real))).mean()
    g_grads = torch.autograd.grad(g_loss, list(G0.parameters()))
    for ours, ref in zip(D.parameters(), D1.parameters()):
        torch.testing.assert_close(ours, ref)
    for ours, ref, grad in zip(G.parameters(), G0.parameters(), g_grads):
        torch.testing.assert_close(ours, ref - 0.1 * grad)
    stats = step.take_stats()
    assert stats["loss_D"] == pytest.approx(d_loss.item(), rel=1e-5)
    assert stats["loss_G"] == pytest.approx(g_loss.item(), rel=1e-5)
    assert stats["D(x,G(z))"] == pytest.approx(pair.item(), rel=1e-5)


def test_r2_is_r1_on_generated_samples():
    """R2 penalises D's gradient at G(z) exactly as R1 does at real images: an R2 step on
    some fakes is bitwise the R1 step that takes those fakes for real images."""
    r1 = _step(r1_gamma=2.0, r1_interval=4, lr=0.1)
    r2 = _step(r2_gamma=2.0, r1_interval=4, lr=0.1)
    assert [p.name for p in r2.phases] == ["D main", "D reg", "G main"]
    fakes = r2.G.module(_z()).detach()
    r1.d_reg(StepBatch([MicroBatch(fakes, None)]))
    r2.d_reg(StepBatch([MicroBatch(torch.randn(8, 2), None)], fakes=[fakes]))
    for a, b, s0 in zip(r1.D.module.parameters(), r2.D.module.parameters(),
                        _step().D.module.parameters()):
        assert torch.equal(a, b)
    assert not all(torch.equal(a, s0) for a, s0 in zip(r2.D.module.parameters(),
                                                       _step().D.module.parameters()))
    assert r2.take_stats()["r2"] == r1.take_stats()["r1"]
    both = _step(r1_gamma=1.0, r2_gamma=3.0)
    real = torch.randn(8, 2)
    both(real, _z(), 4)
    stats = both.take_stats()
    assert stats["r1"] > 0 and stats["r2"] > 0


def test_g_phase_leaves_d_untouched():
    step = _step()
    D = step.D.module
    D_before = copy.deepcopy(D.state_dict())
    z = torch.randn(8, 4)
    step.g_main(StepBatch([MicroBatch(None, z)], fakes=[step.G.module(z)]))
    for k, v in D.state_dict().items():
        assert torch.equal(v, D_before[k])
    assert all(p.requires_grad for p in D.parameters())
    assert all(p.grad is None for p in D.parameters())


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
        G_eng, D_eng = _engines(G, D, torch.optim.Adam(G.parameters(), 1e-3),
                                torch.optim.Adam(D.parameters(), 1e-3), dist=dist)
        step = GANStep(G_eng, D_eng, dist=dist, precision="fp32",
                       objective=Objective(r1_gamma=1.0, reg_interval=2))
        real = torch.randn(8, 2) if arch == "mlp" else torch.rand(8, 3, 8, 8) * 2 - 1
        real = real.to(device)
        for i in range(1, 6):
            step(real, _z().to(device), i)
        results[setting] = ([p.detach().clone() for p in [*G.parameters(), *D.parameters()]],
                            torch.tensor(list(step.take_stats().values())))
    for ours, ref in zip(results["triton"][0], results["torch"][0]):
        torch.testing.assert_close(ours, ref, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(results["triton"][1], results["torch"][1], atol=1e-5, rtol=1e-4)


def _params(step):
    return [p.detach().clone() for p in [*step.G.module.parameters(),
                                         *step.D.module.parameters()]]


def test_accumulation_matches_one_big_batch():
    """--accum 2 over a batch of 8 takes the steps of one batch of 8 (R1 included)."""
    results = []
    for accum in (1, 2):
        step = _step(r1_gamma=1.0, r1_interval=2, lr=0.05, accum=accum)
        for i in range(1, 5):
            step(torch.randn(8, 2, generator=torch.Generator().manual_seed(i)), _z(seed=i), i)
        results.append(_params(step))
    start = _params(_step())
    for a, b, s0 in zip(*results, start):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    assert any((a - s0).abs().max() > 1e-3 for a, s0 in zip(results[0], start))


def test_nonfinite_loss_skips_the_step_and_is_counted():
    step = _step(lr=0.1)
    before = _params(step)
    real = torch.randn(8, 2)
    real[3, 0] = float("nan")  # D's loss is NaN; G's is not (G never sees real data)
    step(real, _z(), 1)
    after = _params(step)
    n_g = len(list(step.G.module.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(after[n_g:], before[n_g:]))  # D: skipped
    assert any(not torch.equal(a, b) for a, b in zip(after[:n_g], before[:n_g]))  # G: stepped
    assert step.skip_counts() == [1, 0, 0]
    stats = step.take_stats()
    assert "loss_D" not in stats and all(math.isfinite(v) for v in stats.values())
    assert all(p.grad is None for p in step.D.module.parameters())


def test_fp16_scaler_per_network_and_clipping():
    """fp16: each network has its own loss scaler; clipping bounds the update."""
    step = _step(lr=1.0, precision="fp16", grad_clip=1e-3)
    assert step.G.scaler is not None and step.D.scaler is not step.G.scaler
    before = _params(step)
    step(torch.randn(8, 2), _z(), 1)
    after = _params(step)
    moved = torch.cat([(a - b).flatten() for a, b in zip(after, before)])
    applied = 2 - sum(step.skip_counts()[1:])
    # SGD with lr 1 moves each network by its clipped gradient: norm <= 1e-3 each
    assert 0 < moved.norm() <= applied * 1e-3 * (1 + 1e-3)


def test_a_window_of_skipped_steps_has_no_gradient_norm():
    """The health monitor reads a gradient norm of 0 as vanished gradients: a log window
    whose steps were all skipped for a NaN reports no norm (and no loss), never 0; a
    window with some skipped steps averages the others' norms."""
    step = _step(lr=0.1)
    real = torch.randn(8, 2)
    poisoned = _z()
    poisoned[0, 0] = float("nan")  # G(z) has a NaN: both D's loss and G's are NaN
    for i in range(1, 4):
        step(real, poisoned, i)
    assert step.skip_counts() == [6, 0, 0]
    stats = step.take_stats()
    assert not {"grad_D", "grad_G", "loss_D", "loss_G", "D(x)", "D(G(z))"} & set(stats)
    step(real, _z(), 4)
    norms = {"grad_D": step.D.grad_norm.item(), "grad_G": step.G.grad_norm.item()}
    step(real, poisoned, 5)
    stats = step.take_stats()
    assert step.skip_counts() == [8, 0, 0]
    for name, norm in norms.items():
        assert norm > 0 and stats[name] == pytest.approx(norm, rel=1e-6)


# ---------------------------------------------------------------- path length (StyleGAN2)

def _stylegan2_step(*, style_mixing=0.0, lr=0.1, dist=CPU, strategy="none", channels=1):
    """A tiny StyleGAN2 (8x8, one channel) in a GAN step with path length at weight 2,
    every 4 steps, under SGD."""
    from fastgan.models import stylegan2 as sg

    torch.manual_seed(0)
    G = sg.StyleGAN2Generator(res=8, z_dim=8, w_dim=8, channel_base=32, channel_max=8,
                              channels=channels, style_mixing=style_mixing).to(dist.device)
    D = sg.StyleGAN2Discriminator(res=8, channel_base=32, channel_max=8, channels=channels)
    opts = engines.EngineOptions(strategy=strategy, precision="fp32", micro_batch=4, accum=1,
                                 grad_clip=0.0)
    G_eng, D_eng = engines.build(G, D.to(dist.device), torch.optim.SGD(G.parameters(), lr=lr),
                                 torch.optim.SGD(D.parameters(), lr=lr), opts, dist)
    return GANStep(G_eng, D_eng, dist=dist, precision="fp32",
                   objective=Objective(pl_weight=2.0, pl_interval=4))


def test_path_lengths_match_a_closed_form():
    """path_lengths: per sample, |J^T y| (J: the image's Jacobian in each layer's w, y a
    random image / sqrt(H W)) as the root of its squared norm averaged over the layers;
    here for img = tanh(A ws), whose J^T y is A^T ((1 - img^2) y)."""
    torch.manual_seed(0)
    A = torch.randn(2, 8, 8, 3, 4, dtype=torch.float64)  # [C, H, W] <- [layers, w_dim]
    ws = torch.randn(5, 3, 4, dtype=torch.float64, requires_grad=True)
    img = torch.tanh(torch.einsum("chwld,nld->nchw", A, ws))
    torch.manual_seed(3)
    lengths = phases.path_lengths(img, ws)
    torch.manual_seed(3)
    y = torch.randn_like(img) / 8.0  # sqrt(8 * 8)
    jty = torch.einsum("nchw,chwld->nld", (1 - img.detach().square()) * y, A)
    expected = jty.square().sum(2).mean(1).sqrt()
    assert lengths.shape == (5,) and lengths.dtype == torch.float32
    torch.testing.assert_close(lengths, expected.float())
    assert lengths.requires_grad  # the graph for G's backward


@pytest.fixture
def one_thread():
    """Intra-op threads off: a Jacobian and its double backward are thousands of tiny
    ops, about 1 s on one thread; two threads on cores that other work keeps busy wait
    for each other at every op (here up to a minute)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("style_mixing", [0.0, 1.0], ids=["plain", "mixing"])
def test_path_length_step_matches_direct_computation(style_mixing, one_thread):
    """G reg on half the micro-batch: pl_mean moves 1% of the way to the mean length,
    and G steps on 2 * 4 * mean((length - pl_mean)^2), pl_mean held constant; here
    from the full Jacobian of the image in ws (torch.autograd.functional), through the
    same random draws (style mixing's, the noise inputs', the image-space direction)."""
    step = _stylegan2_step(style_mixing=style_mixing)
    assert [(p.name, p.interval) for p in step.phases][-1] == ("G reg", 4)
    G = step.G.module
    G0 = copy.deepcopy(G)
    z = torch.randn(4, 8, generator=torch.Generator().manual_seed(1))
    torch.manual_seed(5)
    step.g_reg(StepBatch([MicroBatch(None, z)]))

    torch.manual_seed(5)
    ws = G0.ws(z[:2], per_layer=True)
    jac = torch.autograd.functional.jacobian(G0.synthesis, ws, create_graph=True,
                                             vectorize=True)
    y = torch.randn(2, 1, 8, 8) / 8.0
    lengths = torch.einsum("nchw,nchwmld->mld", y, jac).square().sum(2).mean(1).sqrt()
    pl_mean = 0.01 * lengths.mean().detach()
    penalty = (lengths - pl_mean).square().mean()
    (penalty * 2.0 * 4).backward()
    moved = 0
    for ours, p0 in zip(G.parameters(), G0.parameters()):
        grad = p0.grad if p0.grad is not None else torch.zeros_like(p0)
        torch.testing.assert_close(ours, p0 - 0.1 * grad, rtol=1e-4, atol=1e-6)
        moved += int(grad.abs().sum() > 0)
    assert moved >= 10  # mapping and synthesis
    assert step.pl_mean.item() == pytest.approx(pl_mean.item(), rel=1e-5)
    stats = step.take_stats()
    assert stats["pl"] == pytest.approx(penalty.item(), rel=1e-4)
    assert stats["pl_mean"] == pytest.approx(pl_mean.item(), rel=1e-5)
    assert "grad_G" not in stats  # like D reg: the main phases' norms only


def test_pl_mean_update_rule_and_state():
    """Each G reg moves pl_mean 1% of the way to the batch's mean length; lengths that
    are not finite leave it, and G, as they were; it goes into the step's state, and a
    state from before path length restores 0."""
    step = _stylegan2_step()
    z = torch.randn(4, 8, generator=torch.Generator().manual_seed(1))
    means = []
    for seed in (5, 6):
        G0 = copy.deepcopy(step.G.module)
        torch.manual_seed(seed)
        ws = G0.ws(z[:2], per_layer=True)
        means.append(phases.path_lengths(G0.synthesis(ws), ws).mean().item())
        torch.manual_seed(seed)
        step.g_reg(StepBatch([MicroBatch(None, z)]))
    expected = 0.99 * (0.01 * means[0]) + 0.01 * means[1]
    assert means[0] != means[1]
    assert step.pl_mean.item() == pytest.approx(expected, rel=1e-5)
    assert step.take_stats()["pl_mean"] == pytest.approx((0.01 * means[0] + expected) / 2,
                                                         rel=1e-5)
    before = [p.detach().clone() for p in step.G.module.parameters()]
    bad = z.clone()
    bad[1, 0] = float("nan")  # in the half that G reg takes
    step.g_reg(StepBatch([MicroBatch(None, bad)]))
    assert step.pl_mean.item() == pytest.approx(expected, rel=1e-5)
    assert all(torch.equal(a, b) for a, b in zip(step.G.module.parameters(), before))
    assert step.G.nonfinite.item() == 1 and "pl" not in step.take_stats()
    state = step.state_dict()
    fresh = _stylegan2_step()
    fresh.load_state_dict(state)
    assert torch.equal(fresh.pl_mean, step.pl_mean)
    fresh.load_state_dict({"skips": [0, 0, 0]})
    assert fresh.pl_mean.item() == 0.0


def _pl_mean_worker(rank, port, results):
    from ranks import set_rank_env

    set_rank_env(rank, 2, port)
    d = distributed.init("cpu")
    try:
        step = _stylegan2_step(dist=d, strategy="ddp")
        G0 = copy.deepcopy(step.G.module)
        z = torch.randn(4, 8, generator=torch.Generator().manual_seed(10 + rank))
        torch.manual_seed(rank)
        ws = G0.ws(z[:2], per_layer=True)
        local = phases.path_lengths(G0.synthesis(ws), ws).mean().item()
        torch.manual_seed(rank)
        step.g_reg(StepBatch([MicroBatch(None, z)]))
        results[rank] = (local, step.pl_mean.item(),
                         [p.detach().clone() for p in step.G.module.parameters()])
    finally:
        distributed.shutdown()


@pytest.mark.slow  # two processes
def test_pl_mean_is_averaged_over_ranks():
    """2 gloo ranks under DDP, each on its own latents: both hold the same pl_mean, 1% of
    the mean of their two mean lengths, and the same G after the step."""
    import torch.multiprocessing as mp

    from ranks import free_port, spawn

    results = mp.Manager().dict()
    spawn(_pl_mean_worker, (free_port(), results), 2)
    (local0, mean0, params0), (local1, mean1, params1) = results[0], results[1]
    assert local0 != local1
    assert mean0 == mean1 == pytest.approx(0.01 * (local0 + local1) / 2, rel=1e-5)
    assert all(torch.equal(a, b) for a, b in zip(params0, params1))
