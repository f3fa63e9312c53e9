"""Samples out of tar shards, for one reader (one DataLoader worker of one rank):
opening a shard whatever its URL, the exact split of a shard set into contiguous
ranges, decoding images, and counting what is skipped. Both readers of images use it:
the training stream (``stream.py``) and the evaluation reader (``eval_reader.py``).

Bad data is skipped and counted, never fatal, with at most one warning per 10 s per
process (webdataset's ``warn_and_continue`` sleeps 0.5 s per warning): an image that
does not decode, a sample without an image, a shard that cannot be opened, is not a
tar file, or is cut short (the samples before the cut are kept). Only when no shard
of the list yields a single image does an endless reader stop, with one clear error
(:class:`DataUnreadable`).
"""

from __future__ import annotations

import io
import logging
import math
import time
import urllib.request

import numpy as np
import webdataset as wds
from PIL import Image

from . import tar
from .images import IMAGE_EXTS, decode_image, image_member
from .sources import ShardSet

log = logging.getLogger(__name__)


class DataUnreadable(Exception):
    """No shard of the list yields a single image."""


def open_shard(url: str):
    """A binary stream of a shard: an ``http(s)://`` URL, a ``pipe:`` command, or a
    local path (with or without ``file:``)."""
    if url.startswith(("http://", "https://")):
        return urllib.request.urlopen(url, timeout=60)
    if url.startswith("pipe:"):
        return wds.gopen(url, "rb")
    return open(url.removeprefix("file:"), "rb", buffering=1 << 20)


def exact_ranges(counts: list[int], *, seed: int, epoch: int, slots: int,
                 slot: int) -> list[tuple[int, int, int]]:
    """(shard index, first sample, end sample) that ``slot`` reads in ``epoch``: the
    shards in an order drawn from (seed, epoch), their samples numbered in that order
    and cut into ``slots`` contiguous ranges of equal size (within one)."""
    order = np.random.default_rng([seed, epoch, 0xE8AC7]).permutation(len(counts))
    total = sum(counts)
    lo, hi = slot * total // slots, (slot + 1) * total // slots
    ranges, pos = [], 0
    for i in order:
        a, b = max(lo, pos), min(hi, pos + counts[i])
        if a < b:
            ranges.append((int(i), a - pos, b - pos))
        pos += counts[i]
    return ranges


def warn_resize(size: tuple[int, int], res: int) -> None:
    """Once per run: rank 0 when the manifest gives the size, else its first reader."""
    if size != (res, res):
        log.warning("the shards hold %dx%d images: resizing to %d while loading", *size, res)


class SkipCounts:
    """Counters of skipped data, warning at most once per 10 s per process."""

    def __init__(self):
        self.samples = self.shards = self.padded = 0
        self.last_error = ""
        self._last = -math.inf

    def sample(self, what: str, exn: BaseException) -> None:
        self.samples += 1
        self._warn(what, exn)

    def shard(self, url: str, exn: BaseException) -> None:
        self.shards += 1
        self._warn(f"shard {url}", exn)

    def _warn(self, what: str, exn: BaseException) -> None:
        self.last_error = f"{what}: {exn}"
        now = time.monotonic()
        if now - self._last > 10.0:
            self._last = now
            log.warning("skipped %s (%d sample(s), %d shard read(s) skipped so far in this "
                        "process): %s", what, self.samples, self.shards, exn)

    def as_tuple(self) -> tuple[int, int, int]:
        return self.samples, self.shards, self.padded


