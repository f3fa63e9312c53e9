"""What each training step takes in: this rank's real batch on the device, and latents.

Image shards (data/stream.py) and the embedded 2-D point sets (data/points.py) stream
differently but reach the step alike: ``next()`` gives a ``RealBatch``, ``state_dict()``
is the stream's position, ``stats()`` what the loop records of it. The loop never asks
which.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import TrainConfig
from ..data.points import PointBatches
from ..data.sources import DataSpec
from ..data.stream import BatchStream, ImageBatches, make_plan
from .distributed import Dist, all_reduce_sum


@dataclass
class RealBatch:
    loaded: torch.Tensor  # as the stream gives it: uint8 images or float points
    x: torch.Tensor  # what D sees: images in [-1, 1], or the points
    c: torch.Tensor | None  # one-hot labels for a conditional GAN


class ImageInputs:
    """This rank's image batches from the shards, in [-1, 1], with one-hot labels for a
    conditional GAN (-1, unlabelled: zeros).

    The loader starts where a checkpoint's position says (``load_state_dict``), else at
    the first ``next()``. Starting it draws the workers' base seed from the global
    random generator, so it must start before that generator is restored.
    """

    SKIP_NAMES = BatchStream.SKIP_NAMES

    def __init__(self, cfg: TrainConfig, spec: DataSpec, dist: Dist, per_rank: int,
                 c_dim: int):
        dc = cfg.data
        self.shards, self.res, self.shuffle = spec.shards, dc.res, dc.shuffle
        self.seed, self.dist = cfg.run.seed, dist
        self.plan = make_plan(spec.shards, mode=dc.sampling, world=dist.world,
                              workers=dc.workers, batch=per_rank, epoch_images=dc.epoch_images)
        self.class_ids = torch.arange(c_dim, device=dist.device) if c_dim else None
        self.stream: BatchStream | None = None

    def _open(self, start: dict | None) -> None:
        self.stream = BatchStream(ImageBatches(
            self.shards, self.res, self.plan, seed=self.seed, rank=self.dist.rank,
            shuffle=self.shuffle, start=start))

    def next(self) -> RealBatch:
        if self.stream is None:
            self._open(None)
        loaded = next(self.stream).to(self.dist.device, non_blocking=True)
        c = None
        if self.class_ids is not None:
            # one-hot by comparison: one_hot() checks the labels' range on the host
            labels = torch.tensor(self.stream.labels).to(self.dist.device, non_blocking=True)
            c = (labels.unsqueeze(1) == self.class_ids).float()
        return RealBatch(loaded, loaded.float().div_(127.5).sub_(1.0), c)

    def state_dict(self) -> dict:
        return self.stream.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self._open(state)

    def load_other_world(self, states: list[dict]) -> None:
        """Another world size splits the data otherwise: continue the epoch count only."""
        self._open({"epoch": states[0]["epoch"]})

    def close(self) -> None:
        """Stop the loader's worker processes (see BatchStream.close)."""
        if self.stream is not None:
            self.stream.close()

    def stats(self) -> dict:
        """The epoch and the data skipped so far over all ranks (a collective)."""
        # on the device: nccl reduces only there
        totals = all_reduce_sum(torch.tensor(self.stream.skip_counts(), dtype=torch.float64,
                                             device=self.dist.device), self.dist)
        skips = dict(zip(self.SKIP_NAMES, (int(n) for n in totals.tolist())))
        return {"epoch": self.stream.epoch, **skips}


class PointInputs:
    """This rank's slice of each global batch of an embedded 2-D point set."""

    def __init__(self, cfg: TrainConfig, spec: DataSpec, dist: Dist):
        self.stream = PointBatches(spec.builtin, cfg.loop.batch, seed=cfg.run.seed,
                                   rank=dist.rank, world=dist.world)
        self.device = dist.device

    def next(self) -> RealBatch:
        loaded = next(self.stream).to(self.device, non_blocking=True)
        return RealBatch(loaded, loaded, None)

    def state_dict(self) -> dict:
        return self.stream.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.stream.load_state_dict(state)

    def load_other_world(self, states: list[dict]) -> None:
        self.stream.load_state_dict(states[0])  # the same stream on every rank

    def close(self) -> None:
        pass  # drawn in this process: nothing to stop

    def stats(self) -> dict:
        return {}


def build_inputs(cfg: TrainConfig, spec: DataSpec, dist: Dist, per_rank: int,
                 c_dim: int) -> ImageInputs | PointInputs:
    if spec.kind == "images":
        return ImageInputs(cfg, spec, dist, per_rank, c_dim)
    return PointInputs(cfg, spec, dist)


class Latents:
    """Each step's latents: drawn for the whole global batch from one seeded stream,
    this rank keeping its slice, so that a run's numbers do not depend on how many
    ranks share the batch (2 ranks of B/2 train like 1 process of B)."""

    def __init__(self, seed: int, z_dim: int, batch: int, dist: Dist):
        self.generator = torch.Generator(dist.device).manual_seed(seed * 1000 + 1)
        self.z_dim, self.batch, self.device = z_dim, batch, dist.device
        per_rank = batch // dist.world
        self.slice = slice(dist.rank * per_rank, (dist.rank + 1) * per_rank)

    def next(self) -> torch.Tensor:
        z = torch.randn(self.batch, self.z_dim, device=self.device, generator=self.generator)
        return z[self.slice]

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
