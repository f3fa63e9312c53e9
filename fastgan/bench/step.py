"""``fastgan bench step``: images/s of fastgan's full training step (D and G phases),
beside the classic eager step of the same architecture, measured in turns in one run.

* **fastgan**: the step ``fastgan train`` runs (built by the same code): G and D in
  their engines (``--strategy``), ``--precision`` autocast, channels_last, the fused
  GAN loss and bias+activation kernels (Triton on GPUs), fused Adam, every loss checked
  for NaN/Inf across ranks; under torchrun, every rank steps and images/s counts the
  global batch.
* **baseline**: the step of pytorch/examples' DCGAN (main.py), on rank 0 alone: fp32,
  contiguous tensors, plain PyTorch ops (``FASTGAN_KERNELS=torch``), BCE on logits,
  the default Adam, and G's backward through D computing D's gradients too (the
  example zeroes them at the next D step).

Real batches are random tensors already on the device: this measures the step, not
the data (``fastgan bench data`` does that). With ``--data SHARDS`` and ``--folder DIR``
(the same images as files) two more rows measure whole training iterations, data
included: fastgan's loader feeding fastgan's step (``--workers`` each, as ``fastgan
train --workers``), and the classic folder DataLoader (``--workers``) feeding the
classic step, as pytorch/examples' DCGAN trains. On a small machine the loader's
workers share the cores with the step, which is what these rows capture. FLOPs per
image are counted once on the baseline step (torch.utils.flop_counter), so both rows
also read as achieved TFLOP/s.

With ``--versus STRATEGY`` the same step under another strategy (its own engines, the
same networks, batch and precision) is measured in the same turns: ``versus_ratio``,
fastgan's images/s over its, compares strategies in one run, e.g. DeepSpeed's ZeRO
against DDP on the same ranks.

What the host does per step: ``host_ms``, the time to issue one step without waiting for
the device (on a GPU, when it is well below the step's wall time the host runs ahead);
``device_ms``, the GPU kernels' time per step (torch.profiler; GPUs only);
``syncs_per_step``, reads of device values back to the host, and ``ops_per_step``, aten
ops dispatched (``ops.py``; averaged over one cycle of the phases' intervals, so lazy
R1's share counts).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from .. import models
from ..config import ARCH_PRESETS
from ..errors import UserError
from ..train import distributed, engines
from ..train.build import build_gan
from ..train.phases import Objective
from ..train.precision import resolve_precision
from . import options_from_args
from .data import PREFETCH, fastgan_batches, folder_batches
from .meter import ROUNDS, Meter
from .ops import count_calls


def _flusher(batches, workers: int):
    """Discard what a loader prefetched while other rows were measured."""
    def flush():
        for _ in range(PREFETCH * workers):
            next(batches)
    return flush


@dataclass
class StepBenchOptions:
    arch: str = "dcgan"
    res: int = 64
    batch: int = 64
    width: int | None = None
    z_dim: int | None = None
    precision: str = "auto"
    strategy: str = "auto"
    zero: int = 1
    accum: int = 1
    data: str | None = None
    folder: str | None = None
    workers: int = 2
    seconds: float = 10.0
    baseline: bool = True
    device: str = "auto"
    json: str | None = None
    compile: bool = False
    compile_mode: str = "default"
    versus: str | None = None


def _validate(o: StepBenchOptions) -> None:
    if o.arch not in models.ARCHS:
        raise UserError(f"--arch: {o.arch!r} is not one of {', '.join(models.ARCHS)}")
    if o.arch != "mlp" and (o.res < 8 or o.res & (o.res - 1)):
        raise UserError(f"--res: must be a power of two >= 8, got {o.res}")
    for flag, v in (("--batch", o.batch), ("--accum", o.accum)):
        if v < 1:
            raise UserError(f"{flag}: must be >= 1, got {v}")
    if o.precision not in ("auto", "fp32", "bf16", "fp16"):
        raise UserError(f"--precision: {o.precision!r} is not one of auto, fp32, bf16, fp16")
    if o.seconds <= 0:
        raise UserError(f"--seconds: must be > 0, got {o.seconds}")
    if o.versus is not None and o.versus not in ("none", "ddp", "deepspeed"):
        raise UserError(f"--versus: {o.versus!r} is not one of none, ddp, deepspeed")
    if o.compile and o.strategy == "deepspeed":
        raise UserError("--compile: not supported under --strategy deepspeed (its engine "
                        "owns the forward); use --strategy ddp or none")


@contextlib.contextmanager
def _kernels(setting: str):
    """FASTGAN_KERNELS=setting for the duration (the dispatch reads it per call)."""
    old = os.environ.get("FASTGAN_KERNELS")
    os.environ["FASTGAN_KERNELS"] = setting
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("FASTGAN_KERNELS", None)
        else:
            os.environ["FASTGAN_KERNELS"] = old


class ClassicStep:
    """pytorch/examples' DCGAN training step, on fastgan's architecture: the yardstick."""

    def __init__(self, arch: str, g_kwargs: dict, d_kwargs: dict, device, z_dim: int):
        torch.manual_seed(0)
        self.G = models.build_generator(arch, g_kwargs).to(device)
        self.D = models.build_discriminator(arch, d_kwargs).to(device)
        self.opt_G = torch.optim.Adam(self.G.parameters(), lr=2e-4, betas=(0.5, 0.999))
        self.opt_D = torch.optim.Adam(self.D.parameters(), lr=2e-4, betas=(0.5, 0.999))
        self.z_dim, self.device = z_dim, device

    def __call__(self, real: torch.Tensor) -> None:
        with _kernels("torch"):
            n = real.shape[0]
            self.D.zero_grad()
            out = self.D(real).view(-1)
            F.binary_cross_entropy_with_logits(out, torch.ones_like(out)).backward()
            fake = self.G(torch.randn(n, self.z_dim, device=self.device))
            out = self.D(fake.detach()).view(-1)
            F.binary_cross_entropy_with_logits(out, torch.zeros_like(out)).backward()
            self.opt_D.step()
            self.G.zero_grad()
            out = self.D(fake).view(-1)
            F.binary_cross_entropy_with_logits(out, torch.ones_like(out)).backward()
            self.opt_G.step()


class TrainingStep:
    """fastgan's training step on a fixed real batch and fresh latents; returns the
    global batch size (what a Meter counts)."""

    def __init__(self, step, real: torch.Tensor, z_dim: int, batch: int):
        self.step, self.real, self.z_dim, self.batch = step, real, z_dim, batch
        self.index = 0

    def take(self, real: torch.Tensor) -> int:
        self.index += 1
        z = torch.randn(real.shape[0], self.z_dim, device=real.device)
        self.step(real, z, self.index)
        return self.batch

    def __call__(self) -> int:
        return self.take(self.real)


def device_ms(step, device: torch.device, steps: int = 4) -> float | None:
    """GPU milliseconds per step: the kernels' time, summed over ``steps`` steps by
    torch.profiler (None on a CPU, where host and device time are one)."""
    if device.type != "cuda":
        return None
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            step()
        torch.cuda.synchronize()
    kernel_us = sum(e.device_time for e in prof.events()
                    if e.device_type == torch.autograd.DeviceType.CUDA)
    return kernel_us / 1e3 / steps


def stylegan2_objective(res: int, batch: int) -> Objective:
    """StyleGAN2's objective as training runs it (config F, the stylegan2 preset): lazy
    R1 every 16 steps at StyleGAN2-ADA's gamma heuristic and lazy path length; its step
    includes both, as NVlabs' seconds per kimg do."""
    recipe = ARCH_PRESETS["stylegan2"]
    return Objective(r1_gamma=0.0002 * res**2 / batch, reg_interval=recipe["r1_interval"],
                     pl_weight=recipe["pl_weight"])


