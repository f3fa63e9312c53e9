"""``fastgan train``: the training loop, readable top to bottom.

``train`` sets up the process group, the run directory's lock (runlock.py) and the stop
signals (preemption.py), then ``_train`` runs in headed sections:

1. Plan: what the configuration comes to on this world (``plan_run``).
2. Find the checkpoint to continue (resume.py) and check its settings.
3. Build the components (``Trainer``: G and D in their engines, the GAN step, EMA,
   inputs, latents, schedules) and restore the checkpoint into them (state.py).
4. Train. Each step takes this rank's real batch (inputs.py) and latents, runs the GAN
   step's phases (phases.py), updates the EMA and the schedules, and only issues work.
   At the boundaries the host reads device values: every --log-every steps one record
   in metrics.jsonl (metrics/records.py), every --sample-every a grid from a fixed z,
   every --ckpt-every a checkpoint, and a stop signal on any rank checkpoints every
   rank at the same step. Rank 0 alone writes files.
5. Summarise (report.py).

A checkpoint holds everything the next step depends on, and evaluation (samples, mode
metrics) draws no random number from the training streams, so a resumed run is the run
that never stopped. A NaN/Inf loss in ``--max-nonfinite`` consecutive steps stops the
run before it writes a bad checkpoint.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from .. import models, sampling
from ..config import TrainConfig, total_steps
from ..data import builtin
from ..data.sources import DataSpec, resolve_data
from ..errors import RunError, UserError
from ..metrics import health
from ..metrics.records import (
    FILE,
    SKIP_NAMES,
    ModeScorer,
    RecordLog,
    Window,
    make_record,
    truncate_records,
)
from ..report import print_summary, progress_postfix
from . import checkpoint, distributed, engines, resume
from . import state as state_file
from .augment import Augmentation
from .board import Board
from .build import build_gan
from .ema import EMA
from .inputs import Latents, RealBatch, build_inputs
from .phases import NonfiniteStreak, Objective
from .precision import resolve_precision
from .preemption import StopRequest, StopVote
from .runlock import RunLock
from .schedule import lr_scheduler
from .state import RandomGenerators, TrainState

log = logging.getLogger("fastgan")

GRID_SAMPLES = 64


def train(cfg: TrainConfig) -> dict:
    if cfg.run.deterministic:
        _deterministic()
    d = distributed.init(cfg.run.device, group_of_one=cfg.dist.strategy == "deepspeed",
                         timeout_s=cfg.dist.timeout)
    lock = None
    try:
        # one run directory: rank 0's default (from its clock) for every rank
        cfg.run.out = distributed.all_gather_object(cfg.run.out, d)[0]
        lock = RunLock(cfg.run.out)  # taken by rank 0 once the data is known to be there
        with StopRequest() as stop:
            return _train(cfg, d, stop, lock)
    finally:
        if lock is not None:
            lock.release()
        distributed.shutdown()


def _deterministic() -> None:
    """Deterministic kernels only: what bitwise resume needs on a GPU (cuDNN's autotuned
    and atomic-add algorithms differ run to run). CPU training is deterministic anyway."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # before cuBLAS starts
    torch.use_deterministic_algorithms(True)
    # ...which also fills every torch.empty with NaN, a debugging aid that costs real
    # time: DeepSpeed's ZeRO takes gigabyte gradient buckets with torch.empty each step
    torch.utils.deterministic.fill_uninitialized_memory = False
    torch.backends.cudnn.benchmark = False
    # --compile: compiled random ops (StyleGAN2's noise) draw from the same generators as
    # eager ops, in the same order, and no kernel choice depends on a timing
    from torch._inductor import config as inductor

    inductor.fallback_random = True
    inductor.deterministic = True


def _on_main(fn, d: distributed.Dist):
    """``fn()`` on rank 0, its result (or its UserError or RunError) on every rank: a
    failure found by rank 0 alone must stop every rank, not leave them waiting in a
    collective."""
    out = None
    if d.is_main:
        try:
            out = ("ok", fn())
        except (UserError, RunError) as e:
            out = (type(e).__name__, str(e))
    kind, value = distributed.all_gather_object(out, d)[0]
    if kind != "ok":
        raise {"UserError": UserError, "RunError": RunError}[kind](value)
    return value


@dataclass
class RunPlan:
    """What the configuration comes to on this world of ranks."""

    steps: int
    per_rank: int  # real images per rank and step
    micro: int  # per micro-batch (--accum)
    strategy: str
    precision: str
    data: DataSpec
    c_dim: int  # classes of a conditional GAN (0: unconditional)


