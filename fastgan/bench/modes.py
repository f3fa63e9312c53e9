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
a seed axis): member k is initialised, fed, and stepped exactly as ``fastgan train
--seed k`` would be (same modules, same data and latent streams, the same losses,
Adam, schedule), in a tenth of the time of ten separate runs, since these small MLPs
spend their time in per-op overhead. ``tests/test_bench_modes.py`` checks that a member
tracks ``fastgan train`` step for step.
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
from torch.func import functional_call, stack_module_state, vmap

from .. import models
from ..config import TrainConfig, resolve, total_steps
from ..data import builtin
from ..data.points import PointBatches
from ..errors import UserError
from ..kernels import bce_with_logits_reference
from ..train.ema import ema_beta
from ..train.phases import r1_penalty
from ..train.schedule import lr_scale

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
    explicit = set(variant)
    for key, value in variant.items():
        for section in ("model", "optim", "loop"):
            if hasattr(getattr(cfg, section), key):
                setattr(getattr(cfg, section), key, value)
    if steps is not None:
        cfg.loop.steps = steps
        explicit.add("steps")
    return resolve(cfg, explicit)


class Ensemble:
    """``len(seeds)`` independent GANs of one configuration, trained as one."""

    def __init__(self, cfg: TrainConfig, seeds: list[int], device="cpu"):
        m, o, lp = cfg.model, cfg.optim, cfg.loop
        self.device = torch.device(device)
        name = cfg.data.data.split(":", 1)[1]
        self.cfg, self.seeds, self.points = cfg, seeds, builtin.POINT_SETS[name]()
        self.steps = total_steps(cfg)
        g_kw, d_kw = models.model_kwargs("mlp", res=None, z_dim=m.z_dim, width=m.width,
                                         pack=m.pack, scale=self.points.scale,
                                         latent_modes=m.latent_modes)
        Gs, Ds = [], []
        for s in seeds:  # as build_gan: the seed, then G, then D
            torch.manual_seed(s)
            Gs.append(models.build_generator("mlp", g_kw))
            Ds.append(models.build_discriminator("mlp", d_kw))
        g_params, g_buffers = stack_module_state(Gs)
        self.g_params = {k: v.to(self.device).detach().requires_grad_(True)
                         for k, v in g_params.items()}
        self.g_buffers = {k: v.to(self.device) for k, v in g_buffers.items()}  # the latent's
        self.d_params = {k: v.to(self.device).detach().requires_grad_(True)
                         for k, v in stack_module_state(Ds)[0].items()}
        # the EMA generator, as fastgan train keeps it (ema.py): what is evaluated
        self.ema = ({k: v.detach().clone() for k, v in self.g_params.items()}
                    if o.ema_kimg > 0 else None)
        g_base, d_base = copy.deepcopy(Gs[0]).to("meta"), copy.deepcopy(Ds[0]).to("meta")
        self.G = vmap(lambda p, b, z: functional_call(g_base, (p, b), (z,)))
        self.D = vmap(lambda p, x: functional_call(d_base, p, (x,)))
        betas = (o.beta1, o.beta2)
        self.opt_G = torch.optim.Adam(self.g_params.values(), lr=o.lr_g, betas=betas,
                                      fused=True)
        self.opt_D = torch.optim.Adam(self.d_params.values(), lr=o.lr_d, betas=betas,
                                      fused=True)
        self.scheds = [torch.optim.lr_scheduler.LambdaLR(
            opt, lambda i: lr_scale(i + 1, self.steps, o.lr_decay))
            for opt in (self.opt_G, self.opt_D)]
        self.data = [PointBatches(name, lp.batch, seed=s) for s in seeds]
        self.z_streams = [torch.Generator().manual_seed(s * 1000 + 1) for s in seeds]
        self.batch, self.z_dim = lp.batch, m.z_dim
        self.step_count = 0

    def step(self) -> None:
        real = torch.stack([next(d) for d in self.data]).to(self.device)
        z = torch.stack([torch.randn(self.batch, self.z_dim, generator=g)
                         for g in self.z_streams]).to(self.device)
        fake = self.G(self.g_params, self.g_buffers, z)
        # D main: the members' losses are independent, so their sum's gradient is each
        # member's own gradient. Real and fake go through D in one call (packs never
        # straddle the two halves: the batch is a multiple of the pack): the same
        # logits as two calls, for half the per-call overhead
        logits = self.D(self.d_params, torch.cat([real, fake.detach()], dim=1))
        real_logits, fake_logits = logits.split(logits.shape[1] // 2, dim=1)
        ones, zeros = (torch.full((len(self.seeds),), v, device=self.device) for v in (1.0, 0.0))
        loss_d = vmap(_bce_mean)(real_logits, ones) + vmap(_bce_mean)(fake_logits, zeros)
        loss_d.sum().backward()
        self.opt_D.step()
        self.opt_D.zero_grad(set_to_none=True)
        o = self.cfg.optim
        if o.r1_gamma > 0 and (self.step_count + 1) % o.r1_interval == 0:
            # D reg (train/phases.py): lazy R1 on this step's real points, D stepped again
            real = real.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(self.D(self.d_params, real).sum(), real,
                                          create_graph=True)
            penalty = vmap(r1_penalty)(grad)  # one per member
            (penalty.sum() * (o.r1_gamma / 2 * o.r1_interval)).backward()
            self.opt_D.step()
            self.opt_D.zero_grad(set_to_none=True)
        # G main, through the updated D, frozen
        frozen = {k: v.detach() for k, v in self.d_params.items()}
        loss_g = vmap(_bce_mean)(self.D(frozen, fake), ones)
        loss_g.sum().backward()
        self.opt_G.step()
        self.opt_G.zero_grad(set_to_none=True)
        self.step_count += 1
        if self.ema is not None:
            beta = ema_beta(o.ema_kimg, o.ema_rampup, self.step_count * self.batch, self.batch)
            with torch.no_grad():
                torch._foreach_lerp_(list(self.ema.values()),
                                     [p.detach() for p in self.g_params.values()], 1 - beta)
        for s in self.scheds:
            s.step()

    @torch.no_grad()
    def samples(self, n: int) -> np.ndarray:
        """n points from each member, from the z ``fastgan train``'s mode metrics use."""
        z = torch.stack([torch.randn(n, self.z_dim,
                                     generator=torch.Generator().manual_seed(s + 1))
                         for s in self.seeds]).to(self.device)
        return self.G(self.ema or self.g_params, self.g_buffers, z).cpu().numpy()

    def member_state(self, k: int) -> dict:
        """Member k's generator weights (the EMA's when there is one) and buffers, as a
        state dict."""
        return {name: p[k].detach().cpu()
                for name, p in {**(self.ema or self.g_params), **self.g_buffers}.items()}


def _bce_mean(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return bce_with_logits_reference(logits, target)


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


# Seeds per process. A step of five members costs half a step of ten (10.5 and 21 ms on
# one core of the 2-core VM), so chunking costs nothing, and it lets the cores share the
# grid's longer runs instead of one core finishing the ring early and idling.
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

    def number(value, flag):
        try:
            n = int(value)
        except (TypeError, ValueError):
            raise UserError(f"{flag}: expected an integer, got {value!r}") from None
        if n < (2 if flag == "--seeds" else 1):
            raise UserError(f"{flag}: too small: {n}")
        return n

    return ModesBenchOptions(datasets, variants, number(args.seeds, "--seeds"),
                             None if args.steps is None else number(args.steps, "--steps"),
                             args.json)
