"""End-to-end: fastgan train and fastgan sample as a user runs them."""

import json

import pytest
from PIL import Image

from conftest import run_cli, run_fastgan

EXPECTED_KEYS = {"step", "kimg", "loss_D", "loss_G", "D(x)", "D(G(z))", "img_s", "elapsed_s"}


@pytest.mark.slow
def test_train_shapes_then_sample(tmp_path, cache_dir):
    run = tmp_path / "run"
    r = run_fastgan("train", "--steps", "12", "--batch", "16", "--width", "8",
                    "--log-every", "5", "--sample-every", "10", "--ckpt-every", "5",
                    "--keep-ckpts", "2", "--metric-samples", "64", "--no-progress",
                    "--out", str(run), "--cache-dir", cache_dir)
    assert r.returncode == 0, r.stderr
    assert json.loads((run / "config.json").read_text())["loop"]["steps"] == 12
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [rec["step"] for rec in records] == [5, 10, 12]
    for rec in records:
        assert EXPECTED_KEYS <= rec.keys()
        assert {"modes_covered", "modes_total", "recognisable", "mode_kl"} <= rec.keys()
        assert 0.0 <= rec["D(x)"] <= 1.0 and 0.0 <= rec["D(G(z))"] <= 1.0
        assert rec["img_s"] > 0
    assert (run / "samples" / "step-00000010.png").exists()
    assert Image.open(run / "samples" / "final.png").size[0] > 64
    ckpts = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert ckpts == ["step-00000010", "step-00000012"]  # keep 2; the final one included
    assert "modes:" in r.stderr and "final.png" in r.stderr  # the summary

    grid = tmp_path / "grid.png"
    r = run_cli("sample", str(run), "--n", "16", "--out", str(grid))
    assert r.returncode == 0, r.stderr
    img = Image.open(grid)
    assert img.size == (2 * (4 * 34 + 2),) * 2  # 4x4 grid of 32px + 2px padding, x2

    # the same run directory is never silently overwritten: --resume none refuses it,
    # the default (auto) continues it: here it is already past the 2 steps asked for
    common = ("--batch", "16", "--width", "8", "--out", str(run), "--cache-dir", cache_dir)
    r = run_fastgan("train", "--steps", "2", "--resume", "none", *common)
    assert r.returncode == 2 and "already holds a run" in r.stderr
    r = run_fastgan("train", "--steps", "2", *common)
    assert r.returncode == 0 and "nothing to do" in r.stderr, r.stderr
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ckpts
    # continuing it with another architecture is refused, naming the difference
    r = run_fastgan("train", "--steps", "20", *common[:2], "--width", "16", *common[4:])
    assert r.returncode == 2 and "--width: now 16, checkpoint 8" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_train_ring_mlp(tmp_path):
    run = tmp_path / "ring"
    r = run_fastgan("train", "--data", "builtin:ring", "--steps", "50", "--log-every", "25",
                    "--no-progress", "--out", str(run))
    assert r.returncode == 0, r.stderr
    rec = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert rec["modes_total"] == 8 and "high_quality" in rec
    r = run_cli("sample", str(run / "checkpoints"), "--out", str(tmp_path / "p.png"))
    assert r.returncode == 2  # not a run or checkpoint directory
    r = run_cli("sample", str(run), "--out", str(tmp_path / "p.png"))
    assert r.returncode == 0 and (tmp_path / "p.png").exists()


@pytest.mark.slow
def test_train_on_user_jpeg_shards(tmp_path):
    """User data: JPEG shards at another resolution, read through a brace pattern."""
    import io

    from fastgan.data import builtin
    from fastgan.data.shards import write_shards

    def samples():
        for i in range(48):
            image, _ = builtin.shapes_sample(i, 64)
            buf = io.BytesIO()
            Image.fromarray(image).save(buf, format="JPEG", quality=90)
            yield f"user{i:04d}", buf.getvalue(), None

    write_shards(samples(), tmp_path / "shards", image_ext="jpg", shard_size=16)
    run = tmp_path / "run"
    pattern = str(tmp_path / "shards" / "shard-{000000..000002}.tar")
    r = run_fastgan("train", "--data", pattern, "--res", "16", "--steps", "4", "--batch", "8",
                    "--width", "4", "--log-every", "2", "--no-progress", "--out", str(run))
    assert r.returncode == 0, r.stderr
    rec = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert rec["step"] == 4 and "modes_covered" not in rec  # no oracle for user data
    assert Image.open(run / "samples" / "final.png").size == (2 * (8 * 18 + 2),) * 2


@pytest.mark.slow
def test_train_through_bad_data_reports_skips(tmp_path):
    """A truncated shard and a corrupt image: training goes on, and says what it skipped."""
    from fastgan.data import tar
    from shardsets import write_uneven_shards

    write_uneven_shards(tmp_path / "shards", [12, 12, 12], res=16)
    shards = tmp_path / "shards"
    cut = shards / "shard-000001.tar"
    cut.write_bytes(cut.read_bytes()[:5000])  # truncated in the middle of a member
    bad = tar.TarWriter(shards / "shard-000003.tar")
    bad.write({"__key__": "corrupt", "png": b"\x89PNG\r\n\x1a\n" + b"\0" * 50})
    bad.close()
    manifest = json.loads((shards / "manifest.json").read_text())
    manifest["shards"].append({"name": "shard-000003.tar", "count": 1})
    (shards / "manifest.json").write_text(json.dumps(manifest))
    run = tmp_path / "run"
    r = run_fastgan("train", "--data", str(shards), "--steps", "16", "--batch", "8",
                    "--width", "4", "--log-every", "8", "--workers", "0", "--no-progress",
                    "--out", str(run))
    assert r.returncode == 0, r.stderr
    rec = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert rec["step"] == 16 and rec["data_skipped_samples"] >= 1
    assert rec["data_skipped_shards"] >= 1
    assert "skipped" in r.stderr and "data: skipped" in r.stderr
