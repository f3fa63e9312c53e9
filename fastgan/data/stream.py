"""From a ``--data`` spec to an endless stream of training batches.

Images: shard URLs -> webdataset pipeline (resampled shards per rank and worker, a
shuffle buffer, decode to uint8, batch *inside* the worker) -> uint8 NCHW batches in
channels_last memory, which is what the convolutions want. Conversion to float and the
[-1, 1] range happens on the training device, where it is cheapest.

Points (the 2-D sets): sampled in-process; there is no I/O to hide.

Every rank draws its own endless stream, so no rank can run out of data before another
and hang a collective; the number of steps is decided by the training loop.
"""

from __future__ import annotations

import glob
import io
import logging
import os
import random
import time
from dataclasses import dataclass

import numpy as np
import torch
import webdataset as wds
from PIL import Image

from ..errors import UserError
from . import builtin
from .shards import MANIFEST, read_manifest

log = logging.getLogger(__name__)

IMAGE_EXTS = ("png", "jpg", "jpeg", "webp")


@dataclass
class DataSpec:
    """What ``--data`` names, resolved: image shards or an embedded point set."""

    kind: str  # "images" or "points"
    urls: list[str]
    builtin: str | None = None  # name of the embedded dataset, if any


def parse_data(spec: str) -> tuple[str | None, str]:
    """Split ``builtin:NAME`` from a path or URL; validates the builtin name."""
    if spec.startswith("builtin:"):
        name = spec.split(":", 1)[1]
        if name not in builtin.BUILTIN_NAMES:
            raise UserError(
                f"--data: unknown embedded dataset {spec!r} (choose from "
                + ", ".join("builtin:" + n for n in builtin.BUILTIN_NAMES) + ")"
            )
        return name, spec
    return None, spec


def resolve_data(spec: str, res: int, cache_dir: str) -> DataSpec:
    """Turn ``--data`` into shard URLs (building the embedded shards when needed)."""
    name, _ = parse_data(spec)
    if name in builtin.POINT_SETS:
        return DataSpec("points", [], builtin=name)
    if name is not None:
        try:
            manifest = builtin.builtin_shards(name, res, cache_dir)
        except OSError as e:
            raise UserError(f"--cache-dir: cannot write the {spec} shards under {cache_dir}: "
                            f"{e.strerror or e}") from None
        return DataSpec("images", _from_manifest(manifest), builtin=name)
    return DataSpec("images", shard_urls(spec))


def shard_urls(spec: str) -> list[str]:
    """Shard URLs for a directory, a manifest, a .tar path, a brace pattern or a URL."""
    if spec.startswith(("http://", "https://", "pipe:", "file:")):
        return wds.shardlists.expand_urls(spec)
    path = os.path.expanduser(spec)
    if os.path.isdir(path):
        if os.path.exists(os.path.join(path, MANIFEST)):
            return _from_manifest(os.path.join(path, MANIFEST))
        urls = sorted(glob.glob(os.path.join(path, "*.tar")))
        if not urls:
            raise UserError(f"--data: no .tar shards in directory {spec}")
        return urls
    if path.endswith(".json"):
        if not os.path.exists(path):
            raise UserError(f"--data: no such manifest: {spec}")
        return _from_manifest(path)
    urls = wds.shardlists.expand_urls(path)
    missing = [u for u in urls if not os.path.exists(u)]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise UserError(f"--data: no such file: {missing[0]}{more}")
    return urls


def _from_manifest(path: str) -> list[str]:
    try:
        manifest = read_manifest(path)
        names = [s["name"] for s in manifest["shards"]]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"--data: unreadable manifest {path}: {e}") from None
    if not names:
        raise UserError(f"--data: manifest {path} lists no shards")
    base = os.path.dirname(path)
    return [os.path.join(base, n) for n in names]


# ------------------------------------------------------------------------ images

def decode_image(data: bytes, res: int) -> np.ndarray:
    """Encoded bytes -> uint8 res x res x 3 (center crop to square, then resize)."""
    img = Image.open(io.BytesIO(data))
    if img.format == "JPEG" and min(img.size) >= 2 * res:
        img.draft("RGB", (res, res))  # DCT-domain downscale: several times faster
    img = img.convert("RGB")
    w, h = img.size
    if w != h:
        s = min(w, h)
        left, top = (w - s) // 2, (h - s) // 2
        img = img.crop((left, top, left + s, top + s))
    if img.size != (res, res):
        img = img.resize((res, res), Image.BICUBIC, reducing_gap=2.0)
    return np.asarray(img)


class _WarnAndCount:
    """webdataset error handler: skip the bad sample or shard, count it, warn sparingly.

    webdataset's own ``warn_and_continue`` sleeps 0.5 s per warning; this one never sleeps
    and prints at most one warning every 10 seconds per process.
    """

    def __init__(self):
        self.count = 0
        self._last = 0.0

    def __call__(self, exn: Exception) -> bool:
        self.count += 1
        now = time.monotonic()
        if now - self._last > 10.0:
            self._last = now
            log.warning("skipped bad data (%d so far in this process): %s", self.count, exn)
        return True


class ImageBatches(torch.utils.data.IterableDataset):
    """An endless stream of uint8 batches [B, 3, res, res] for one rank.

    Shards are drawn with replacement, independently per (seed, rank, worker), so any
    number of shards serves any number of ranks and workers and no stream runs dry.
    """

    def __init__(self, urls: list[str], res: int, batch: int, *, seed: int, rank: int,
                 shuffle: int = 2000):
        super().__init__()
        self.urls, self.res, self.batch = list(urls), res, batch
        self.seed, self.rank, self.shuffle = seed, rank, shuffle
        self.skipped = _WarnAndCount()

    def _worker_seed(self) -> int:
        info = torch.utils.data.get_worker_info()
        worker = info.id if info is not None else 0
        return int(np.random.SeedSequence([self.seed, self.rank, worker]).generate_state(1)[0])

    def _decode(self, sample: dict):
        for ext in IMAGE_EXTS:
            if ext in sample:
                return decode_image(sample[ext], self.res)
        raise ValueError(f"sample {sample.get('__key__')!r} has no image ({', '.join(IMAGE_EXTS)})")

    def __iter__(self):
        worker_seed = self._worker_seed()
        pipeline = wds.DataPipeline(
            wds.ResampledShards(self.urls, seed=worker_seed, deterministic=True,
                                worker_seed=lambda: 0),
            wds.tarfile_to_samples(handler=self.skipped),
            wds.shuffle(self.shuffle, initial=min(self.shuffle, 500),
                        rng=random.Random(worker_seed)),
            wds.map(self._decode, handler=self.skipped),
            wds.batched(self.batch, collation_fn=_stack, partial=False),
        )
        return iter(pipeline)


def _stack(images: list[np.ndarray]) -> torch.Tensor:
    # N H W C contiguous, viewed as N C H W: that is channels_last memory, for free.
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2)


def image_loader(dataset: ImageBatches, workers: int) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=None,  # batches are formed inside the workers
        num_workers=workers,
        persistent_workers=workers > 0,
        prefetch_factor=4 if workers > 0 else None,
        pin_memory=torch.cuda.is_available(),
    )


# ------------------------------------------------------------------------ points

class PointBatches:
    """An endless stream of float32 batches [B, 2] from an embedded 2-D mixture."""

    def __init__(self, name: str, batch: int, *, seed: int, rank: int):
        self.points = builtin.POINT_SETS[name]()
        self.batch = batch
        self.rng = np.random.default_rng([seed, rank, 0x2D])

    def __iter__(self):
        while True:
            yield torch.from_numpy(self.points.sample(self.batch, self.rng))
