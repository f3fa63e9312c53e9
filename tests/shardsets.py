"""Shard sets for tests: real tar files, written by fastgan's own writer."""

import io
import json
import os

import numpy as np
from PIL import Image

from fastgan.data.shards import MANIFEST, shard_name
from fastgan.data.tar import TarWriter


def image_bytes(i: int, res: int = 8, fmt: str = "PNG") -> bytes:
    """A solid image whose colour encodes ``i``."""
    buf = io.BytesIO()
    Image.fromarray(np.full((res, res, 3), (i % 256, i // 256 % 256, 7), np.uint8)).save(
        buf, format=fmt)
    return buf.getvalue()


def write_uneven_shards(out, sizes, res: int = 8, manifest: bool = True) -> list[str]:
    """Shards of the given sample counts (keys s00000, s00001...); returns all keys."""
    os.makedirs(out, exist_ok=True)
    keys, index = [], 0
    for k, n in enumerate(sizes):
        w = TarWriter(os.path.join(out, shard_name(k)))
        for _ in range(n):
            key = f"s{index:05d}"
            w.write({"__key__": key, "png": image_bytes(index, res), "cls": b"%d" % (index % 3)})
            keys.append(key)
            index += 1
        w.close()
    if manifest:
        with open(os.path.join(out, MANIFEST), "w") as fh:
            json.dump({"shards": [{"name": shard_name(k), "count": n}
                                  for k, n in enumerate(sizes)],
                       "total": sum(sizes), "format": "png", "resolution": res}, fh)
    return keys
