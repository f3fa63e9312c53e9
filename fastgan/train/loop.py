"""``fastgan train``: the training loop, readable top to bottom.

data stream + latents -> GANStep (D main, G main, with G and D in their engines: plain,
DDP or DeepSpeed) -> every --log-every steps: statistics reduced across ranks, mode
metrics, one line in metrics.jsonl; every --sample-every: a grid from a fixed z; every
--ckpt-every: a checkpoint. Rank 0 alone writes files.

The latents of a step are drawn for the whole global batch from one seeded stream and
each rank takes its slice (as the embedded 2-D data does), so a run's numbers do not
depend on how many ranks share the batch: 2 ranks of B/2 train like 1 process of B.

A run continues its newest complete checkpoint (``--resume auto``, resume.py): the
checkpoint holds everything the next step depends on (weights, EMA, optimizers, loss
scalers, schedulers, the latent stream, every rank's RNG and loader position), and
evaluation (samples, mode metrics) draws no random number from the training streams,
so a resumed run is the run that never stopped. SIGTERM/SIGUSR1/SIGINT on any rank stop
every rank at the next step boundary, checkpointed (preemption.py); rank 0 holds the run
directory's lock throughout (runlock.py); a NaN/Inf loss in ``--max-nonfinite``
consecutive steps stops the run before it writes a bad checkpoint.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from .. import models, sampling
from ..config import TrainConfig, total_steps
from ..data import builtin
from ..data.sources import resolve_data
from ..data.stream import BatchStream, ImageBatches, PointBatches, make_plan
from ..errors import RunError, UserError
from ..metrics import health
from . import checkpoint, distributed, engines, resume
from .board import Board
from .build import build_gan
from .ema import EMA
from .phases import NonfiniteStreak
from .precision import resolve_precision
from .preemption import StopRequest, StopVote
from .runlock import RunLock

log = logging.getLogger("fastgan")

GRID_SAMPLES = 64
# cumulative counts in metrics.jsonl: optimizer steps skipped on every rank for a NaN/Inf
# loss or gradient, and steps the fp16 loss scalers skipped on an overflow
SKIP_NAMES = ("skipped_nonfinite", "skipped_overflow_G", "skipped_overflow_D")


class ModeScorer:
    """G's samples from a fixed z at each record: their mode metrics (the shapes
    oracle, or PacGAN's 2-D metrics) on the embedded datasets, and their diversity
    (health.py) on any data."""

    def __init__(self, dataset: str | None, n: int, z_dim: int, seed: int, device,
                 c_dim: int = 0):
        self.dataset = dataset
        n = n if dataset is not None else health.REFERENCE
        g = torch.Generator().manual_seed(seed + 1)
        self.z = torch.randn(n, z_dim, generator=g).to(device)
        self.c = sampling.class_cycle(n, c_dim, device)  # a conditional G: every class

    def __call__(self, G, diversity: health.Diversity) -> dict:
        out = sampling.generate(G, self.z, c=self.c)
        scores = diversity(out)
        if self.dataset in builtin.POINT_SETS:
            scores.update(builtin.POINT_SETS[self.dataset]().metrics(out.numpy()))
        elif self.dataset is not None:
            modes = builtin.classify_shapes(sampling.to_uint8(out))
            scores.update(builtin.shape_mode_metrics(modes))
        return scores


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
    # ...which also fills every torch.empty with NaN, a debugging aid: DeepSpeed's ZeRO
    # takes 2 GB gradient buckets with torch.empty each step (20 s a run here)
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


def _train(cfg: TrainConfig, d: distributed.Dist, stop: StopRequest, lock: RunLock) -> dict:
    device = d.device
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
    steps = total_steps(cfg)
    dc = cfg.data
    spec = resolve_data(dc.data, dc.res, dc.cache_dir, count=dc.sampling == "exact"
                        or dc.epoch_images is None)
    precision = resolve_precision(cfg.run.precision, device, points=spec.kind == "points")
    run_dir = Path(cfg.run.out)  # created only once the data is known to be there
    _on_main(lock.acquire, d)  # before anything in it is read or written
    # The checkpoint to continue: rank 0 looks, every rank reads it (checkpoints live on
    # a filesystem that every node sees, as DeepSpeed's partitions need anyway).
    ckpt = _on_main(lambda: resume.find(run_dir, cfg.run.resume), d)
    state = checkpoint.load_state(ckpt) if ckpt else None
    if state is not None:
        _check_resume(cfg, state, ckpt, d, strategy, precision)
    start_step = state["step"] if state else 0
    if start_step >= steps:
        if d.is_main:
            print(f"fastgan: nothing to do: {ckpt} is at step {start_step}, and --steps/"
                  f"--kimg ask for {steps}", file=sys.stderr)
        return {"run_dir": str(run_dir), "steps": steps, "resumed_from": start_step,
                "checkpoint": str(ckpt)}

    def prepare_run_dir() -> None:
        try:
            (run_dir / "samples").mkdir(parents=True, exist_ok=True)
            (run_dir / "config.json").write_text(cfg.to_json() + "\n")
        except OSError as e:
            raise UserError(f"--out: cannot create run directory {run_dir}: "
                            f"{e.strerror or e}") from None
        # records of steps after the checkpoint (or of a start that left none) belong
        # to steps this run trains again
        _truncate_metrics(run_dir / "metrics.jsonl", start_step)

    _on_main(prepare_run_dir, d)

    c_dim = 0
    if m.cond:
        classes = spec.shards.labels if spec.kind == "images" and spec.shards else None
        if not classes:
            raise UserError(f"--cond: {cfg.data.data} names no classes (a manifest with "
                            "labels, as `fastgan shards` writes for class subfolders)")
        c_dim = len(classes)
    class_ids = torch.arange(c_dim, device=device)
    scale = builtin.POINT_SETS[spec.builtin]().scale if spec.kind == "points" else 1.0
    g_kwargs, d_kwargs = models.model_kwargs(m.arch, res=cfg.data.res, z_dim=m.z_dim,
                                             width=m.width, pack=m.pack, c_dim=c_dim,
                                             scale=scale, latent_modes=m.latent_modes)
    gan = build_gan(m.arch, g_kwargs, d_kwargs, images=spec.kind == "images", dist=d,
                    opts=engines.EngineOptions(
                        strategy=strategy, precision=precision, micro_batch=micro,
                        accum=accum, grad_clip=cfg.dist.grad_clip, zero=cfg.dist.zero,
                        deepspeed_config=cfg.dist.deepspeed_config,
                        compile_mode=cfg.run.compile_mode if cfg.run.compile else None),
                    lr_g=cfg.optim.lr_g, lr_d=cfg.optim.lr_d,
                    betas=(cfg.optim.beta1, cfg.optim.beta2), seed=cfg.run.seed,
                    r1_gamma=cfg.optim.r1_gamma, r1_interval=cfg.optim.r1_interval,
                    augment=cfg.optim.augment)
    # Other randomness (StyleGAN2's noise inputs, augmentations) differs per rank.
    torch.manual_seed(cfg.run.seed * 1000 + 500 + d.rank)
    G, D, G_eng, D_eng, gan_step = gan.G, gan.D, gan.G_eng, gan.D_eng, gan.step
    ema = EMA(G, cfg.optim.ema_kimg, cfg.optim.ema_rampup) if cfg.optim.ema_kimg > 0 else None
    G_eval = ema.module if ema else G  # what samples, metrics and generator.pt use
    z_stream = torch.Generator(device).manual_seed(cfg.run.seed * 1000 + 1)

    same_world = state is not None and state.get("world", 1) == d.world
    if spec.kind == "images":
        plan = make_plan(spec.shards, mode=dc.sampling, world=d.world, workers=dc.workers,
                         batch=per_rank, epoch_images=dc.epoch_images)
        start = state["data"][d.rank] if same_world else (
            {"epoch": state["data"][0]["epoch"]} if state else None)
        batches = BatchStream(ImageBatches(spec.shards, dc.res, plan, seed=cfg.run.seed,
                                           rank=d.rank, shuffle=dc.shuffle, start=start))
    else:
        batches = PointBatches(spec.builtin, lp.batch, seed=cfg.run.seed, rank=d.rank,
                               world=d.world)
        if state is not None:
            batches.load_state_dict(state["points"])

    # LambdaLR counts from 0 and is stepped after each training step, so index i is
    # training step i + 1.
    schedulers = [torch.optim.lr_scheduler.LambdaLR(
        eng.optimizer, lambda i: lr_scale(i + 1, steps, cfg.optim.lr_decay))
        for eng in (G_eng, D_eng)]
    if state is not None:
        G.load_state_dict(state["G"])
        D.load_state_dict(state["D"])
        if ema is not None:  # a run that had no EMA starts its average from G
            ema.module.load_state_dict(state.get("G_ema", G.state_dict()))
        G_eng.load_state_dict(state["engines"]["G"], ckpt)
        D_eng.load_state_dict(state["engines"]["D"], ckpt)
        schedulers[0].load_state_dict(state["sched_G"])
        schedulers[1].load_state_dict(state["sched_D"])
        z_stream.set_state(state["z_stream"])
        gan_step.load_skip_counts(state["skips"])
        if same_world:  # last: nothing above may draw from the restored streams
            resume.set_rng_state(state["rng"][d.rank], device)

    scorer = ModeScorer(spec.builtin, lp.metric_samples, m.z_dim, cfg.run.seed, device, c_dim)
    diversity = health.Diversity(images=spec.kind == "images", device=device)
    monitor = health.HealthMonitor(warmup_steps=int(health.WARMUP_SHARE * steps))
    if d.is_main and state is not None:  # what the monitor saw before the checkpoint
        for past in read_records(run_dir / "metrics.jsonl"):
            monitor(past)
    board = Board(run_dir, d.is_main) if cfg.run.tensorboard else None
    grid_z = torch.randn(GRID_SAMPLES if spec.kind == "images" else lp.metric_samples,
                         m.z_dim, generator=torch.Generator().manual_seed(cfg.run.seed + 2)
                         ).to(device)
    grid_c = sampling.class_cycle(len(grid_z), c_dim, device)  # every class in turn
    generator_meta = {"arch": m.arch, "kwargs": g_kwargs, "kind": spec.kind,
                      "dataset": spec.builtin or cfg.data.data, "z_dim": m.z_dim}

    def save_samples(name: str) -> Path:
        out = sampling.generate(G_eval, grid_z, c=grid_c)
        path = run_dir / "samples" / f"{name}.png"
        if spec.kind == "images":
            sampling.image_grid(sampling.to_uint8(out), nrow=8, scale=2).save(path)
        else:
            pts = builtin.POINT_SETS[spec.builtin]()
            sampling.points_plot(out.numpy(), pts.means, pts.std).save(path)
        return path

    def save_checkpoint(step: int) -> Path | None:
        _on_main(lock.ensure_held, d)
        nets = {"G": G, "D": D, **({"G_ema": G_eval} if ema else {})}
        for net in nets.values():  # BatchNorm's running statistics: the global estimate
            engines.sync_buffers(net, d)
        distributed.check_consistent(nets, d)
        # every rank's loader position, so that a resumed run continues each stream
        data_states = distributed.all_gather_object(
            batches.state_dict() if isinstance(batches, BatchStream) else None, d)
        rng_states = distributed.all_gather_object(resume.rng_state(device), d)
        state = {
            **{name: net.state_dict() for name, net in nets.items()},
            "engines": {"G": G_eng.state_dict(), "D": D_eng.state_dict()},
            "strategy": strategy, "precision": precision, "world": d.world,
            "sched_G": schedulers[0].state_dict(), "sched_D": schedulers[1].state_dict(),
            "step": step, "kimg": step * lp.batch / 1000, "config": cfg.to_dict(),
            "rng": rng_states,
            "z_stream": z_stream.get_state(),
            "data": data_states,
            "points": batches.state_dict() if isinstance(batches, PointBatches) else None,
            "skips": gan_step.skip_counts(),
        }
        # what `fastgan sample` uses (the EMA G when there is one) and, with EMA, the
        # trained G too; float32 whatever the training precision
        gen = {**generator_meta, "step": step, "state_dict": _fp32(G_eval.state_dict()),
               "ema": ema is not None, **({"G_state_dict": _fp32(G.state_dict())} if ema
                                          else {})}

        def write_sharded(tmp: Path) -> None:
            for eng in (G_eng, D_eng):
                eng.save_sharded(tmp)

        return checkpoint.save(run_dir, step, state, gen, lp.keep_ckpts,
                               sharded=write_sharded if strategy == "deepspeed" else None,
                               gather=functools.partial(distributed.all_gather_object, d=d),
                               is_main=d.is_main)

    if d.is_main:
        print(f"fastgan: training {m.arch} on {cfg.data.data} for {steps} steps "
              f"(batch {lp.batch} over {d.world} rank(s)"
              f"{f' x {accum} micro-batches' if accum > 1 else ''}, {strategy}, {precision}, "
              f"{device}); "
              f"run directory {run_dir}", file=sys.stderr)
        restarts = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        if restarts != "0":
            print(f"fastgan: torchrun restart {restarts}", file=sys.stderr)
        if ckpt is not None:
            print(f"fastgan: resuming from {ckpt} (step {start_step}, kimg "
                  f"{start_step * lp.batch / 1000:g})", file=sys.stderr)
        elif cfg.run.resume == "auto" and (run_dir / "metrics.jsonl").exists():
            print(f"fastgan: --resume auto: no complete checkpoint in {run_dir}: starting "
                  "afresh", file=sys.stderr)
    bar = tqdm(total=steps, initial=start_step, unit="step", dynamic_ncols=True,
               file=sys.stderr, mininterval=1.0, disable=not (d.is_main and cfg.run.progress))
    metrics_file = open(run_dir / "metrics.jsonl", "a") if d.is_main else None
    start = last_t = time.perf_counter()
    last_step = start_step
    record: dict = {}
    streak = NonfiniteStreak(cfg.run.max_nonfinite, device)
    nonfinite_logged = gan_step.skip_counts()[0]
    vote = StopVote(d)
    stopped_by = None
    final_grid = None
    try:
        for step in range(start_step + 1, steps + 1):
            real = next(batches).to(device, non_blocking=True)
            if d.is_main and diversity.real_spread is None:
                diversity.see_real(real)
            if spec.kind == "images":
                real = real.float().div_(127.5).sub_(1.0)
            z = torch.randn(lp.batch, m.z_dim, device=device, generator=z_stream)
            c = None
            if c_dim:  # the real images' labels, for D and for G (-1, unlabelled: zeros)
                # one-hot by comparison: one_hot() checks the labels' range on the host
                labels = torch.tensor(batches.labels).to(device, non_blocking=True)
                c = (labels.unsqueeze(1) == class_ids).float()
            gan_step(real, z[d.rank * per_rank:(d.rank + 1) * per_rank], step, c)
            if ema is not None:
                ema.update(G, step * lp.batch, lp.batch)
            for scheduler in schedulers:
                scheduler.step()
            streak.update(gan_step.nonfinite, step)
            bar.update(1)
            # Everything above only issued work. Below, at the boundaries (a stop, a log
            # record, samples, a checkpoint, the end), the host reads device values.
            boundary = (step % lp.log_every == 0 or step == steps
                        or (lp.sample_every and step % lp.sample_every == 0)
                        or (lp.ckpt_every and step % lp.ckpt_every == 0))
            stop_now = vote(stop.signal is not None)
            if boundary or stop_now:
                nonfinite_streak = _check_nonfinite(streak, run_dir)
            if step % lp.log_every == 0 or step == steps:
                engines.sync_buffers(G_eval, d)  # the scorer runs it in eval mode
                stats = gan_step.take_stats()
                step_skips = gan_step.skip_counts()
                if d.is_main and step_skips[0] > nonfinite_logged:
                    log.warning("steps %d-%d: %d optimizer step(s) skipped on every rank for "
                                "a NaN/Inf loss or gradient", last_step + 1, step,
                                step_skips[0] - nonfinite_logged)
                nonfinite_logged = step_skips[0]
                data_stats = {}
                if isinstance(batches, BatchStream):
                    skips = distributed.all_reduce_sum(  # on the device: nccl wants it there
                        torch.tensor(batches.skip_counts(), dtype=torch.float64, device=device), d)
                    data_stats = {"epoch": batches.epoch, **{
                        k: int(v) for k, v in zip(BatchStream.SKIP_NAMES, skips.tolist())}}
                now = time.perf_counter()
                if d.is_main:
                    record = {
                        "step": step,
                        "kimg": round(step * lp.batch / 1000, 3),
                        **{k: float(f"{v:.6g}") for k, v in stats.items()},
                        "img_s": round((step - last_step) * lp.batch / (now - last_t), 1),
                        "elapsed_s": round(now - start, 2),
                        **data_stats,
                        **dict(zip(SKIP_NAMES, step_skips)),
                        **scorer(G_eval, diversity),
                    }
                    record["health"], started, cleared = monitor(record)
                    for w in started:
                        log.warning("step %d: %s", step, monitor.message(w, record))
                    for w in cleared:
                        log.info("step %d: health: %s cleared", step, health.ADVICE[w])
                    metrics_file.write(json.dumps(record) + "\n")
                    metrics_file.flush()
                    if board is not None:
                        board.record(record)
                    bar.set_postfix_str(_postfix(record), refresh=False)
                    if not cfg.run.progress:
                        print(json.dumps(record), file=sys.stderr)
                last_t, last_step = time.perf_counter(), step
            if lp.sample_every and step % lp.sample_every == 0:
                engines.sync_buffers(G_eval, d)
                if d.is_main:
                    path = save_samples(f"step-{step:08d}")
                    if board is not None:
                        board.samples(path, step)
            if stop_now:  # after this step's record: the resumed run starts at the next
                names = distributed.all_gather_object(stop.name, d)
                stopped_by = ", ".join(f"{n} on rank {r}" for r, n in enumerate(names) if n)
                final_ckpt = save_checkpoint(step)
                break
            if lp.ckpt_every and step % lp.ckpt_every == 0 and step != steps:
                # one dropped step is routine (its update is skipped); once they repeat,
                # keep the good checkpoints from being pruned by doubtful ones
                if nonfinite_streak >= 2:
                    log.warning("step %d: no checkpoint while losses are non-finite "
                                "(%d step(s) in a row)", step, nonfinite_streak)
                else:
                    save_checkpoint(step)
        else:
            engines.sync_buffers(G_eval, d)
            final_grid = save_samples("final") if d.is_main else None
            if board is not None and not (lp.sample_every and steps % lp.sample_every == 0):
                board.samples(final_grid, steps)  # unless the last grid was just logged
            final_ckpt = save_checkpoint(steps)
    finally:
        vote.close()
        bar.close()
        if metrics_file is not None:
            metrics_file.close()
        if board is not None:
            board.close()
    distributed.barrier(d)
    elapsed = time.perf_counter() - start
    trained = (step if stopped_by else steps) - start_step
    summary = {"run_dir": str(run_dir), "steps": steps, "resumed_from": start_step,
               "elapsed_s": round(elapsed, 1), "img_s": round(trained * lp.batch / elapsed, 1),
               "final": record, "samples": str(final_grid), "checkpoint": str(final_ckpt),
               "health": dict(monitor.seen)}
    if stopped_by:
        summary["stopped"] = {"by": stopped_by, "step": step}
        if d.is_main:
            print(f"fastgan: stopped by {stopped_by} at step {step} of {steps}; checkpoint "
                  f"{final_ckpt}; the same command continues it (--resume auto)",
                  file=sys.stderr)
    elif d.is_main:
        _print_summary(summary)
    return summary


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


def _check_resume(cfg: TrainConfig, state: dict, ckpt: Path, d: distributed.Dist,
                  strategy: str, precision: str) -> None:
    """Refuse (unless --resume-force) to continue a checkpoint under settings that do
    not fit it; name every other change. Every rank decides alike (same inputs)."""
    current, saved = cfg.to_dict(), state["config"]
    # compare what ran, not "auto"
    current["dist"]["strategy"], current["run"]["precision"] = strategy, precision
    saved["dist"]["strategy"] = state.get("strategy", saved["dist"]["strategy"])
    saved["run"]["precision"] = state.get("precision", saved["run"]["precision"])
    blocking, harmless = resume.differences(saved, current, state.get("world", 1), d.world,
                                            strategy=strategy)
    if blocking and not cfg.run.resume_force:
        raise UserError(f"--resume: {ckpt} was trained with other settings: "
                        f"{'; '.join(blocking)}. Use the checkpoint's settings, another "
                        "--out, or --resume-force")
    if d.is_main and (blocking or harmless):
        print("fastgan: resuming with changed settings: " + "; ".join(blocking + harmless),
              file=sys.stderr)


def _fp32(state: dict) -> dict:
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}


def _record_lines(path: Path) -> list[str]:
    """The complete lines of a metrics.jsonl. A last line without its newline is a
    record whose write a crash cut short: not a record."""
    if not path.exists():
        return []
    return [line for line in path.read_text().split("\n")[:-1] if line.strip()]


def read_records(path: Path) -> list[dict]:
    return [json.loads(line) for line in _record_lines(path)]


def _truncate_metrics(path: Path, step: int) -> None:
    """Keep the records up to ``step``, the checkpoint's: the resumed run trains the
    later steps again and records them anew. Replaced atomically, so that a crash here
    loses no record either."""
    if not path.exists():
        return
    keep = [line for line in _record_lines(path) if json.loads(line).get("step", 0) <= step]
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as fh:
        fh.write("".join(line + "\n" for line in keep))
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def lr_scale(step: int, steps: int, decay: float) -> float:
    """1 until the last ``decay`` fraction of training, then linearly down to 0."""
    start = steps * (1.0 - decay)
    if decay <= 0 or step <= start:
        return 1.0
    return max(0.0, (steps - step) / (steps - start))


def _postfix(r: dict) -> str:
    # a statistic is absent when every step since the last record skipped it (NaN/Inf)
    nan = float("nan")
    parts = [f"kimg {r['kimg']:.1f}", f"{r['img_s']:.0f} img/s",
             f"lossD {r.get('loss_D', nan):.3f}", f"lossG {r.get('loss_G', nan):.3f}",
             f"D(x) {r.get('D(x)', nan):.2f}", f"D(G(z)) {r.get('D(G(z))', nan):.2f}"]
    if "modes_covered" in r:
        parts.append(f"modes {r['modes_covered']}/{r['modes_total']}")
    if r.get("health"):
        parts.append("WARNING " + ",".join(r["health"]))
    return ", ".join(parts)


def _print_summary(s: dict) -> None:
    r = s["final"]
    lines = [
        f"fastgan: done: {s['steps']} steps in {s['elapsed_s']:.0f} s "
        f"({s['img_s']:.0f} img/s overall)",
        f"  final: loss_D {r.get('loss_D', float('nan')):.3f}, "
        f"loss_G {r.get('loss_G', float('nan')):.3f}, D(x) {r.get('D(x)', float('nan')):.3f}, "
        f"D(G(z)) {r.get('D(G(z))', float('nan')):.3f}",
    ]
    if r.get("skipped_nonfinite"):
        lines.append(f"  numerics: {r['skipped_nonfinite']} micro-batch(es) dropped on every "
                     "rank for a non-finite loss (see the warnings)")
    if r.get("skipped_overflow_G") or r.get("skipped_overflow_D"):
        lines.append(f"  fp16: the loss scalers skipped {r['skipped_overflow_G']} G and "
                     f"{r['skipped_overflow_D']} D step(s) on overflow")
    if r.get("data_skipped_samples") or r.get("data_skipped_shards"):
        lines.append(f"  data: skipped {r['data_skipped_samples']} bad sample(s) and "
                     f"{r['data_skipped_shards']} failed shard read(s) (see the warnings)")
    if s.get("health"):
        lines.append("  health: " + "; ".join(
            f"{health.ADVICE[w]} in {n} record(s)" for w, n in s["health"].items())
            + " (see the warnings and the README's 'Training health')")
    if "modes_covered" in r:
        line = f"  modes: {r['modes_covered']}/{r['modes_total']} covered"
        if "recognisable" in r:
            line += f", {100 * r['recognisable']:.1f}% recognisable by the oracle, " \
                    f"mode KL {r['mode_kl']:.3f}"
        if "high_quality" in r:
            line += f", {100 * r['high_quality']:.1f}% high-quality samples"
        lines.append(line)
    lines += [
        f"  samples:    {s['samples']}",
        f"  checkpoint: {s['checkpoint']}",
        f"  metrics:    {os.path.join(s['run_dir'], 'metrics.jsonl')}",
    ]
    print("\n".join(lines), file=sys.stderr)
