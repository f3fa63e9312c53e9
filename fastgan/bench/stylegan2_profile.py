"""Where does fastgan's StyleGAN2 step spend its time on a GPU?

Images/s of fastgan's step (StyleGAN2 at ``--res``, batch ``--batch``, width 64, lazy
R1) in six variants (bf16 or fp32, channels_last or not, cudnn.benchmark, Triton or
PyTorch bias_act), then torch.profiler's tables of one variant: by GPU time and by CPU
time. Not a ratio against a baseline, as ``fastgan bench`` gives: a profiler's view::

    python -m fastgan.bench.stylegan2_profile            # --res 256 --batch 16 --device cuda
    python -m fastgan.bench.stylegan2_profile --device cpu --res 16 --batch 4   # smoke test
"""

from __future__ import annotations

import argparse
import os
import time

import torch
from torch.profiler import ProfilerActivity, profile

from .. import models
from ..config import int_flag
from ..train import distributed, engines
from ..train.build import build_gan
from .step import TrainingStep, style_mixing, stylegan2_objective

Z_DIM = 512
#: (name, precision, channels_last, cudnn.benchmark, FASTGAN_KERNELS)
VARIANTS = [
    ("bf16 channels_last (default)", "bf16", True, False, "auto"),
    ("bf16 contiguous", "bf16", False, False, "auto"),
    ("bf16 channels_last cudnn.benchmark", "bf16", True, True, "auto"),
    ("bf16 contiguous cudnn.benchmark", "bf16", False, True, "auto"),
    ("bf16 channels_last torch kernels", "bf16", True, False, "torch"),
    ("fp32 contiguous", "fp32", False, False, "auto"),
]


def synchronize(device: torch.device) -> None:
    """Wait for the device (CUDA runs ahead of the host; a CPU never does)."""
    if device.type == "cuda":
        torch.cuda.synchronize()


def make_step(d: distributed.Dist, res: int, batch: int, precision: str,
              channels_last: bool = True) -> TrainingStep:
    """fastgan's StyleGAN2 step on a fixed random real batch, as ``fastgan train`` builds
    it (NVlabs' configuration at 256: width 64, lazy R1 every 16 steps, path length
    every 4, style mixing)."""
    g_kw, d_kw = models.model_kwargs("stylegan2", res=res, z_dim=Z_DIM, width=64)
    gan = build_gan("stylegan2", g_kw, d_kw, images=True, dist=d, opts=engines.EngineOptions(
        strategy="none", precision=precision, micro_batch=batch, accum=1, grad_clip=0.0,
        zero=1), lr_g=2e-4, lr_d=2e-4, betas=(0.5, 0.999), seed=0,
        objective=stylegan2_objective(res, batch), style_mixing=style_mixing("stylegan2"))
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    if not channels_last:
        gan.G.to(memory_format=fmt)
        gan.D.to(memory_format=fmt)
    real = (torch.rand(batch, 3, res, res, device=d.device) * 2 - 1).contiguous(
        memory_format=fmt)
    return TrainingStep(gan.step, real, Z_DIM, batch)


def images_per_second(step: TrainingStep, device: torch.device, steps: int = 16) -> float:
    for _ in range(4):
        step()
    synchronize(device)
    start = time.perf_counter()
    images = sum(step() for _ in range(steps))
    synchronize(device)
    return images / (time.perf_counter() - start)


def profile_tables(step: TrainingStep, device: torch.device, steps: int = 4) -> list[str]:
    """torch.profiler's tables of ``steps`` steps (after 4 untimed): by GPU time (CPU
    time on a CPU), then by the host's own time."""
    for _ in range(4):
        step()
    synchronize(device)
    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            step()
        synchronize(device)
    averages = prof.key_averages()
    return [averages.table(sort_by="cuda_time_total" if cuda else "cpu_time_total",
                           row_limit=22, max_name_column_width=70),
            averages.table(sort_by="self_cpu_time_total", row_limit=12,
                           max_name_column_width=70)]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m fastgan.bench.stylegan2_profile",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--res", default="256", help="resolution (default: 256)")
    p.add_argument("--batch", default="16", help="batch (default: 16)")
    p.add_argument("--device", default="cuda", help="device (default: cuda)")
    args = p.parse_args(argv)
    res, batch = int_flag(args.res, "--res", 4), int_flag(args.batch, "--batch", 1)
    d = distributed.init(args.device)
    try:
        for name, precision, channels_last, benchmark, kernels in VARIANTS:
            torch.backends.cudnn.benchmark = benchmark
            os.environ["FASTGAN_KERNELS"] = kernels
            step = make_step(d, res, batch, precision, channels_last)
            print(f"{name:40s} {images_per_second(step, d.device):8.1f} img/s", flush=True)
        torch.backends.cudnn.benchmark = False
        os.environ["FASTGAN_KERNELS"] = "auto"
        for table in profile_tables(make_step(d, res, batch, "bf16"), d.device):
            print(table)
    finally:
        distributed.shutdown()


if __name__ == "__main__":
    main()
