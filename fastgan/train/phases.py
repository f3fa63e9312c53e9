"""The GAN training step as a list of phases, each with an interval.

    D main   every step   D learns to tell real (target 1) from G(z) (target 0)
    G main   every step   G learns to make D say 1 on G(z) (non-saturating loss)

Later phases (D regularisation such as lazy R1, every 16 steps) slot into the same
list. G runs forward once per step; its output serves both phases: detached for D's
update, then through the updated D for G's (as the classic DCGAN recipe does).

Statistics (losses, D(x), D(G(z))) accumulate on the device and are read only when the
loop logs, so a step never waits for the host.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from .. import kernels
from .distributed import unwrap
from .precision import autocast

STAT_NAMES = ("loss_D", "loss_G", "D(x)", "D(G(z))")


@dataclass
class Phase:
    name: str
    interval: int
    run: Callable[[dict], None]


class GANStep:
    def __init__(self, G: nn.Module, D: nn.Module, opt_G: torch.optim.Optimizer,
                 opt_D: torch.optim.Optimizer, *, z_dim: int, device: torch.device,
                 precision: str):
        self.G, self.D, self.opt_G, self.opt_D = G, D, opt_G, opt_D
        self.z_dim, self.device, self.precision = z_dim, device, precision
        self.phases = [Phase("D main", 1, self.d_main), Phase("G main", 1, self.g_main)]
        self.stat_sum = torch.zeros(len(STAT_NAMES), device=device)
        self.stat_count = [0] * len(STAT_NAMES)  # known on the host: no sync to read

    def autocast(self):
        return autocast(self.precision, self.device)

    def __call__(self, real: torch.Tensor, step: int) -> None:
        z = torch.randn(real.shape[0], self.z_dim, device=self.device)
        with self.autocast():
            fake = self.G(z)
        ctx = {"real": real, "fake": fake}
        for phase in self.phases:
            if step % phase.interval == 0:
                phase.run(ctx)

    def d_main(self, ctx: dict) -> None:
        with self.autocast():
            real_logits = self.D(ctx["real"])
            fake_logits = self.D(ctx["fake"].detach())
        loss, d_real, d_fake = kernels.gan_d_loss(real_logits, fake_logits)
        self.opt_D.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_D.step()
        self._record((0, 2, 3), (loss.detach(), d_real, d_fake))

    def g_main(self, ctx: dict) -> None:
        D = unwrap(self.D)  # no gradient for D here, so nothing of D to all-reduce
        D.requires_grad_(False)
        try:
            with self.autocast():
                fake_logits = D(ctx["fake"])
            loss = kernels.gan_g_loss(fake_logits)
            self.opt_G.zero_grad(set_to_none=True)
            loss.backward()
            self.opt_G.step()
        finally:
            D.requires_grad_(True)
        self._record((1,), (loss.detach(),))

    def _record(self, idx: tuple[int, ...], values: tuple[torch.Tensor, ...]) -> None:
        for k, v in zip(idx, values):
            self.stat_sum[k] += v.float()
            self.stat_count[k] += 1

    def take_stats(self) -> torch.Tensor:
        """Mean of each statistic since the last call (NaN where none), then reset."""
        count = torch.tensor(self.stat_count, dtype=torch.float32, device=self.device)
        out = self.stat_sum / count
        self.stat_sum = torch.zeros_like(self.stat_sum)
        self.stat_count = [0] * len(STAT_NAMES)
        return out
