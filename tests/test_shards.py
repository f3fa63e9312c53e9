"""``fastgan shards``: a messy image folder (or zip) becomes shards and a manifest."""

import io
import json
import os
import zipfile

import numpy as np
import pytest
from PIL import Image

from conftest import run_fastgan
from fastgan.data import tar
from fastgan.data.images import decode_image
from fastgan.data.make_shards import ShardOptions, make_shards
from fastgan.errors import UserError

# relative path -> what it is; sorted order gives the keys (the index in this order)
VALID = ["cats/grey.jpg", "cats/palette.png", "cats/rgba.png", "cats/sub/deeper.bmp",
         "dogs/cmyk.jpg", "dogs/deep.png"]
BROKEN = ["dogs/corrupt.jpg", "dogs/empty.jpg", "dogs/fake.png"]
IGNORED = ["notes.txt", "cats/.DS_Store"]


def _save(img: Image.Image, path, **kw):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    img.save(path, **kw)


def make_messy_folder(root) -> None:
    grey = Image.fromarray(np.tile(np.arange(40, dtype=np.uint8) * 6, (30, 1)), "L")
    _save(grey, root / "cats/grey.jpg", quality=95)  # 40x30: not square
    rgba = np.zeros((32, 32, 4), np.uint8)
    rgba[:, 16:] = (0, 0, 255, 255)  # left half fully transparent: shows white
    _save(Image.fromarray(rgba, "RGBA"), root / "cats/rgba.png")
    _save(Image.fromarray(np.full((32, 32, 3), (0, 200, 0), np.uint8)).quantize(4),
          root / "cats/palette.png")
    _save(Image.new("RGB", (24, 24), (250, 250, 0)), root / "cats/sub/deeper.bmp")
    _save(Image.new("CMYK", (32, 32), (0, 255, 255, 0)), root / "dogs/cmyk.jpg", quality=95)
    deep = np.full((32, 32), 128 * 257, np.uint16)  # 16-bit grey, exactly mid-grey
    _save(Image.fromarray(deep), root / "dogs/deep.png")
    good_jpeg = io.BytesIO()
    Image.new("RGB", (64, 64), (1, 2, 3)).save(good_jpeg, format="JPEG")
    (root / "dogs/corrupt.jpg").write_bytes(good_jpeg.getvalue()[:300])
    (root / "dogs/empty.jpg").write_bytes(b"")
    (root / "dogs/fake.png").write_text("not an image at all")
    (root / "notes.txt").write_text("dataset notes")
    (root / "cats/.DS_Store").write_bytes(b"\0\0\0\1Bud1")


def read_shards(out) -> list[dict]:
    manifest = json.loads((out / "manifest.json").read_text())
    samples = []
    for s in manifest["shards"]:
        with open(out / s["name"], "rb") as fh:
            got = list(tar.samples(fh, s["name"]))
        assert len(got) == s["count"]
        samples += got
    return samples


@pytest.mark.slow  # --workers 2: a process pool
def test_shards_from_a_messy_folder(tmp_path):
    src, out = tmp_path / "src", tmp_path / "out"
    make_messy_folder(src)
    r = run_fastgan("shards", str(src), str(out), "--res", "16", "--shard-size", "4",
                    "--workers", "2", "--no-progress")
    assert r.returncode == 0, r.stderr
    assert "wrote 6 images (16x16, jpg q95, 2 classes) in 2 shard(s)" in r.stderr
    assert "skipped 3 unreadable file(s)" in r.stderr and "ignored 2 non-image" in r.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["total"] == 6 and [s["count"] for s in manifest["shards"]] == [4, 2]
    assert manifest["labels"] == ["cats", "dogs"] and manifest["resolution"] == 16
    assert manifest["format"] == "jpg" and manifest["options"]["shard_size"] == 4
    assert manifest["skipped_count"] == 3 and manifest["ignored_count"] == 2
    assert sorted(s["path"] for s in manifest["skipped"]) == BROKEN
    assert all(s["error"] for s in manifest["skipped"])

    order = sorted(VALID + BROKEN)
    samples = read_shards(out)
    assert [s["__key__"] for s in samples] == [f"{order.index(p):08d}" for p in VALID]
    assert [int(s["cls"]) for s in samples] == [0, 0, 0, 0, 1, 1]
    pixels = {p: decode_image(s["jpg"], 16) for p, s in zip(VALID, samples)}
    assert all(px.shape == (16, 16, 3) for px in pixels.values())
    assert np.abs(pixels["dogs/deep.png"].astype(int) - 128).max() <= 3  # scaled, not clipped
    assert pixels["cats/rgba.png"][:, :6].min() >= 245  # transparent -> white
    assert pixels["cats/rgba.png"][:, 10:, 2].min() >= 230
    assert (np.abs(pixels["dogs/cmyk.jpg"][8, 8].astype(int) - (255, 0, 0)) <= 24).all()
    assert (np.abs(pixels["cats/palette.png"][8, 8].astype(int) - (0, 200, 0)) <= 24).all()
    grey = pixels["cats/grey.jpg"]
    assert np.ptp(grey[8, :, 0]) > 60 and np.abs(grey[..., 0].astype(int) - grey[..., 1]).max() <= 3


