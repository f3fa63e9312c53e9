"""A training step reads no device value back to the host (on a GPU each read would
stall the host until the device drains its queue).

``fastgan train`` runs 3N + 1 steps under a dispatch-mode counter of host reads
(``fastgan.bench.ops``: ``.item()``, ``.tolist()``, ``bool(t)``, ``nonzero``...), with no
log, sample or checkpoint before the last step. The counts as steps N + 1 and 3N + 1
begin differ by what steps N + 1 to 3N read, the training step and the loop's work
around it, and that must be nothing. One process (--strategy none), 2 gloo ranks
under DDP, and 2 under DeepSpeed's ZeRO 1 and 2. What the ranks agree on through the
CPU control group (the stop vote) is host memory, not a device read, and is not
counted. The loader decodes in its own process (--workers 1): its numpy work is not a
read of the device.
"""

from __future__ import annotations

import collections
import functools

import pytest
import torch.multiprocessing as mp

from ranks import free_port, set_rank_env, spawn

N = 2
COMMON = ["--data", "builtin:shapes", "--batch", "8", "--workers", "1", "--z-dim", "16",
          "--r1-gamma", "1", "--r1-interval", "2", "--log-every", "100000",
          "--sample-every", "100000", "--ckpt-every", "100000", "--no-progress",
          "--metric-samples", "16"]
# Every arch with both precisions and both --accum, both losses (rpgan with R2 too); fp16
# with its loss scalers;
# StyleGAN2 with its EMA generator, labels (--cond), path length (at step 4), style
# mixing, and DiffAugment or ADA (its p adjusted, all-reduced over the ranks, every 2
# steps).
PL = ["--pl-weight", "2", "--style-mixing", "0.9"]
RUNS = {
    "dcgan-rpgan-r1-r2-fp32": ["--arch", "dcgan", "--width", "8", "--precision", "fp32",
                               "--loss", "rpgan", "--r2-gamma", "1"],
    "dcgan-r1-bf16-accum2": ["--arch", "dcgan", "--width", "8", "--precision", "bf16",
                             "--accum", "2"],
    "dcgan-r1-fp16-accum2": ["--arch", "dcgan", "--width", "8", "--precision", "fp16",
                             "--accum", "2"],
    "stylegan2-r1-pl-mixing-ema-diffaug-cond-fp32-accum2": [
        "--arch", "stylegan2", "--width", "4", "--augment", "diffaug", "--cond",
        "--precision", "fp32", "--accum", "2", *PL],
    "stylegan2-r1-pl-mixing-ema-ada-bf16": ["--arch", "stylegan2", "--width", "4",
                                            "--augment", "ada", "--ada-interval", "2",
                                            "--precision", "bf16", *PL],
}


def _count_then_step(gan_step, counter, seen: dict, step_call, real, z, step, c=None):
    """GANStep.__call__, after noting the reads counted so far when a step begins."""
    seen[step] = collections.Counter(counter.reads)
    return step_call(gan_step, real, z, step, c)


def _steady_state_reads(args: list[str], out: str) -> dict:
    from fastgan import cli
    from fastgan.bench.ops import OpCounter
    from fastgan.train.loop import train
    from fastgan.train.phases import GANStep

    cfg = cli.train_config(cli.build_parser().parse_args(
        ["train", *args, "--steps", str(3 * N + 1), "--out", out]))
    seen: dict[int, collections.Counter] = {}
    step_call = GANStep.__call__
    with OpCounter() as counter:
        GANStep.__call__ = functools.partialmethod(_count_then_step, counter, seen, step_call)
        try:
            train(cfg)
        finally:
            GANStep.__call__ = step_call
    return dict(seen[3 * N + 1] - seen[N + 1])


# DeepSpeed's ZeRO 1 and 2, whose reduced gradients fastgan checks (and clips) on the
# device in place of DeepSpeed's own norm, which would be read back every step.
DEEPSPEED_RUNS = {
    "dcgan-r1-zero1-fp32-clip": ["--arch", "dcgan", "--width", "8", "--precision", "fp32",
                                 "--zero", "1", "--grad-clip", "1"],
    "dcgan-r1-zero2-bf16-accum2": ["--arch", "dcgan", "--width", "8", "--precision", "bf16",
                                   "--zero", "2", "--accum", "2"],
}


def _worker(rank, world, strategy, runs, ports, tmp, cache, results):
    out = {}
    for port, (name, flags) in zip(ports, runs.items()):
        set_rank_env(rank, world, port)
        out[name] = _steady_state_reads([*COMMON, *flags, "--cache-dir", cache, "--strategy",
                                         strategy], f"{tmp}/{name}")
    results[rank] = out


@pytest.mark.slow
@pytest.mark.parametrize("world, strategy, runs, reads", [
    (1, "none", RUNS, {name: {} for name in RUNS}),
    (2, "ddp", RUNS, {name: {} for name in RUNS}),
    (2, "deepspeed", DEEPSPEED_RUNS, {name: {} for name in DEEPSPEED_RUNS}),
], ids=["none", "ddp-2-ranks", "deepspeed-2-ranks"])
def test_steady_state_steps_read_nothing_back(tmp_path, cache_dir, world, strategy, runs,
                                              reads):
    results = mp.Manager().dict()
    ports = [free_port() for _ in runs]
    spawn(_worker, (world, strategy, runs, ports, str(tmp_path), cache_dir, results), world)
    for rank in range(world):
        assert results[rank] == reads, f"rank {rank}: reads in steps {N + 1} to {3 * N}"
