"""The GAN training step as a list of phases, each with an interval.

    D main   every step          D learns to tell real (target 1) from G(z) (target 0)
    D reg    every --r1-interval  R1: penalise the gradient of D on real images
    G main   every step          G learns to make D say 1 on G(z) (non-saturating loss)

R1 (Mescheder et al., 2018) keeps D from growing arbitrarily sharp around the real
data, the usual road to "D wins, G's gradients vanish, G collapses". It is lazy (as in
StyleGAN2): computed every N steps and scaled by N, which costs 1/N of a D pass. It runs
on D's plain module (DDP does not all-reduce the gradients of a double backward,
pytorch #63929; the engine all-reduces them by hand).

With ``--accum 1``, G runs forward once per step and its output serves both main
phases: detached for D's update, then through the updated D for G's (as the classic
DCGAN recipe does). With more micro-batches, keeping every micro-batch's G graph alive
until the G phase would undo what accumulation saves, so the D phase draws its fakes
without a graph and the G phase runs G again on the same z: the same numbers, less memory.

Every loss is checked before its backward, on every rank together: a NaN or Inf
anywhere drops that micro-batch on all ranks (see engines.py), counted and logged.

Statistics (losses, D(x), D(G(z)), both gradient norms) accumulate on the device and are read only when the
loop logs; the finiteness check is the one wait for the device per phase.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .. import kernels
from .distributed import Dist, nonfinite_ranks
from .engines import Engine
from .precision import autocast

log = logging.getLogger("fastgan")

STAT_NAMES = ("loss_D", "loss_G", "D(x)", "D(G(z))", "r1", "grad_G", "grad_D")
NORMS = 5  # index of the first gradient norm in STAT_NAMES


def _call(net, x: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor:
    """net(x), or net(x, c) for a conditional network."""
    return net(x) if c is None else net(x, c)


def r1_penalty(grad: torch.Tensor) -> torch.Tensor:
    """R1's penalty from D's gradient at the real samples: each sample's squared gradient
    norm, averaged over the batch (weighted by gamma / 2, times the interval when lazy)."""
    return grad.float().square().sum(dim=tuple(range(1, grad.ndim))).mean()


@dataclass
class Phase:
    name: str
    interval: int
    run: Callable[[dict], None]


class GANStep:
    def __init__(self, G: Engine, D: Engine, *, dist: Dist, precision: str, accum: int = 1,
                 r1_gamma: float = 0.0, r1_interval: int = 4,
                 augment: Callable[[torch.Tensor], torch.Tensor] | None = None):
        self.G, self.D = G, D
        # what D sees, real and fake alike: the images, or their augmentations
        self.aug = augment or (lambda x: x)
        self.dist, self.device, self.precision = dist, dist.device, precision
        self.accum = accum
        self.r1_gamma, self.r1_interval = r1_gamma, r1_interval
        self.phases = [Phase("D main", 1, self.d_main)]
        if r1_gamma > 0:
            self.phases.append(Phase("D reg", r1_interval, self.d_reg))
        self.phases.append(Phase("G main", 1, self.g_main))
        self.stat_sum = torch.zeros(len(STAT_NAMES), device=self.device)
        self.stat_count = [0] * len(STAT_NAMES)  # known on the host: no sync to read
        # steps whose gradient norm was finite (an fp16 overflow's is not): on the device
        self.finite_norms = torch.zeros(len(STAT_NAMES) - NORMS, device=self.device)
        self.nonfinite_skips = 0  # micro-batches dropped on every rank for a NaN/Inf loss
        self.step_index = 0

    def autocast(self):
        return autocast(self.precision, self.device)

    def __call__(self, real: torch.Tensor, z: torch.Tensor, step: int,
                 c: torch.Tensor | None = None) -> None:
        """One training step on this rank's ``real`` images and latents ``z`` (and, for a
        conditional GAN, one-hot labels ``c``: the real images', also given to G)."""
        self.step_index = step
        cs = c.chunk(self.accum) if c is not None else [None] * self.accum
        micro = list(zip(real.chunk(self.accum), z.chunk(self.accum), cs))
        ctx: dict = {"micro": micro}
        if self.accum == 1:
            with self.autocast():
                ctx["fake"] = [_call(self.G.wrapped, micro[0][1], micro[0][2])]
        for phase in self.phases:
            if step % phase.interval == 0:
                phase.run(ctx)

    def _fake(self, ctx: dict, i: int) -> torch.Tensor:
        """Micro-batch i's G(z) for D's update: no graph into G either way."""
        if "fake" in ctx:
            return ctx["fake"][i].detach()
        _, z, c = ctx["micro"][i]
        with torch.no_grad(), self.autocast():
            return _call(self.G.module, z, c)

    def _finite(self, loss: torch.Tensor, phase: str) -> bool:
        bad = nonfinite_ranks(loss, self.dist)
        if bad:
            self.nonfinite_skips += 1
            if self.dist.is_main:
                log.warning("step %d: non-finite %s loss on rank(s) %s: every rank skips "
                            "this micro-batch", self.step_index, phase,
                            ", ".join(map(str, bad)))
        return not bad

    def d_main(self, ctx: dict) -> None:
        D, last = self.D, self.accum - 1
        for i, (real, _, c) in enumerate(ctx["micro"]):
            fake = self._fake(ctx, i)
            with D.sync(i == last):
                with self.autocast():
                    real_logits = _call(D.wrapped, self.aug(real), c)
                    fake_logits = _call(D.wrapped, self.aug(fake), c)
                loss, d_real, d_fake = kernels.gan_d_loss(real_logits, fake_logits)
                if self._finite(loss, "D"):
                    D.backward(loss, i)
                    self._record((0, 2, 3), (loss.detach(), d_real, d_fake))
                else:
                    D.drop(i)
        D.step(measure=True)
        self._record_norm(6, D)

    def d_reg(self, ctx: dict) -> None:
        D = self.D
        # Under fp16 R1 runs in fp32: fp16's range is too narrow for the second
        # derivative of BatchNorm (NaN in the first layers' gradients even unscaled).
        precision = "fp32" if self.precision == "fp16" else self.precision
        for i, (real, _, c) in enumerate(ctx["micro"]):
            real = real.detach().requires_grad_(True)
            with autocast(precision, self.device):
                logits = _call(D.module, self.aug(real), c)  # penalty on the image itself
            (grad,) = torch.autograd.grad(logits.float().sum(), real, create_graph=True)
            penalty = r1_penalty(grad)
            if self._finite(penalty, "R1"):
                D.backward(penalty * (self.r1_gamma / 2 * self.r1_interval), i, wrapped=False)
                self._record((4,), (penalty.detach(),))
            else:
                D.drop(i)
        D.step()

    def g_main(self, ctx: dict) -> None:
        G, last = self.G, self.accum - 1
        D = self.D.module  # frozen and unwrapped: see engines.py
        D.requires_grad_(False)
        try:
            for i, (_, z, c) in enumerate(ctx["micro"]):
                with G.sync(i == last):
                    with self.autocast():
                        fake = ctx["fake"][i] if "fake" in ctx else _call(G.wrapped, z, c)
                        fake_logits = _call(D, self.aug(fake), c)
                    loss = kernels.gan_g_loss(fake_logits)
                    if self._finite(loss, "G"):
                        G.backward(loss, i)
                        self._record((1,), (loss.detach(),))
                    else:
                        G.drop(i)
            G.step(measure=True)
            self._record_norm(5, G)
        finally:
            D.requires_grad_(True)

    def _record(self, idx: tuple[int, ...], values: tuple[torch.Tensor, ...]) -> None:
        for k, v in zip(idx, values):
            self.stat_sum[k] += v.float()
            self.stat_count[k] += 1

    def _record_norm(self, k: int, engine: Engine) -> None:
        """The phase's gradient norm; left out when not finite (a dropped or fp16
        overflow step), since one inf would make the whole record's mean inf."""
        if engine.grad_norm is not None:
            norm = engine.grad_norm.float()
            finite = torch.isfinite(norm)
            self.stat_sum[k] += torch.where(finite, norm, 0.0)
            self.finite_norms[k - NORMS] += finite
            self.stat_count[k] += 1

    def skip_counts(self) -> list[int]:
        """[non-finite micro-batches dropped, G overflow skips, D overflow skips], totals."""
        return [self.nonfinite_skips, self.G.overflow_skips, self.D.overflow_skips]

    def take_stats(self) -> tuple[list[str], torch.Tensor]:
        """(names, means) of the statistics recorded since the last call, then reset.

        Only statistics recorded at least once are returned (R1 may not have run, or
        every loss may have been non-finite); the names are the same on every rank,
        since drops are decided together, so the means can be all-reduced as they are.
        """
        names = [n for n, c in zip(STAT_NAMES, self.stat_count) if c]
        idx = [i for i, c in enumerate(self.stat_count) if c]
        count = torch.tensor(self.stat_count, dtype=torch.float32, device=self.device)
        count[NORMS:] = self.finite_norms.clamp(min=1)
        means = self.stat_sum[idx] / count[idx]
        self.stat_sum = torch.zeros_like(self.stat_sum)
        self.stat_count = [0] * len(STAT_NAMES)
        self.finite_norms = torch.zeros_like(self.finite_norms)
        return names, means
