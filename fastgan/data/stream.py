"""The training stream of images: from tar shards to batches, on every rank and
DataLoader worker.

Each rank's DataLoader workers are *reader slots*: slot ``rank * W + w`` of
``world * W``. A slot reads its shards, shuffles samples through a buffer, decodes
to uint8 and forms whole batches itself, so the main process only receives finished
uint8 batches (channels_last memory, which the convolutions want; conversion to float
happens on the training device).

Two sampling modes (``--sampling``):

* ``resampled`` (the default): each slot draws shards with replacement, from an RNG
  seeded by (seed, epoch, rank, worker). Any number of shards serves any number of
  ranks and workers, every source works (``pipe:`` and http shards need no manifest),
  slots never share a shard's I/O, and a bad shard is simply replaced by the next
  draw. An epoch is a fixed number of batches (``--epoch-images``, by default the
  dataset's size). Training is measured in images shown (kimg) over hundreds of passes,
  where drawing shards with replacement costs nothing measurable; that is why it is
  the default.
* ``exact``: every sample is seen once per epoch across all ranks and workers. The
  shards are put in an order drawn from (seed, epoch); the samples, numbered in that
  order, are cut into ``world * W`` contiguous ranges of equal size (within one), one
  per slot, so sample counts balance however uneven the shards are. Each slot yields
  ``ceil(ceil(N / slots) / batch)`` batches; the last ones are padded with samples
  from the start of the slot's own range (at most one batch per slot). It needs the
  sample count of every shard (a manifest, or local shards, which are counted). With
  fewer shards than slots it still works: slots then read the same shard and skip
  over each other's samples, which costs I/O (a message says so).

Both modes give every slot, hence every rank, the same number of batches per epoch,
so DDP never waits on a rank that ran dry. The order of samples depends only on
(seed, epoch, rank, worker): the loader state (epoch, batches, and each slot's
position in its stream) resumes mid-epoch exactly, skipping without decoding. (One
exception: when bad data left an exact slot more than a batch short, its padding
restarts on resume.)

Bad data is skipped and counted, never fatal (``shard_reader.py``, which reads the
shards for this stream and for the evaluation reader alike); only when no shard of the
list yields a single image does loading stop, with one clear error.
"""

from __future__ import annotations

import itertools
import logging
import math
import random
import signal
from dataclasses import dataclass

import numpy as np
import torch
import webdataset as wds

from ..errors import UserError
from .shard_reader import DataUnreadable, ShardReader, warn_resize
from .sources import ShardSet

log = logging.getLogger(__name__)

SAMPLING = ("resampled", "exact")
#: Images per shard assumed for the epoch length of remote shards without a manifest.
UNKNOWN_SHARD_IMAGES = 1000
#: What asks a rank to stop (train/preemption.py). Its loader workers ignore them: a
#: scheduler or a terminal sends them to every process of the job, and a worker that
#: died of one would make the rank fail ("DataLoader worker is killed by signal") before
#: it checkpoints; the rank shuts its workers down itself when it ends.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)


@dataclass(frozen=True)
class Plan:
    """What every rank agrees on before reading: slots, and batches per slot and epoch."""

    mode: str
    world: int
    workers: int  # DataLoader workers per rank (0: read in the main process)
    batch: int  # per rank
    batches_per_slot: int  # per epoch

    @property
    def readers(self) -> int:
        """Reader slots per rank."""
        return max(self.workers, 1)

    @property
    def slots(self) -> int:
        return self.world * self.readers

    @property
    def batches_per_epoch(self) -> int:
        """Per rank: the same on every rank."""
        return self.batches_per_slot * self.readers


def make_plan(shards: ShardSet, *, mode: str, world: int, workers: int, batch: int,
              epoch_images: int | None = None) -> Plan:
    slots = world * max(workers, 1)
    if mode == "exact":
        if shards.counts is None:
            raise UserError("--sampling exact needs the sample count of every shard: give "
                            "--data a manifest.json (`fastgan shards` writes one) or use "
                            "--sampling resampled")
        total = sum(shards.counts)
        if total == 0:
            raise UserError("--data: the shards hold no samples")
        if len(shards.urls) < slots:
            log.info("exact sampling: %d shard(s) for %d reader slots (%d rank(s) x %d "
                     "worker(s)): slots share shards and skip over each other's samples; "
                     "more, smaller shards read less", len(shards.urls), slots, world,
                     max(workers, 1))
        per_slot = math.ceil(math.ceil(total / slots) / batch)
    elif mode == "resampled":
        size = epoch_images or shards.total
        if not size:
            size = UNKNOWN_SHARD_IMAGES * len(shards.urls)
            log.info("no sample counts for these shards: an epoch is taken as %d images "
                     "(%d per shard; --epoch-images sets it)", size, UNKNOWN_SHARD_IMAGES)
        per_slot = max(1, math.ceil(size / (slots * batch)))
    else:
        raise UserError(f"--sampling: expected one of {', '.join(SAMPLING)}, got {mode!r}")
    return Plan(mode, world, workers, batch, per_slot)


