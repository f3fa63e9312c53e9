"""Resuming a run: which checkpoint, whether the new command line may continue it, and
the random-number state of each rank.

``--resume auto`` (the default) continues the newest complete checkpoint of the run
directory that matches its record (a damaged one is moved aside, with a warning), or
starts afresh when there is none, and says which. That is what makes a
run restarted by torchrun (``--max-restarts``), requeued by SLURM or simply launched
again with the same command pick up where it stopped. ``--resume none`` refuses a
run directory that already holds a run; ``--resume PATH`` takes a checkpoint directory
or another run's newest checkpoint.

A checkpoint restores everything a step depends on (see ``loop.py``): weights, EMA,
optimizers, loss scalers, schedulers, the latent stream, every rank's RNG and loader
position. With ``--deterministic`` the resumed run is bitwise the run that never stopped.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

from ..config import TrainConfig
from ..errors import RunError, UserError
from . import checkpoint

log = logging.getLogger("fastgan")

# Settings a checkpoint cannot be continued under: the saved state would not fit, or
# would mean something else. (section, field) -> why it matters
BLOCKING = {
    ("model", "arch"): "the networks' architecture",
    ("model", "z_dim"): "G's input",
    ("model", "width"): "the networks' shapes",
    ("model", "pack"): "D's input",
    ("model", "latent_modes"): "G's latent mixture",
    ("model", "cond"): "the conditioning inputs",
    ("data", "data"): "the dataset (and the loader position in it)",
    ("data", "res"): "the resolution",
    ("loop", "batch"): "the loader position and the per-rank batch",
    ("run", "precision"): "the loss scalers and DeepSpeed's weight copies",
}
DEEPSPEED_BLOCKING = {
    ("dist", "zero"): "DeepSpeed's optimizer partitions",
    ("dist", "accum"): "DeepSpeed's engine configuration",
}
# Fields added after checkpoints had been written: what such a checkpoint ran with
# (a grid checkpoint from before --latent-modes has no mixture in its G).
ADDED = {("data", "subset"): None, ("model", "latent_modes"): 0, ("optim", "loss"): "bce",
         ("optim", "r2_gamma"): 0.0, ("optim", "augment_p"): None,
         ("optim", "ada_target"): 0.6, ("optim", "ada_interval"): 4,
         ("optim", "ada_kimg"): 500.0, ("optim", "pl_weight"): 0.0,
         ("optim", "pl_interval"): 4, ("optim", "style_mixing"): 0.0}
# Settings that say where and how long a run goes, not what it is: changing them is
# what a resume is for, and is not even mentioned.
QUIET = {("run", "out"), ("run", "resume"), ("run", "resume_force"), ("run", "progress"),
         ("loop", "steps"), ("loop", "kimg")}


def find(run_dir: Path, resume: str) -> Path | None:
    """The checkpoint to continue, or None for a fresh start."""
    if resume == "none":
        if (run_dir / "config.json").exists():
            raise UserError(f"--out: run directory {run_dir} already holds a run; continue "
                            "it with --resume auto, or choose another --out")
        return None
    if resume == "auto":
        return _newest_sound(run_dir)
    path = Path(resume)
    if not path.exists():
        raise UserError(f"--resume: no such file or directory: {resume}")
    if path.is_file():
        path = path.parent
    if not checkpoint.is_complete(path):
        if (path / checkpoint.STATE).exists():
            raise UserError(f"--resume: {resume} is an incomplete checkpoint (no "
                            f"{checkpoint.MARKER} marker: its write never finished)")
        done = checkpoint.complete(path)
        if not done:
            raise UserError(f"--resume: {resume} holds no complete checkpoint")
        path = done[-1]
    try:
        _prove(path)
    except UserError as e:  # the user named it: theirs to look at, left in place
        raise UserError(f"--resume: {e}") from None
    return path


def _newest_sound(run_dir: Path) -> Path | None:
    """--resume auto: the newest complete checkpoint that proves sound. Each newer one
    that does not is moved aside with one warning line, so that a job restarted by
    torchrun or a requeue continues from the one before instead of failing for ever."""
    done = checkpoint.complete(run_dir)
    for older, ckpt in reversed(list(enumerate(done))):
        try:
            _prove(ckpt)
            return ckpt
        except UserError as e:
            try:
                aside = checkpoint.move_aside(ckpt).name
            except OSError as moving:
                raise RunError(f"--resume auto: {e}, and it cannot be moved aside "
                               f"({moving.strerror}): move it away, then run again") from None
            log.warning("--resume auto: %s: moved it aside to %s; %s", e, aside,
                        "trying the previous checkpoint" if older else
                        "no other checkpoint: starting afresh")
    return None


def _prove(ckpt: Path) -> None:
    """Raise a UserError naming the file unless ``ckpt`` matches its COMPLETE record.
    A checkpoint without a record (older fastgan) can only be loaded to be checked: its
    two files are, once here and again by whoever resumes from it."""
    start = time.perf_counter()
    verified = checkpoint.verify(ckpt)
    if verified is None:
        checkpoint.load_state(ckpt)
        checkpoint.load_generator(ckpt)
        return
    seconds = time.perf_counter() - start
    log.debug("%s verified: %.1f MB in %.2f s (%.2f GB/s)", ckpt.name, verified / 1e6,
             seconds, verified / 1e9 / max(seconds, 1e-9))


def differences(saved: dict, current: dict, saved_world: int, world: int, *,
                strategy: str) -> tuple[list[str], list[str]]:
    """(blocking, harmless) differences between a checkpoint's config and this run's,
    each as '--flag: now X, checkpoint Y (why it matters)'."""
    blocking, harmless = [], []
    rules = {**BLOCKING, **(DEEPSPEED_BLOCKING if strategy == "deepspeed" else {})}
    quiet = set(QUIET)
    if current["optim"].get("lr_decay"):  # the decay's schedule follows the run's length
        quiet -= {("loop", "steps"), ("loop", "kimg")}
    for section, fields in current.items():
        for name, value in fields.items():
            key = (section, name)
            old = saved.get(section, {}).get(name, ADDED.get(key, value))
            if old == value or key in quiet:
                continue
            line = f"--{name.replace('_', '-')}: now {value!r}, checkpoint {old!r}"
            if key == ("dist", "strategy") and "deepspeed" in (old, value):
                # none and ddp share one optimizer format; DeepSpeed's is its own
                blocking.append(f"{line} (the optimizer state's format)")
            elif key in rules:
                blocking.append(f"{line} ({rules[key]})")
            else:
                harmless.append(line)
    if saved_world != world:
        line = f"world size: now {world}, checkpoint {saved_world}"
        if strategy == "deepspeed":
            blocking.append(f"{line} (DeepSpeed's optimizer partitions)")
        else:
            harmless.append(f"{line} (each rank's loader restarts its epoch and its random "
                            "streams are seeded afresh: not an exact continuation)")
    return blocking, harmless


def check_settings(cfg: TrainConfig, state: dict, ckpt: Path, *, world: int, strategy: str,
                   precision: str, is_main: bool) -> None:
    """Refuse (unless --resume-force) to continue a checkpoint under settings that do
    not fit it; name every other change. Every rank decides alike (same inputs)."""
    current, saved = cfg.to_dict(), state["config"]
    # compare what ran, not "auto"
    current["dist"]["strategy"], current["run"]["precision"] = strategy, precision
    saved["dist"]["strategy"] = state.get("strategy", saved["dist"]["strategy"])
    saved["run"]["precision"] = state.get("precision", saved["run"]["precision"])
    blocking, harmless = differences(saved, current, state["world"], world,
                                     strategy=strategy)
    if blocking and not cfg.run.resume_force:
        raise UserError(f"--resume: {ckpt} was trained with other settings: "
                        f"{'; '.join(blocking)}. Use the checkpoint's settings, another "
                        "--out, or --resume-force")
    if is_main and (blocking or harmless):
        print("fastgan: resuming with changed settings: " + "; ".join(blocking + harmless),
              file=sys.stderr)
