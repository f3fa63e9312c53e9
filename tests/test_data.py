"""The streaming loader in one process: tar reading, sources, sampling modes, resume,
bad data, pipe: and http:// shards."""

import functools
import http.server
import io
import json
import os
import shutil
import tarfile
import threading

import numpy as np
import pytest
import torch
import webdataset as wds
from PIL import Image

from fastgan.data import builtin, tar
from fastgan.data.images import decode_image
from fastgan.data.shard_reader import exact_ranges
from fastgan.data.shards import write_shards
from fastgan.data.sources import ShardSet, resolve_data, shard_set
from fastgan.data.stream import BatchStream, ImageBatches, make_plan
from fastgan.errors import UserError
from shardsets import image_bytes, write_uneven_shards


def stream(shards, *, res=8, batch=4, workers=0, mode="resampled", seed=0, rank=0, world=1,
           shuffle=10, start=None, epoch_images=None):
    plan = make_plan(shards, mode=mode, world=world, workers=workers, batch=batch,
                     epoch_images=epoch_images)
    return BatchStream(ImageBatches(shards, res, plan, seed=seed, rank=rank, shuffle=shuffle,
                                    start=start))


def take_keys(batches, n: int) -> list[str]:
    keys = []
    for _ in range(n):
        next(batches)
        keys += batches.keys
    return keys


def colour_index(images: torch.Tensor) -> list[int]:
    """Inverse of shardsets.image_bytes: the index each image encodes."""
    px = images[:, :, 0, 0].to(torch.int64)
    return (px[:, 0] + 256 * px[:, 1]).tolist()


# ------------------------------------------------------------------ tar format

def test_tar_reader_matches_webdataset(tmp_path):
    ours = str(tmp_path / "ours.tar")
    theirs = str(tmp_path / "theirs.tar")  # webdataset's writer: PAX headers
    samples = [{"__key__": f"k{i:03d}", "png": image_bytes(i), "cls": b"%d" % i}
               for i in range(5)]
    long_key = "d/" + "x" * 120  # a name past the 100 bytes of a plain header
    samples.append({"__key__": long_key, "png": image_bytes(9), "json": b"{}"})
    w = tar.TarWriter(ours)
    with wds.TarWriter(theirs) as w2:
        for s in samples:
            w.write(s)
            w2.write(s)
    w.close()
    reference = list(wds.DataPipeline(wds.SimpleShardList([theirs]), wds.tarfile_to_samples()))
    for path in (ours, theirs):
        with open(path, "rb") as fh:
            got = list(tar.samples(fh, path))
        assert [g["__key__"] for g in got] == [r["__key__"] for r in reference]
        assert all(g["png"] == r["png"] for g, r in zip(got, reference))
        assert got[-1]["__key__"] == long_key and got[-1]["json"] == b"{}"
        assert tar.count_samples(path) == 6
        with open(path, "rb") as fh:  # a window, skipping the data before it
            assert [g["__key__"] for g in tar.samples(fh, path, 2, 4)] == ["k002", "k003"]
    # the writer is deterministic, and tarfile reads what it writes
    w = tar.TarWriter(tmp_path / "again.tar")
    for s in samples:
        w.write(s)
    w.close()
    assert open(ours, "rb").read() == open(tmp_path / "again.tar", "rb").read()
    assert len(tarfile.open(ours).getnames()) == 12


def test_tar_reader_reports_truncation_and_garbage(tmp_path):
    path = tmp_path / "cut.tar"
    w = tar.TarWriter(path)
    rng = np.random.default_rng(0)
    for i in range(4):
        w.write({"__key__": f"k{i}", "bin": rng.bytes(3000)})
    w.close()
    path.write_bytes(path.read_bytes()[:8000])  # in the third member's data
    got = []
    with pytest.raises(tar.TarError, match="truncated"):
        with open(path, "rb") as fh:
            for s in tar.samples(fh, str(path)):
                got.append(s["__key__"])
    assert got == ["k0", "k1"]  # what came before the cut was delivered
    (tmp_path / "junk.tar").write_bytes(b"this is not a tar file" * 100)
    with pytest.raises(tar.TarError, match="not a tar"):
        with open(tmp_path / "junk.tar", "rb") as fh:
            list(tar.samples(fh, "junk"))


# ------------------------------------------------------------------ sources

@pytest.mark.slow  # builds the 16,384 shapes (10-15 s)
def test_builtin_shapes_become_shards(cache_dir):
    manifest_path = builtin.builtin_shards("shapes", 32, cache_dir)
    manifest = json.load(open(manifest_path))
    assert manifest["total"] == builtin.SHAPES_COUNT
    assert sum(s["count"] for s in manifest["shards"]) == manifest["total"]
    assert len(manifest["labels"]) == 16 and manifest["resolution"] == 32
    mtime = os.path.getmtime(manifest_path)  # built once
    assert builtin.builtin_shards("shapes", 32, cache_dir) == manifest_path
    assert os.path.getmtime(manifest_path) == mtime