def _rng(*key: int) -> random.Random:
    return random.Random(int(np.random.SeedSequence(list(key)).generate_state(1)[0]))

class ImageBatches(torch.utils.data.IterableDataset):
    """One rank's endless stream of batch records (see :class:`BatchStream`)."""

    def __init__(self, shards: ShardSet, res: int, plan: Plan, *, seed: int, rank: int,
                 shuffle: int = 2000, start: dict | None = None):
        super().__init__()
        self.shards, self.res, self.plan = shards, res, plan
        self.seed, self.rank, self.shuffle = seed, rank, shuffle
        self.start = start or {}
        self.ring: torch.Tensor | None = None  # set by BatchStream when workers are used
        if self.start and (self.start.get("world"), self.start.get("workers"),
                           self.start.get("mode")) != (plan.world, plan.workers, plan.mode):
            log.warning("the loader state is for another layout (%s): starting the "
                        "epoch afresh", {k: self.start.get(k)
                                         for k in ("world", "workers", "mode")})
            self.start = {"epoch": self.start.get("epoch", 0)}

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker = 0 if info is None else info.id
        local = (worker + self.start.get("rotate", 0)) % self.plan.readers
        slot = self.rank * self.plan.readers + local
        epoch, batch, raw = self._start_of(slot)
        reader = _SlotReader(self, slot)
        try:
            while True:
                yield from reader.epoch(epoch, batch, raw)
                epoch, batch, raw = epoch + 1, 0, 0
        except DataUnreadable as e:
            yield {"error": str(e)}

    def _start_of(self, slot: int) -> tuple[int, int, int]:
        pos = self.start.get("slots", {}).get(str(slot))
        if pos is None:
            return self.start.get("epoch", 0), 0, 0
        epoch, batch, raw = pos
        if batch >= self.plan.batches_per_slot:
            return epoch + 1, 0, 0
        return epoch, batch, raw


class _SlotReader:
    """The reading of one slot (one worker of one rank), epoch after epoch."""

    def __init__(self, ds: ImageBatches, slot: int):
        self.ds, self.slot = ds, slot
        self.reader = ShardReader(ds.shards.urls, ds.res,
                                  check_size=ds.shards.resolution is None and slot == 0)
        self.skips = self.reader.skips
        self.made = 0  # batches made: the next ring buffer

    # ---- raw samples (undecoded), in the slot's order
    def _resampled_shards(self, epoch: int):
        urls = self.ds.shards.urls
        rng = _rng(self.ds.seed, epoch, self.slot, 1)
        while True:
            yield from self.reader.samples(rng.choice(urls))
            self.reader.check_readable()

    def _exact_shards(self, epoch: int):
        ds = self.ds
        return self.reader.exact_samples(ds.shards, seed=ds.seed, epoch=epoch,
                                         slots=ds.plan.slots, slot=self.slot)

    def _raw(self, epoch: int, resampled: bool):
        ds = self.ds
        source = self._resampled_shards(epoch) if resampled else self._exact_shards(epoch)
        rng = _rng(ds.seed, epoch, self.slot, 2)
        return wds.shuffle(ds.shuffle, min(ds.shuffle, 500), rng=rng)(source)

    # ---- decoded samples
    def _padding(self, epoch: int):
        """Samples to fill an exact epoch's last batches: the slot's own from the start,
        or, when none of them decodes, samples drawn from all shards."""
        while True:
            got = False
            for item in self.reader.decoded(self._raw(epoch, resampled=False), endless=False):
                got = True
                yield item
            if not got:
                yield from self.reader.decoded(self._raw(epoch, resampled=True), endless=True)

    # ---- batches
    def epoch(self, epoch: int, first_batch: int, skip_raw: int):
        plan = self.ds.plan
        exact = plan.mode == "exact"
        counted = _Counted(self._raw(epoch, resampled=not exact))
        for _ in itertools.islice(counted, skip_raw):  # resume: skip without decoding
            pass
        good = self.reader.decoded(counted, endless=not exact)
        padding = None
        for b in range(first_batch, plan.batches_per_slot):
            items = list(itertools.islice(good, plan.batch))
            if len(items) < plan.batch:
                if padding is None:
                    padding = self._padding(epoch)
                missing = plan.batch - len(items)
                items += itertools.islice(padding, missing)
                self.skips.padded += missing
            yield self._record(items, epoch, b + 1, counted.n)

    def _record(self, items: list, epoch: int, batch: int, raw: int) -> dict:
        ring, index = self.ds.ring, None
        if ring is None:
            images = torch.empty((len(items), *items[0][0].shape), dtype=torch.uint8)
        else:
            index = self.made % ring.shape[1]
            images = ring[torch.utils.data.get_worker_info().id, index]
        self.made += 1
        out = images.numpy()
        for i, item in enumerate(items):
            out[i] = item[0]
        return {
            # N H W C contiguous, viewed as N C H W: channels_last memory, for free
            "images": images.permute(0, 3, 1, 2) if ring is None else None,
            "ring_index": index,
            # plain lists, not tensors: each tensor costs a shared-memory handover
            "labels": [it[1] for it in items],
            "keys": [it[2] for it in items],
            "slot": self.slot, "epoch": epoch, "batch": batch, "raw": raw,
            "skips": self.skips.as_tuple(),
        }


