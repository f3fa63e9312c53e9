"""``fastgan shards SRC OUT_DIR``: an image folder or a zip of images -> tar shards.

Sources are listed and sorted once, so keys (the source's index, 8 digits) and shard
contents depend only on the input and the options, not on the number of worker
processes: workers decode and encode, results come back in order, one writer writes.

Labels: when every image sits below a class folder (after any folder that all of them
share, as zips often wrap everything in one), the class folders become labels 0..C-1
in sorted order, and their names go into the manifest.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import sys
import time
import warnings
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

from tqdm import tqdm

from ..errors import UserError
from . import images
from .shards import MANIFEST, write_shards

SKIP_LIST_MAX = 10_000  # the manifest lists this many skipped files; the count is exact


@dataclass(frozen=True)
class ShardOptions:
    res: int | None = None
    crop: str = "center"
    format: str = "jpg"
    quality: int = 95
    shard_size: int = 10_000
    workers: int = 1
    max_images: int | None = None
    labels: str = "auto"

    def validate(self) -> None:
        if self.res is not None and self.res < 1:
            raise UserError(f"--res: must be >= 1, got {self.res}")
        if self.crop not in images.CROPS:
            raise UserError(f"--crop: expected one of {', '.join(images.CROPS)}, "
                            f"got {self.crop!r}")
        if self.crop == "none" and self.res is not None:
            raise UserError("--crop none keeps every image's size: it cannot be "
                            "combined with --res")
        if self.format not in images.WRITE_FORMATS:
            raise UserError(f"--format: expected one of {', '.join(images.WRITE_FORMATS)}, "
                            f"got {self.format!r}")
        if not 1 <= self.quality <= 100:
            raise UserError(f"--quality: must be in 1..100, got {self.quality}")
        if self.shard_size < 1:
            raise UserError(f"--shard-size: must be >= 1, got {self.shard_size}")
        if self.workers < 1:
            raise UserError(f"--workers: must be >= 1, got {self.workers}")
        if self.max_images is not None and self.max_images < 1:
            raise UserError(f"--max-images: must be >= 1, got {self.max_images}")
        if self.labels not in ("auto", "none"):
            raise UserError(f"--labels: expected auto or none, got {self.labels!r}")


# ------------------------------------------------------------------ sources

def _is_image(name: str) -> bool:
    base = name.rsplit("/", 1)[-1]
    return (not base.startswith(".") and "." in base
            and base.rsplit(".", 1)[1].lower() in images.IMAGE_EXTS)


def list_sources(src: str) -> tuple[list[str], int]:
    """Sorted relative paths ('/'-separated) of the images in a folder or zip, and the
    number of other files ignored (hidden files, other extensions, zip folders)."""
    if os.path.isdir(src):
        names = []
        for root, dirs, files in os.walk(src, followlinks=True):  # linked class folders
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            rel = os.path.relpath(root, src)
            names += [f if rel == "." else f"{rel}/{f}".replace(os.sep, "/") for f in files]
    elif zipfile.is_zipfile(src):
        with zipfile.ZipFile(src) as zf:
            names = [n for n in zf.namelist()
                     if not n.endswith("/") and not n.startswith("__MACOSX/")]
    elif os.path.exists(src):
        raise UserError(f"SRC: {src} is neither a folder nor a zip file")
    else:
        raise UserError(f"SRC: no such folder or zip file: {src}")
    found = sorted(n for n in names if _is_image(n))
    return found, len(names) - len(found)


def class_labels(paths: list[str]) -> tuple[list[int] | None, list[str] | None]:
    """Labels from class folders, or (None, None) when the layout has no classes."""
    dirs = [p.split("/")[:-1] for p in paths]
    common = 0
    while dirs and all(len(d) > common for d in dirs) and \
            len({d[common] for d in dirs}) == 1:
        common += 1
    if not dirs or any(len(d) <= common for d in dirs):
        return None, None  # some image has no class folder of its own
    classes = [d[common] for d in dirs]
    names = sorted(set(classes))
    if len(names) < 2:
        return None, None
    index = {n: i for i, n in enumerate(names)}
    return [index[c] for c in classes], names


# ------------------------------------------------------------------ workers

_source: dict = {}


def _init_worker(src: str, opts: ShardOptions) -> None:
    warnings.simplefilter("ignore")  # Pillow's palette/EXIF chatter, once per image
    _source.update(src=src, opts=opts,
                   zip=None if os.path.isdir(src) else zipfile.ZipFile(src))


def _convert(name: str) -> tuple[bytes | None, str | None, tuple[int, int] | None]:
    """(encoded image, None, size) or (None, error, None): never raises."""
    opts: ShardOptions = _source["opts"]
    try:
        if _source["zip"] is not None:
            data = _source["zip"].read(name)
        else:
            with open(os.path.join(_source["src"], name), "rb") as fh:
                data = fh.read()
        img = images.prepare_image(data, opts.res, opts.crop)
        return images.encode_image(img, opts.format, opts.quality), None, img.size
    except Exception as e:  # noqa: BLE001 (any failure of one file is that file's skip)
        return None, f"{type(e).__name__}: {e}" if str(e) else type(e).__name__, None


# ------------------------------------------------------------------ the command

def make_shards(src: str, out_dir: str, opts: ShardOptions, *, progress: bool = True) -> dict:
    """Write the shards and manifest; return the manifest (with timing) as a summary."""
    opts.validate()
    out = Path(out_dir)
    if out.exists():
        if not out.is_dir() or any(out.iterdir()):
            raise UserError(f"OUT_DIR: {out} exists and is not empty")
        out.rmdir()  # write_shards renames a complete set into place
    names, ignored = list_sources(src)
    if not names:
        raise UserError(f"SRC: no images ({', '.join(images.IMAGE_EXTS)}) in {src}")
    labels, label_names = class_labels(names) if opts.labels == "auto" else (None, None)

    skipped: list[dict] = []
    sizes: set[tuple[int, int]] = set()
    info = {"resolution": opts.res, "labels": label_names, "source": os.path.abspath(src),
            "options": asdict(opts), "created_by": "fastgan shards"}
    start = time.perf_counter()
    bar = tqdm(total=len(names), unit="img", disable=not progress, file=sys.stderr,
               dynamic_ncols=True, mininterval=0.5)

    def samples():
        written = 0
        pool = None
        if opts.workers > 1:
            pool = multiprocessing.get_context("spawn").Pool(
                opts.workers, initializer=_init_worker, initargs=(src, opts))
            results = pool.imap(_convert, names, chunksize=8)
        else:
            _init_worker(src, opts)
            results = map(_convert, names)
        try:
            for i, (data, error, size) in enumerate(results):
                bar.update(1)
                if data is None:
                    skipped.append({"path": names[i], "error": error})
                    continue
                sizes.add(size)
                yield f"{i:08d}", data, None if labels is None else labels[i]
                written += 1
                if opts.max_images is not None and written >= opts.max_images:
                    break
        finally:
            if pool is not None:
                pool.terminate()
            bar.close()
        if not written:
            first = skipped[0] if skipped else {"path": "?", "error": "?"}
            raise UserError(f"SRC: none of the {len(names)} images in {src} could be read "
                            f"(first: {first['path']}: {first['error']})")
        if opts.res is None:  # the images kept their size: one square size, or none
            (w, h), = sizes if len(sizes) == 1 else [(0, 1)]
            info["resolution"] = w if w == h else None
        info.update(skipped_count=len(skipped), skipped=skipped[:SKIP_LIST_MAX],
                    ignored_count=ignored)

    try:
        manifest_path = write_shards(samples(), out, image_ext=opts.format,
                                     shard_size=opts.shard_size, info=info)
    except OSError as e:
        raise UserError(f"OUT_DIR: cannot write shards to {out}: {e.strerror or e}") from None
    manifest = json.loads(manifest_path.read_text())
    manifest["seconds"] = time.perf_counter() - start
    manifest["bytes"] = sum((out / s["name"]).stat().st_size for s in manifest["shards"])
    return manifest


def summary_line(manifest: dict, out_dir: str) -> str:
    res = manifest["resolution"]
    size = f"{res}x{res}" if res else "various sizes"
    fmt = manifest["format"] + ("" if manifest["format"] == "png"
                                else f" q{manifest['options']['quality']}")
    labels = manifest["labels"]
    line = (f"fastgan shards: wrote {manifest['total']:,} images ({size}, {fmt}"
            + (f", {len(labels)} classes" if labels else "") + ") in "
            f"{len(manifest['shards'])} shard(s), {manifest['bytes'] / 1e6:.1f} MB, to "
            f"{out_dir} in {manifest['seconds']:.1f} s "
            f"({manifest['total'] / max(manifest['seconds'], 1e-9):.0f} img/s)")
    if manifest["skipped_count"]:
        line += (f"; skipped {manifest['skipped_count']:,} unreadable file(s), listed in "
                 f"{os.path.join(out_dir, MANIFEST)}")
    if manifest["ignored_count"]:
        line += f"; ignored {manifest['ignored_count']:,} non-image file(s)"
    return line
