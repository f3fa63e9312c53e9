"""``fastgan bench kernels``: the Triton kernels against eager PyTorch and torch.compile,
and against the GPU's own copy bandwidth, all measured in one run.

Times are medians of ``triton.testing.do_bench``. bias_act is memory-bound: its figure
of merit is the share of the measured device-to-device copy bandwidth it reaches (bytes
counted: forward reads x and writes y; backward reads dy and x, writes dx, and reads dx
again for the bias gradient). The GAN-loss step on [N, 1] logits is launch-bound: it
reports microseconds and the number of kernel launches per call, for the
non-saturating and the relativistic pairing (RpGAN) D losses. torch.compile is
timed on first-order gradients only (it does not support double backward).

On CPU it refuses: interpreted Triton timings mean nothing.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..errors import UserError
from ..kernels import gan_loss
from ..kernels.bias_act import bias_act_reference, bias_act_triton

BIAS_ACT_SHAPES = [(64, 256, 8, 8), (64, 256, 32, 32), (64, 256, 64, 64)]  # 1M .. 67M
LOSS_SIZES = [64, 1024, 16384]


def _bench(fn) -> float:
    """Median milliseconds of ``fn``."""
    import triton.testing

    return triton.testing.do_bench(fn, warmup=25, rep=200, return_mode="median")


def _launches(fn) -> int | None:
    """CUDA kernels launched by one call of ``fn``."""
    try:
        from torch.profiler import ProfilerActivity, profile

        fn()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            fn()
            torch.cuda.synchronize()
        return sum(1 for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA)
    except Exception:  # noqa: BLE001 (a profiler without CUDA events: leave it out)
        return None


def copy_bandwidth(n: int, dtype: torch.dtype) -> float:
    """Device-to-device copy, GB/s (bytes read + written)."""
    x = torch.empty(n, dtype=dtype, device="cuda").normal_()
    y = torch.empty_like(x)
    ms = _bench(lambda: y.copy_(x))
    return 2 * x.numel() * x.element_size() / (ms * 1e-3) / 1e9


def bench_bias_act(shape, dtype, layout: str, copy_gbs: float, *, device="cuda",
                   timer=_bench, compiled=True) -> list[dict]:
    x = torch.randn(shape, dtype=dtype, device=device)
    if layout == "channels_last":
        x = x.to(memory_format=torch.channels_last)
    b = torch.randn(shape[1], device=device)
    dy = torch.randn_like(x)
    xr, br = x.clone().requires_grad_(), b.clone().requires_grad_()
    size = x.numel() * x.element_size()
    impls = {
        "triton": lambda x, b: bias_act_triton(x, b, act="lrelu"),
        "eager": lambda x, b: bias_act_reference(x, b, act="lrelu"),
    }
    if compiled:
        impls["compile"] = torch.compile(lambda x, b: bias_act_reference(x, b, act="lrelu"))
    rows = []
    for name, fn in impls.items():
        def fwd_bwd():
            torch.autograd.grad(fn(xr, br), (xr, br), dy)

        fwd_ms = timer(lambda: fn(x, b))
        fb_ms = timer(fwd_bwd)
        for op, ms, nbytes in (("forward", fwd_ms, 2 * size),
                               ("backward", fb_ms - fwd_ms, 4 * size),
                               ("forward+backward", fb_ms, 6 * size)):
            gbs = nbytes / (ms * 1e-3) / 1e9 if ms > 0 else float("nan")
            rows.append({"op": "bias_act lrelu", "shape": list(shape), "layout": layout,
                         "dtype": str(dtype).removeprefix("torch."), "impl": name,
                         "pass": op, "ms": ms, "gb_s": gbs, "of_copy": gbs / copy_gbs})
    return rows


def bench_losses(n: int, *, device="cuda", timer=_bench, compiled=True) -> list[dict]:
    """The launch-bound ops on [N, 1] logits: forward, backward and both, with launches."""
    import torch.nn.functional as F

    from ..kernels import bce

    real = torch.randn(n, 1, device=device, requires_grad=True)
    fake = torch.randn(n, 1, device=device, requires_grad=True)
    ops = {
        "GAN D-loss step": {
            "triton": lambda: gan_loss.d_loss_triton(real, fake)[0],
            "eager": lambda: gan_loss.d_loss_reference(real, fake)[0],
            "compile": lambda: gan_loss.d_loss_reference(real, fake)[0],
        },
        "RpGAN D-loss step": {
            "triton": lambda: gan_loss.rpgan_d_loss_triton(real, fake)[0],
            "eager": lambda: gan_loss.rpgan_d_loss_reference(real, fake)[0],
            "compile": lambda: gan_loss.rpgan_d_loss_reference(real, fake)[0],
        },
        "bce_with_logits": {
            "triton": lambda: bce.bce_with_logits_triton(fake, 1.0),
            "eager": lambda: F.binary_cross_entropy_with_logits(fake, torch.ones_like(fake)),
            "compile": lambda: bce.bce_with_logits_reference(fake, 1.0),
        },
    }
    for impls in ops.values():
        if compiled:
            impls["compile"] = torch.compile(impls["compile"])
        else:
            del impls["compile"]
    rows = []
    for op, impls in ops.items():
        for name, fn in impls.items():
            def both(fn=fn):
                torch.autograd.grad(fn(), (real, fake), allow_unused=True)

            fwd, fb = timer(fn) * 1e3, timer(both) * 1e3
            for phase, us, call in (("forward", fwd, fn), ("backward", fb - fwd, None),
                                    ("forward+backward", fb, both)):
                rows.append({"op": op, "shape": [n, 1], "impl": name, "pass": phase,
                             "us": us, "launches": _launches(call) if call else None})
    return rows


def run(json_path: str | None = None, dtype: str = "bf16") -> dict:
    if not torch.cuda.is_available():
        raise UserError("kernel timings need a CUDA GPU (Triton timings under "
                        "TRITON_INTERPRET on a CPU mean nothing)")
    dt = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dtype]
    copy_gbs = copy_bandwidth(64 * 2 ** 20, dt)
    rows = []
    for shape in BIAS_ACT_SHAPES:
        rows += bench_bias_act(shape, dt, "contiguous", copy_gbs)
    rows += bench_bias_act(BIAS_ACT_SHAPES[-1], dt, "channels_last", copy_gbs)
    for n in LOSS_SIZES:
        rows += bench_losses(n)
    result = {"device": torch.cuda.get_device_name(), "copy_gb_s": copy_gbs, "rows": rows}
    print(table(result))
    if json_path:
        Path(json_path).write_text(json.dumps(result, indent=2) + "\n")
    return result


def table(r: dict) -> str:
    lines = [f"fastgan bench kernels on {r['device']}: copy bandwidth {r['copy_gb_s']:.0f} GB/s"]
    by_key: dict = {}
    for row in r["rows"]:
        key = (row["op"], tuple(row["shape"]), row.get("layout", ""), row.get("pass", ""))
        by_key.setdefault(key, {})[row["impl"]] = row
    for (op, shape, layout, phase), impls in by_key.items():
        t = impls["triton"]
        if "ms" in t:
            ratios = ", ".join(f"{k} {v['ms'] / t['ms']:.2f}x" for k, v in impls.items()
                               if k != "triton")
            lines.append(f"{op} {list(shape)} {layout} {phase}: {t['ms'] * 1e3:.0f} us, "
                         f"{t['gb_s']:.0f} GB/s = {100 * t['of_copy']:.0f}% of copy; "
                         f"speed-up vs {ratios}")
        else:
            ratios = ", ".join(f"{k} {v['us'] / t['us']:.2f}x ({v['launches']} launches)"
                               for k, v in impls.items() if k != "triton")
            lines.append(f"{op} {list(shape)} {phase}: {t['us']:.1f} us, {t['launches']} "
                         f"launch(es); speed-up vs {ratios}")
    return "\n".join(lines)


def main_args(sub) -> None:
    p = sub.add_parser("kernels", help="Triton kernels against eager, torch.compile and "
                       "the copy bandwidth (GPU only)",
                       description="Time the Triton kernels (median of do_bench) against "
                       "eager PyTorch and torch.compile, and bias_act against the GPU's "
                       "measured copy bandwidth. Needs a CUDA GPU.")
    p.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"],
                   help="dtype of the bias_act tensors (default: bf16)")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
