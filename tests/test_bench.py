"""``fastgan bench data`` runs end to end and reports what it promises (no speed is
asserted here: these machines are too noisy; the ratios are for the reader)."""

import json

from conftest import run_fastgan


def test_bench_data_synthetic(tmp_path):
    out = tmp_path / "bench.json"
    r = run_fastgan("bench", "data", "--synthetic", "96", "--source-res", "48", "--res", "16",
                    "--batch", "8", "--workers", "1", "--seconds", "0.5", "--max-images",
                    "64", "--json", str(out))
    assert r.returncode == 0, r.stderr
    for row in ("fastgan loader", "folder DataLoader", "decode limit"):
        assert row in r.stdout
    result = json.loads(out.read_text())
    for key in ("loader_img_s", "folder_img_s", "limit_img_s"):
        assert result[key] > 0
    assert result["folder_image_size"] == [48, 48] and result["res"] == 16
    assert result["shard_image_size"] == [16, 16]  # written at the training resolution
    assert abs(result["loader_vs_folder"] - result["loader_img_s"] / result["folder_img_s"]) < 1e-9


def test_bench_data_on_given_shards(tmp_path):
    from shardsets import write_uneven_shards

    write_uneven_shards(tmp_path / "s", [20, 20])
    r = run_fastgan("bench", "data", "--data", str(tmp_path / "s"), "--res", "8", "--batch",
                    "4", "--workers", "0", "--seconds", "0.3")
    assert r.returncode == 0, r.stderr
    assert "shards of 8x8, folder of 8x8 -> 8x8" in r.stdout
    r = run_fastgan("bench", "data", "--data", str(tmp_path / "s"), "--synthetic", "5")
    assert r.returncode == 2 and "give --data SHARDS or --synthetic N" in r.stderr