def plan_run(cfg: TrainConfig, d: distributed.Dist) -> RunPlan:
    lp, m = cfg.loop, cfg.model
    if lp.batch % d.world:
        raise UserError(f"--batch: {lp.batch} does not divide over {d.world} ranks")
    per_rank = lp.batch // d.world
    accum = cfg.dist.accum
    if per_rank % accum:
        raise UserError(f"--batch: {per_rank} per rank does not split into --accum {accum} "
                        "micro-batches")
    micro = per_rank // accum
    if m.pack > 1 and micro % m.pack:
        raise UserError(f"--batch: {micro} per rank and micro-step is not a multiple of "
                        f"--pack {m.pack}")
    strategy = engines.resolve_strategy(cfg.dist.strategy, d.world)
    dc = cfg.data
    spec = resolve_data(dc.data, dc.res, dc.cache_dir, subset=dc.subset,
                        count=dc.sampling == "exact"
                        or dc.epoch_images is None)
    precision = resolve_precision(cfg.run.precision, d.device, points=spec.kind == "points")
    c_dim = 0
    if m.cond:
        classes = spec.shards.labels if spec.kind == "images" and spec.shards else None
        if not classes:
            raise UserError(f"--cond: {dc.data} names no classes (a manifest with "
                            "labels, as `fastgan shards` writes for class subfolders)")
        c_dim = len(classes)
    return RunPlan(total_steps(cfg), per_rank, micro, strategy, precision, spec, c_dim)


