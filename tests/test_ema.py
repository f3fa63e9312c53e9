"""The EMA generator: its half-life in images, its ramp-up, its average."""

import math

import pytest
import torch

from fastgan.train.ema import EMA


def test_half_life_in_images_and_ramp_up():
    ema = EMA(torch.nn.Linear(2, 2), half_life_kimg=10.0, rampup=0.05)
    # after 10k images at any batch size, a weight's share has halved
    assert ema.beta(10**6, 64) ** (10_000 / 64) == pytest.approx(0.5)
    assert ema.beta(10**6, 256) ** (10_000 / 256) == pytest.approx(0.5)
    # early on the half-life is 5% of the images seen: 640 images seen -> 32
    assert ema.beta(640, 64) == pytest.approx(0.5 ** (64 / 32))
    assert EMA(torch.nn.Linear(2, 2), 10.0, 0.0).beta(640, 64) == pytest.approx(
        0.5 ** (64 / 10_000))


def test_update_averages_parameters_and_copies_buffers():
    G = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.BatchNorm1d(3))
    ema = EMA(G, half_life_kimg=1.0, rampup=0.0)
    start = [p.detach().clone() for p in ema.module.parameters()]
    with torch.no_grad():
        for p in G.parameters():
            p.add_(1.0)
        G[1].running_mean.fill_(7.0)
    ema.update(G, images_seen=10**6, batch=1000)  # beta = 0.5: halfway
    for s, p in zip(start, ema.module.parameters()):
        torch.testing.assert_close(p, s + 0.5)
    assert torch.equal(ema.module[1].running_mean, torch.full((3,), 7.0))
    assert not ema.module.training and not any(p.requires_grad for p in ema.module.parameters())
    assert math.isclose(ema.beta(10**6, 1000), 0.5)
