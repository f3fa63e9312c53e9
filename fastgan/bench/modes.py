"""``fastgan bench modes``: the 2-D mode-collapse benchmark with PacGAN's protocol.

Ring (8 Gaussians, radius 1, std 0.01) and grid (25 Gaussians, spacing 2, std 0.05);
2,500 samples from each trained G; a mode is captured when at least one sample lies
within 3 std of its mean, a sample is of high quality when it lies within 3 std of
the nearest mean (``PointSet.metrics``); 10 seeds, reported as mean and standard error
beside PacGAN's Table 1.

Each variant is the configuration ``fastgan train --data builtin:ring`` (or grid)
resolves to, with the variant's flags on top, so the ``default`` row is fastgan's
default setup. The seeds of one variant train together, as one batch of independent
GANs (``torch.func.vmap`` over the very same G and D modules, parameters stacked along
a seed axis, :class:`StackedMembers`), stepped by the training step itself: GANStep's
phases on engines of the stacked networks, the EMA generator and the learning-rate
schedule of ``fastgan train``. Member k is initialised, fed, and stepped as ``fastgan
train --seed k`` would be, in a fraction of the time of separate runs, since these
small MLPs spend their time in per-op overhead. ``tests/test_bench_modes.py`` checks
that a member tracks ``fastgan train`` step for step.
"""

from __future__ import annotations

import copy
import json
import math
import multiprocessing
import os
import sys
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from .. import models
from ..config import TrainConfig, apply, int_flag, resolve, total_steps
from ..data import builtin
from ..data.points import PointBatches
from ..errors import UserError
from ..train.augment import Augmentation
from ..train.build import build_networks, train_gan
from ..train.distributed import Dist
from ..train.ema import EMA
from ..train.engines import Engine, EngineOptions
from ..train.phases import Objective
from ..train.precision import resolve_precision
from ..train.schedule import lr_scheduler

# PacGAN, Table 1 (10 trials each): (modes, high-quality %), ring then grid.
PUBLISHED = {
    "GAN": {"ring": (6.3, 98.2), "grid": (17.3, 94.8)},
    "PacGAN2": {"ring": (7.9, 95.6), "grid": (23.8, 91.3)},
}

# The ladder from PacGAN's GAN to fastgan's default, one change per rung; every flag
# not named is fastgan's default for the dataset (see config.PRESETS).
VARIANTS: dict[str, dict] = {
    # PacGAN's optimiser (Adam 1e-4, beta1 0.8), constant rate, no packing, G's latent
    # one Gaussian, no R1
    "pacgan-gan": dict(pack=1, lr_g=1e-4, lr_d=1e-4, beta1=0.8, lr_decay=0.0, latent_modes=0,
                       r1_gamma=0.0),
    # ... with D judging pairs of samples
    "pacgan2": dict(pack=2, lr_g=1e-4, lr_d=1e-4, beta1=0.8, lr_decay=0.0, latent_modes=0,
                    r1_gamma=0.0),
    # fastgan's optimiser (Adam 1e-3, beta1 0.5), still a constant rate
    "pack2-lr1e-3": dict(pack=2, lr_decay=0.0, latent_modes=0, r1_gamma=0.0),
    # ... the rate decaying to zero over the second half: the ring's default
    "pack2-decay": dict(pack=2, latent_modes=0, r1_gamma=0.0),
    # ... and G's latent a mixture of 100 Gaussians
    "mixture": dict(pack=2, latent_modes=100, r1_gamma=0.0),
    # fastgan's default: on the grid, the mixture and a light R1 (gamma 0.01 every 16
    # steps); on the ring, pack2-decay
    "default": dict(),
    # the default without packing: what packing still adds
    "default-pack1": dict(pack=1),
}


@dataclass
class ModesBenchOptions:
    datasets: tuple[str, ...] = ("ring", "grid")
    variants: tuple[str, ...] = ("default",)
    seeds: int = 10
    steps: int | None = None  # None: the preset's length
    json_path: str | None = None


def variant_config(dataset: str, variant: dict, steps: int | None = None) -> TrainConfig:
    cfg = TrainConfig()
    cfg.data.data = f"builtin:{dataset}"
    if steps is not None:
        variant = {**variant, "steps": steps}
    apply(cfg, variant, "bench modes variant")
    return resolve(cfg, set(variant))


