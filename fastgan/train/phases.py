"""The GAN training step as a list of phases, each with an interval.

    D main   every step          D learns to tell real (target 1) from G(z) (target 0)
    D reg    every --r1-interval  R1 and R2: penalise the gradient of D on real images
                                 and on generated ones
    G main   every step          G learns to make D say 1 on G(z) (non-saturating loss)
    G reg    every --pl-interval  path length (StyleGAN2): G's image moves at a steady rate
                                 as w moves

Two losses (``--loss``). ``bce``, the non-saturating loss: D scores each image alone.
``rpgan``, the relativistic pairing loss (R3GAN, Huang et al., 2024): D scores how much
more real a real image looks than a generated one, softplus(-(D(x) - D(G(z)))) for D
and the reverse for G, so G's phase also runs D (frozen, without a graph) on the real
batch. Both go through the fused loss kernels.

Path-length regularisation (StyleGAN2, Karras et al., 2020) penalises how far the
length of J_w^T y (G's Jacobian at w, against a random image y) strays from its running
mean, ``pl_mean``: a fixed step in w then changes the image by a fixed amount, which
makes G smoother and easier to invert. Lazy every --pl-interval steps, on half of each
micro-batch (StyleGAN2's), on G's plain module (a double backward, as R1 is). pl_mean
lives on the device, averaged over ranks before each update, so every rank holds the
same; it is part of the GAN step's state.

R1 (Mescheder et al., 2018) keeps D from growing arbitrarily sharp around the real
data, the usual road to "D wins, G's gradients vanish, G collapses"; R2 does the same
around the generated data (R3GAN's pairing needs both to converge). They are lazy (as in
StyleGAN2): computed every N steps and scaled by N, which costs 1/N of a D pass. They run
on D's plain module (DDP does not all-reduce the gradients of a double backward,
pytorch #63929; the engine all-reduces them by hand).

With ``--accum 1``, G runs forward once per step and its output serves both main
phases: detached for D's update, then through the updated D for G's (as the classic
DCGAN recipe does). With more micro-batches, keeping every micro-batch's G graph alive
until the G phase would undo what accumulation saves, so the D phase draws its fakes
without a graph and the G phase runs G again on the same z: the same numbers, less memory.

Every loss is back-propagated and every phase ends in its engine's step, which skips
the update on every rank when any rank's loss or the reduced gradients are not finite
(engines.py). Nothing in a step reads a device value back to the host: the statistics
(losses, D(x), D(G(z)), R1, both gradient norms), the skip counts and the NaN streak
stay on the device until the loop logs or checkpoints, so on a GPU the host issues
step after step while the device works.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .. import kernels
from .ada import AdaptiveP
from .distributed import Dist, all_reduce_mean, all_reduce_sum
from .engines import Engine
from .precision import autocast

# The statistics of a step, in the order of the records. D(x,G(z)) (rpgan only): the
# mean sigmoid(D(x) - D(G(z))), how surely D ranks a real image above its paired fake.
# pl: the path-length penalty; pl_mean: the running mean of the path lengths.
# augment_p and r_t (--augment ada only): ADA's augmentation probability, and the share
# of real images D judges real as E[sign(D(x))] (StyleGAN2-ADA's overfitting measure;
# under rpgan E[sign(D(x) - mean D(G(z)))]).
STAT_NAMES = ("loss_D", "loss_G", "D(x)", "D(G(z))", "D(x,G(z))", "r1", "r2", "pl",
              "pl_mean", "grad_G", "grad_D", "augment_p", "r_t")
LOSSES = ("bce", "rpgan")
# StyleGAN2's path length: on 1/PL_BATCH_SHRINK of each micro-batch; the running mean
# moves PL_DECAY of the way to each batch's mean length
PL_BATCH_SHRINK, PL_DECAY = 2, 0.01


def _call(net, x: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor:
    """net(x), or net(x, c) for a conditional network."""
    return net(x) if c is None else net(x, c)


def gradient_penalty(grad: torch.Tensor) -> torch.Tensor:
    """R1's penalty from D's gradient at the real samples, R2's at the generated ones:
    each sample's squared gradient norm, averaged over the batch (weighted by gamma / 2,
    times the interval when lazy)."""
    return grad.float().square().sum(dim=tuple(range(1, grad.ndim))).mean()


def path_lengths(img: torch.Tensor, ws: torch.Tensor) -> torch.Tensor:
    """Per sample, the length of J^T y, with J the Jacobian of the image ``img`` in
    ``ws`` ([N, num_ws, w_dim]) and y a random image N(0, 1 / (H W)): the root of the
    squared gradient norms averaged over the layers. With the graph, for G's backward."""
    noise = torch.randn_like(img) / math.sqrt(img.shape[2] * img.shape[3])
    (grad,) = torch.autograd.grad((img * noise).sum(), ws, create_graph=True)
    return grad.float().square().sum(2).mean(1).sqrt()


