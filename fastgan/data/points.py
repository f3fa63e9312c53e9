"""The training stream of the embedded 2-D point sets (``--data ring`` and the like)."""

from __future__ import annotations

import numpy as np
import torch

from . import builtin


class PointBatches:
    """An endless stream of float32 batches from an embedded 2-D mixture: this rank's
    slice of each global batch [B, 2].

    Every rank draws the whole global batch from the same seeded stream and keeps its
    slice (points are cheap), so the data do not depend on the number of ranks.
    """

    def __init__(self, name: str, batch: int, *, seed: int, rank: int = 0, world: int = 1):
        self.points = builtin.POINT_SETS[name]()
        self.batch, self.rank, self.world = batch, rank, world
        self.rng = np.random.default_rng([seed, 0x2D])

    def __iter__(self):
        return self

    def __next__(self) -> torch.Tensor:
        per_rank = self.batch // self.world
        lo = self.rank * per_rank
        return torch.from_numpy(self.points.sample(self.batch, self.rng)[lo:lo + per_rank])

    def state_dict(self) -> dict:
        """The stream's position (the same on every rank): its generator's state."""
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        self.rng.bit_generator.state = state["rng"]