class StackedMembers(nn.Module):
    """Copies of one module (the members) called as one module: their parameters and
    buffers stacked along a new first axis, under the member's own names, and the batch
    (in and out) the members' batches one after another, member k's rows k*n to
    (k + 1)*n for n rows each.

    Each member sees only its own rows (``torch.func.vmap`` over ``functional_call``), so
    a mean over the whole batch is the mean of the members' own means, and the gradient
    of a member's rows reaches that member's parameters alone.
    """

    def __init__(self, members: list[nn.Module]):
        super().__init__()
        self.members = len(members)
        params, buffers = stack_module_state(members)
        # the member's layout, holding the stacks in place of its own tensors
        self.stacked = copy.deepcopy(members[0])
        for name, value in params.items():
            _replace_tensor(self.stacked, name, nn.Parameter(value.detach()))
        for name, value in buffers.items():
            _replace_tensor(self.stacked, name, value)
        # what functional_call runs, without tensors of its own; in a list, so that it
        # is no submodule (its parameters are not this module's)
        self._layout = [copy.deepcopy(members[0]).to("meta")]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        per_member = x.reshape(self.members, -1, *x.shape[1:])
        out = vmap(self._member_forward)(dict(self.stacked.named_parameters()),
                                         dict(self.stacked.named_buffers()), per_member)
        return out.reshape(-1, *out.shape[2:])

    def _member_forward(self, params: dict, buffers: dict, x: torch.Tensor) -> torch.Tensor:
        return functional_call(self._layout[0], (params, buffers), (x,))

    def member_state(self, k: int) -> dict[str, torch.Tensor]:
        """Member k's parameters and buffers, as its own module's state dict."""
        return {name: t[k].detach().cpu() for name, t in
                [*self.stacked.named_parameters(), *self.stacked.named_buffers()]}


def _replace_tensor(module: nn.Module, name: str, value: torch.Tensor) -> None:
    """Set the parameter or buffer ``name`` (dotted) of ``module`` to ``value``."""
    owner, _, leaf = name.rpartition(".")
    setattr(module.get_submodule(owner), leaf, value)


class MemberEngine(Engine):
    """The engine of a :class:`StackedMembers` network (strategy none, one process).

    The phases' losses are means over the whole batch, that is over the members' means:
    each is scaled by the number of members before its backward, so that every member
    gets the gradient of its own loss. Gradient norm and NaN/Inf skip are of all members
    together: one member's NaN skips every member's step (the benchmark's settings meet
    no NaN), and clipping would not be per member (the ensemble refuses it).
    """

    def backward(self, loss: torch.Tensor, micro: int, *, wrapped: bool = True) -> None:
        super().backward(loss * self.module.members, micro, wrapped=wrapped)


class Ensemble:
    """``len(seeds)`` independent GANs of one configuration, trained as one by the step
    ``fastgan train`` runs: GANStep's phases (train/phases.py) on engines of stacked
    members, the EMA generator (train/ema.py) and the learning-rate schedule
    (train/schedule.py)."""

    def __init__(self, cfg: TrainConfig, seeds: list[int], device="cpu"):
        m, o, lp = cfg.model, cfg.optim, cfg.loop
        if cfg.dist.accum != 1 or cfg.dist.grad_clip > 0:
            raise UserError("bench modes: --accum and --grad-clip are not supported (an "
                            "ensemble's micro-batch would straddle members, and its "
                            "clipping norm is of all members together)")
        self.device = torch.device(device)
        name = cfg.data.data.split(":", 1)[1]
        self.cfg, self.seeds, self.points = cfg, seeds, builtin.POINT_SETS[name]()
        self.steps = total_steps(cfg)
        g_kw, d_kw = models.model_kwargs("mlp", res=None, z_dim=m.z_dim, width=m.width,
                                         pack=m.pack, scale=self.points.scale,
                                         latent_modes=m.latent_modes)
        nets = [build_networks("mlp", g_kw, d_kw, seed=s, device=self.device) for s in seeds]
        self.G = StackedMembers([G for G, _ in nets])
        D = StackedMembers([D for _, D in nets])
        dist = Dist(rank=0, world=1, local_rank=0, device=self.device)
        opts = EngineOptions(strategy="none", micro_batch=lp.batch * len(seeds), accum=1,
                             grad_clip=0.0, precision=resolve_precision(
                                 cfg.run.precision, self.device, points=True))
        self.gan = train_gan(self.G, D, images=False, opts=opts, dist=dist, lr_g=o.lr_g,
                             lr_d=o.lr_d, betas=(o.beta1, o.beta2),
                             objective=Objective.of(o), augment=Augmentation.of(o),
                             engine=MemberEngine)
        # the EMA generator, as fastgan train keeps it: what is evaluated
        self.ema = EMA(self.G, o.ema_kimg, o.ema_rampup) if o.ema_kimg > 0 else None
        self.schedulers = [lr_scheduler(eng.optimizer, self.steps, o.lr_decay)
                           for eng in (self.gan.G_eng, self.gan.D_eng)]
        self.data = [PointBatches(name, lp.batch, seed=s) for s in seeds]
        self.z_streams = [torch.Generator().manual_seed(s * 1000 + 1) for s in seeds]
        self.batch, self.z_dim = lp.batch, m.z_dim
        self.step_count = 0

    def step(self) -> None:
        """One training step of every member, as the loop of ``fastgan train`` takes it."""
        real = torch.cat([next(d) for d in self.data]).to(self.device)
        z = torch.cat([torch.randn(self.batch, self.z_dim, generator=g)
                       for g in self.z_streams]).to(self.device)
        self.step_count += 1
        self.gan.step(real, z, self.step_count)
        if self.ema is not None:
            self.ema.update(self.G, self.step_count * self.batch, self.batch)
        for scheduler in self.schedulers:
            scheduler.step()

    @property
    def evaluated(self) -> StackedMembers:
        """The generators evaluated: the EMA's when there is one."""
        return self.ema.module if self.ema is not None else self.G

    @torch.no_grad()
    def samples(self, n: int) -> np.ndarray:
        """n points from each member, from the z ``fastgan train``'s mode metrics use."""
        z = torch.cat([torch.randn(n, self.z_dim,
                                   generator=torch.Generator().manual_seed(s + 1))
                       for s in self.seeds]).to(self.device)
        return self.evaluated(z).reshape(len(self.seeds), n, -1).cpu().numpy()

    def member_state(self, k: int) -> dict:
        """Member k's generator weights (the EMA's when there is one) and buffers, as a
        state dict."""
        return self.evaluated.member_state(k)


