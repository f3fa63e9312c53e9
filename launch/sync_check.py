"""Steady-state training steps under torch.cuda.set_sync_debug_mode("error").

``fastgan train`` runs in-process for 3N + 1 steps with no log, sample or checkpoint
before the last; from the start of step N + 1 to the start of step 3N + 1 (the training
step and the loop's work around it) CUDA raises on any synchronising call: a read of a
device value, a blocking copy. Cases: DCGAN with lazy R1 in fp32, bf16 and fp16 (with
its loss scalers and --accum 2), StyleGAN2 with R1, EMA, DiffAugment and labels, both
again under --compile, and DCGAN under DeepSpeed ZeRO-1 (one process; the reads that
DeepSpeed itself would make are listed in fastgan/train/engines.py). One line per case;
exit status 1 if any synchronised.
    python launch/sync_check.py [CASE ...]   # on a CUDA machine (gpu_check.sh runs it)
On a CPU the debug mode does nothing: the script then only checks that every case runs.
"""

from __future__ import annotations

import functools
import sys
import tempfile
import traceback

import torch

from fastgan import cli
from fastgan.train.loop import train
from fastgan.train.phases import GANStep

N = 3
COMMON = ["--data", "builtin:shapes", "--batch", "16", "--z-dim", "32", "--r1-gamma", "1",
          "--r1-interval", "2", "--log-every", "100000", "--sample-every", "100000",
          "--ckpt-every", "100000", "--no-progress", "--metric-samples", "16"]
DCGAN = ["--arch", "dcgan", "--width", "16"]
STYLEGAN2 = ["--arch", "stylegan2", "--width", "16", "--augment", "diffaug", "--cond"]
CASES = {
    "dcgan-fp32": [*DCGAN, "--precision", "fp32"],
    "dcgan-bf16": [*DCGAN, "--precision", "bf16"],
    "dcgan-fp16-accum2": [*DCGAN, "--precision", "fp16", "--accum", "2"],
    "stylegan2-bf16": [*STYLEGAN2, "--precision", "bf16"],
    "stylegan2-fp32-accum2": [*STYLEGAN2, "--precision", "fp32", "--accum", "2"],
    "dcgan-bf16-compile": [*DCGAN, "--precision", "bf16", "--compile"],
    "stylegan2-bf16-compile": [*STYLEGAN2, "--precision", "bf16", "--compile"],
    "dcgan-bf16-deepspeed-zero1": [*DCGAN, "--precision", "bf16", "--strategy", "deepspeed",
                                   "--zero", "1"],
}


def _strict_between(gan_step, step_call, real, z, step, c=None):
    """GANStep.__call__, with synchronising calls errors from step N + 1 on, until the
    last step (a boundary: it logs, samples and checkpoints)."""
    if step == N + 1:
        _sync_debug("error")
    elif step == 3 * N + 1:
        _sync_debug(0)
    return step_call(gan_step, real, z, step, c)


def _sync_debug(mode) -> None:
    if torch.cuda.is_available():  # a CPU build of torch raises here
        torch.cuda.set_sync_debug_mode(mode)


def run_case(flags: list[str], out: str) -> None:
    cfg = cli.train_config(cli.build_parser().parse_args(
        ["train", *COMMON, *flags, "--steps", str(3 * N + 1), "--out", out]))
    step_call = GANStep.__call__
    GANStep.__call__ = functools.partialmethod(_strict_between, step_call)
    try:
        train(cfg)
    finally:
        GANStep.__call__ = step_call
        _sync_debug(0)


def main(names: list[str]) -> int:
    unknown = set(names) - set(CASES)
    if unknown:
        print(f"sync_check: unknown case(s) {', '.join(sorted(unknown))}; cases: "
              f"{', '.join(CASES)}", file=sys.stderr)
        return 2
    failed = 0
    for name in names or CASES:
        flags = CASES[name]
        with tempfile.TemporaryDirectory() as tmp:
            try:
                run_case(flags, f"{tmp}/run")
                print(f"sync_check {name}: no synchronising call in steps {N + 1}-{3 * N}")
            except Exception as e:  # noqa: BLE001 - each case reports and the next runs
                failed += 1
                where = traceback.extract_tb(e.__traceback__)[-1]
                print(f"sync_check {name}: FAILED: {str(e).splitlines()[0]} "
                      f"({where.filename}:{where.lineno})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