@dataclass(frozen=True)
class Objective:
    """What the GAN step optimises: the loss, D's gradient penalties and G's path
    length."""
    loss: str = "bce"  # one of LOSSES
    r1_gamma: float = 0.0  # R1's weight: D's gradient at real images (0: off)
    r2_gamma: float = 0.0  # R2's weight: D's gradient at generated images (0: off)
    reg_interval: int = 4  # steps between the (lazy) penalties
    pl_weight: float = 0.0  # path length's weight (G, StyleGAN2; 0: off)
    pl_interval: int = 4  # steps between the (lazy) path-length penalties

    def __post_init__(self):
        if self.loss not in LOSSES:
            raise ValueError(f"loss {self.loss!r} is not one of {LOSSES}")

    @classmethod
    def of(cls, optim) -> Objective:
        """The objective of an ``OptimConfig`` (``--loss``, ``--r1-gamma``...)."""
        return cls(optim.loss, optim.r1_gamma, optim.r2_gamma, optim.r1_interval,
                   optim.pl_weight, optim.pl_interval)

    @property
    def regularised(self) -> bool:
        return self.r1_gamma > 0 or self.r2_gamma > 0


class RunningMeans:
    """Named statistics summed on the device between two reads: adding never reads.

    ``add`` takes any of ``names``, in any order, each with its value; a flag (0 or 1,
    on the device) leaves the whole group out, count and all: the losses when some
    rank's loss was not finite, the gradient norm of a skipped step. A statistic never
    added since the last ``take`` has no mean (absent), never a 0.
    """

    def __init__(self, names: tuple[str, ...], device: torch.device):
        self.names = names
        self.sums = torch.zeros(len(names), device=device)
        self.counts = torch.zeros(len(names), device=device)
        self._slots: dict[tuple[str, ...], torch.Tensor] = {}

    def add(self, values: dict[str, torch.Tensor], left_out: torch.Tensor) -> None:
        slots = self._slots_of(tuple(values))
        stacked = torch.stack([v.reshape(()).float() for v in values.values()])
        self.sums.index_add_(0, slots, stacked.masked_fill(left_out.bool(), 0.0))
        self.counts.index_add_(0, slots, (1.0 - left_out).expand(len(values)))

    def _slots_of(self, names: tuple[str, ...]) -> torch.Tensor:
        """The positions of ``names`` in the sums, as a device tensor made once per
        group of names (a fresh one would be a copy to the device per step)."""
        slots = self._slots.get(names)
        if slots is None:
            unknown = [n for n in names if n not in self.names]
            if unknown:
                raise KeyError(f"statistics {unknown} are not among {self.names}")
            slots = torch.tensor([self.names.index(n) for n in names],
                                 device=self.sums.device)
            self._slots[names] = slots
        return slots

    def take(self) -> torch.Tensor:
        """The sums and counts so far (to be reduced over ranks, then read); reset."""
        totals = torch.cat([self.sums, self.counts])
        self.sums.zero_()
        self.counts.zero_()
        return totals

    def means(self, totals: list[float]) -> dict[str, float]:
        """{name: mean} of ``take()``'s totals, in ``names`` order, for the statistics
        added at least once (R1 may not have run, or every step may have been skipped)."""
        n = len(self.names)
        return {name: totals[k] / totals[n + k] for k, name in enumerate(self.names)
                if totals[n + k]}


@dataclass
class MicroBatch:
    """One micro-batch of a step: real images (or points), latents, and the one-hot
    labels of a conditional GAN (None otherwise)."""
    real: torch.Tensor | None
    z: torch.Tensor | None
    c: torch.Tensor | None = None