def train_members(dataset: str, variant: str, seeds: list[int], steps: int | None = None,
                  device="cpu") -> dict:
    """Train ``seeds`` of one variant together; each member's PacGAN metrics."""
    cfg = variant_config(dataset, VARIANTS[variant], steps)
    ens = Ensemble(cfg, seeds, device)
    start = time.perf_counter()
    for _ in range(ens.steps):
        ens.step()
    pts = ens.samples(builtin.POINT_METRIC_SAMPLES)
    return {"dataset": dataset, "variant": variant, "seeds": seeds, "steps": ens.steps,
            "metrics": [ens.points.metrics(p) for p in pts],
            "config": {k: v for k, v in {**cfg.model.__dict__, **cfg.optim.__dict__,
                                          "batch": cfg.loop.batch}.items()
                       if k in ("pack", "z_dim", "latent_modes", "width", "lr_g", "lr_d",
                                "beta1", "beta2", "lr_decay", "ema_kimg", "r1_gamma",
                                "r1_interval", "batch")},
            "seconds": time.perf_counter() - start}


def summarise(parts: list[dict]) -> dict:
    """One row from the parts (seed chunks) of one (variant, dataset)."""
    parts = sorted(parts, key=lambda p: p["seeds"][0])
    per_seed = [m for p in parts for m in p["metrics"]]
    modes = np.array([r["modes_covered"] for r in per_seed], float)
    hq = np.array([100 * r["high_quality"] for r in per_seed])
    first = parts[0]
    return {"dataset": first["dataset"], "variant": first["variant"], "seeds": len(per_seed),
            "steps": first["steps"],
            "modes_mean": float(modes.mean()), "modes_se": _se(modes),
            "hq_mean": float(hq.mean()), "hq_se": _se(hq),
            "modes": modes.tolist(), "high_quality": hq.round(2).tolist(),
            "config": first["config"],
            # core-seconds: the chunks ran side by side
            "seconds": round(sum(p["seconds"] for p in parts), 1)}


def _se(x: np.ndarray) -> float:
    return float(x.std(ddof=1) / math.sqrt(len(x))) if len(x) > 1 else float("nan")


def table(rows: list[dict]) -> str:
    out = [f"{'':16} {'ring modes':>13} {'ring HQ %':>13}   {'grid modes':>13} "
           f"{'grid HQ %':>13}   (of 8 / of 25; mean ± s.e.)"]
    for name, pub in PUBLISHED.items():
        out.append(f"{'PacGAN ' + name:16} {pub['ring'][0]:>13.1f} {pub['ring'][1]:>13.1f}   "
                   f"{pub['grid'][0]:>13.1f} {pub['grid'][1]:>13.1f}   (published)")
    by = {(r["variant"], r["dataset"]): r for r in rows}
    for variant in dict.fromkeys(r["variant"] for r in rows):
        cells = []
        for ds in ("ring", "grid"):
            r = by.get((variant, ds))
            cells.append("" if r is None else
                         f"{r['modes_mean']:>7.2f} ± {r['modes_se']:.2f} "
                         f"{r['hq_mean']:>7.1f} ± {r['hq_se']:.1f}")
        n = next(r["seeds"] for r in rows if r["variant"] == variant)
        steps = " / ".join(f"{by[(variant, ds)]['steps']:,}" for ds in ("ring", "grid")
                           if (variant, ds) in by)
        out.append(f"{'fastgan ' + variant:16} {cells[0]:>27}   {cells[1]:>27}   ({n} seeds, "
                   f"{steps} steps)")
    return "\n".join(out)