class Trainer:
    """The components of a run, built from its configuration, and what it does with
    them: a training step, a sample grid, a checkpoint. Every stateful component is
    registered in ``self.state`` (state.py), the one description of a checkpoint."""

    def __init__(self, cfg: TrainConfig, plan: RunPlan, d: distributed.Dist, lock: RunLock):
        m, o = cfg.model, cfg.optim
        self.cfg, self.plan, self.dist, self.lock = cfg, plan, d, lock
        self.run_dir = Path(cfg.run.out)
        images = plan.data.kind == "images"
        # Build G and D, their engines and the GAN step.
        scale = builtin.POINT_SETS[plan.data.builtin]().scale if not images else 1.0
        self.g_kwargs, d_kwargs = models.model_kwargs(
            m.arch, res=cfg.data.res, z_dim=m.z_dim, width=m.width, pack=m.pack,
            c_dim=plan.c_dim, scale=scale, latent_modes=m.latent_modes)
        self.gan = build_gan(
            m.arch, self.g_kwargs, d_kwargs, images=images, dist=d,
            opts=engines.EngineOptions(
                strategy=plan.strategy, precision=plan.precision, micro_batch=plan.micro,
                accum=cfg.dist.accum, grad_clip=cfg.dist.grad_clip, zero=cfg.dist.zero,
                deepspeed_config=cfg.dist.deepspeed_config,
                compile_mode=cfg.run.compile_mode if cfg.run.compile else None),
            lr_g=o.lr_g, lr_d=o.lr_d, betas=(o.beta1, o.beta2), seed=cfg.run.seed,
            objective=Objective.of(o), augment=Augmentation.of(o), style_mixing=o.style_mixing)
        # Other randomness (StyleGAN2's noise inputs, augmentations) differs per rank.
        torch.manual_seed(cfg.run.seed * 1000 + 500 + d.rank)
        self.ema = EMA(self.gan.G, o.ema_kimg, o.ema_rampup) if o.ema_kimg > 0 else None
        # what samples, metrics and generator.pt use
        self.G_eval = self.ema.module if self.ema else self.gan.G
        # Inputs and schedules.
        self.inputs = build_inputs(cfg, plan.data, d, plan.per_rank, plan.c_dim)
        self.latents = Latents(cfg.run.seed, m.z_dim, cfg.loop.batch, d)
        self.schedulers = [lr_scheduler(eng.optimizer, plan.steps, o.lr_decay)
                           for eng in (self.gan.G_eng, self.gan.D_eng)]
        # What a checkpoint holds.
        self.state = TrainState(d)
        for name, piece in (("G", self.gan.G), ("D", self.gan.D), ("G_ema", self.ema),
                            ("engine_G", self.gan.G_eng), ("engine_D", self.gan.D_eng),
                            ("sched_G", self.schedulers[0]), ("sched_D", self.schedulers[1]),
                            ("latents", self.latents), ("gan_step", self.gan.step)):
            if piece is not None:
                self.state.add(name, piece)
        self.state.add("data", self.inputs, per_rank=True)
        if self.gan.step.ada is not None:  # p, and each rank's count since its last move
            self.state.add("ada", self.gan.step.ada, per_rank=True)
        self.state.add("rng", RandomGenerators(d.device), per_rank=True)  # last
        # Evaluation: a fixed z for the sample grids (and for the mode metrics).
        grid = GRID_SAMPLES if images else cfg.loop.metric_samples
        self.grid_z = torch.randn(grid, m.z_dim, generator=torch.Generator().manual_seed(
            cfg.run.seed + 2)).to(d.device)
        self.grid_c = sampling.class_cycle(grid, plan.c_dim, d.device)  # every class in turn

    def train_step(self, step: int, batch: RealBatch) -> None:
        """Issue one step's work; the host reads nothing back."""
        self.gan.step(batch.x, self.latents.next(), step, batch.c)
        if self.ema is not None:
            self.ema.update(self.gan.G, step * self.cfg.loop.batch, self.cfg.loop.batch)
        for scheduler in self.schedulers:
            scheduler.step()

    def save_samples(self, name: str) -> Path:
        """Rank 0: a grid (or a 2-D scatter) of the evaluated G's samples from the fixed z."""
        out = sampling.generate(self.G_eval, self.grid_z, c=self.grid_c)
        path = self.run_dir / "samples" / f"{name}.png"
        if self.plan.data.kind == "images":
            sampling.image_grid(sampling.to_uint8(out), nrow=8, scale=2).save(path)
        else:
            pts = builtin.POINT_SETS[self.plan.data.builtin]()
            sampling.points_plot(out.numpy(), pts.means, pts.std).save(path)
        return path

    def save_checkpoint(self, step: int) -> Path | None:
        """Every rank calls this; rank 0 returns the checkpoint's path."""
        d, cfg = self.dist, self.cfg
        _on_main(self.lock.ensure_held, d)
        nets = {"G": self.gan.G, "D": self.gan.D, **({"G_ema": self.G_eval} if self.ema else {})}
        for net in nets.values():  # BatchNorm's running statistics: the global estimate
            engines.sync_buffers(net, d)
        distributed.check_consistent(nets, d)
        state = self.state.state_dict({
            "step": step, "kimg": step * cfg.loop.batch / 1000, "config": cfg.to_dict(),
            "strategy": self.plan.strategy, "precision": self.plan.precision})
        return checkpoint.save(self.run_dir, step, state, self.generator_payload(step),
                               cfg.loop.keep_ckpts, sharded=self.state.shard_writer(),
                               gather=functools.partial(distributed.all_gather_object, d=d),
                               is_main=d.is_main)

    def generator_payload(self, step: int) -> dict:
        """generator.pt: what `fastgan sample` uses (the EMA G when there is one) and,
        with EMA, the trained G too; float32 whatever the training precision."""
        m = self.cfg.model
        payload = {"arch": m.arch, "kwargs": self.g_kwargs, "kind": self.plan.data.kind,
                   "dataset": self.plan.data.builtin or self.cfg.data.data, "z_dim": m.z_dim,
                   "step": step, "state_dict": _fp32(self.G_eval.state_dict()),
                   "ema": self.ema is not None}
        if self.ema is not None:
            payload["G_state_dict"] = _fp32(self.gan.G.state_dict())
        return payload


