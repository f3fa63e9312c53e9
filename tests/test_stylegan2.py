"""StyleGAN2's pieces against direct computations, and its shapes at every resolution."""

import math

import pytest
import torch
import torch.nn.functional as F

from fastgan import models
from fastgan.models import stylegan2 as sg


@pytest.mark.parametrize("res", [8, 16, 32, 64, 128, 256, 512, 1024])
def test_shapes_at_every_resolution(res):
    g_kw, d_kw = models.model_kwargs("stylegan2", res=res, z_dim=8, width=2)
    G, D = models.build_generator("stylegan2", g_kw), models.build_discriminator("stylegan2",
                                                                                 d_kw)
    x = G(torch.randn(2, 8))
    assert x.shape == (2, 3, res, res) and torch.isfinite(x).all()
    assert D(x).shape == (2, 1)
    levels = int(math.log2(res)) - 1  # resolutions 4 .. res
    assert G.synthesis.num_ws == 2 * levels  # two convs per level but one at 4x4, + 1


def test_rejects_bad_resolution():
    with pytest.raises(ValueError, match="power-of-two resolution from 8 to 1024"):
        sg.StyleGAN2Generator(res=48)


def test_equalised_learning_rate():
    torch.manual_seed(0)
    fc = sg.EqualLinear(400, 300, lr_mul=0.01, bias_init=0.5)
    # stored N(0, 1/lr_mul^2); used at lr_mul / sqrt(fan_in): unit-variance outputs
    assert fc.weight.std().item() == pytest.approx(100.0, rel=0.02)
    x = torch.randn(64, 400)
    expected = x @ (fc.weight * 0.01 / 20.0).t() + fc.bias * 0.01
    torch.testing.assert_close(fc(x), expected)
    assert fc(x).std().item() == pytest.approx(1.0, rel=0.1)
    # the gradient reaching the stored weight is scaled by the same run-time gain
    fc(x).sum().backward()
    torch.testing.assert_close(fc.weight.grad, (torch.ones(64, 300).t() @ x) * 0.01 / 20.0)
    conv = sg.EqualConv2d(16, 8, 3)
    y = torch.randn(2, 16, 8, 8)
    torch.testing.assert_close(conv(y), F.conv2d(y, conv.weight / 12.0, conv.bias, padding=1))


def _direct_modconv(x, weight, styles, demodulate, up):
    """Per sample: modulate the weight, demodulate it, convolve (grouped over the batch)."""
    n, i, h, w = x.shape
    o, _, k, _ = weight.shape
    wn = weight[None] * styles[:, None, :, None, None]                    # [N, O, I, k, k]
    if demodulate:
        wn = wn * (wn.square().sum(dim=(2, 3, 4), keepdim=True) + 1e-8).rsqrt()
    out = []
    for s in range(n):
        if up:
            y = F.conv_transpose2d(x[s:s + 1], wn[s].transpose(0, 1), stride=2)
            y = sg.blur(y, pad=1, gain=4.0)
        else:
            y = F.conv2d(x[s:s + 1], wn[s], padding=k // 2)
        out.append(y)
    return torch.cat(out)


@pytest.mark.parametrize("up", [False, True])
@pytest.mark.parametrize("demodulate", [False, True])
def test_modulated_conv_matches_direct_computation(up, demodulate):
    torch.manual_seed(0)
    x, weight = torch.randn(3, 5, 8, 8), torch.randn(4, 5, 3, 3)
    styles = torch.randn(3, 5)
    ours = sg.modulated_conv2d(x, weight, styles, demodulate=demodulate, up=up)
    ref = _direct_modconv(x, weight, styles, demodulate, up)
    assert ours.shape == (3, 4, 16 if up else 8, 16 if up else 8)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


def test_demodulation_gives_unit_output_variance():
    torch.manual_seed(0)
    x = torch.randn(16, 64, 8, 8)
    y = sg.modulated_conv2d(x, torch.randn(32, 64, 3, 3), torch.randn(16, 64) * 5)
    # interior pixels (the border sees zero padding)
    assert y[:, :, 1:-1, 1:-1].std().item() == pytest.approx(1.0, rel=0.1)


def test_upsampling_filter():
    x = torch.randn(2, 3, 8, 8)
    assert sg.upsample2d(x).shape == (2, 3, 16, 16)
    ones = torch.ones(1, 2, 8, 8)  # a low-pass filter keeps a constant (away from edges)
    torch.testing.assert_close(sg.upsample2d(ones)[..., 2:-2, 2:-2], torch.ones(1, 2, 12, 12))


def _lowpass(c, gain, dtype=torch.float64):
    f = torch.tensor([1.0, 3.0, 3.0, 1.0], dtype=dtype)
    f2 = torch.outer(f, f)
    return (f2 * gain / f2.sum()).expand(c, 1, 4, 4)


@pytest.mark.slow  # float64 gradgradchecks of both filters: 5-13 s a case here
@pytest.mark.parametrize("pad, gain, stride", [(1, 1.0, 2), (2, 1.0, 2), (1, 4.0, 1),
                                               (2, 1.0, 1)])
def test_blur_is_the_depthwise_lowpass_convolution(pad, gain, stride):
    """Both filters (the depthwise convolution CPUs run, the shifted adds GPUs run)
    against the definition: a depthwise convolution with the [1, 3, 3, 1] outer product;
    values, gradients and second-order gradients (R1)."""
    torch.manual_seed(0)
    x = torch.randn(2, 5, 9, 8, dtype=torch.float64).to(memory_format=torch.channels_last)
    x.requires_grad_(True)
    ref = F.conv2d(F.pad(x, (pad,) * 4), _lowpass(5, gain), stride=stride, groups=5)
    for blur in (sg.blur_conv, sg.blur_shifted):
        torch.testing.assert_close(blur(x, pad=pad, gain=gain, stride=stride), ref)
        torch.autograd.gradcheck(lambda t: blur(t, pad, gain, stride), (x[:1, :2],))
        torch.autograd.gradgradcheck(lambda t: blur(t, pad, gain, stride), (x[:1, :2],))


def test_upsample_is_the_transposed_lowpass_convolution():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 5, 7, dtype=torch.float64, requires_grad=True)
    ref = F.conv_transpose2d(x, _lowpass(3, 4.0), stride=2, padding=1, groups=3)
    torch.testing.assert_close(sg.upsample2d(x), ref)
    torch.autograd.gradgradcheck(sg.upsample2d, (x[:1, :1],))


