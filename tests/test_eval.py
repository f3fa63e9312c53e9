"""``fastgan eval``: FID/KID/modes of a checkpoint, real statistics cached, and the same
numbers from one process or two ranks under torchrun."""

import json
import os
import subprocess
import sys

import pytest

from conftest import run_cli, run_fastgan


@pytest.fixture(scope="module")
def shapes_run(tmp_path_factory, cache_dir):
    out = tmp_path_factory.mktemp("eval") / "run"
    r = run_fastgan("train", "--steps", "2", "--width", "8", "--batch", "16", "--out",
                    str(out), "--cache-dir", cache_dir, "--no-progress", "--workers", "0")
    assert r.returncode == 0, r.stderr
    return out


def _result(r) -> dict:
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


ARGS = ["--features", "randconv", "--num-gen", "80", "--num-real", "200", "--batch", "32",
        "--metrics", "fid,kid,modes", "--workers", "0"]


@pytest.mark.slow  # shapes_run trains
def test_eval_reports_and_caches_real_statistics(shapes_run, cache_dir, tmp_path):
    stats = tmp_path / "stats"
    first = _result(run_cli("eval", str(shapes_run), *ARGS, "--cache-dir", str(stats),
                                "--json", str(tmp_path / "e.json")))
    assert first["data"] == "builtin:shapes" and first["num_real"] == 200
    assert first["features"] == "randconv-v1" and first["fid_randconv"] > 0
    assert first["kid_randconv_std"] >= 0 and first["modes_total"] == 16
    assert json.loads((tmp_path / "e.json").read_text()) == first
    # the embedded data were built under the fixture's cache; the statistics go to stats/
    (cached,) = (stats / "fid-stats").iterdir()
    assert cached.suffix == ".npz"
    again = run_cli("eval", str(shapes_run), *ARGS, "--cache-dir", str(stats))
    assert "real statistics from" in again.stderr
    second = _result(again)
    assert second["fid_randconv"] == first["fid_randconv"]
    assert second["kid_randconv"] == first["kid_randconv"]


@pytest.mark.slow
def test_two_ranks_give_the_numbers_of_one(shapes_run, tmp_path):
    one = _result(run_cli("eval", str(shapes_run), *ARGS, "--cache-dir",
                              str(tmp_path / "a")))
    # 3 blocks of 32 latents (the last of 16) dealt to 2 ranks; real images split too
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           "--nproc-per-node=2", "-m", "fastgan", "eval", str(shapes_run), *ARGS,
           "--cache-dir", str(tmp_path / "b")]
    two = _result(subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                                 env={**os.environ, "OMP_NUM_THREADS": "1"}))
    assert two["num_real"] == one["num_real"] == 200
    assert two["fid_randconv"] == pytest.approx(one["fid_randconv"], rel=1e-6)
    assert two["kid_randconv"] == pytest.approx(one["kid_randconv"], rel=1e-5)
    for k in ("modes_covered", "recognisable"):
        assert two[k] == one[k]


@pytest.mark.slow
def test_eval_errors_are_one_line(shapes_run, tmp_path, monkeypatch):
    monkeypatch.delenv("FASTGAN_INCEPTION", raising=False)
    r = run_cli("eval", str(shapes_run), "--num-gen", "8", "--cache-dir", str(tmp_path))
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1
    assert "pytorch-fid/releases/download/fid_weights" in r.stderr
    # mode metrics alone need no feature extractor, hence no Inception weights
    modes = _result(run_cli("eval", str(shapes_run), "--metrics", "modes", "--num-gen",
                                "64", "--cache-dir", str(tmp_path)))
    assert modes["modes_total"] == 16 and "fid" not in modes
    for args, culprit in ((["--metrics", "fid,iss"], "--metrics: unknown iss"),
                          (["--num-gen", "1"], "--num-gen"),
                          (["--data", str(tmp_path / "none")], "no such file"),
                          (["--generator", "both"], "--generator")):
        r = run_cli("eval", str(shapes_run), "--features", "randconv", *args)
        assert r.returncode == 2 and culprit in r.stderr, (args, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    r = run_cli("eval", str(tmp_path / "missing"), "--features", "randconv")
    assert r.returncode == 2 and "missing" in r.stderr


# The tests above train a run and evaluate it in processes of their own (slow); these
# call evaluate() and write_samples() in this process on the checkpoint of an untrained ring
# generator, written as training writes one.

@pytest.fixture
def ring_checkpoint(tmp_path):
    import torch

    from fastgan import models
    from fastgan.train import checkpoint

    g_kw, _ = models.model_kwargs("mlp", res=None, z_dim=16, width=16)
    torch.manual_seed(0)
    G = models.build_generator("mlp", g_kw)
    payload = {"arch": "mlp", "kwargs": g_kw, "kind": "points", "dataset": "ring",
               "z_dim": 16, "state_dict": G.state_dict(), "step": 1}
    run = tmp_path / "run"
    checkpoint.save(run, 1, {"step": 1}, payload, keep=2)
    return run


def test_evaluate_in_process_on_points(ring_checkpoint, tmp_path):
    from fastgan.errors import UserError
    from fastgan.metrics import evaluate

    r = evaluate.evaluate(evaluate.EvalOptions(
        ckpt=str(ring_checkpoint), metrics=("fid", "modes"), num_gen=500, num_real=500,
        device="cpu", workers=0, cache_dir=str(tmp_path / "cache")))
    assert r["data"] == "builtin:ring" and r["features"] == "points" and r["step"] == 1
    assert r["generator"] == "trained" and r["num_real"] == 500
    assert r["fid"] > 0 and r["modes_total"] == 8 and 0 <= r["modes_covered"] <= 8
    assert "kid" not in r
    assert evaluate.parse_metrics("fid, modes,fid") == ("fid", "modes")
    with pytest.raises(UserError, match="--metrics: unknown iss"):
        evaluate.parse_metrics("fid,iss")


def test_sample_in_process_draws_a_scatter(ring_checkpoint, tmp_path):
    from PIL import Image

    from fastgan.errors import UserError
    from fastgan.sample_command import write_samples

    out = write_samples(str(ring_checkpoint), n=16, out=str(tmp_path / "p.png"))
    assert out == tmp_path / "p.png"
    with Image.open(out) as img:
        assert img.width > 0 and img.height > 0
    with pytest.raises(UserError, match="--out: directory"):
        write_samples(str(ring_checkpoint), n=4, out=str(tmp_path / "no" / "p.png"))
