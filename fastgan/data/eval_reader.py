"""The real images for evaluation statistics (``fastgan eval``): every image once."""

from __future__ import annotations

import itertools

import numpy as np
import torch

from ..errors import UserError
from .shard_reader import ShardReader
from .sources import ShardSet


class OnePass(torch.utils.data.IterableDataset):
    """Every image of a shard set exactly once, split over ranks and DataLoader workers,
    in batches of up to ``batch`` uint8 ``N x 3 x H x W`` images (a reader's last batch
    may be short: no padding, no shuffling). What statistics of the real data need
    (``fastgan eval``): the training stream pads and draws, this one counts.

    The split is the exact sampling mode's (one contiguous range of samples per rank and
    worker, :func:`~fastgan.data.shard_reader.exact_ranges` with seed 0, epoch 0).
    ``limit`` keeps the first ``limit`` samples in the shards' order.
    Bad samples and shards are skipped and counted as in training; each reader ends with
    a ``{"skips": (samples, shards, 0)}`` record.
    """

    def __init__(self, shards: ShardSet, res: int, *, rank: int, world: int, workers: int,
                 batch: int, limit: int | None = None):
        super().__init__()
        if shards.counts is None:
            raise UserError("--data: statistics of the real images need the sample count "
                            "of every shard: a manifest.json (`fastgan shards` writes one) "
                            "or local shards")
        counts, left = [], limit if limit is not None else sum(shards.counts)
        for c in shards.counts:
            counts.append(min(c, left))
            left -= counts[-1]
        self.shards = ShardSet(shards.urls, counts, shards.resolution, shards.labels)
        self.total = sum(counts)
        self.res, self.rank, self.world, self.batch = res, rank, world, batch
        self.readers = max(workers, 1)  # per rank (0 workers: the main process reads)

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        slot = self.rank * self.readers + (0 if info is None else info.id)
        reader = ShardReader(self.shards.urls, self.res,
                             check_size=self.shards.resolution is None and slot == 0)
        raw = reader.exact_samples(self.shards, seed=0, epoch=0,
                                   slots=self.world * self.readers, slot=slot)
        items = reader.decoded(raw, endless=False)
        while chunk := list(itertools.islice(items, self.batch)):
            yield torch.from_numpy(np.stack([c[0] for c in chunk])).permute(0, 3, 1, 2)
        yield {"skips": reader.skips.as_tuple()}