def test_minibatch_std_matches_direct_computation():
    torch.manual_seed(0)
    x = torch.randn(8, 6, 4, 4)
    out = sg.minibatch_std(x, group_size=4)
    assert out.shape == (8, 7, 4, 4)
    torch.testing.assert_close(out[:, :6], x)
    # groups: samples j, j + 2, j + 4, j + 6 (the group index runs slowest)
    for j in range(2):
        members = x[j::2]
        expected = members.std(dim=0, unbiased=False).mean()
        for s in range(j, 8, 2):
            torch.testing.assert_close(out[s, 6], torch.full((4, 4), expected.item()))
    # a batch of 6 uses groups of 3 (the largest divisor up to 4)
    assert sg.minibatch_std(torch.randn(6, 2, 4, 4), group_size=4).shape == (6, 3, 4, 4)


def test_truncation_and_w_average():
    G = sg.StyleGAN2Generator(res=8, z_dim=8, w_dim=8, channel_base=64, channel_max=16)
    G.train()
    G(torch.randn(16, 8))
    assert G.mapping.w_avg.abs().sum() > 0  # updated in training mode
    G.eval()
    before = G.mapping.w_avg.clone()
    ws = G.mapping(torch.randn(4, 8), truncation_psi=0.0)
    torch.testing.assert_close(ws, before.expand(4, G.synthesis.num_ws, 8))
    assert torch.equal(G.mapping.w_avg, before)  # not updated in eval mode


def _tiny_generator(**kw):
    torch.manual_seed(0)
    return sg.StyleGAN2Generator(res=8, z_dim=8, w_dim=8, channel_base=64, channel_max=16,
                                 **kw)


def test_mix_styles_takes_the_second_w_from_the_crossover_on():
    w, w2 = torch.randn(3, 8), torch.randn(3, 8)
    for cutoff in range(1, 5):
        ws = sg.mix_styles(w, w2, torch.tensor(cutoff), 4)
        assert ws.shape == (3, 4, 8)
        assert all(torch.equal(ws[:, i], w if i < cutoff else w2) for i in range(4))
    # draws: uniform in [1, num_ws) with the probability, else num_ws (nothing mixed)
    torch.manual_seed(0)
    cuts = torch.stack([sg.mixing_cutoff(0.5, 4, torch.device("cpu")) for _ in range(2000)])
    assert set(cuts.tolist()) == {1, 2, 3, 4}
    assert (cuts < 4).float().mean().item() == pytest.approx(0.5, abs=0.05)
    assert torch.bincount(cuts)[1:4].float().div(2000 / 6).sub(1).abs().max() < 0.2