@pytest.mark.slow  # the built shapes too
def test_shard_set_forms_and_errors(tmp_path, cache_dir):
    manifest = builtin.builtin_shards("shapes", 32, cache_dir)
    d = os.path.dirname(manifest)
    full = shard_set(d)
    assert full.urls == shard_set(manifest).urls and len(full.urls) == 8
    assert full.total == builtin.SHAPES_COUNT and full.resolution == 32
    pattern = os.path.join(d, "shard-{000000..000002}.tar")
    counted = shard_set(pattern, count=True)  # no manifest: counted from the tar headers
    assert len(counted.urls) == 3 and counted.counts == [s for s in full.counts[:3]]
    assert shard_set(pattern).counts is None
    with pytest.raises(UserError, match="no such file"):
        shard_set(os.path.join(d, "shard-{000000..000009}.tar"))
    with pytest.raises(UserError, match="no .tar shards"):
        shard_set(str(tmp_path))
    with pytest.raises(UserError, match="no such file"):
        shard_set(str(tmp_path / "missing"))
    assert shard_set("pipe:cat a.tar").urls == ["pipe:cat a.tar"]
    with pytest.raises(UserError, match="needs the sample count"):
        make_plan(shard_set("pipe:cat a.tar"), mode="exact", world=1, workers=0, batch=4)


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


# ------------------------------------------------------------------ the stream

@pytest.mark.slow  # the built shapes too
def test_stream_reads_builtin_shards(cache_dir):
    spec = resolve_data("builtin:shapes", 32, cache_dir)
    first = next(stream(spec.shards, res=32, batch=16, shuffle=100))
    assert first.shape == (16, 3, 32, 32) and first.dtype == torch.uint8
    assert first.is_contiguous(memory_format=torch.channels_last)
    modes = builtin.classify_shapes(first.permute(0, 2, 3, 1).numpy())
    assert (modes >= 0).all()  # what comes out is the dataset: the oracle knows it
    again = next(stream(spec.shards, res=32, batch=16, shuffle=100))
    other = next(stream(spec.shards, res=32, batch=16, shuffle=100, rank=1, world=2))
    assert torch.equal(first, again)  # deterministic per (seed, rank)
    assert not torch.equal(first, other)


def test_stream_with_workers_resizes_user_shards(tmp_path):
    def samples():
        rng = np.random.default_rng(0)
        for i in range(40):
            img = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)  # not square
            buf = io.BytesIO()
            Image.fromarray(img).save(buf, format="JPEG")
            yield f"img{i:04d}", buf.getvalue(), 1

    write_shards(samples(), tmp_path / "set", image_ext="jpg", shard_size=10)
    batches = stream(shard_set(str(tmp_path / "set")), res=16, batch=8, workers=2, shuffle=20)
    for _ in range(12):  # more batches than the data holds: epochs follow each other
        b = next(batches)
        assert b.shape == (8, 3, 16, 16)
        assert batches.labels == [1] * 8
    assert batches.epoch == 2 and batches.plan.batches_per_epoch == 6


def test_exact_epoch_sees_every_sample_once(tmp_path):
    keys = write_uneven_shards(tmp_path / "s", [3, 11, 7, 1, 9, 5, 13])
    shards = shard_set(str(tmp_path / "s"))
    # the ranges of the slots tile the dataset, in an order that changes per epoch
    for epoch in (0, 1):
        covered = [(i, a, b) for slot in range(4)
                   for i, a, b in exact_ranges(shards.counts, seed=0, epoch=epoch, slots=4,
                                               slot=slot)]
        assert sum(b - a for _, a, b in covered) == len(keys)
    batches = stream(shards, mode="exact", workers=2, batch=4)
    seen = []
    for _ in range(batches.plan.batches_per_epoch):
        images = next(batches)
        seen += batches.keys
        assert colour_index(images) == [int(k[1:]) for k in batches.keys]
    assert batches.epoch == 1 and batches.batch == 0
    assert set(seen) == set(keys)
    assert len(seen) - len(keys) == batches.skip_counts()[2] <= 2 * 4  # padding only