def _train(cfg: TrainConfig, d: distributed.Dist, stop: StopRequest, lock: RunLock) -> dict:
    lp = cfg.loop
    plan = plan_run(cfg, d)
    steps = plan.steps
    run_dir = Path(cfg.run.out)  # created only once the data is known to be there

    # Find the checkpoint to continue: rank 0 looks (holding the run directory's lock
    # before anything in it is read or written), every rank reads it (checkpoints live
    # on a filesystem that every node sees, as DeepSpeed's partitions need anyway).
    _on_main(lock.acquire, d)
    ckpt = _on_main(functools.partial(resume.find, run_dir, cfg.run.resume), d)
    saved = state_file.load(ckpt) if ckpt else None
    if saved is not None:
        resume.check_settings(cfg, saved, ckpt, world=d.world, strategy=plan.strategy,
                              precision=plan.precision, is_main=d.is_main)
    start_step = saved["step"] if saved else 0
    if start_step >= steps:
        if d.is_main:
            print(f"fastgan: nothing to do: {ckpt} is at step {start_step}, and --steps/"
                  f"--kimg ask for {steps}", file=sys.stderr)
        return {"run_dir": str(run_dir), "steps": steps, "resumed_from": start_step,
                "checkpoint": str(ckpt)}
    _on_main(functools.partial(_prepare_run_dir, cfg, start_step), d)

    # Build the components, then restore the checkpoint into them.
    trainer = Trainer(cfg, plan, d, lock)
    if saved is not None:
        trainer.state.load_state_dict(saved, ckpt)

    # Evaluation and records.
    images = plan.data.kind == "images"
    scorer = ModeScorer(plan.data.builtin, lp.metric_samples, cfg.model.z_dim, cfg.run.seed,
                        d.device, plan.c_dim)
    diversity = health.Diversity(images=images, device=d.device)
    board = Board(run_dir, d.is_main) if cfg.run.tensorboard else None
    if d.is_main:
        _announce(cfg, plan, d, ckpt, start_step)
    records = RecordLog(run_dir, health.HealthMonitor(
        warmup_steps=int(health.WARMUP_SHARE * steps)), board,
        echo=not cfg.run.progress) if d.is_main else None
    bar = tqdm(total=steps, initial=start_step, unit="step", dynamic_ncols=True,
               file=sys.stderr, mininterval=1.0, disable=not (d.is_main and cfg.run.progress))
    streak = NonfiniteStreak(cfg.run.max_nonfinite, d.device)
    window = Window(start_step, trainer.gan.step.skip_counts()[0])
    vote = StopVote(d)
    stopped_by, final_grid, record = None, None, {}

    # Train: each step only issues work; at the boundaries (a stop, a record, samples,
    # a checkpoint, the end) the host reads device values.
    try:
        for step in range(start_step + 1, steps + 1):
            batch = trainer.inputs.next()
            if d.is_main and diversity.real_spread is None:
                diversity.see_real(batch.loaded)
            trainer.train_step(step, batch)
            streak.update(trainer.gan.step.nonfinite, step)
            bar.update(1)
            stop_now = vote(stop.signal is not None)
            last = step == steps
            log_now, sample_now = last or _every(step, lp.log_every), _every(step, lp.sample_every)
            ckpt_now = _every(step, lp.ckpt_every) and not last
            if stop_now or log_now or sample_now or ckpt_now:
                nonfinite_streak = _check_nonfinite(streak, run_dir)
            if log_now:
                record = _record(trainer, window, step, scorer, diversity, records, bar)
            if sample_now:
                engines.sync_buffers(trainer.G_eval, d)
                if d.is_main:
                    path = trainer.save_samples(f"step-{step:08d}")
                    if board is not None:
                        board.samples(path, step)
            if stop_now:  # after this step's record: the resumed run starts at the next
                names = distributed.all_gather_object(stop.name, d)
                stopped_by = ", ".join(f"{n} on rank {r}" for r, n in enumerate(names) if n)
                final_ckpt = trainer.save_checkpoint(step)
                break
            if ckpt_now:
                # one dropped step is routine (its update is skipped); once they repeat,
                # keep the good checkpoints from being pruned by doubtful ones
                if nonfinite_streak >= 2:
                    log.warning("step %d: no checkpoint while losses are non-finite "
                                "(%d step(s) in a row)", step, nonfinite_streak)
                else:
                    trainer.save_checkpoint(step)
        else:
            engines.sync_buffers(trainer.G_eval, d)
            final_grid = trainer.save_samples("final") if d.is_main else None
            if board is not None and not _every(steps, lp.sample_every):
                board.samples(final_grid, steps)  # unless the last grid was just logged
            final_ckpt = trainer.save_checkpoint(steps)
    finally:
        trainer.inputs.close()
        vote.close()
        bar.close()
        if records is not None:
            records.close()
        if board is not None:
            board.close()
    distributed.barrier(d)

    # Summarise.
    elapsed = time.perf_counter() - window.started
    trained = (step if stopped_by else steps) - start_step
    summary = {"run_dir": str(run_dir), "steps": steps, "resumed_from": start_step,
               "elapsed_s": round(elapsed, 1), "img_s": round(trained * lp.batch / elapsed, 1),
               "final": record, "samples": str(final_grid), "checkpoint": str(final_ckpt),
               "health": dict(records.monitor.seen) if records else {}}
    if stopped_by:
        summary["stopped"] = {"by": stopped_by, "step": step}
        if d.is_main:
            print(f"fastgan: stopped by {stopped_by} at step {step} of {steps}; checkpoint "
                  f"{final_ckpt}; the same command continues it (--resume auto)",
                  file=sys.stderr)
    elif d.is_main:
        print_summary(summary)
    return summary


