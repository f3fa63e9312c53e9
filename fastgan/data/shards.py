"""Writing WebDataset tar shards plus a ``manifest.json`` that describes them.

A shard set is a directory ``shard-000000.tar, shard-000001.tar, ...`` and a manifest
listing each shard with its sample count. Every sample is a key (no dots: webdataset
reads dots as extension separators), an encoded image and optionally an integer label.

Writes are atomic: the set is built in a temporary sibling directory and renamed into
place, so a reader (another rank, a later run) sees either nothing or a complete set.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

from .tar import TarWriter

MANIFEST = "manifest.json"


def shard_name(index: int) -> str:
    return f"shard-{index:06d}.tar"


def write_shards(
    samples: Iterable[tuple[str, bytes, int | None]],
    out_dir: str | os.PathLike,
    *,
    image_ext: str,
    shard_size: int,
    info: dict | None = None,
) -> Path:
    """Write ``(key, encoded_image, label)`` samples as shards into ``out_dir``.

    ``out_dir`` must not exist yet; it appears complete or not at all. Returns the path
    of the manifest. ``info`` is merged into the manifest (resolution, label names...)
    once all samples are written, so a producer may fill it while it yields.
    """
    out = Path(out_dir)
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp's 0700 would hide the set from other users
    try:
        shards: list[dict] = []
        writer = None
        count = 0
        for key, data, label in samples:
            if "." in key:
                raise ValueError(f"sample key {key!r} contains a dot")
            if writer is None or count == shard_size:
                if writer is not None:
                    writer.close()
                    shards[-1]["count"] = count
                shards.append({"name": shard_name(len(shards)), "count": 0})
                writer = TarWriter(tmp / shards[-1]["name"])
                count = 0
            sample = {"__key__": key, image_ext: data}
            if label is not None:
                sample["cls"] = str(int(label)).encode()
            writer.write(sample)
            count += 1
        if writer is not None:
            writer.close()
            shards[-1]["count"] = count
        manifest = {
            "shards": shards,
            "total": sum(s["count"] for s in shards),
            "format": image_ext,
            **(info or {}),
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        with open(tmp / MANIFEST, "rb") as fh:  # the shards were synced as they closed
            os.fsync(fh.fileno())
        try:
            os.rename(tmp, out)
        except OSError:
            if not (out / MANIFEST).exists():  # someone else won only if they finished
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out / MANIFEST


def read_manifest(path: str | os.PathLike) -> dict:
    with open(path) as fh:
        return json.load(fh)