class ShardHealth:
    """Tells when no shard of the list can give an image, so that an endless stream
    stops with an error instead of skipping bad data for ever.

    A shard is hopeless when its last read gave no sample, or when, since its last
    good image, at least as many of its samples failed to decode as its last read
    gave (so a shard whose first image is corrupt is not judged before the rest of it
    has come through the shuffle buffer).
    """

    def __init__(self, n_urls: int):
        self.n_urls = n_urls
        self._given: dict[str, int] = {}
        self._fails: dict[str, int] = {}
        self._hopeless: set[str] = set()

    def read(self, url: str, n: int) -> None:
        self._given[url] = n
        if n == 0:
            self._hopeless.add(url)

    def decoded(self, url: str, ok: bool) -> None:
        if ok:
            self._fails[url] = 0
            self._hopeless.discard(url)
            return
        self._fails[url] = fails = self._fails.get(url, 0) + 1
        if fails >= self._given.get(url, math.inf):
            self._hopeless.add(url)

    def check(self, skips: SkipCounts) -> None:
        if len(self._hopeless) >= self.n_urls:
            raise DataUnreadable(f"none of the {self.n_urls} shard(s) gives a readable "
                                 f"image (last error: {skips.last_error})")


class ShardReader:
    """One reader's samples from the shards of ``urls``: raw (undecoded) samples of a
    shard or of an exact range, and decoded ``(image, label, key)`` items, with the
    reader's :class:`SkipCounts` (``skips``).

    ``check_size``: compare the first image's size with ``res`` and warn once (for the
    one reader that does so when no manifest gives the size).
    """

    def __init__(self, urls: list[str], res: int, *, check_size: bool):
        self.res, self.check_size = res, check_size
        self.skips = SkipCounts()
        self.health = ShardHealth(len(set(urls)))

    def check_readable(self) -> None:
        """Raise :class:`DataUnreadable` once no shard can give an image."""
        self.health.check(self.skips)

    def samples(self, url: str, start: int = 0, stop: int | None = None):
        """The samples of one shard; any failure ends it, counted (what came stays)."""
        n = 0
        try:
            stream = open_shard(url)
        except Exception as e:  # noqa: BLE001 (unreachable URL, failing command...)
            self.skips.shard(url, e)
            self.health.read(url, 0)
            return
        finished = False
        try:
            for sample in tar.samples(stream, url, start, stop):
                n += 1
                yield sample
            finished = True
        except Exception as e:  # noqa: BLE001 (not a tar, truncated, connection lost)
            self.skips.shard(url, e)
        finally:
            try:
                stream.close()
            except Exception as e:  # noqa: BLE001 (a pipe's command failed)
                if finished:  # an early close kills a pipe's writer: that is no error
                    self.skips.shard(url, e)
            self.health.read(url, n)

    def exact_samples(self, shards: ShardSet, *, seed: int, epoch: int, slots: int,
                      slot: int):
        """The raw samples of ``slot``'s range in ``epoch`` (see :func:`exact_ranges`)."""
        for i, a, b in exact_ranges(shards.counts, seed=seed, epoch=epoch, slots=slots,
                                    slot=slot):
            yield from self.samples(shards.urls[i], a, b)

    def decoded(self, raw, *, endless: bool):
        """(image, label, key) of the samples that decode. ``endless`` (resampled)
        streams raise :class:`DataUnreadable` once no shard can give an image."""
        for sample in raw:
            ext = image_member(sample)
            try:
                if ext is None:
                    raise ValueError(f"no image member ({', '.join(IMAGE_EXTS)}) among "
                                     f"{sorted(k for k in sample if not k.startswith('__'))}")
                if self.check_size:
                    self._check_size(sample[ext])
                image = decode_image(sample[ext], self.res)
            except Exception as e:  # noqa: BLE001 (whatever Pillow raises for bad bytes)
                self.skips.sample(f"sample {sample['__key__']} of {sample['__url__']}", e)
                self.health.decoded(sample["__url__"], False)
                if endless:
                    self.check_readable()
                continue
            self.health.decoded(sample["__url__"], True)
            try:
                label = int(sample["cls"]) if "cls" in sample else -1
            except ValueError:
                label = -1
            yield image, label, sample["__key__"]

    def _check_size(self, data: bytes) -> None:
        self.check_size = False
        warn_resize(Image.open(io.BytesIO(data)).size, self.res)