def _every(step: int, interval: int | None) -> bool:
    """Whether an interval's task is due at ``step`` (an interval of 0 or None: never)."""
    return bool(interval) and step % interval == 0


def _prepare_run_dir(cfg: TrainConfig, start_step: int) -> None:
    run_dir = Path(cfg.run.out)
    try:
        (run_dir / "samples").mkdir(parents=True, exist_ok=True)
        (run_dir / "config.json").write_text(cfg.to_json() + "\n")
    except OSError as e:
        raise UserError(f"--out: cannot create run directory {run_dir}: "
                        f"{e.strerror or e}") from None
    # records of steps after the checkpoint (or of a start that left none) belong to
    # steps this run trains again
    truncate_records(run_dir / FILE, start_step)


def _announce(cfg: TrainConfig, plan: RunPlan, d: distributed.Dist, ckpt: Path | None,
              start_step: int) -> None:
    """Rank 0: what is trained where, and what it continues."""
    m, lp, accum = cfg.model, cfg.loop, cfg.dist.accum
    print(f"fastgan: training {m.arch} on {cfg.data.data} for {plan.steps} steps "
          f"(batch {lp.batch} over {d.world} rank(s)"
          f"{f' x {accum} micro-batches' if accum > 1 else ''}, {plan.strategy}, "
          f"{plan.precision}, {d.device}); run directory {cfg.run.out}", file=sys.stderr)
    restarts = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    if restarts != "0":
        print(f"fastgan: torchrun restart {restarts}", file=sys.stderr)
    if ckpt is not None:
        print(f"fastgan: resuming from {ckpt} (step {start_step}, kimg "
              f"{start_step * lp.batch / 1000:g})", file=sys.stderr)
    elif cfg.run.resume == "auto" and (Path(cfg.run.out) / FILE).exists():
        print(f"fastgan: --resume auto: no complete checkpoint in {cfg.run.out}: starting "
              "afresh", file=sys.stderr)


def _record(trainer: Trainer, window: Window, step: int, scorer: ModeScorer,
            diversity: health.Diversity, records: RecordLog | None, bar: tqdm) -> dict:
    """Every rank: the statistics since the last record, reduced over the ranks; rank 0
    scores G's samples and writes the record, which it returns."""
    d, batch = trainer.dist, trainer.cfg.loop.batch
    engines.sync_buffers(trainer.G_eval, d)  # the scorer runs it in eval mode
    stats = trainer.gan.step.take_stats()
    skips = trainer.gan.step.skip_counts()
    if d.is_main and skips[0] > window.nonfinite_skips:
        log.warning("steps %d-%d: %d optimizer step(s) skipped on every rank for a NaN/Inf "
                    "loss or gradient", window.step + 1, step, skips[0] - window.nonfinite_skips)
    data_stats = trainer.inputs.stats()
    record = {}
    if d.is_main:
        record = make_record(step, batch, window, stats=stats, data=data_stats,
                             skips=dict(zip(SKIP_NAMES, skips)))
        record.update(scorer(trainer.G_eval, diversity))  # not timed as training
        records.write(record)
        bar.set_postfix_str(progress_postfix(record), refresh=False)
    window.close(step, skips[0])
    return record


def _check_nonfinite(streak: NonfiniteStreak, run_dir: Path) -> int:
    """At a boundary: stop the run if NaN/Inf skips reached --max-nonfinite consecutive
    steps (at whichever step they did since the last boundary); else the streak's length."""
    length, reached_at = streak.read()
    if reached_at:
        done = checkpoint.complete(run_dir)
        raise UserError(
            f"--max-nonfinite: NaN/Inf losses in {streak.limit} consecutive steps (to step "
            f"{reached_at}): stopping; the last good checkpoint is "
            f"{done[-1] if done else 'none (no checkpoint yet)'} (lower --lr-g/--lr-d, set "
            "--grad-clip or --precision bf16, then --resume it)")
    return length


def _fp32(state: dict) -> dict:
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}


