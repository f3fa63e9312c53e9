"""A training step reads no device value back to the host (on a GPU each read would
stall the host until the device drains its queue).

``fastgan train`` runs for N and for 3N steps under a dispatch-mode counter of host reads
(``fastgan.bench.ops``: ``.item()``, ``.tolist()``, ``bool(t)``, ``nonzero``...), with no
log, sample or checkpoint in between: the difference is what the steady-state steps
read, and it must be zero. One process (--strategy none) and 2 gloo ranks under DDP;
what the ranks agree on through the CPU control group (the stop vote) is host memory,
not a device read, and is not counted. The loader decodes in its own process
(--workers 1): its numpy work is not a read of the device.
"""

from __future__ import annotations

import os

import pytest
import torch.multiprocessing as mp

from ranks import free_port

N = 2
COMMON = ["--data", "builtin:shapes", "--batch", "8", "--workers", "1", "--z-dim", "16",
          "--r1-gamma", "1", "--r1-interval", "2", "--log-every", "100000",
          "--sample-every", "100000", "--ckpt-every", "100000", "--no-progress",
          "--metric-samples", "16"]
# Every arch with both precisions and both --accum; fp16 with its loss scalers;
# StyleGAN2 with its EMA generator, DiffAugment and labels (--cond).
RUNS = {
    "dcgan-r1-fp32": ["--arch", "dcgan", "--width", "8", "--precision", "fp32"],
    "dcgan-r1-bf16-accum2": ["--arch", "dcgan", "--width", "8", "--precision", "bf16",
                             "--accum", "2"],
    "dcgan-r1-fp16-accum2": ["--arch", "dcgan", "--width", "8", "--precision", "fp16",
                             "--accum", "2"],
    "stylegan2-r1-ema-diffaug-cond-fp32-accum2": [
        "--arch", "stylegan2", "--width", "4", "--augment", "diffaug", "--cond",
        "--precision", "fp32", "--accum", "2"],
    "stylegan2-r1-ema-diffaug-bf16": ["--arch", "stylegan2", "--width", "4", "--augment",
                                      "diffaug", "--precision", "bf16"],
}


def _reads(args: list[str], steps: int, out: str) -> dict:
    from fastgan import cli
    from fastgan.bench.ops import OpCounter
    from fastgan.train.loop import train

    cfg = cli.train_config(cli.build_parser().parse_args(
        ["train", *args, "--steps", str(steps), "--out", out]))
    with OpCounter() as counter:
        train(cfg)
    return dict(counter.reads)


def _worker(rank, world, ports, tmp, cache, results):
    import torch

    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", OMP_NUM_THREADS="1")
    strategy = "ddp" if world > 1 else "none"
    out = {}
    for i, (name, flags) in enumerate(RUNS.items()):
        counts = []
        for j, steps in enumerate((N, 3 * N)):
            os.environ["MASTER_PORT"] = str(ports[2 * i + j])
            counts.append(_reads([*COMMON, *flags, "--cache-dir", cache, "--strategy",
                                  strategy], steps, f"{tmp}/{name}-{steps}"))
        out[name] = {k: counts[1].get(k, 0) - counts[0].get(k, 0)
                     for k in set(counts[0]) | set(counts[1])}
    results[rank] = out


@pytest.mark.slow
@pytest.mark.parametrize("world", [1, 2], ids=["none", "ddp-2-ranks"])
def test_steady_state_steps_read_nothing_back(tmp_path, cache_dir, world):
    results = mp.Manager().dict()
    ports = [free_port() for _ in range(2 * len(RUNS))]
    mp.spawn(_worker, args=(world, ports, str(tmp_path), cache_dir, results), nprocs=world)
    for rank in range(world):
        growth = {name: {k: v for k, v in reads.items() if v}
                  for name, reads in results[rank].items()}
        assert growth == {name: {} for name in RUNS}, f"rank {rank}: reads in {2 * N} steps"
