"""Checkpoints: written atomically, found by their completion marker, pruned to K.

Layout: ``RUN/checkpoints/step-00001234/`` holding ``state.pt`` (the training state:
G, D, both optimizers or, under DeepSpeed, ``G/`` and ``D/`` with each engine's own
checkpoint, step, RNG states), ``generator.pt`` (what ``fastgan sample``
needs: G's architecture, constructor arguments and weights, loadable with
``torch.load(weights_only=True)`` anywhere) and ``COMPLETE``, written last.

A checkpoint is built under a temporary name, its files fsynced, then renamed into
place, and only then marked complete: a job that dies at any point leaves either the
previous checkpoints untouched or a directory without a marker, which is never loaded.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import torch

from ..errors import UserError

MARKER = "COMPLETE"
GENERATOR = "generator.pt"
STATE = "state.pt"
_NAME = re.compile(r"^step-(\d{8})$")


def checkpoint_dir(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / "checkpoints"


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save(run_dir: str | os.PathLike, step: int, state: dict, generator: dict,
         keep: int, *, sharded: Callable[[Path], None] | None = None,
         barrier: Callable[[], None] = lambda: None, is_main: bool = True) -> Path | None:
    """Write checkpoint ``step`` and prune all but the newest ``keep`` complete ones.

    Every rank calls this. ``sharded(tmp)``, when given, runs on every rank between two
    barriers and writes state that each rank holds a part of (DeepSpeed's optimizer
    partitions) into the temporary directory, which is why its name carries no pid:
    every rank must find it (and a multi-node job needs a shared filesystem, as
    DeepSpeed's own checkpoints do). Rank 0 alone writes the rest and commits.
    """
    root = checkpoint_dir(run_dir)
    final = root / f"step-{step:08d}"
    tmp = root / f".step-{step:08d}.tmp"
    if is_main:
        root.mkdir(parents=True, exist_ok=True)
        _remove_unfinished(root)  # one checkpoint is written at a time: any other is dead
        tmp.mkdir()
    if sharded is not None:
        barrier()
        sharded(tmp)
        barrier()
    if not is_main:
        return None
    torch.save(state, tmp / STATE)
    torch.save(generator, tmp / GENERATOR)
    for folder, dirs, files in os.walk(tmp, topdown=False):
        for f in files:
            _fsync(Path(folder) / f)
        _fsync(Path(folder))
    if final.exists():  # an unmarked leftover of a crashed write at this very step
        shutil.rmtree(final)
    os.rename(tmp, final)
    marker = final / MARKER
    with open(marker, "w") as fh:
        fh.write(f"{step}\n")
        fh.flush()
        os.fsync(fh.fileno())
    _fsync(root)
    _prune(root, keep)
    return final


def is_complete(path: str | os.PathLike) -> bool:
    p = Path(path)
    return bool(_NAME.match(p.name)) and (p / MARKER).is_file()


def complete(run_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    root = checkpoint_dir(run_dir)
    if not root.is_dir():
        return []
    return sorted((p for p in root.iterdir() if is_complete(p)), key=lambda p: p.name)


def _remove_unfinished(root: Path) -> None:
    """Temporary directories and unmarked checkpoints left by writes that died."""
    for p in root.iterdir():
        if p.name.endswith(".tmp") or (_NAME.match(p.name) and not is_complete(p)):
            shutil.rmtree(p, ignore_errors=True)


def _prune(root: Path, keep: int) -> None:
    done = complete(root.parent)
    for p in done[:-keep]:
        shutil.rmtree(p, ignore_errors=True)


def find_generator(path: str | os.PathLike) -> Path:
    """A generator.pt from a run directory, a checkpoint directory or the file itself."""
    p = Path(path)
    if p.is_file():
        return p
    if (p / GENERATOR).is_file() and (p / MARKER).exists():
        return p / GENERATOR
    if p.is_dir():
        done = complete(p)
        if done:
            return done[-1] / GENERATOR
        if (p / GENERATOR).is_file():
            raise UserError(f"{path}: checkpoint is incomplete (no {MARKER} marker)")
        raise UserError(f"{path}: no complete checkpoint found")
    raise UserError(f"{path}: no such file or directory")


def load_generator(path: str | os.PathLike) -> dict:
    """The generator payload: {'arch', 'kwargs', 'state_dict', 'kind', 'step', ...}."""
    f = find_generator(path)
    payload = safe_load(f, "not a readable fastgan generator checkpoint")
    if not isinstance(payload, dict) or "arch" not in payload or "state_dict" not in payload:
        raise UserError(f"{f}: not a fastgan generator checkpoint")
    return payload


def load_state(ckpt: str | os.PathLike) -> dict:
    """The training state (``state.pt``) of a complete checkpoint."""
    return safe_load(Path(ckpt) / STATE, "not a readable fastgan training state (--resume)")


def safe_load(f: Path, what: str):
    """``torch.load`` that never runs code from the file (``weights_only``) and names the
    file when it is truncated, foreign or tampered with."""
    try:
        return torch.load(f, map_location="cpu", weights_only=True)
    except Exception as e:  # torch's own message can run to many lines: the first
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UserError(f"{f}: {what} ({first})") from None
