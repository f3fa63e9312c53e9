"""Multi-layer perceptrons for the 2-D datasets (ring, grid).

The generator is a ReLU MLP; PacGAN's 2-D generator adds BatchNorm (``batchnorm=True``),
but without it samples gathered more tightly into the modes in our runs. The
discriminator is a plain LeakyReLU MLP. ``pack`` > 1 makes the discriminator judge
``pack`` samples at once (PacGAN): it sees their concatenation, which lets it notice a
lack of diversity and so counters mode collapse.

``scale`` is the data's root-mean-square coordinate (``PointSet.scale``): G's output is
multiplied by it and D's input divided by it, so both networks work in unit-variance
coordinates, as image models work in [-1, 1]. Without it the grid (coordinates up to 4)
learned more slowly and less tightly (fewer samples within 3 std of a mode).
"""

from __future__ import annotations

import torch
from torch import nn

from .layers import LinearAct


class MLPGenerator(nn.Module):
    def __init__(self, z_dim: int = 16, width: int = 400, depth: int = 4, out_dim: int = 2,
                 batchnorm: bool = False, scale: float = 1.0):
        super().__init__()
        self.z_dim, self.scale = z_dim, scale
        layers: list[nn.Module] = []
        d = z_dim
        for _ in range(depth):
            if batchnorm:  # BatchNorm sits between bias and activation: nothing to fuse
                layers += [nn.Linear(d, width), nn.BatchNorm1d(width), nn.ReLU(True)]
            else:
                layers.append(LinearAct(d, width, act="relu", gain=1.0))
            d = width
        layers.append(nn.Linear(d, out_dim))
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        out = self.net(z)
        return out * self.scale if self.scale != 1.0 else out


class MLPDiscriminator(nn.Module):
    def __init__(self, in_dim: int = 2, width: int = 200, depth: int = 3, pack: int = 1,
                 scale: float = 1.0):
        super().__init__()
        self.pack, self.scale = pack, scale
        layers: list[nn.Module] = []
        d = in_dim * pack
        for _ in range(depth):
            layers.append(LinearAct(d, width, act="lrelu", alpha=0.2, gain=1.0))
            d = width
        layers.append(nn.Linear(d, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # [N, 2] -> [N / pack, 2 * pack]: each row is one packed group of samples.
        if self.scale != 1.0:
            x = x / self.scale
        return self.net(x.reshape(x.shape[0] // self.pack, -1))
