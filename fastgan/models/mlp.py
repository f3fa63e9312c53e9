"""Multi-layer perceptrons for the 2-D datasets (ring, grid).

The generator is a ReLU MLP; PacGAN's 2-D generator adds BatchNorm (``batchnorm=True``),
but without it samples gather more tightly into the modes. The discriminator is a plain
LeakyReLU MLP. ``pack`` > 1 makes the discriminator judge ``pack`` samples at once
(PacGAN): it sees their concatenation, which lets it notice a lack of diversity and so
counters mode collapse.

``scale`` is the data's root-mean-square coordinate (``PointSet.scale``): G's output is
multiplied by it and D's input divided by it, so both networks work in unit-variance
coordinates, as image models work in [-1, 1] (the grid's coordinates reach 4: in them
it learns more slowly and less tightly).

``latent_modes`` > 0 turns G's latent into a mixture of that many Gaussians
(:class:`LatentMixture`). The 2-D datasets are disconnected (8 or 25 separate blobs),
and a continuous G of a connected latent cannot be: whatever it does, some latent mass
lies between the regions it sends to two modes, and lands on the line between them.
With a mixture the latent itself has gaps, where G can switch modes at no cost
(DeLiGAN, Gurumurthy et al. 2017; "Disconnected manifold learning", Khayatkhoei et al.
2018). The grid's preset uses 100 components; the ring's keeps one Gaussian, which
did better there (BENCHMARKS.md, "2-D mode benchmark").
"""

from __future__ import annotations

import torch
from torch import nn

from .layers import LinearAct


class LatentMixture(nn.Module):
    """Standard normal z in, a sample of a mixture of ``modes`` Gaussians out.

    The latent everywhere else stays N(0, I) (the training stream, ``fastgan sample``,
    evaluation): the mixture is G's first layer. z's first coordinate picks the
    component: its normal CDF is uniform on (0, 1), so ``modes`` times it splits into a
    uniform component index and a uniform remainder, which the inverse CDF turns back
    into a standard normal independent of the index. The centres are drawn at
    construction (N(0, I), from the seeded global RNG, as the weights are) and kept as a
    buffer, so ``generator.pt`` carries them; ``spread`` is each component's std, small
    beside the centres' distances (about 5.7 apart in 16 dimensions).
    """

    def __init__(self, z_dim: int, modes: int, spread: float = 0.25):
        super().__init__()
        self.modes, self.spread = modes, spread
        self.register_buffer("centres", torch.randn(modes, z_dim))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        u = torch.special.ndtr(z[:, :1].float()) * self.modes
        k = u.floor().clamp(0, self.modes - 1)
        first = torch.special.ndtri((u - k).clamp(1e-6, 1 - 1e-6)).to(z.dtype)
        # a comparison, not one_hot or indexing: torch.func.vmap batches it (bench modes)
        onehot = (k == torch.arange(self.modes, device=z.device)).to(z.dtype)
        return onehot @ self.centres + self.spread * torch.cat([first, z[:, 1:]], dim=1)


class MLPGenerator(nn.Module):
    def __init__(self, z_dim: int = 16, width: int = 400, depth: int = 4, out_dim: int = 2,
                 batchnorm: bool = False, scale: float = 1.0, latent_modes: int = 0):
        super().__init__()
        self.z_dim, self.scale = z_dim, scale
        self.latent = LatentMixture(z_dim, latent_modes) if latent_modes > 0 else None
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
        out = self.net(self.latent(z) if self.latent is not None else z)
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