def style_mixing(arch: str) -> float:
    """G's style mixing as training runs it (the stylegan2 preset's; 0 elsewhere)."""
    return ARCH_PRESETS["stylegan2"]["style_mixing"] if arch == "stylegan2" else 0.0


def _objective(o: StepBenchOptions) -> Objective:
    return stylegan2_objective(o.res, o.batch) if o.arch == "stylegan2" else Objective()


def run(o: StepBenchOptions) -> dict:
    _validate(o)
    d = distributed.init(o.device, group_of_one="deepspeed" in (o.strategy, o.versus))
    try:
        return _run(o, d)
    finally:
        distributed.shutdown()


def _run(o: StepBenchOptions, d: distributed.Dist) -> dict:
    strategy = engines.resolve_strategy(o.strategy, d.world)
    versus = engines.resolve_strategy(o.versus, d.world) if o.versus else None
    if versus == strategy:
        raise UserError(f"--versus: {versus} is the step's own strategy; name another")
    if o.batch % (d.world * o.accum):
        raise UserError(f"--batch: {o.batch} does not split over {d.world} rank(s) x "
                        f"--accum {o.accum}")
    images = o.arch != "mlp"
    precision = resolve_precision(o.precision, d.device, points=not images)
    z_dim = o.z_dim or {"mlp": 16, "stylegan2": 512}.get(o.arch, 100)
    width = o.width or (64 if images else 400)
    g_kw, d_kw = models.model_kwargs(o.arch, res=o.res, z_dim=z_dim, width=width)
    per_rank = o.batch // d.world

    def build(compile_mode: str | None, strategy: str = strategy):
        return build_gan(o.arch, g_kw, d_kw, images=images, dist=d, opts=engines.EngineOptions(
            strategy=strategy, precision=precision, micro_batch=per_rank // o.accum,
            accum=o.accum, grad_clip=0.0, zero=o.zero, compile_mode=compile_mode),
            lr_g=2e-4, lr_d=2e-4, betas=(0.5, 0.999), seed=0, objective=_objective(o),
            style_mixing=style_mixing(o.arch))

    gan = build(None)
    shape = (per_rank, 3, o.res, o.res) if images else (per_rank, 2)

    def real_batch(n: int) -> torch.Tensor:
        x = torch.rand((n, *shape[1:]), device=d.device) * 2 - 1
        return x.contiguous(memory_format=torch.channels_last) if images else x

    real = real_batch(per_rank)
    fastgan_step = TrainingStep(gan.step, real, z_dim, o.batch)
    sync = torch.cuda.synchronize if d.device.type == "cuda" else (lambda: None)
    meters = {"fastgan": Meter(fastgan_step, sync=sync)}
    compile_s = None
    if o.compile:
        compiled_step = TrainingStep(build(o.compile_mode).step, real, z_dim, o.batch)
        meters["fastgan --compile"] = Meter(compiled_step, sync=sync)
        # the first step compiles the phases' graphs; its time beyond a step's is the
        # cost of compiling (recompiles, if any, come later and are not in it)
        sync()
        start = time.perf_counter()
        compiled_step()
        sync()
        compile_s = time.perf_counter() - start
    if versus:
        versus_step = TrainingStep(build(None, versus).step, real, z_dim, o.batch)
        meters["fastgan --versus"] = Meter(versus_step, sync=sync)
    flops = None
    if o.baseline and d.is_main:
        classic = ClassicStep(o.arch, g_kw, d_kw, d.device, z_dim)
        plain_real = real_batch(o.batch).contiguous()

        def baseline_step() -> int:
            classic(plain_real)
            return o.batch

        meters["baseline"] = Meter(baseline_step, sync=sync)
        with FlopCounterMode(display=False) as fc:
            classic(plain_real)
        flops = fc.get_total_flops() / o.batch

    if o.data is not None:
        if not images or d.world > 1:
            raise UserError("--data: whole iterations are measured for images on 1 process")
        stream = fastgan_batches(o.data, o.res, o.workers, o.batch)

        def loader_step() -> int:
            real = next(stream).to(d.device, non_blocking=True).float().div_(127.5).sub_(1.0)
            return fastgan_step.take(real)

        meters["fastgan + loader"] = Meter(loader_step, sync=sync, flush=_flusher(
            stream, o.workers))
    if o.folder is not None and o.baseline and d.is_main:
        folder = folder_batches(o.folder, o.res, o.workers, o.batch)

        def classic_iteration() -> int:
            classic(next(folder).to(d.device))
            return o.batch

        meters["baseline + folder"] = Meter(classic_iteration, sync=sync,
                                            flush=_flusher(folder, o.workers))

    # Warm up (autotuning, allocator, oneDNN primitives), then size each turn to about
    # seconds / (meters * ROUNDS) from the warm-up speed; the fastgan step's count is
    # agreed over ranks, which must step in lockstep.
    for meter in meters.values():
        meter.measure_steps(3)
        meter.reset()
        meter.measure_steps(2)
    # The same rows, turn length and sequence of barriers on every rank, whatever rows
    # rank 0 alone measures.
    rows = ["fastgan", *(["fastgan --compile"] if o.compile else []),
            *(["fastgan --versus"] if versus else []),
            *(["baseline"] if o.baseline else []),
            *(["fastgan + loader"] if o.data else []),
            *(["baseline + folder"] if o.folder and o.baseline else [])]
    turn = o.seconds / (len(rows) * ROUNDS)
    counts = {}
    for name, meter in meters.items():
        per_step = torch.tensor([meter.seconds / 2], device=d.device)
        if name.startswith("fastgan"):
            per_step = distributed.all_reduce_mean(per_step, d)
        counts[name] = max(2, round(turn / per_step.item()))
        meter.reset()
    for _ in range(ROUNDS):
        for name in rows:
            if name in meters:
                meters[name].measure_steps(counts[name])
            distributed.barrier(d)
    # What the host does per step, over one cycle of the phases' intervals (StyleGAN2's
    # lazy R1 falls on one step in 16): ops dispatched, and reads of device values.
    cycle = max(p.interval for p in gan.step.phases)
    counted = count_calls(fastgan_step, cycle)
    result = {
        "arch": o.arch, "res": o.res if images else None, "batch": o.batch, "width": width,
        "precision": precision, "strategy": strategy, "world": d.world, "accum": o.accum,
        "device": str(d.device) if d.device.type != "cuda" else torch.cuda.get_device_name(),
        "img_s": meters["fastgan"].rate,
        "host_ms": meters["fastgan"].host_ms,
        "device_ms": device_ms(fastgan_step, d.device),
        "syncs_per_step": counted.total_reads / cycle,
        "compile_img_s": meters["fastgan --compile"].rate if o.compile else None,
        "compile_host_ms": meters["fastgan --compile"].host_ms if o.compile else None,
        "compile_s": (compile_s - meters["fastgan --compile"].seconds
                      / meters["fastgan --compile"].steps) if o.compile else None,
        "compile_mode": o.compile_mode if o.compile else None,
        "versus_strategy": versus,
        "versus_img_s": meters["fastgan --versus"].rate if versus else None,
        "ops_per_step": counted.ops / cycle,
        "baseline_ops_per_step": count_calls(meters["baseline"].take, 1).ops
        if "baseline" in meters else None,
        "baseline_img_s": meters["baseline"].rate if "baseline" in meters else None,
        "loader_img_s": meters["fastgan + loader"].rate if o.data else None,
        "folder_img_s": meters["baseline + folder"].rate if "baseline + folder" in meters
        else None,
        "flops_per_img": flops,
        "nonfinite_skips": gan.step.skip_counts()[0],
    }
    result["sec_per_kimg"] = 1000.0 / result["img_s"]  # NVlabs' unit
    if versus:
        result["versus_ratio"] = result["img_s"] / result["versus_img_s"]
    if result["baseline_img_s"]:
        result["speedup"] = result["img_s"] / result["baseline_img_s"]
    if result["loader_img_s"] and result["folder_img_s"]:
        result["iteration_speedup"] = result["loader_img_s"] / result["folder_img_s"]
    if d.is_main:
        print(table(result))
        if o.json:
            Path(o.json).write_text(json.dumps(result, indent=2) + "\n")
    return result