def test_style_mixing_in_training_only():
    """While G trains, ws before the crossover are z's, from it on a second latent's
    (same labels), and the running mean of w follows z alone; at probability 0 and in
    eval mode G is untouched (no random number drawn either)."""
    c = F.one_hot(torch.tensor([0, 1, 2, 0]), 3)
    G, plain = _tiny_generator(c_dim=3, style_mixing=1.0), _tiny_generator(c_dim=3)
    z = torch.randn(4, 8)
    torch.manual_seed(1)
    ws = G.ws(z, c)
    torch.manual_seed(1)
    w, w2 = plain.mapping(z, c, broadcast=False), plain.mapping(torch.randn_like(z), c,
                                                                broadcast=False)
    cutoff = torch.randint(1, 4, ()).item()
    assert ws.shape == (4, 4, 8) and 1 <= cutoff < 4
    assert torch.equal(ws[:, :cutoff], w.unsqueeze(1).expand(-1, cutoff, -1))
    assert torch.equal(ws[:, cutoff:], w2.unsqueeze(1).expand(-1, 4 - cutoff, -1))
    plain.mapping.w_avg.zero_()  # only z's w updates it: one update from 0, as G's
    plain.mapping(z, c)
    assert torch.equal(G.mapping.w_avg, plain.mapping.w_avg)
    # style mixing changes G(z) while training, never in eval mode
    off = _tiny_generator(c_dim=3, style_mixing=0.0)  # G's weights
    for train in (True, False):
        outs = []
        for net in (G, off):
            net.train(train)
            torch.manual_seed(2)
            outs.append(net(z, c, noise_mode="const"))
            outs.append(torch.randn(()))  # what the RNG draws next
        assert torch.equal(outs[0], outs[2]) != train
        assert torch.equal(outs[1], outs[3]) != train


def test_label_conditioning():
    G = sg.StyleGAN2Generator(res=8, z_dim=8, w_dim=8, channel_base=64, channel_max=16, c_dim=3)
    D = sg.StyleGAN2Discriminator(res=8, channel_base=64, channel_max=16, c_dim=3)
    c = F.one_hot(torch.tensor([0, 1, 2, 0]), 3)
    img = G(torch.randn(4, 8), c)
    assert D(img, c).shape == (4, 1)
    with pytest.raises(ValueError, match="conditional"):
        D(img)
    other = F.one_hot(torch.tensor([1, 2, 0, 1]), 3)
    assert not torch.allclose(D(img, c), D(img, other))  # the label reaches D ...
    z = torch.randn(4, 8)
    assert not torch.allclose(G(z, c, noise_mode="const"), G(z, other, noise_mode="const"))


def test_r1_through_the_network_matches_the_reference_ops(monkeypatch):
    """R1 (a double backward) through D on the Triton bias_act (interpreted here) equals
    the same network on plain PyTorch ops."""
    torch.manual_seed(0)
    D = sg.StyleGAN2Discriminator(res=16, channel_base=64, channel_max=16)
    real = torch.randn(4, 3, 16, 16)
    grads = {}
    for setting in ("torch", "triton"):
        monkeypatch.setenv("FASTGAN_KERNELS", setting)
        D.zero_grad()
        x = real.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(D(x).sum(), x, create_graph=True)
        penalty = g.square().sum(dim=(1, 2, 3)).mean()
        penalty.backward()
        # the last bias does not change D's input gradient: no gradient there
        grads[setting] = (penalty.detach(), [torch.zeros_like(p) if p.grad is None
                                             else p.grad.clone() for p in D.parameters()])
    torch.testing.assert_close(grads["triton"][0], grads["torch"][0], rtol=1e-4, atol=1e-6)
    for ours, ref in zip(grads["triton"][1], grads["torch"][1]):
        torch.testing.assert_close(ours, ref, rtol=1e-3, atol=1e-5)
    # every weight takes part (biases before a piecewise-linear activation need not:
    # its second derivative is zero)
    names = [n for n, _ in D.named_parameters()]
    assert all(g.abs().sum() > 0 for n, g in zip(names, grads["torch"][1]) if "weight" in n)