@dataclass
class StepBatch:
    """What the phases of one step share: the micro-batches, and G's output for each
    when G ran once for both main phases (``--accum 1``; None: each phase runs G)."""
    micro: list[MicroBatch]
    fakes: list[torch.Tensor] | None = None


@dataclass
class Phase:
    name: str
    interval: int
    run: Callable[[StepBatch], None]
    engine: Engine  # the network it updates


class GANStep:
    def __init__(self, G: Engine, D: Engine, *, dist: Dist, precision: str, accum: int = 1,
                 objective: Objective = Objective(),
                 augment: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 ada: AdaptiveP | None = None):
        self.G, self.D = G, D
        # what D sees, real and fake alike: the images, or their augmentations
        self.aug = augment or _unchanged
        # --augment ada: the augmentation probability p, adjusted from D's real logits
        self.ada = ada
        self.dist, self.device, self.precision = dist, dist.device, precision
        self.accum = accum
        self.objective = objective
        self.phases = [Phase("D main", 1, self.d_main, D)]
        if objective.regularised:
            self.phases.append(Phase("D reg", objective.reg_interval, self.d_reg, D))
        self.phases.append(Phase("G main", 1, self.g_main, G))
        if objective.pl_weight > 0:
            self.phases.append(Phase("G reg", objective.pl_interval, self.g_reg, G))
        self.stats = RunningMeans(STAT_NAMES, self.device)
        # the running mean of the path lengths, the same on every rank (see g_reg)
        self.pl_mean = torch.zeros((), device=self.device)
        # optimizer steps skipped on every rank for a NaN/Inf, cumulative; and whether
        # the last step skipped any: device values, read when the loop logs
        self.nonfinite_skips = torch.zeros((), dtype=torch.float64, device=self.device)
        self.nonfinite = torch.zeros((), device=self.device)
        self._recorded = torch.zeros((), device=self.device)  # a left_out flag of 0

    def autocast(self):
        return autocast(self.precision, self.device)

    def penalty_autocast(self):
        """The autocast of the double-backward penalties (R1, R2, path length): the
        step's, except fp32 under fp16, whose range is too narrow for second derivatives
        (BatchNorm's gave NaN in the first layers' gradients even unscaled)."""
        return autocast("fp32" if self.precision == "fp16" else self.precision, self.device)

    def __call__(self, real: torch.Tensor, z: torch.Tensor, step: int,
                 c: torch.Tensor | None = None) -> None:
        """One training step on this rank's ``real`` images and latents ``z`` (and, for a
        conditional GAN, one-hot labels ``c``: the real images', also given to G)."""
        batch = self.split(real, z, c)
        nonfinite = []
        for phase in self.phases:
            if step % phase.interval == 0:
                phase.run(batch)
                nonfinite.append(phase.engine.nonfinite)
        nonfinite = torch.stack(nonfinite)
        self.nonfinite_skips += nonfinite.sum()
        self.nonfinite = nonfinite.amax()

    def split(self, real: torch.Tensor, z: torch.Tensor,
              c: torch.Tensor | None = None) -> StepBatch:
        """The step's micro-batches; with one, G's output on it, shared by both main
        phases."""
        cs = c.chunk(self.accum) if c is not None else [None] * self.accum
        batch = StepBatch([MicroBatch(*parts) for parts in
                           zip(real.chunk(self.accum), z.chunk(self.accum), cs)])
        if self.accum == 1:
            only = batch.micro[0]
            with self.autocast():
                batch.fakes = [_call(self.G.forward, only.z, only.c)]
        return batch

    def _fake(self, batch: StepBatch, i: int) -> torch.Tensor:
        """Micro-batch i's G(z) for D's update: no graph into G either way."""
        if batch.fakes is not None:
            return batch.fakes[i].detach()
        micro = batch.micro[i]
        with torch.no_grad(), self.autocast():
            return _call(self.G.plain_forward, micro.z, micro.c)

    def d_main(self, batch: StepBatch) -> None:
        D, last = self.D, self.accum - 1
        totals = MicroBatchSums()
        for i, micro in enumerate(batch.micro):
            fake = self._fake(batch, i)
            with D.sync(i == last):
                with self.autocast():
                    real_logits = _call(D.forward, self.aug(micro.real), micro.c)
                    fake_logits = _call(D.forward, self.aug(fake), micro.c)
                loss, stats = self._d_loss(real_logits, fake_logits)
                D.backward(loss, i)
            if self.ada is not None:
                pair = fake_logits if self.objective.loss == "rpgan" else None
                stats["r_t"] = self.ada.accumulate(real_logits, pair)
            totals.add({"loss_D": loss.detach(), **stats})
        D.step()
        self._record(D, totals.mean(self.accum))
        if self.ada is not None:
            # p as this step's augmentations used it, then perhaps its adjustment
            self.stats.add({"augment_p": self.ada.p}, self._recorded)
            self.ada.step()

    def _d_loss(self, real_logits: torch.Tensor, fake_logits: torch.Tensor
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """D's loss and its statistics by name, under the objective's loss."""
        if self.objective.loss == "rpgan":
            loss, d_real, d_fake, d_pair = kernels.rpgan_d_loss(real_logits, fake_logits)
            return loss, {"D(x)": d_real, "D(G(z))": d_fake, "D(x,G(z))": d_pair}
        loss, d_real, d_fake = kernels.gan_d_loss(real_logits, fake_logits)
        return loss, {"D(x)": d_real, "D(G(z))": d_fake}

    def d_reg(self, batch: StepBatch) -> None:
        D, o = self.D, self.objective
        totals = MicroBatchSums()
        gammas = {"r1": o.r1_gamma, "r2": o.r2_gamma}
        for i, micro in enumerate(batch.micro):
            penalties = {}
            if o.r1_gamma > 0:
                penalties["r1"] = self._gradient_penalty(micro.real, micro.c)
            if o.r2_gamma > 0:
                penalties["r2"] = self._gradient_penalty(self._fake(batch, i), micro.c)
            loss = sum(p * (gammas[name] / 2 * o.reg_interval) for name, p in penalties.items())
            D.backward(loss, i, wrapped=False)
            totals.add({name: p.detach() for name, p in penalties.items()})
        D.step()
        self._record(D, totals.mean(self.accum), norm=False)

    def _gradient_penalty(self, images: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor:
        """gradient_penalty of D's gradient at ``images`` (the images themselves, before
        any augmentation), with the graph for D's backward. In float32, as the real
        images are: G's output is in the autocast dtype."""
        x = images.detach().float().requires_grad_(True)
        with self.penalty_autocast():
            logits = _call(self.D.module, self.aug(x), c)
        (grad,) = torch.autograd.grad(logits.float().sum(), x, create_graph=True)
        return gradient_penalty(grad)

    def g_main(self, batch: StepBatch) -> None:
        G, last = self.G, self.accum - 1
        D = self.D.plain_forward  # frozen and unwrapped: see engines.py
        self.D.module.requires_grad_(False)
        try:
            totals = MicroBatchSums()
            for i, micro in enumerate(batch.micro):
                with G.sync(i == last):
                    with self.autocast():
                        fake = (batch.fakes[i] if batch.fakes is not None
                                else _call(G.forward, micro.z, micro.c))
                        fake_logits = _call(D, self.aug(fake), micro.c)
                        if self.objective.loss == "rpgan":  # D(x): no graph needed
                            with torch.no_grad():
                                real_logits = _call(D, self.aug(micro.real), micro.c)
                    if self.objective.loss == "rpgan":
                        loss = kernels.rpgan_g_loss(real_logits, fake_logits)
                    else:
                        loss = kernels.gan_g_loss(fake_logits)
                    G.backward(loss, i)
                totals.add({"loss_G": loss.detach()})
            G.step()
            self._record(G, totals.mean(self.accum))
        finally:
            self.D.module.requires_grad_(True)

    def g_reg(self, batch: StepBatch) -> None:
        """The path-length penalty, (length - pl_mean)^2 averaged over the samples, with
        pl_mean first moved towards the mean length over every rank's samples (a step
        whose lengths are not finite leaves it as it was, and is itself skipped). The
        penalty takes pl_mean as a constant."""
        G, o = self.G, self.objective
        totals = MicroBatchSums()
        for i, micro in enumerate(batch.micro):
            lengths = self._path_lengths(micro)
            mean = all_reduce_mean(lengths.detach().mean(), self.dist)
            self.pl_mean.copy_(torch.where(torch.isfinite(mean),
                                           self.pl_mean.lerp(mean, PL_DECAY), self.pl_mean))
            penalty = (lengths - self.pl_mean).square().mean()
            G.backward(penalty * (o.pl_weight * o.pl_interval), i, wrapped=False)
            totals.add({"pl": penalty.detach(), "pl_mean": self.pl_mean.clone()})
        G.step()
        self._record(G, totals.mean(self.accum), norm=False)

    def _path_lengths(self, micro: MicroBatch) -> torch.Tensor:
        """path_lengths of G's plain module (a double backward: see d_reg) on the first
        1/PL_BATCH_SHRINK of the micro-batch's latents and labels, with style mixing as
        G trains. Under fp16 in float32, as R1 is."""
        n = max(micro.z.shape[0] // PL_BATCH_SHRINK, 1)
        c = micro.c[:n] if micro.c is not None else None
        G = self.G.module
        with self.penalty_autocast():
            ws = G.ws(micro.z[:n], c, per_layer=True)
            img = G.synthesis(ws)
        return path_lengths(img.float(), ws)

    def _record(self, engine: Engine, values: dict[str, torch.Tensor], *,
                norm: bool = True) -> None:
        """A phase's statistics (left out when some rank's loss was not finite), and the
        gradient norm of its step as ``grad_<network>`` (left out when the step was
        skipped) unless ``norm`` is False or DeepSpeed reports none."""
        self.stats.add(values, engine.loss_bad)
        if norm and engine.grad_norm is not None:
            self.stats.add({f"grad_{engine.name}": engine.grad_norm}, engine.skipped)

    def skip_counts(self) -> list[int]:
        """[optimizer steps skipped for a NaN/Inf, G's fp16 overflow skips, D's], totals
        (a read of the device: for the loop's boundaries)."""
        counts = torch.stack([self.nonfinite_skips, self.G.overflow_skips,
                              self.D.overflow_skips])
        return [int(n) for n in counts.tolist()]

    def state_dict(self) -> dict:
        return {"skips": self.skip_counts(), "pl_mean": self.pl_mean.detach().cpu().clone()}

    def load_state_dict(self, state: dict) -> None:
        for total, n in zip((self.nonfinite_skips, self.G.overflow_skips,
                             self.D.overflow_skips), state["skips"]):
            total.fill_(n)
        # a checkpoint from before path length: none measured yet
        self.pl_mean.copy_(state.get("pl_mean", torch.zeros(())))

    def take_stats(self) -> dict[str, float]:
        """{name: mean over ranks} of the statistics recorded since the last call, then
        reset (one all-reduce, one read)."""
        return self.stats.means(all_reduce_sum(self.stats.take(), self.dist).tolist())


class MicroBatchSums:
    """A phase's statistics summed over its micro-batches, by name."""

    def __init__(self):
        self.sums: dict[str, torch.Tensor] = {}

    def add(self, values: dict[str, torch.Tensor]) -> None:
        for name, value in values.items():
            self.sums[name] = value if name not in self.sums else self.sums[name] + value

    def mean(self, micro_batches: int) -> dict[str, torch.Tensor]:
        if micro_batches == 1:
            return self.sums
        return {name: total / micro_batches for name, total in self.sums.items()}


def _unchanged(x: torch.Tensor) -> torch.Tensor:
    return x


class NonfiniteStreak:
    """Consecutive steps in which some phase was skipped for a NaN/Inf, counted on the
    device: ``length``, and ``reached_at``, the step at which it first reached
    ``limit`` (0: not yet). The loop reads them at its boundaries (``read``)."""

    def __init__(self, limit: int, device: torch.device):
        self.limit = limit
        self.length = torch.zeros((), device=device)
        self.reached_at = torch.zeros((), dtype=torch.float64, device=device)

    def update(self, nonfinite: torch.Tensor, step: int) -> None:
        """After each step, with the step's any-phase-skipped flag (0 or 1)."""
        self.length.add_(1.0).mul_(nonfinite)
        first = (self.length >= self.limit) & (self.reached_at == 0)
        self.reached_at = torch.where(first, step, self.reached_at)

    def read(self) -> tuple[int, int]:
        """(length, reached_at) on the host."""
        length, reached = torch.stack([self.length.double(), self.reached_at]).tolist()
        return int(length), int(reached)
