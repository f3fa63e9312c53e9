"""DiffAugment's three groups: what each does to an image, per sample, differentiably."""

import pytest
import torch

from fastgan.train import augment as A
from fastgan.train.ada import AugmentPipe
from fastgan.train.distributed import Dist


def test_translation_shifts_whole_images_and_fills_zeros():
    torch.manual_seed(0)
    x = torch.rand(16, 2, 16, 16) + 1  # no zeros of its own
    y = A.translation(x)
    for n in range(16):
        found = False
        for dy in range(-2, 3):  # 16 / 8 = 2 pixels at most
            for dx in range(-2, 3):
                shifted = torch.zeros_like(x[n])
                src = x[n][:, max(dy, 0):16 + min(dy, 0), max(dx, 0):16 + min(dx, 0)]
                shifted[:, max(-dy, 0):16 + min(-dy, 0), max(-dx, 0):16 + min(-dx, 0)] = src
                found |= torch.equal(shifted, y[n])
        assert found, n
    assert len({tuple((y[n] == 0).sum(dim=(0,)).flatten().tolist()) for n in range(16)}) > 1


def test_cutout_zeroes_one_square_of_half_the_size():
    torch.manual_seed(0)
    y = A.cutout(torch.ones(64, 1, 16, 16))
    zeros = (y == 0).sum(dim=(1, 2, 3))
    assert zeros.max() == 64 and zeros.min() > 0  # 8x8, fewer where it leaves the image
    rows = (y[:, 0] == 0).any(dim=2).sum(dim=1)
    cols = (y[:, 0] == 0).any(dim=1).sum(dim=1)
    assert torch.equal(zeros, rows * cols)  # a rectangle: the square, clipped


def test_colour_changes_each_sample_differently():
    torch.manual_seed(0)
    x = torch.rand(8, 3, 4, 4) * 2 - 1
    y = A.colour(x)
    assert len({round(float((y[n] - x[n]).mean()), 4) for n in range(8)}) == 8


def test_diffaug_is_differentiable():
    x = torch.randn(4, 3, 16, 16, requires_grad=True)
    A.diffaug(x).square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_policies():
    cpu = Dist(0, 1, 0, torch.device("cpu"))
    assert A.build(A.Augmentation("none"), True, cpu) == (None, None)
    assert A.build(A.Augmentation("diffaug"), True, cpu) == (A.diffaug, None)
    pipe, p = A.build(A.Augmentation("ada", target=0.7, interval=3, kimg=50), True, cpu)
    assert isinstance(pipe, AugmentPipe) and pipe.p is p.p and float(p.p) == 0.0
    assert (p.target, p.interval, p.kimg) == (0.7, 3, 50)
    _, fixed = A.build(A.Augmentation("ada", p=0.25), True, cpu)
    assert not fixed.adaptive and float(fixed.p) == 0.25
    for policy in ("diffaug", "ada"):
        with pytest.raises(ValueError, match="images"):
            A.build(A.Augmentation(policy), False, cpu)
