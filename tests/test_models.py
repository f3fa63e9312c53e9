import numpy as np
import pytest
import torch

from fastgan import models
from fastgan.data import builtin


@pytest.mark.parametrize("res", [8, 16, 32, 64])
def test_dcgan_shapes(res):
    gk, dk = models.model_kwargs("dcgan", res=res, z_dim=10, width=8)
    G, D = models.build_generator("dcgan", gk), models.build_discriminator("dcgan", dk)
    x = G(torch.randn(3, 10))
    assert x.shape == (3, 3, res, res)
    assert x.abs().max() <= 1.0  # tanh output
    assert D(x).shape == (3, 1)


def test_dcgan_rejects_odd_resolution():
    with pytest.raises(ValueError, match="power-of-two"):
        models.build_generator("dcgan", dict(res=48, z_dim=4, width=4))


def test_dcgan_follows_the_paper():
    G = models.build_generator("dcgan", dict(res=64, z_dim=100, width=64))
    D = models.build_discriminator("dcgan", dict(res=64, width=64))
    convs = [m for m in G.modules() if isinstance(m, torch.nn.ConvTranspose2d)]
    assert [c.out_channels for c in convs] == [512, 256, 128, 64, 3]
    assert isinstance(list(G.modules())[-1], torch.nn.Tanh)
    # D: no BatchNorm after the first conv, whose bias and LeakyReLU(0.2) are fused
    layers = list(D.net)
    first = layers[0]
    assert isinstance(first, torch.nn.Conv2d) and not isinstance(layers[1], torch.nn.BatchNorm2d)
    assert (first.act, first.alpha, first.gain) == ("lrelu", 0.2, 1.0)
    x = torch.randn(2, 3, 64, 64)
    expected = torch.nn.functional.leaky_relu(
        torch.nn.functional.conv2d(x, first.weight, first.bias, 2, 1), 0.2)
    torch.testing.assert_close(first(x), expected)
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in D.modules()) == 3


def test_permuted_weights_keep_torch_state_dicts_and_outputs():
    """DCGAN with its convolution weights stored permuted (as under DeepSpeed): the same
    outputs and gradients, state dicts in torch's shapes, loading either way round."""
    from fastgan.models.layers import store_weights_permuted

    gk, dk = models.model_kwargs("dcgan", res=16, z_dim=10, width=8)
    torch.manual_seed(0)
    plain = models.build_discriminator("dcgan", dk).eval()
    permuted = models.build_discriminator("dcgan", dk).eval()
    permuted.load_state_dict(plain.state_dict())
    store_weights_permuted(permuted)
    stored = {n: p.shape for n, p in permuted.named_parameters() if p.dim() == 4}
    assert stored and all(s != plain.get_parameter(n).shape for n, s in stored.items())
    x = torch.randn(3, 3, 16, 16)
    out_plain, out_permuted = plain(x), permuted(x)
    torch.testing.assert_close(out_permuted, out_plain)
    out_plain.sum().backward()
    out_permuted.sum().backward()
    for name in stored:
        torch.testing.assert_close(permuted.get_parameter(name).grad.permute(0, 3, 1, 2),
                                   plain.get_parameter(name).grad)
    sd = permuted.state_dict()
    assert {k: v.shape for k, v in sd.items()} == {
        k: v.shape for k, v in plain.state_dict().items()}
    assert all(torch.equal(sd[k], v) for k, v in plain.state_dict().items())
    other = models.build_discriminator("dcgan", dk).eval()  # other initial weights
    other.load_state_dict(sd)
    torch.testing.assert_close(other(x), out_plain)
    again = models.build_discriminator("dcgan", dk).eval()
    store_weights_permuted(again)
    again.load_state_dict(plain.state_dict())
    assert all(torch.equal(p, q) for p, q in zip(again.parameters(), permuted.parameters()))


def test_mlp_packing():
    gk, dk = models.model_kwargs("mlp", res=None, z_dim=2, width=16, pack=4)
    G, D = models.build_generator("mlp", gk), models.build_discriminator("mlp", dk)
    pts = G(torch.randn(8, 2))
    assert pts.shape == (8, 2)
    assert D(pts).shape == (2, 1)  # 8 samples in packs of 4


def test_mlp_works_in_unit_variance_coordinates():
    # the grid's coordinates reach 4: G's output is scaled up, D's input down, by the RMS
    grid = builtin.grid_set()
    assert grid.scale == pytest.approx(np.sqrt(8 + 0.05 ** 2))
    assert builtin.ring_set().scale == pytest.approx(np.sqrt(0.5 + 0.01 ** 2))
    pts = grid.sample(20000, np.random.default_rng(0))
    assert np.sqrt((pts ** 2).mean()) == pytest.approx(grid.scale, rel=0.02)
    gk, dk = models.model_kwargs("mlp", res=None, z_dim=4, width=8, pack=2, scale=grid.scale)
    torch.manual_seed(0)
    G, D = models.build_generator("mlp", gk), models.build_discriminator("mlp", dk)
    torch.manual_seed(0)
    G1 = models.build_generator("mlp", {**gk, "scale": 1.0})
    D1 = models.build_discriminator("mlp", {**dk, "scale": 1.0})
    z, x = torch.randn(6, 4), torch.from_numpy(pts[:6])
    torch.testing.assert_close(G(z), G1(z) * grid.scale)
    torch.testing.assert_close(D(x), D1(x / grid.scale))


def test_latent_mixture_splits_z_into_a_uniform_component_and_a_normal():
    torch.manual_seed(0)
    mix = models.mlp.LatentMixture(z_dim=3, modes=10, spread=0.1)
    z = torch.randn(200_000, 3)
    out = mix(z)
    # every output lies near exactly one centre, and which one is uniform over the ten
    dist = torch.cdist(out, mix.centres)
    nearest = dist.argmin(dim=1)
    assert dist.min(dim=1).values.max() < 0.1 * 6
    share = torch.bincount(nearest, minlength=10).float() / len(z)
    assert (share - 0.1).abs().max() < 0.005
    # about its centre, each component is N(0, spread^2 I) in every coordinate, the one
    # that picked the component too (the inverse CDF of the remainder)
    noise = (out - mix.centres[nearest]) / 0.1
    torch.testing.assert_close(noise.mean(0), torch.zeros(3), atol=0.01, rtol=0)
    torch.testing.assert_close(noise.std(0), torch.ones(3), atol=0.01, rtol=0)
    first = noise[nearest == 3, 0]
    assert abs(first.mean()) < 0.03 and abs(first.std() - 1) < 0.03
    # the same z, the same component: a deterministic function of z
    torch.testing.assert_close(mix(z[:5]), out[:5])


def test_mlp_generator_carries_its_latent_mixture():
    gk, _ = models.model_kwargs("mlp", res=None, z_dim=4, width=8, latent_modes=7)
    torch.manual_seed(1)
    G = models.build_generator("mlp", gk)
    assert G.state_dict()["latent.centres"].shape == (7, 4)
    torch.manual_seed(2)  # other centres and weights, until the state dict is loaded
    G2 = models.build_generator("mlp", gk)
    z = torch.randn(16, 4)
    assert not torch.allclose(G(z), G2(z))
    G2.load_state_dict(G.state_dict())
    torch.testing.assert_close(G2(z), G(z))
    # without a mixture G sees z itself
    plain = models.build_generator("mlp", {**gk, "latent_modes": 0})
    assert plain.latent is None and "latent.centres" not in plain.state_dict()
