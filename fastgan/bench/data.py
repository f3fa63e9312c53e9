"""``fastgan bench data``: images/s of the fastgan loader, beside two yardsticks
measured in the same run on the same images:

* **folder**: the classic PyTorch-examples pipeline (the DCGAN example's ImageFolder):
  one file per image, a DataLoader with workers, per image a PIL decode, a resize of
  the shorter side, a centre crop, conversion to a normalised float tensor, and
  default collation (float32 batches, four times the bytes of uint8 ones);
* **limit**: what the cores can decode: one process decoding the same encoded bytes
  from memory with the loader's own decode, times the number of cores.

Without ``--folder`` the shards' images are written out as files to a temporary
folder. ``--synthetic N`` makes the sources too: N photo-like JPEGs (1/f noise, whose
spectrum is that of natural images, so they compress and decode like photographs) of
``--source-res``, and shards of them at the training resolution, as
``fastgan shards --res`` makes them: the way to prepare data, since the loader then
decodes small JPEGs while the folder pipeline decodes the sources.
"""

from __future__ import annotations

import io
import itertools
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..data import images, tar
from ..data.make_shards import ShardOptions, list_sources, make_shards
from ..data.sources import shard_set
from ..data.stream import BatchStream, ImageBatches, make_plan
from ..errors import UserError
from . import options_from_args
from .meter import ROUNDS, Meter


@dataclass
class DataBenchOptions:
    data: str | None = None
    folder: str | None = None
    synthetic: int | None = None
    source_res: int = 256
    res: int = 64
    batch: int = 64
    workers: int = 2
    seconds: float = 10.0
    max_images: int = 4000
    json: str | None = None


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


# ------------------------------------------------------------------ sources

def synthetic_photo(rng: np.random.Generator, res: int) -> np.ndarray:
    """A res x res RGB image with a 1/f spectrum: octaves of smooth noise."""
    img = np.zeros((res, res, 3), np.float32)
    octave = 1
    while 2 ** octave <= res:
        n = 2 ** octave
        field = rng.normal(size=(n, n, 3)).astype(np.float32)
        field[..., 1:] = 0.6 * field[..., :1] + 0.4 * field[..., 1:]  # correlated colours
        small = Image.fromarray((field * 40 + 128).clip(0, 255).astype(np.uint8))
        img += (np.asarray(small.resize((res, res), Image.BICUBIC), np.float32) - 128) \
            / octave ** 0.7
        octave += 1
    return (img / 2 + 128).clip(0, 255).astype(np.uint8)


def write_synthetic(folder: Path, n: int, res: int) -> None:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(synthetic_photo(rng, res)).save(folder / f"{i:06d}.jpg", quality=90)


def encoded_images(urls: list[str], limit: int) -> list[tuple[str, bytes]]:
    """(extension, bytes) of the first ``limit`` images of the shards."""
    out = []
    for url in urls:
        with open(url, "rb") as fh:
            for sample in tar.samples(fh, url):
                ext = images.image_member(sample)
                if ext is not None:
                    out.append((ext, sample[ext]))
                    if len(out) == limit:
                        return out
    return out


# ------------------------------------------------------------------ the three pipelines

class FolderImages(torch.utils.data.Dataset):
    """The classic pipeline: ImageFolder + Resize + CenterCrop + ToTensor + Normalize."""

    def __init__(self, root: str, res: int):
        self.paths = [os.path.join(root, p) for p in list_sources(root)[0]]
        self.res = res

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        with open(self.paths[i], "rb") as fh:
            img = Image.open(fh).convert("RGB")
        w, h = img.size
        scale = self.res / min(w, h)
        img = img.resize((max(self.res, round(w * scale)), max(self.res, round(h * scale))),
                         Image.BILINEAR)
        img = images.center_square(img)
        x = torch.from_numpy(np.array(img)).permute(2, 0, 1).float().div_(255)
        return x.sub_(0.5).div_(0.5)


PREFETCH = 4  # batches per worker, for both loaders


def _endless(loader):
    while True:
        yield from loader


def fastgan_batches(data: str, res: int, workers: int, batch: int):
    """The fastgan loader over local shards, endless: uint8 batches, as training gets them."""
    shards = shard_set(data, count=True)
    plan = make_plan(shards, mode="resampled", world=1, workers=workers, batch=batch)
    return BatchStream(ImageBatches(shards, res, plan, seed=0, rank=0))


def folder_batches(folder: str, res: int, workers: int, batch: int):
    """The classic folder DataLoader, endless: normalised float batches."""
    dataset = FolderImages(folder, res)
    if len(dataset) < batch:
        raise UserError(f"--folder: {len(dataset)} images in {folder}, fewer than a batch")
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch, shuffle=True, num_workers=workers,
        persistent_workers=workers > 0, drop_last=True,
        prefetch_factor=PREFETCH if workers else None)
    return _endless(loader)


def loader_meter(opts: DataBenchOptions, data: str) -> Meter:
    it = fastgan_batches(data, opts.res, opts.workers, opts.batch)
    return Meter(lambda: len(next(it)), drain=PREFETCH * opts.workers + 2)


def folder_meter(opts: DataBenchOptions, folder: str) -> Meter:
    it = folder_batches(folder, opts.res, opts.workers, opts.batch)
    return Meter(lambda: len(next(it)), drain=PREFETCH * opts.workers + 2)


def limit_meter(encoded: list[tuple[str, bytes]], res: int, chunk: int) -> Meter:
    """The loader's own decode of the same bytes, in this one process."""
    blobs = itertools.cycle([data for _, data in encoded])

    def take() -> int:
        for data in itertools.islice(blobs, chunk):
            images.decode_image(data, res)
        return chunk

    return Meter(take, drain=0)


