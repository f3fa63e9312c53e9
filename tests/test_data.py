import io
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from fastgan.data import builtin
from fastgan.data.shards import write_shards
from fastgan.data.stream import (ImageBatches, decode_image, image_loader, resolve_data,
                                 shard_urls)
from fastgan.errors import UserError


def test_builtin_shapes_become_shards(cache_dir):
    manifest_path = builtin.builtin_shards("shapes", 32, cache_dir)
    manifest = json.load(open(manifest_path))
    assert manifest["total"] == builtin.SHAPES_COUNT
    assert sum(s["count"] for s in manifest["shards"]) == manifest["total"]
    assert len(manifest["labels"]) == 16 and manifest["resolution"] == 32
    for s in manifest["shards"]:
        assert os.path.getsize(os.path.join(os.path.dirname(manifest_path), s["name"])) > 0
    # built once: a second call returns the same manifest without rewriting
    mtime = os.path.getmtime(manifest_path)
    assert builtin.builtin_shards("shapes", 32, cache_dir) == manifest_path
    assert os.path.getmtime(manifest_path) == mtime


def test_stream_reads_builtin_shards(cache_dir):
    spec = resolve_data("builtin:shapes", 32, cache_dir)
    assert spec.kind == "images" and len(spec.urls) == 8
    ds = ImageBatches(spec.urls, 32, 16, seed=0, rank=0, shuffle=100)
    batches = iter(image_loader(ds, workers=0))
    first = next(batches)
    assert first.shape == (16, 3, 32, 32) and first.dtype == torch.uint8
    assert first.is_contiguous(memory_format=torch.channels_last)
    # what comes out is the dataset: the oracle recognises every image
    modes = builtin.classify_shapes(first.permute(0, 2, 3, 1).numpy())
    assert (modes >= 0).all()
    # deterministic per (seed, rank); a different rank sees a different stream
    again = next(iter(image_loader(ImageBatches(spec.urls, 32, 16, seed=0, rank=0,
                                                shuffle=100), workers=0)))
    other = next(iter(image_loader(ImageBatches(spec.urls, 32, 16, seed=0, rank=1,
                                                shuffle=100), workers=0)))
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_stream_with_workers_resizes_user_shards(tmp_path):
    def samples():
        rng = np.random.default_rng(0)
        for i in range(40):
            img = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)  # not square
            buf = io.BytesIO()
            Image.fromarray(img).save(buf, format="JPEG")
            yield f"img{i:04d}", buf.getvalue(), None

    write_shards(samples(), tmp_path / "set", image_ext="jpg", shard_size=10)
    urls = shard_urls(str(tmp_path / "set"))
    assert len(urls) == 4
    loader = image_loader(ImageBatches(urls, 16, 8, seed=1, rank=0, shuffle=20), workers=2)
    it = iter(loader)
    for _ in range(12):  # more batches than one pass holds: the stream never ends
        b = next(it)
        assert b.shape == (8, 3, 16, 16)


def test_shard_urls_forms_and_errors(tmp_path, cache_dir):
    manifest = builtin.builtin_shards("shapes", 32, cache_dir)
    d = os.path.dirname(manifest)
    assert shard_urls(d) == shard_urls(manifest)
    pattern = os.path.join(d, "shard-{000000..000002}.tar")
    assert len(shard_urls(pattern)) == 3
    with pytest.raises(UserError, match="no such file"):
        shard_urls(os.path.join(d, "shard-{000000..000009}.tar"))
    with pytest.raises(UserError, match="no .tar shards"):
        shard_urls(str(tmp_path))
    with pytest.raises(UserError, match="no such file"):
        shard_urls(str(tmp_path / "missing"))
    assert shard_urls("pipe:cat a.tar") == ["pipe:cat a.tar"]


def test_decode_crops_to_square():
    img = np.zeros((20, 40, 3), np.uint8)
    img[:, 10:30] = 255  # the centre square is white, the sides black
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    out = decode_image(buf.getvalue(), 10)
    assert out.shape == (10, 10, 3) and out.min() > 200


def test_write_shards_rejects_dotted_keys(tmp_path):
    with pytest.raises(ValueError, match="dot"):
        write_shards([("a.b", b"x", None)], tmp_path / "s", image_ext="png", shard_size=2)
    assert not (tmp_path / "s").exists()