class _Counted:
    """An iterator that counts what it hands out (the slot's position, for resume)."""

    def __init__(self, it):
        self.it, self.n = iter(it), 0

    def __iter__(self):
        return self

    def __next__(self):
        item = next(self.it)
        self.n += 1
        return item


def ignore_stop_signals(worker_id: int) -> None:
    """A DataLoader worker's ``worker_init_fn``: see :data:`STOP_SIGNALS`."""
    for s in STOP_SIGNALS:
        signal.signal(s, signal.SIG_IGN)


class BatchStream:
    """The loader as the training loop sees it: uint8 batches, a state, skip counts.

    ``state_dict()`` is this rank's position: the epoch, batches taken in it, and each
    slot's position in its own stream; give it back as ``start`` to continue exactly.
    """

    SKIP_NAMES = ("data_skipped_samples", "data_skipped_shards", "data_padded")

    PREFETCH = 4  # batches in flight per worker

    def __init__(self, dataset: ImageBatches):
        self.plan = plan = dataset.plan
        self.rank = dataset.rank
        size = dataset.shards.resolution
        if size is not None and self.rank == 0:
            warn_resize((size, size), dataset.res)
        if plan.workers > 0:
            # Workers write batches into buffers shared once, here, instead of a fresh
            # shared-memory segment per batch (a handover and ~400 page faults each:
            # a fifth of the loader's time at 64x64). A worker reuses a buffer
            # PREFETCH + 2 batches later; the DataLoader lets it run at most PREFETCH
            # batches ahead of what has been taken, so a batch stays valid until the
            # next call of next() and beyond.
            shape = (plan.workers, self.PREFETCH + 2, plan.batch, dataset.res, dataset.res, 3)
            try:
                dataset.ring = torch.empty(shape, dtype=torch.uint8).share_memory_()
            except RuntimeError as e:
                mb = math.prod(shape) / 2 ** 20
                raise UserError(f"--workers: cannot share {mb:.0f} MB of batch buffers "
                                f"between loader processes ({e}); in a container, give "
                                "it more /dev/shm (docker run --shm-size), or use fewer "
                                "--workers or a smaller --batch") from None
        self.ring = dataset.ring
        self.loader = torch.utils.data.DataLoader(
            dataset,
            batch_size=None,  # batches are formed inside the workers
            num_workers=plan.workers,
            persistent_workers=plan.workers > 0,
            prefetch_factor=self.PREFETCH if plan.workers > 0 else None,
            pin_memory=torch.cuda.is_available(),
            worker_init_fn=ignore_stop_signals,
        )
        self._it = iter(self.loader)
        self._taken = 0
        start = dataset.start
        self.epoch, self.batch = start.get("epoch", 0), start.get("batch", 0)
        self.slots: dict[str, list[int]] = dict(start.get("slots", {}))
        self._skips: dict[int, tuple] = {}
        self.labels: list[int] = []  # of the last batch (-1: no label)
        self.keys: list[str] = []

    def __iter__(self):
        return self

    def close(self) -> None:
        """Stop the loader's workers now. They ignore the stop signals (STOP_SIGNALS),
        and the interpreter's exit ends worker processes with SIGTERM, then waits for
        them: a run that fails on an exception, whose traceback keeps the loader alive,
        would wait there for ever."""
        if hasattr(self._it, "_shutdown_workers"):  # a multi-process iterator
            self._it._shutdown_workers()
        self._it = iter(())

    def __next__(self) -> torch.Tensor:
        rec = next(self._it)
        if "error" in rec:
            raise UserError(f"--data: {rec['error']}")
        expected = self.rank * self.plan.readers + self.batch % self.plan.readers
        if rec["slot"] != expected:  # the round-robin the state relies on
            raise RuntimeError(f"loader order broken: batch from slot {rec['slot']}, "
                               f"expected slot {expected}")
        self.slots[str(rec["slot"])] = [rec["epoch"], rec["batch"], rec["raw"]]
        self._skips[rec["slot"]] = rec["skips"]
        self.labels, self.keys = rec["labels"], rec["keys"]
        worker = self._taken % self.plan.readers  # DataLoader workers take turns
        self._taken += 1
        self.batch += 1
        if self.batch == self.plan.batches_per_epoch:
            self.epoch, self.batch = self.epoch + 1, 0
        if rec["images"] is not None:
            return rec["images"]
        return self.ring[worker, rec["ring_index"]].permute(0, 3, 1, 2)

    def skip_counts(self) -> list[int]:
        """Cumulative (samples skipped, shard reads skipped, padding samples) of this
        rank's slots, as far as the batches taken so far tell."""
        return [sum(s[i] for s in self._skips.values()) for i in range(3)]

    def state_dict(self) -> dict:
        p = self.plan
        return {"mode": p.mode, "world": p.world, "workers": p.workers,
                "epoch": self.epoch, "batch": self.batch,
                "samples": self.batch * p.batch, "rotate": self.batch % p.readers,
                "slots": dict(self.slots)}
