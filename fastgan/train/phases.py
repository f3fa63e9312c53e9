"""The GAN training step as a list of phases, each with an interval.

    D main   every step          D learns to tell real (target 1) from G(z) (target 0)
    D reg    every --r1-interval  R1: penalise the gradient of D on real images
    G main   every step          G learns to make D say 1 on G(z) (non-saturating loss)

R1 (Mescheder et al., 2018) keeps D from growing arbitrarily sharp around the real
data, the usual road to "D wins, G's gradients vanish, G collapses". It is lazy (as in
StyleGAN2): computed every N steps and scaled by N, which costs 1/N of a D pass. It runs
on the unwrapped D with a manual gradient all-reduce, because DDP does not all-reduce
the gradients of a double backward (pytorch #63929).

G runs forward once per step; its output serves both main phases: detached for D's
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
from .distributed import Dist, all_reduce_grads, unwrap
from .precision import autocast

STAT_NAMES = ("loss_D", "loss_G", "D(x)", "D(G(z))", "r1")


@dataclass
class Phase:
    name: str
    interval: int
    run: Callable[[dict], None]


class GANStep:
    def __init__(self, G: nn.Module, D: nn.Module, opt_G: torch.optim.Optimizer,
                 opt_D: torch.optim.Optimizer, *, z_dim: int, dist: Dist, precision: str,
                 r1_gamma: float = 0.0, r1_interval: int = 4):
        self.G, self.D, self.opt_G, self.opt_D = G, D, opt_G, opt_D
        self.z_dim, self.dist, self.device, self.precision = z_dim, dist, dist.device, precision
        self.r1_gamma, self.r1_interval = r1_gamma, r1_interval
        self.phases = [Phase("D main", 1, self.d_main)]
        if r1_gamma > 0:
            self.phases.append(Phase("D reg", r1_interval, self.d_reg))
        self.phases.append(Phase("G main", 1, self.g_main))
        self.stat_sum = torch.zeros(len(STAT_NAMES), device=self.device)
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

    def d_reg(self, ctx: dict) -> None:
        D = unwrap(self.D)
        real = ctx["real"].detach().requires_grad_(True)
        with self.autocast():
            logits = D(real)
        (grad,) = torch.autograd.grad(logits.float().sum(), real, create_graph=True)
        penalty = grad.float().square().sum(dim=(1, 2, 3) if grad.ndim == 4 else 1).mean()
        self.opt_D.zero_grad(set_to_none=True)
        (penalty * (self.r1_gamma / 2 * self.r1_interval)).backward()
        all_reduce_grads(D, self.dist)
        self.opt_D.step()
        self._record((4,), (penalty.detach(),))

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

    def take_stats(self) -> tuple[list[str], torch.Tensor]:
        """(names, means) of the statistics recorded since the last call, then reset.

        Only statistics recorded at least once are returned (R1 may not have run); the
        names are the same on every rank, so the means can be all-reduced as they are.
        """
        names = [n for n, c in zip(STAT_NAMES, self.stat_count) if c]
        idx = [i for i, c in enumerate(self.stat_count) if c]
        count = torch.tensor([self.stat_count[i] for i in idx], dtype=torch.float32,
                             device=self.device)
        means = self.stat_sum[idx] / count
        self.stat_sum = torch.zeros_like(self.stat_sum)
        self.stat_count = [0] * len(STAT_NAMES)
        return names, means