def test_fp16_only_at_the_highest_resolutions():
    """Under an fp16 autocast, the 4 highest resolutions run in fp16 (clamped), the rest
    in fp32, as StyleGAN2-ADA; under bf16 everything runs in bf16."""
    G = sg.StyleGAN2Generator(res=128, z_dim=8, w_dim=8, channel_base=512, channel_max=16)
    D = sg.StyleGAN2Discriminator(res=128, channel_base=512, channel_max=16)
    seen = {}
    for r, convs in zip(G.synthesis.resolutions, G.synthesis.convs):
        convs[-1].register_forward_hook(lambda m, i, o, r=r: seen.__setitem__(f"G{r}", o.dtype))
    for block, r in zip(D.blocks, (128, 64, 32, 16, 8)):
        block.register_forward_hook(lambda m, i, o, r=r: seen.__setitem__(f"D{r}", o.dtype))
    for dtype in (torch.float16, torch.bfloat16):
        with torch.autocast("cpu", dtype=dtype):
            logits = D(G(torch.randn(2, 8)))
        half = {k for k, v in seen.items() if v == dtype}
        if dtype == torch.float16:
            assert half == {"G16", "G32", "G64", "G128", "D128", "D64", "D32", "D16"}
            assert seen["G4"] == seen["G8"] == seen["D8"] == torch.float32
            assert logits.dtype == torch.float32  # the 4x4 epilogue runs in fp32
        else:
            assert half == set(seen)
    assert G.synthesis.torgbs[-1].clamp == 256.0  # StyleGAN2-ADA's conv_clamp


@pytest.mark.slow
def test_conditional_training_on_labelled_shards(tmp_path, cache_dir):
    """--cond: the shapes shards name 16 classes; G and D take them, samples cycle them."""
    from conftest import run_cli, run_fastgan

    run = tmp_path / "run"
    r = run_fastgan("train", "--arch", "stylegan2", "--cond", "--width", "4", "--z-dim", "16",
                    "--steps", "4", "--batch", "8", "--log-every", "2", "--metric-samples",
                    "32", "--no-progress", "--out", str(run), "--cache-dir", cache_dir)
    assert r.returncode == 0, r.stderr[-2000:]
    gen = torch.load(run / "checkpoints" / "step-00000004" / "generator.pt", weights_only=True)
    assert gen["kwargs"]["c_dim"] == 16 and gen["ema"]
    assert any("embed" in k for k in gen["state_dict"])
    # the EMA G (what sampling uses) and the trained G, both consolidated, in float32
    assert gen["G_state_dict"].keys() == gen["state_dict"].keys()
    assert any(not torch.equal(gen["G_state_dict"][k], v)
               for k, v in gen["state_dict"].items() if v.is_floating_point())
    assert all(v.dtype == torch.float32 for v in gen["state_dict"].values()
               if v.is_floating_point())
    r = run_cli("sample", str(run), "--n", "8", "--out", str(tmp_path / "grid.png"))
    assert r.returncode == 0, r.stderr


@pytest.mark.slow
def test_path_length_and_style_mixing_train_end_to_end(tmp_path, cache_dir):
    """--pl-weight, --pl-interval and --style-mixing through the command line: the
    records carry the penalty and the running mean of the path lengths, and the
    checkpoint carries that mean."""
    import json

    from conftest import run_fastgan

    run = tmp_path / "run"
    r = run_fastgan("train", "--arch", "stylegan2", "--width", "4", "--z-dim", "16", "--res",
                    "16", "--batch", "8", "--steps", "4", "--pl-weight", "1", "--pl-interval",
                    "2", "--style-mixing", "0.5", "--log-every", "2", "--metric-samples", "16",
                    "--no-progress", "--out", str(run), "--cache-dir", cache_dir)
    assert r.returncode == 0, r.stderr[-2000:]
    o = json.loads((run / "config.json").read_text())["optim"]
    assert (o["pl_weight"], o["pl_interval"], o["style_mixing"]) == (1.0, 2, 0.5)
    recs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in recs] == [2, 4]
    assert all(x["pl"] > 0 and x["skipped_nonfinite"] == 0 for x in recs)
    assert 0 < recs[0]["pl_mean"] < recs[1]["pl_mean"]  # 1% of the way up from 0, twice
    state = torch.load(run / "checkpoints" / "step-00000004" / "state.pt", weights_only=True)
    assert state["gan_step"]["pl_mean"].item() == pytest.approx(recs[1]["pl_mean"], rel=1e-5)