@pytest.mark.slow  # workers=2: a process pool
def test_shards_are_deterministic_and_zips_work(tmp_path):
    src = tmp_path / "src"
    make_messy_folder(src)
    opts = ShardOptions(res=8, shard_size=3, workers=1)
    one = make_shards(str(src), str(tmp_path / "one"), opts, progress=False)
    make_shards(str(src), str(tmp_path / "two"), ShardOptions(res=8, shard_size=3, workers=2),
                progress=False)
    with zipfile.ZipFile(tmp_path / "photos.zip", "w") as zf:  # wrapped in one folder
        for root, _, files in os.walk(src):
            for f in files:
                path = os.path.join(root, f)
                zf.write(path, "photos/" + os.path.relpath(path, src))
    zipped = make_shards(str(tmp_path / "photos.zip"), str(tmp_path / "zip"), opts,
                         progress=False)
    assert zipped["labels"] == one["labels"] == ["cats", "dogs"]
    assert zipped["skipped_count"] == 3
    for s in one["shards"]:
        data = (tmp_path / "one" / s["name"]).read_bytes()
        assert data == (tmp_path / "two" / s["name"]).read_bytes()
        assert data == (tmp_path / "zip" / s["name"]).read_bytes()


def test_shard_options(tmp_path):
    src = tmp_path / "src"
    make_messy_folder(src)
    kept = make_shards(str(src), str(tmp_path / "kept"), ShardOptions(crop="none"),
                       progress=False)
    assert kept["resolution"] is None  # the images keep their various sizes
    sizes = {Image.open(io.BytesIO(s["jpg"])).size for s in read_shards(tmp_path / "kept")}
    assert (40, 30) in sizes and (24, 24) in sizes
    padded = make_shards(str(src), str(tmp_path / "pad"),
                         ShardOptions(res=20, crop="pad", format="png"), progress=False)
    grey = np.asarray(Image.open(io.BytesIO(read_shards(tmp_path / "pad")[0]["png"])))
    assert padded["resolution"] == 20 and grey.shape == (20, 20, 3)
    assert grey[0].max() <= 8 and grey[10].max() > 100  # black bars above and below
    few = make_shards(str(src), str(tmp_path / "few"),
                      ShardOptions(res=8, format="webp", max_images=2, labels="none"),
                      progress=False)
    assert few["total"] == 2 and few["labels"] is None
    assert all("webp" in s and "cls" not in s for s in read_shards(tmp_path / "few"))


@pytest.mark.parametrize("args, message", [
    (["--res", "16", "--crop", "none"], "--crop none keeps every image's size"),
    (["--format", "gif"], "--format: expected one of jpg, png, webp"),
    (["--quality", "0"], "--quality: must be >= 1"),
    (["--shard-size", "x"], "--shard-size: expected an integer"),
])
def test_bad_shard_options(tmp_path, args, message):
    (tmp_path / "src").mkdir()
    r = run_fastgan("shards", str(tmp_path / "src"), str(tmp_path / "out"), *args)
    assert r.returncode == 2 and message in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_bad_shard_paths(tmp_path):
    src = tmp_path / "src"
    make_messy_folder(src)
    with pytest.raises(UserError, match="no such folder or zip"):
        make_shards(str(tmp_path / "missing"), str(tmp_path / "o"), ShardOptions())
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("x")
    with pytest.raises(UserError, match="exists and is not empty"):
        make_shards(str(src), str(tmp_path / "busy"), ShardOptions())
    (tmp_path / "texts").mkdir()
    (tmp_path / "texts" / "a.txt").write_text("x")
    with pytest.raises(UserError, match="no images"):
        make_shards(str(tmp_path / "texts"), str(tmp_path / "o"), ShardOptions())
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "a.jpg").write_bytes(b"")
    with pytest.raises(UserError, match="none of the 1 images"):
        make_shards(str(broken), str(tmp_path / "o"), ShardOptions())
    assert not (tmp_path / "o").exists()  # nothing half-written
