"""Where does fastgan's StyleGAN2 step spend its time on a GPU?

Images/s of fastgan's step (StyleGAN2 at RES, batch BATCH, width 64, lazy R1) in six
variants (bf16 or fp32, channels_last or not, cudnn.benchmark, Triton or PyTorch
bias_act), then torch.profiler's tables of one variant: by GPU time and by CPU time.
    python launch/stylegan2_probe.py            # RES=256 BATCH=16 DEVICE=cuda
(DEVICE=cpu RES=16 BATCH=4 runs it on a CPU, for a smoke test.)
"""
import os
import time

import torch
from torch.profiler import ProfilerActivity, profile

from fastgan import models
from fastgan.train import distributed, engines
from fastgan.train.build import build_gan

RES, BATCH = int(os.environ.get("RES", 256)), int(os.environ.get("BATCH", 16))
DEV = os.environ.get("DEVICE", "cuda")
d = distributed.init(DEV)
if DEV == "cpu":
    torch.cuda.synchronize = lambda: None
g_kw, d_kw = models.model_kwargs("stylegan2", res=RES, z_dim=512, width=64)


def make(precision, channels_last=True):
    gan = build_gan("stylegan2", g_kw, d_kw, images=True, dist=d, opts=engines.EngineOptions(
        strategy="none", precision=precision, micro_batch=BATCH, accum=1, grad_clip=0.0, zero=1),
        lr_g=2e-4, lr_d=2e-4, betas=(0.5, 0.999), seed=0,
        r1_gamma=0.0002 * RES**2 / BATCH, r1_interval=16)
    if not channels_last:
        gan.G.to(memory_format=torch.contiguous_format)
        gan.D.to(memory_format=torch.contiguous_format)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    real = (torch.rand(BATCH, 3, RES, RES, device=DEV) * 2 - 1).contiguous(memory_format=fmt)
    i = [0]

    def step():
        i[0] += 1
        gan.step(real, torch.randn(BATCH, 512, device=DEV), i[0])
    return step


def rate(step, n=16):
    for _ in range(4):
        step()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(n):
        step()
    torch.cuda.synchronize()
    return BATCH * n / (time.perf_counter() - t)


configs = [
    ("bf16 channels_last (default)", "bf16", True, {}),
    ("bf16 contiguous", "bf16", False, {}),
    ("bf16 channels_last cudnn.benchmark", "bf16", True, {"bench": True}),
    ("bf16 contiguous cudnn.benchmark", "bf16", False, {"bench": True}),
    ("bf16 channels_last torch kernels", "bf16", True, {"kernels": "torch"}),
    ("fp32 contiguous", "fp32", False, {}),
]
for name, prec, cl, extra in configs:
    torch.backends.cudnn.benchmark = extra.get("bench", False)
    os.environ["FASTGAN_KERNELS"] = extra.get("kernels", "auto")
    print(f"{name:40s} {rate(make(prec, cl)):8.1f} img/s", flush=True)
torch.backends.cudnn.benchmark = False
os.environ["FASTGAN_KERNELS"] = "auto"
step = make("bf16", True)
for _ in range(4):
    step()
torch.cuda.synchronize()
activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if DEV == "cuda" else [])
with profile(activities=activities) as prof:
    for _ in range(4):
        step()
    torch.cuda.synchronize()
ka = prof.key_averages()
print(ka.table(sort_by="cuda_time_total" if DEV == "cuda" else "cpu_time_total", row_limit=22,
               max_name_column_width=70))
print(ka.table(sort_by="self_cpu_time_total", row_limit=12, max_name_column_width=70))