def table(r: dict) -> str:
    size = f"{r['res']}x{r['res']}" if r["res"] else "2-D points"
    lines = [f"fastgan bench step: {r['arch']} at {size}, width {r['width']}, batch "
             f"{r['batch']} over {r['world']} rank(s), {r['device']}",
             f"{'':44s}{'img/s':>9s}{'vs baseline':>13s}{'TFLOP/s':>9s}"]
    rows = [(f"fastgan ({r['strategy']}, {r['precision']})", r["img_s"])]
    if r.get("compile_img_s"):
        rows.append((f"fastgan --compile ({r['compile_mode']})", r["compile_img_s"]))
    if r.get("versus_img_s"):
        rows.append((f"fastgan ({r['versus_strategy']}, {r['precision']})", r["versus_img_s"]))
    if r["baseline_img_s"]:
        rows.append(("baseline (classic eager step, fp32, 1 proc)", r["baseline_img_s"]))
    if r.get("loader_img_s"):
        rows.append(("fastgan + fastgan loader (shards)", r["loader_img_s"]))
    if r.get("folder_img_s"):
        rows.append(("baseline + folder DataLoader (files)", r["folder_img_s"]))
    for name, v in rows:
        ratio = f"{v / r['baseline_img_s']:12.2f}x" if r["baseline_img_s"] else f"{'':13s}"
        tflops = f"{v * r['flops_per_img'] / 1e12:9.3f}" if r["flops_per_img"] else ""
        lines.append(f"{name:44s}{v:9.1f}{ratio}{tflops}")
    device = f", device {r['device_ms']:.2f} ms" if r.get("device_ms") is not None else ""
    if r.get("versus_img_s"):
        lines.append(f"fastgan ({r['strategy']}) at {r['versus_ratio']:.3f}x of fastgan "
                     f"({r['versus_strategy']}), measured in the same turns")
    if r.get("compile_img_s"):
        lines.append(f"fastgan --compile: compiling took {r['compile_s']:.1f} s; per step: "
                     f"host {r['compile_host_ms']:.2f} ms")
    lines.append(f"fastgan: {r['sec_per_kimg']:.1f} s/kimg; per step: host {r['host_ms']:.2f} ms"
                 f"{device}, {r['syncs_per_step']:g} host reads of device values, "
                 f"{r['ops_per_step']:.0f} ops dispatched"
                 + (f" (baseline: {r['baseline_ops_per_step']})"
                    if r.get("baseline_ops_per_step") else ""))
    if r["flops_per_img"]:
        lines.append(f"{r['flops_per_img'] / 1e9:.2f} GFLOP per image and step "
                     "(counted on the baseline step)")
    return "\n".join(lines)


