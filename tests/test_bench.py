"""``fastgan bench`` runs end to end and reports what it promises (no speed is
asserted here: these machines are too noisy; the ratios are for the reader)."""

import json
import math

import pytest
import torch

from conftest import run_cli, run_fastgan
from fastgan.errors import UserError


@pytest.mark.slow  # loader worker processes, ~4-8 s
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
    assert 0 < result["loader_vs_folder"] < math.inf  # a ratio was measured, not 0 or inf/nan


@pytest.mark.slow  # loader worker processes, ~5-10 s
def test_bench_data_on_given_shards(tmp_path):
    from shardsets import write_uneven_shards

    write_uneven_shards(tmp_path / "s", [20, 20])
    r = run_fastgan("bench", "data", "--data", str(tmp_path / "s"), "--res", "8", "--batch",
                    "4", "--workers", "0", "--seconds", "0.3")
    assert r.returncode == 0, r.stderr
    assert "shards of 8x8, folder of 8x8 -> 8x8" in r.stdout
    r = run_fastgan("bench", "data", "--data", str(tmp_path / "s"), "--synthetic", "5")
    assert r.returncode == 2 and "give --data SHARDS or --synthetic N" in r.stderr


def test_bench_data_in_process(tmp_path):
    """``bench data``'s measurement itself, briefly and in this process (no loader
    workers): every pipeline measured, the folder's synthetic photos resized."""
    from fastgan.bench import data as bd
    from shardsets import write_uneven_shards

    write_uneven_shards(tmp_path / "s", [20, 20])
    bd.write_synthetic(tmp_path / "photos", 8, 24)
    threads = torch.get_num_threads()
    try:
        r = bd.run(bd.DataBenchOptions(data=str(tmp_path / "s"), folder=str(tmp_path / "photos"),
                                       res=8, batch=4, workers=0, seconds=0.05))
    finally:
        torch.set_num_threads(threads)  # run() sets one thread for the whole process
    for key in ("loader_img_s", "folder_img_s", "limit_img_s"):
        assert r[key] > 0, key
    assert 0 < r["loader_vs_folder"] < math.inf
    assert r["shard_image_size"] == [8, 8] and r["folder_image_size"] == [24, 24]
    assert "fastgan loader" in bd.table(r)


def test_bench_step_in_process_on_points():
    """``bench step``'s measurement itself, briefly and in this process, on the 2-D MLP:
    both steps measured, and no host read of a device value per step."""
    from fastgan.bench import step

    r = step.run(step.StepBenchOptions(arch="mlp", batch=16, width=16, seconds=0.05,
                                       workers=0))
    assert r["img_s"] > 0 and r["baseline_img_s"] > 0 and 0 < r["speedup"] < math.inf
    assert r["strategy"] == "none" and r["world"] == 1
    assert r["syncs_per_step"] == 0 and r["ops_per_step"] > 0
    assert "baseline (classic eager step" in step.table(r)


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU, launch/gpu_check.sh runs it")
def test_bench_kernels_refuses_cpu():
    r = run_cli("bench", "kernels")
    assert r.returncode == 2
    assert r.stderr.strip() == ("fastgan bench kernels: error: kernel timings need a CUDA "
                                "GPU (Triton timings under TRITON_INTERPRET on a CPU mean "
                                "nothing)")


def test_bench_kernels_measures_every_op_and_pass():
    """The benchmark's own code, on CPU tensors through the interpreter, with a wall-clock
    timer in place of do_bench (which needs CUDA) and without torch.compile: what
    launch/gpu_check.sh will run must not fail for a typo."""
    import time

    from fastgan.bench import kernels as bk

    def timer(fn):
        start = time.perf_counter()
        fn()
        return (time.perf_counter() - start) * 1e3

    rows = bk.bench_bias_act((2, 3, 4, 4), torch.float32, "channels_last", 100.0,
                             device="cpu", timer=timer, compiled=False)
    rows += bk.bench_losses(8, device="cpu", timer=timer, compiled=False)
    assert {(r["op"], r["impl"], r["pass"]) for r in rows} == {
        (op, impl, phase)
        for op in ("bias_act lrelu", "GAN D-loss step", "RpGAN D-loss step", "bce_with_logits")
        for impl in ("triton", "eager") for phase in ("forward", "backward",
                                                      "forward+backward")}
    text = bk.table({"device": "cpu", "copy_gb_s": 100.0, "rows": rows})
    assert "bias_act lrelu [2, 3, 4, 4] channels_last forward+backward" in text
    assert "GAN D-loss step [8, 1] forward" in text
    assert "RpGAN D-loss step [8, 1] forward+backward" in text


