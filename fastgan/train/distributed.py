"""The process groups and the collectives on them (wrapping networks in DDP or DeepSpeed
is engines.py's, the one place that knows those).

Initialisation comes from torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR/PORT): nccl on CUDA, gloo on CPU. With one process nothing is initialised
and nothing is wrapped, so a plain ``fastgan train`` pays no distributed overhead.

This module holds the process group and the few collectives the loop and the phases
share.

Beside the main group (nccl on GPUs) every multi-process run has a **control group**
(gloo, on the CPU) for messages the host itself must act on, such as "a rank was asked
to stop". Their tensors live in host memory, so agreeing on them never waits for a
device: a step issues its device work and never reads it back (see phases.py).
"""

from __future__ import annotations

import datetime
import gc
import os
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from ..errors import UserError


@dataclass(frozen=True)
class Dist:
    rank: int
    world: int
    local_rank: int
    device: torch.device
    control: object = None  # the gloo group for host-side messages (world > 1)

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init(device_flag: str = "auto", *, group_of_one: bool = False,
         timeout_s: float = 600) -> Dist:
    """The process group from torchrun's environment.

    ``group_of_one``: initialise a group even for a single process (DeepSpeed needs one);
    it lives in memory, with no port to collide with other runs.
    ``timeout_s``: how long a collective waits for the other ranks. A dead peer then ends
    the run with an error (gloo: usually at once, its connection drops; NCCL: after the
    timeout, through its watchdog) instead of a hang, and torchrun can restart the job.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device_flag == "auto":
        device = torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    elif device_flag == "cuda":
        device = torch.device(f"cuda:{local_rank}")
    else:
        device = torch.device(device_flag)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"--device: {device_flag} requested but CUDA is not available")
        torch.cuda.set_device(device)
    timeout = datetime.timedelta(seconds=timeout_s)
    if world > 1 and not dist.is_initialized():
        # torchrun --max-restarts starts each attempt's workers on the same store; keys
        # of the dead attempt (its ranks' addresses) would then be read before the new
        # ranks write theirs ("Connection refused" on the first restart).
        # A prefix per attempt keeps each attempt to its own keys.
        store, _, _ = next(dist.rendezvous("env://", rank, world, timeout=timeout))
        attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        dist.init_process_group(
            backend="nccl" if device.type == "cuda" else "gloo",
            store=dist.PrefixStore(f"fastgan/attempt-{attempt}", store),
            rank=rank, world_size=world, timeout=timeout,
        )
    if world > 1:
        return Dist(rank, world, local_rank, device,
                    control=dist.new_group(backend="gloo", timeout=timeout))
    if group_of_one and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo",
                                store=dist.HashStore(), rank=0, world_size=1)
    return Dist(rank, world, local_rank, device)


def shutdown() -> None:
    """Tear the process group down while the interpreter is whole.

    DDP wrappers caught in reference cycles (modules, phases, optimizers) would
    otherwise outlive the group and be destroyed during interpreter finalisation,
    where gloo's threads can abort the process ("terminate called without an active
    exception") and torchrun reports a finished run as failed. So: collect them
    first, then destroy the group.
    """
    if dist.is_initialized():
        gc.collect()
        ds_comm = sys.modules.get("deepspeed.comm.comm")
        if ds_comm is not None and ds_comm.cdb is not None:
            # DeepSpeed caches groups of its own (a clone of the world group); only
            # its destroy drops them, so that an engine built after a new init_process
            # group in this process does not broadcast over a destroyed group.
            ds_comm.destroy_process_group()
        else:
            dist.destroy_process_group()


def all_reduce_mean(t: torch.Tensor, d: Dist) -> torch.Tensor:
    if d.world > 1:
        t = t.clone()
        dist.all_reduce(t)
        t /= d.world
    return t


def all_reduce_sum(t: torch.Tensor, d: Dist) -> torch.Tensor:
    if d.world > 1:
        t = t.clone()
        dist.all_reduce(t)
    return t


def max_over_ranks(t: torch.Tensor, d: Dist) -> torch.Tensor:
    """``t``, element-wise maximum over ranks, in place: an any-rank flag that stays on
    the device (no host waits for it)."""
    if d.world > 1:
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t


def all_gather_object(obj, d: Dist) -> list:
    """``obj`` of every rank, in rank order, on every rank."""
    if d.world == 1:
        return [obj]
    out = [None] * d.world
    dist.all_gather_object(out, obj)
    return out


def average_in_place(tensors: list[torch.Tensor], d: Dist) -> None:
    """Average ``tensors`` over ranks, in place, in one all-reduce of their concatenation
    (in float32 when any is lower precision, so that the sum does not round)."""
    if d.world == 1 or not tensors:
        return
    flat = torch.cat([t.reshape(-1).float() for t in tensors])
    dist.all_reduce(flat)
    flat /= d.world
    offset = 0
    for t in tensors:
        t.copy_(flat[offset:offset + t.numel()].view_as(t))
        offset += t.numel()


def all_reduce_grads(module: nn.Module, d: Dist) -> None:
    """Average the gradients of ``module`` over ranks (for phases that bypass DDP)."""
    average_in_place([p.grad for p in module.parameters() if p.grad is not None], d)


def barrier(d: Dist) -> None:
    if d.world > 1:
        dist.barrier()


def check_consistent(modules: dict[str, nn.Module], d: Dist) -> None:
    """Raise if any rank's parameters differ from the others' (bitwise).

    Run before every checkpoint, as NVlabs' StyleGAN does before its snapshots: a silent
    divergence between ranks would otherwise be saved as if it were the model. Buffers
    are not compared: BatchNorm running statistics legitimately differ per rank.
    """
    if d.world == 1:
        return
    for name, module in modules.items():
        params = [p.detach().reshape(-1).float() for p in module.parameters()]
        if not params:
            continue
        flat = torch.cat(params)
        hi, lo = flat.clone(), flat.clone()
        dist.all_reduce(hi, op=dist.ReduceOp.MAX)
        dist.all_reduce(lo, op=dist.ReduceOp.MIN)
        if not torch.equal(hi, lo):
            worst = (hi - lo).abs().max().item()
            raise RuntimeError(f"ranks disagree on the parameters of {name} "
                               f"(max difference {worst:.3g}): refusing to checkpoint")