def main_args(sub) -> None:
    p = sub.add_parser("step", help="training-step throughput against the classic eager step",
                       description="Images/s of fastgan's full training step (D and G "
                       "phases) beside the classic eager fp32 step of the same "
                       "architecture (pytorch/examples' DCGAN), measured in turns in one "
                       "run. Under torchrun every rank steps (--strategy) and the baseline "
                       "runs on rank 0 alone.")
    p.add_argument("--arch", default="dcgan", help="dcgan|stylegan2|mlp (default: dcgan; "
                   "stylegan2's step includes its lazy R1, every 16 steps)")
    p.add_argument("--res", default=64, help="resolution (default: 64)")
    p.add_argument("--batch", default=64, help="global batch (default: 64)")
    p.add_argument("--width", help="channels at full resolution (dcgan, default "
                   "64) or hidden units (mlp, default 400)")
    p.add_argument("--z-dim", help="latent size (default: 100 dcgan, 512 stylegan2, "
                   "16 mlp)")
    p.add_argument("--precision", default="auto", help="auto|fp32|bf16|fp16 (default: auto)")
    p.add_argument("--strategy", default="auto", help="auto|none|ddp|deepspeed (default: auto)")
    p.add_argument("--zero", default=1, help="DeepSpeed ZeRO stage (default: 1)")
    p.add_argument("--accum", default=1, help="micro-batches per step (default: 1)")
    p.add_argument("--data", help="local shards: also measure fastgan's loader + step")
    p.add_argument("--folder", help="the same images as files: also measure the classic "
                   "folder DataLoader + classic step")
    p.add_argument("--workers", default=2,
                   help="loader workers for --data and --folder (default: 2)")
    p.add_argument("--seconds", type=float, default=10.0,
                   help="total measuring time, in turns (default: 10)")
    p.add_argument("--no-baseline", dest="baseline", action="store_false",
                   help="skip the classic eager step")
    p.add_argument("--versus", metavar="STRATEGY",
                   help="none|ddp|deepspeed: also measure the step under this strategy, in "
                   "the same turns, and print the ratio (e.g. --strategy deepspeed "
                   "--versus ddp under torchrun)")
    p.add_argument("--device", default="auto", help="auto|cpu|cuda (default: auto)")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    p.add_argument("--compile", action="store_true",
                   help="also measure the step with G and D torch.compile'd (fastgan train "
                   "--compile), and the time its first step spends compiling")
    p.add_argument("--compile-mode", default="default",
                   choices=("default", "reduce-overhead", "max-autotune",
                            "max-autotune-no-cudagraphs"),
                   help="torch.compile's mode for --compile (default: default)")


def from_args(args) -> StepBenchOptions:
    return options_from_args(StepBenchOptions, args)