@pytest.mark.slow  # trains through both steps and both loaders (~40 s)
def test_bench_step_with_whole_iterations(tmp_path):
    """fastgan's step and the classic step, and both fed by their loaders, in one run."""
    from pathlib import Path

    from fastgan.bench.data import write_synthetic

    write_synthetic(Path(tmp_path / "photos"), 40, 32)
    r = run_fastgan("shards", str(tmp_path / "photos"), str(tmp_path / "shards"), "--res",
                    "16", "--no-progress")
    assert r.returncode == 0, r.stderr
    out = tmp_path / "step.json"
    r = run_fastgan("bench", "step", "--res", "16", "--width", "8", "--batch", "8",
                    "--seconds", "1", "--data", str(tmp_path / "shards"), "--folder",
                    str(tmp_path / "photos"), "--workers", "1", "--json", str(out))
    assert r.returncode == 0, r.stderr
    result = json.loads(out.read_text())
    for key in ("img_s", "baseline_img_s", "loader_img_s", "folder_img_s"):
        assert result[key] > 0, key
    assert 0 < result["speedup"] < math.inf  # both steps were measured
    assert result["strategy"] == "none" and result["precision"] in ("bf16", "fp32")
    # a DCGAN at 16x16, width 8: the FLOP count is the network's, not zero or absurd
    assert 1e5 < result["flops_per_img"] < 1e8
    # what the host does per step: no read of a device value, fewer ops than the classic
    # step (fused loss and bias+activation), the time to issue a step
    assert result["syncs_per_step"] == 0
    assert 0 < result["ops_per_step"] < result["baseline_ops_per_step"]
    assert result["host_ms"] > 0 and result["device_ms"] is None  # no GPU: no device time
    for row in ("fastgan (none,", "baseline (classic eager step", "fastgan + fastgan loader",
                "baseline + folder DataLoader"):
        assert row in r.stdout


@pytest.mark.slow
def test_bench_step_compiled_row(tmp_path):
    """--compile measures the compiled step beside the eager one, in the same run, and
    the time its first step spent compiling."""
    out = tmp_path / "step.json"
    r = run_fastgan("bench", "step", "--arch", "mlp", "--batch", "16", "--width", "16",
                    "--seconds", "1", "--no-baseline", "--compile", "--json", str(out),
                    timeout=600)
    assert r.returncode == 0, r.stderr
    result = json.loads(out.read_text())
    assert result["compile_img_s"] > 0 and result["img_s"] > 0
    assert result["compile_s"] > 0 and result["compile_host_ms"] > 0
    assert "fastgan (none, fp32)" in r.stdout and "fastgan --compile (default)" in r.stdout
    assert "compiling took" in r.stdout


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "deepspeed"])
def test_bench_step_on_two_ranks(tmp_path, strategy):
    """Under torchrun every rank steps in lockstep while rank 0 alone runs the baseline;
    DeepSpeed's step is also measured against DDP's, in the same turns."""
    import os
    import subprocess
    import sys

    out = tmp_path / "step.json"
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                        "--nproc-per-node", "2", "-m", "fastgan", "bench", "step", "--arch",
                        "mlp", "--batch", "32", "--width", "32", "--seconds", "1",
                        "--strategy", strategy, "--json", str(out),
                        *(["--versus", "ddp"] if strategy == "deepspeed" else [])],
                       capture_output=True, text=True, timeout=300,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["world"] == 2 and result["strategy"] == strategy
    assert result["img_s"] > 0 and result["baseline_img_s"] > 0
    assert r.stdout.count("fastgan bench step:") == 1  # rank 0 alone prints
    if strategy == "deepspeed":
        assert result["versus_strategy"] == "ddp" and result["versus_img_s"] > 0
        assert result["versus_ratio"] == pytest.approx(result["img_s"] / result["versus_img_s"])
        assert "fastgan (ddp, fp32)" in r.stdout and "x of fastgan (ddp)" in r.stdout
    else:
        assert result["versus_strategy"] is None and "versus_ratio" not in result


@pytest.mark.parametrize("flags, message", [
    (["--versus", "fsdp"], "--versus: 'fsdp' is not one of none, ddp, deepspeed"),
    (["--versus", "none"], "--versus: none is the step's own strategy; name another"),
])
def test_bench_step_names_a_bad_versus(flags, message):
    r = run_cli("bench", "step", "--arch", "mlp", "--seconds", "0.1", *flags)
    assert r.returncode == 2 and message in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_stylegan2_profile_names_a_bad_flag():
    from fastgan.bench import stylegan2_profile as profile

    with pytest.raises(UserError, match="--batch: expected an integer, got 'x'"):
        profile.main(["--batch", "x", "--device", "cpu"])


@pytest.mark.slow  # five StyleGAN2 steps on a CPU, ~10 s
def test_stylegan2_profile_runs_on_cpu():
    """The profile's own code at a toy size: what launch/gpu_check.sh runs on a GPU must
    not fail for a typo."""
    from fastgan.bench import stylegan2_profile as profile
    from fastgan.train import distributed

    d = distributed.init("cpu")
    try:
        step = profile.make_step(d, res=8, batch=2, precision="fp32", channels_last=False)
        assert profile.images_per_second(step, d.device, steps=1) > 0
        by_time, by_host = profile.profile_tables(step, d.device, steps=1)
        assert "Self CPU" in by_time and "Self CPU" in by_host
    finally:
        distributed.shutdown()