# ------------------------------------------------------------------ the command

def run(opts: DataBenchOptions) -> dict:
    if (opts.data is None) == (opts.synthetic is None):
        raise UserError("bench data: give --data SHARDS or --synthetic N")
    for name in ("res", "batch", "max_images", "source_res"):
        if getattr(opts, name) < 1:
            raise UserError(f"--{name.replace('_', '-')}: must be >= 1")
    if opts.workers < 0 or opts.seconds <= 0:
        raise UserError("--workers must be >= 0 and --seconds > 0")
    torch.set_num_threads(1)  # the main process only receives; workers do the work
    with tempfile.TemporaryDirectory(prefix="fastgan-bench-data-") as tmp:
        data, folder = opts.data, opts.folder
        if opts.synthetic is not None:
            folder = str(Path(tmp) / "images")
            write_synthetic(Path(folder), opts.synthetic, opts.source_res)
            data = str(Path(tmp) / "shards")
            make_shards(folder, data, ShardOptions(res=opts.res, workers=cores(),
                                                   shard_size=1000), progress=False)
        urls = shard_set(data).urls
        if any(u.startswith(("http://", "https://", "pipe:")) for u in urls):
            raise UserError("bench data: --data must be local shards")
        encoded = encoded_images(urls, opts.max_images)
        if not encoded:
            raise UserError(f"--data: no images in {data}")
        if folder is None:
            folder = str(Path(tmp) / "images")
            os.makedirs(folder)
            for i, (ext, blob) in enumerate(encoded):
                Path(folder, f"{i:08d}.{ext}").write_bytes(blob)
        elif not os.path.isdir(folder):
            raise UserError(f"--folder: no such folder: {folder}")
        with Image.open(io.BytesIO(encoded[0][1])) as first:
            shard_size = first.size
        first_file = os.path.join(folder, list_sources(folder)[0][0])
        with Image.open(first_file) as first:
            folder_size = first.size

        n_cores = cores()
        meters = {"loader": loader_meter(opts, data), "folder": folder_meter(opts, folder),
                  "limit": limit_meter(encoded, opts.res, opts.batch)}
        for meter in meters.values():  # workers started, caches warm
            meter.measure(0.5)
            meter.reset()
        for _ in range(ROUNDS):
            for meter in meters.values():
                meter.measure(opts.seconds / ROUNDS)
        per_core = meters["limit"].rate
        result = {
            "loader_img_s": meters["loader"].rate,
            "folder_img_s": meters["folder"].rate,
            "limit_img_s": per_core * n_cores,
            "limit_per_core_img_s": per_core,
            "cores": n_cores, "workers": opts.workers, "batch": opts.batch,
            "res": opts.res, "shard_image_size": list(shard_size),
            "folder_image_size": list(folder_size),
            "data": opts.data or f"synthetic:{opts.synthetic}",
        }
    result["loader_vs_folder"] = result["loader_img_s"] / result["folder_img_s"]
    result["loader_of_limit"] = result["loader_img_s"] / result["limit_img_s"]
    print(table(result))
    if opts.json:
        Path(opts.json).write_text(json.dumps(result, indent=2) + "\n")
    return result


def table(r: dict) -> str:
    (sw, sh), (fw, fh) = r["shard_image_size"], r["folder_image_size"]
    rows = [("fastgan loader", r["loader_img_s"]),
            ("folder DataLoader (classic)", r["folder_img_s"]),
            (f"decode limit ({r['cores']} cores)", r["limit_img_s"])]
    lines = [f"fastgan bench data: {r['data']}: shards of {sw}x{sh}, folder of {fw}x{fh} "
             f"-> {r['res']}x{r['res']}, batch {r['batch']}, {r['workers']} worker(s) each",
             f"{'':30s}{'img/s':>9s}{'vs folder':>11s}{'of limit':>10s}"]
    for name, v in rows:
        lines.append(f"{name:30s}{v:9.0f}{v / r['folder_img_s']:10.2f}x"
                     f"{100 * v / r['limit_img_s']:9.0f}%")
    return "\n".join(lines)


def main_args(sub) -> None:
    p = sub.add_parser("data", help="data loader throughput against yardsticks",
                       description="Images/s of the fastgan loader beside the classic "
                       "PyTorch folder pipeline (a file per image, PIL decode, resize, centre "
                       "crop) and the decode limit (the loader's decode of the same bytes, "
                       "one process, times the cores), measured in turns in one run.")
    p.add_argument("--data", help="local shards (a directory, manifest or pattern)")
    p.add_argument("--folder", help="the same images as files (default: written out from "
                   "the shards to a temporary folder)")
    p.add_argument("--synthetic", metavar="N",
                   help="make N synthetic photo-like JPEG sources and shards of them")
    p.add_argument("--source-res", default=256,
                   help="size of the synthetic sources (default: 256)")
    p.add_argument("--res", default=64, help="training resolution (default: 64)")
    p.add_argument("--batch", default=64, help="batch size (default: 64)")
    p.add_argument("--workers", default=2, help="DataLoader workers (default: 2)")
    p.add_argument("--seconds", type=float, default=10.0,
                   help="measuring time per pipeline, in 3 turns (default: 10)")
    p.add_argument("--max-images", default=4000,
                   help="images decoded for the limit and written to the folder "
                   "(default: 4000)")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")


def from_args(args) -> DataBenchOptions:
    return options_from_args(DataBenchOptions, args)

