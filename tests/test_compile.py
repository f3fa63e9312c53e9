"""--compile: G and D through torch.compile (inductor, C++ code on this CPU) train as eager
does; lazy R1 runs the same weights eagerly. Checkpoints keep the plain names."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import run_cli, run_fastgan
from procs import load_state
from ranks import params, run_train

pytestmark = pytest.mark.slow

# lr 2e-4 (the general default): at the shapes preset's 1e-3 a few of Adam's near-zero
# gradients flip sign on rounding alone within 10 steps, and each such element then
# moves by a whole lr (1e-3 relative in 10 steps, compiled or not, with or without R1).
COMMON = ["--data", "builtin:shapes", "--batch", "8", "--z-dim", "16", "--lr-g", "2e-4",
          "--lr-d", "2e-4", "--r1-gamma", "1", "--r1-interval", "4", "--log-every", "5",
          "--ckpt-every", "5", "--sample-every", "0", "--metric-samples", "16",
          "--no-progress", "--deterministic"]
ARCHS = {
    "dcgan": ["--arch", "dcgan", "--width", "8"],
    # the smallest StyleGAN2 (4x4 and 8x8: compiling takes most of a minute per level
    # here), with its EMA generator, DiffAugment and noise inputs (drawn as eager draws
    # them: see --deterministic)
    "stylegan2": ["--arch", "stylegan2", "--width", "8", "--res", "8", "--augment",
                  "diffaug"],
}
# the compiled run's lengths: DCGAN stops at 5 and resumes (compiled) to 10
LEGS = {"dcgan": (5, 10), "stylegan2": (10,)}


def _relative(a: dict, b: dict, net: str) -> float:
    keys = [k for k, v in a[net].items() if v.is_floating_point() and "running" not in k]
    va = torch.cat([a[net][k].flatten() for k in keys])
    vb = torch.cat([b[net][k].flatten() for k in keys])
    return ((va - vb).norm() / vb.norm()).item()


@pytest.mark.parametrize("arch", list(ARCHS))
def test_compiled_training_matches_eager(tmp_path, cache_dir, arch):
    """10 steps, R1 at steps 4 and 8: eager straight through; compiled (DCGAN: 5 steps,
    then resumed to 10). Every network within 1e-4 relative of eager, far closer than the
    distance both travelled; the checkpoint's names are the modules' own."""
    args = [*COMMON, *ARCHS[arch], "--cache-dir", cache_dir]
    eager, compiled = tmp_path / "eager", tmp_path / "compiled"
    r = run_fastgan("train", *args, "--steps", "10", "--out", str(eager), timeout=600)
    assert r.returncode == 0, r.stderr
    for steps in LEGS[arch]:
        r = run_fastgan("train", *args, "--compile", "--steps", str(steps), "--out",
                        str(compiled), timeout=900)
        assert r.returncode == 0, r.stderr
    if len(LEGS[arch]) > 1:
        assert f"resuming from {compiled}/checkpoints/step-00000005" in r.stderr
    ckpt = "checkpoints/step-00000010"
    a, b = load_state(compiled / ckpt), load_state(eager / ckpt)
    start = load_state(eager / "checkpoints/step-00000005")
    nets = ["G", "D", *(["G_ema"] if arch == "stylegan2" else [])]
    for net in nets:
        assert a[net].keys() == b[net].keys()  # no "_orig_mod." from torch.compile
        assert _relative(a, b, net) < 1e-4, net
        assert _relative(b, start, net) > 100 * _relative(a, b, net), net
    recs = [json.loads(line) for line in (compiled / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs] == [5, 10] and "r1" in recs[-1]


def test_compiled_ddp_with_fp16_and_accumulation_keeps_ranks_identical(tmp_path, cache_dir):
    """2 gloo ranks, DDP over the compiled networks, fp16 with its loss scalers and 2
    micro-batches (DDP's no_sync inside the compiled forward): the ranks stay bitwise
    identical and both networks train."""
    out = run_train([*COMMON, *ARCHS["dcgan"], "--cache-dir", cache_dir, "--compile",
                     "--strategy", "ddp", "--precision", "fp16", "--accum", "2", "--batch",
                     "16", "--steps", "10", "--out", str(tmp_path / "run")], 2,
                    tmp_path / "rec")
    p0, p1, before = params(out, 0, 10), params(out, 1, 10), params(out, 0, 5)
    assert all(torch.equal(p0[k], p1[k]) for k in p0)
    for net in ("G.", "D."):
        assert any(not torch.equal(p0[k], before[k]) for k in p0 if k.startswith(net))
    recs = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text()
            .splitlines()]
    assert all(r["loss_D"] == r["loss_D"] for r in recs)  # finite means, not NaN


def test_compile_is_refused_under_deepspeed(tmp_path):
    r = run_cli("train", "--dry-run", "--compile", "--strategy", "deepspeed", cwd=tmp_path)
    assert r.returncode == 2
    assert "--compile: not supported under --strategy deepspeed" in r.stderr
