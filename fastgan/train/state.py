"""What a checkpoint's ``state.pt`` holds, and the one place it is built and restored.

Every stateful piece of a run (G, D, the EMA generator, both engines, the learning-rate
schedulers, the latent stream, the GAN step's counters, the data stream, the random
generators) has ``state_dict()`` and ``load_state_dict()``; ``TrainState`` holds them by
name, and its state dict is the checkpoint's: one entry per piece, beside the run's
facts (step, config, strategy, precision, world size) that the resume checks read.

Two kinds of pieces. *Shared* pieces are the same on every rank (weights, optimizer
states, counters): rank 0's are written. *Per-rank* pieces differ by rank (a loader's
position, the random generators): every rank's are gathered and written as a list, and
each rank takes back its own; when the world size changed, a per-rank piece restores
what still means something (``load_other_world``) or starts afresh. Pieces whose state
each rank holds a part of (DeepSpeed's optimizer partitions) also write and read files
of their own in the checkpoint directory (``save_sharded``/``load_sharded``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Protocol

import torch

from . import checkpoint, distributed

# The layout of state.pt. Format 1 (no "format" key) named some pieces differently;
# ``upgrade`` reads it.
FORMAT = 2
# A piece the checkpoint lacks, restored from another: a run that had no EMA starts
# its average from G.
STAND_INS = {"G_ema": "G"}


class Stateful(Protocol):
    def state_dict(self) -> dict: ...
    def load_state_dict(self, state: dict) -> None: ...


class TrainState:
    def __init__(self, dist: distributed.Dist):
        self.dist = dist
        self.shared: dict[str, Stateful] = {}
        self.per_rank: dict[str, Stateful] = {}

    def add(self, name: str, piece: Stateful, *, per_rank: bool = False) -> None:
        """Register a piece. Pieces are restored in the order they were added: add the
        random generators last, so that restoring nothing after them draws from them."""
        (self.per_rank if per_rank else self.shared)[name] = piece

    def state_dict(self, facts: dict) -> dict:
        """The checkpoint's state: ``facts`` (step, config...) and every piece. Every
        rank calls it: the per-rank pieces are gathered."""
        state = {"format": FORMAT, **facts, "world": self.dist.world}
        state.update({name: piece.state_dict() for name, piece in self.shared.items()})
        for name, piece in self.per_rank.items():
            state[name] = distributed.all_gather_object(piece.state_dict(), self.dist)
        return state

    def load_state_dict(self, state: dict, ckpt: Path) -> None:
        for name, piece in self.shared.items():
            piece.load_state_dict(state[STAND_INS[name] if name not in state else name])
        for piece in self.shared.values():
            if hasattr(piece, "load_sharded"):
                piece.load_sharded(ckpt)
        same_world = state["world"] == self.dist.world
        for name, piece in self.per_rank.items():
            if name not in state:  # new since the checkpoint (--augment ada): afresh
                continue
            if same_world:
                piece.load_state_dict(state[name][self.dist.rank])
            elif hasattr(piece, "load_other_world"):
                piece.load_other_world(state[name])

    def shard_writer(self) -> Callable[[Path], None] | None:
        """``checkpoint.save``'s ``sharded`` step when some piece writes files of its
        own, else None: that step costs every rank two more synchronisations."""
        if any(getattr(piece, "writes_shards", False) for piece in self.shared.values()):
            return self.save_sharded
        return None

    def save_sharded(self, ckpt_tmp: Path) -> None:
        """Every rank calls this, inside checkpoint.save: the pieces' own files."""
        for piece in self.shared.values():
            if getattr(piece, "writes_shards", False):
                piece.save_sharded(ckpt_tmp)


class RandomGenerators:
    """This rank's global random generators (CPU, and the GPU's): StyleGAN2's noise
    inputs, augmentations and dropout draw from them."""

    def __init__(self, device: torch.device):
        self.device = device

    def state_dict(self) -> dict:
        state = {"cpu": torch.get_rng_state()}
        if self.device.type == "cuda":
            state["cuda"] = torch.cuda.get_rng_state(self.device)
        return state

    def load_state_dict(self, state: dict) -> None:
        torch.set_rng_state(state["cpu"])
        if self.device.type == "cuda" and "cuda" in state:
            torch.cuda.set_rng_state(state["cuda"], self.device)


def load(ckpt: Path) -> dict:
    """A checkpoint's state.pt, in the current format."""
    return upgrade(checkpoint.load_state(ckpt))


def upgrade(state: dict) -> dict:
    """Format 1 -> 2: the engines by name, the latent stream and the GAN step's skip
    counts as their pieces' state dicts, the 2-D point stream per rank like images'."""
    if "format" in state:
        return state
    state = dict(state)
    engines = state.pop("engines")
    state["engine_G"], state["engine_D"] = engines["G"], engines["D"]
    state["latents"] = {"generator": state.pop("z_stream")}
    state["gan_step"] = {"skips": state.pop("skips")}
    points = state.pop("points", None)
    world = state.setdefault("world", 1)
    if points is not None:  # the same on every rank
        state["data"] = [points] * world
    state["format"] = FORMAT
    return state