@pytest.mark.parametrize("mode", ["exact", "resampled"])
def test_resume_continues_exactly(tmp_path, mode):
    write_uneven_shards(tmp_path / "s", [5, 9, 4, 8])
    shards = shard_set(str(tmp_path / "s"))
    straight = stream(shards, mode=mode, workers=2, batch=3, seed=5)
    assert straight.plan.batches_per_epoch == 10  # 26 samples, 2 workers x 5 batches of 3
    for _ in range(13):  # odd: the next batch is the second worker's; mid-epoch
        next(straight)
    state = json.loads(json.dumps(straight.state_dict()))  # as a checkpoint keeps it
    assert (state["epoch"], state["batch"], state["rotate"]) == (1, 3, 1)
    expected = []
    for _ in range(8):  # across the next epoch boundary too
        expected.append((next(straight).clone(), list(straight.keys)))
    resumed = stream(shards, mode=mode, workers=2, batch=3, seed=5, start=state)
    for images, keys in expected:
        assert torch.equal(next(resumed), images)
        assert resumed.keys == keys
    assert resumed.state_dict() == straight.state_dict()


# ------------------------------------------------------------------ bad data

def _bad_shard_set(tmp_path) -> ShardSet:
    good = tmp_path / "good.tar"
    w = tar.TarWriter(good)
    for i in range(20):
        w.write({"__key__": f"g{i:03d}", "png": image_bytes(i)})
    w.close()
    mixed = tmp_path / "mixed.tar"
    w = tar.TarWriter(mixed)
    w.write({"__key__": "corrupt", "jpg": image_bytes(1, fmt="JPEG")[:40]})
    w.write({"__key__": "noimage", "xyz": b"what is this"})
    for i in range(5):
        w.write({"__key__": f"m{i:03d}", "png": image_bytes(100 + i)})
    w.close()
    cut = tmp_path / "cut.tar"
    shutil.copy(good, cut)
    cut.write_bytes(cut.read_bytes()[:3000])
    (tmp_path / "empty.tar").write_bytes(b"")
    urls = [str(good), str(mixed), str(cut), str(tmp_path / "empty.tar"),
            "http://127.0.0.1:9/unreachable.tar"]
    return ShardSet(urls)


def test_bad_data_is_skipped_and_counted(tmp_path):
    batches = stream(_bad_shard_set(tmp_path), batch=8, epoch_images=400)
    for _ in range(60):
        images = next(batches)
        assert images.shape == (8, 3, 8, 8)
    samples, shards, padded = batches.skip_counts()
    assert samples >= 2 and shards >= 3 and padded == 0
    assert "corrupt" not in batches.keys and "noimage" not in batches.keys


def test_unreadable_shard_list_is_one_clear_error(tmp_path):
    for i in range(3):
        (tmp_path / f"junk{i}.tar").write_bytes(b"not a tar" * 200)
    w = tar.TarWriter(tmp_path / "texts.tar")
    w.write({"__key__": "a", "jpg": b"not an image"})
    w.close()
    for urls in ([str(tmp_path / f"junk{i}.tar") for i in range(3)],
                 [str(tmp_path / "junk0.tar"), str(tmp_path / "texts.tar")]):
        for workers in (0, 2):
            with pytest.raises(UserError, match="gives a readable image"):
                next(stream(ShardSet(urls), workers=workers))


# ------------------------------------------------------------------ remote shards

def test_pipe_shards(tmp_path):
    keys = write_uneven_shards(tmp_path / "s", [6, 4])
    urls = [f"pipe:cat {tmp_path / 's' / n}" for n in ("shard-000000.tar", "shard-000001.tar")]
    batches = stream(ShardSet(urls, [6, 4]), mode="exact", batch=5)
    assert sorted(take_keys(batches, 2)) == keys


@pytest.fixture
def http_root(tmp_path):
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield tmp_path, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_http_shards(http_root):
    root, url = http_root
    keys = write_uneven_shards(root / "s", [7, 2, 5])
    shards = shard_set(f"{url}/s/manifest.json")  # counts from the manifest over http
    assert shards.counts == [7, 2, 5] and shards.urls[0] == f"{url}/s/shard-000000.tar"
    batches = stream(shards, mode="exact", batch=7, workers=2)
    assert sorted(take_keys(batches, 2)) == keys
    pattern = shard_set(f"{url}/s/shard-{{000000..000002}}.tar")
    assert len(pattern.urls) == 3
    assert next(stream(pattern, batch=4)).shape == (4, 3, 8, 8)


def test_exact_with_fewer_shards_than_slots(tmp_path):
    """1 shard for 2 ranks x 2 workers: the slots share it, each reading its own range."""
    keys = write_uneven_shards(tmp_path / "s", [10])
    shards = shard_set(str(tmp_path / "s"))
    seen, counts = [], []
    for rank in range(2):
        batches = stream(shards, mode="exact", workers=2, batch=2, rank=rank, world=2)
        counts.append(batches.plan.batches_per_epoch)
        seen += take_keys(batches, batches.plan.batches_per_epoch)
    assert counts == [4, 4] and set(seen) == set(keys) and len(seen) == 16