# Seeds per process. A step's cost grows in proportion to its members, so chunking costs
# nothing, and it lets the cores share the grid's longer runs instead of one core
# finishing the ring early and idling.
CHUNK = 5


def _job(args: tuple) -> dict:
    ds, variant, seeds, steps = args
    torch.set_num_threads(1)  # these small products keep one core busy better than two
    return train_members(ds, variant, seeds, steps)


def run(opts: ModesBenchOptions) -> list[dict]:
    """Every (variant, dataset) in chunks of seeds, one process per core, the longest
    runs first."""
    jobs = [(ds, v, list(range(lo, min(lo + CHUNK, opts.seeds))), opts.steps)
            for v in opts.variants for ds in opts.datasets
            for lo in range(0, opts.seeds, CHUNK)]
    jobs.sort(key=lambda j: -total_steps(variant_config(j[0], VARIANTS[j[1]], j[3])) * len(j[2]))
    procs = min(len(jobs), os.cpu_count() or 1)
    print(f"fastgan bench modes: {len(opts.variants) * len(opts.datasets)} run(s) of "
          f"{opts.seeds} seeds in {len(jobs)} process(es), {procs} at a time",
          file=sys.stderr, flush=True)
    start = time.perf_counter()
    parts: dict[tuple, list] = {}
    with multiprocessing.get_context("spawn").Pool(procs) as pool:
        for part in pool.imap_unordered(_job, jobs):
            key = (part["variant"], part["dataset"])
            parts.setdefault(key, []).append(part)
            done = sum(len(p["seeds"]) for p in parts[key])
            if done == opts.seeds:
                row = summarise(parts[key])
                print(f"{key[0]} {key[1]}: {row['modes_mean']:.2f} modes, {row['hq_mean']:.1f}% "
                      f"high quality ({row['steps']} steps, {time.perf_counter() - start:.0f} "
                      "s in)", file=sys.stderr, flush=True)
    rows = [summarise(parts[(v, ds)]) for v in opts.variants for ds in opts.datasets]
    print(table(rows))
    print(f"{time.perf_counter() - start:.0f} s", file=sys.stderr)
    if opts.json_path:
        with open(opts.json_path, "w") as fh:
            json.dump(rows, fh, indent=2)
    return rows


def main_args(kinds) -> None:
    p = kinds.add_parser("modes", help="2-D mode-collapse benchmark (PacGAN protocol)",
                         description="Train the embedded ring and grid GANs over several "
                         "seeds and print modes captured and high-quality samples (mean ± "
                         "standard error) beside PacGAN's Table 1. Variants: "
                         + "; ".join(f"{k}: {v or 'fastgan train as it is'}"
                                     for k, v in VARIANTS.items()))
    p.add_argument("--datasets", default="ring,grid", help="ring,grid (default: both)")
    p.add_argument("--variants", default="default",
                   help=f"comma-separated, or all ({', '.join(VARIANTS)}; default: default)")
    p.add_argument("--seeds", default="10", help="seeds per variant (default: 10)")
    p.add_argument("--steps", help="training steps (default: the presets': ring 28,000, "
                   "grid 40,000)")
    p.add_argument("--json", help="also write the rows to this JSON file")


def from_args(args) -> ModesBenchOptions:
    datasets = tuple(s for s in args.datasets.split(",") if s)
    bad = [d for d in datasets if d not in builtin.POINT_SETS]
    if bad or not datasets:
        raise UserError(f"--datasets: expected ring and/or grid, got {args.datasets!r}")
    variants = tuple(VARIANTS) if args.variants == "all" else tuple(
        v for v in args.variants.split(",") if v)
    bad = [v for v in variants if v not in VARIANTS]
    if bad or not variants:
        raise UserError(f"--variants: unknown {', '.join(bad) or repr(args.variants)} (choose "
                        f"from {', '.join(VARIANTS)}, or all)")
    return ModesBenchOptions(datasets, variants, int_flag(args.seeds, "--seeds", 2),
                             None if args.steps is None else int_flag(args.steps, "--steps", 1),
                             args.json)
