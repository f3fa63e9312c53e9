"""Training on several real processes (gloo), started by multiprocessing, and the
helpers every such test uses: ``free_port`` and ``set_rank_env``. Also ``run_command``:
one ``fastgan`` command in a process of its own, from the same fork server.

``run_train`` starts ``world`` processes, each running ``fastgan train ARGS`` through the
real loop, and records every rank's G and D parameters at each checkpoint, so that a
test can compare ranks bitwise. A NaN can be injected into one rank's loss at one step.
"""

from __future__ import annotations

import atexit
import os
import socket
import subprocess
import sys
import time
import traceback
from pathlib import Path

import torch
import torch.multiprocessing as mp

# Rank processes start from a fork server that imported torch, DeepSpeed and the
# training loop once: a spawned interpreter would import them again for every rank
# (~4 s each here). The server forks before any torch op has run, so no thread pool is
# copied half-way. Two more imports that every rank pays at its first step otherwise:
# torch._dynamo, which the first torch optimizer imports (~2.5 s), and DeepSpeed's Muon,
# which ZeRO's optimizer check imports, bringing torch._inductor (~2.2 s). A module
# that is not there (another DeepSpeed) is skipped by the server.
PRELOAD = ["torch", "torch._dynamo", "deepspeed", "deepspeed.runtime.zero.muon.muon_optimizer",
           "fastgan.train.loop", "fastgan.cli"]


def spawn(fn, args: tuple, nprocs: int) -> None:
    """``mp.spawn``, from the fork server: ``fn(rank, *args)`` on ``nprocs`` processes,
    raising when one fails."""
    mp.set_forkserver_preload(PRELOAD)
    mp.start_processes(fn, args=args, nprocs=nprocs, start_method="forkserver")


def run_command(args: list[str], workdir: Path, timeout: float, cwd: str | None = None,
                world: int = 1) -> subprocess.CompletedProcess:
    """``python -m fastgan ARGS`` as a process of its own, forked from the fork server
    (torch and the training loop already imported: ~6 s less per command here); with
    ``world`` > 1, on that many gloo ranks, each with the rank environment torchrun gives
    (``set_rank_env``). Each process runs the command's own ``cli.main`` with its output
    in files under ``workdir``, and ends as the interpreter would: its exit code, a
    traceback and 1 for an uncaught exception, the atexit handlers run. Returns what
    ``subprocess.run`` would (text; the ranks' outputs in rank order, the first failing
    rank's exit code: a failing rank ends the others); a command still running after
    ``timeout`` seconds is killed and raises ``subprocess.TimeoutExpired``."""
    workdir.mkdir(parents=True, exist_ok=True)
    args = [str(a) for a in args]
    port = free_port() if world > 1 else None
    mp.set_forkserver_preload(PRELOAD)
    procs, outputs = [], []
    for rank in range(world):
        out, err = workdir / f"stdout{rank}", workdir / f"stderr{rank}"
        out.touch()
        err.touch()  # there even if the process dies before it opens them
        proc = mp.get_context("forkserver").Process(
            target=_command, args=(args, str(out), str(err), cwd, rank, world, port))
        proc.start()
        procs.append(proc)
        outputs.append((out, err))
    # as torchrun does: the first rank to fail ends the others (which would otherwise
    # wait in a collective until the timeout)
    deadline = time.monotonic() + timeout
    timed_out = True
    while time.monotonic() < deadline:
        codes = [proc.exitcode for proc in procs]
        if any(codes) or None not in codes:  # a rank failed, or every rank ended
            timed_out = False
            break
        time.sleep(0.05)
    for proc in procs:
        if proc.exitcode is None:
            proc.kill()
        proc.join()
    stdout = "".join(out.read_text() for out, _ in outputs)
    stderr = "".join(err.read_text() for _, err in outputs)
    if timed_out:
        raise subprocess.TimeoutExpired(["fastgan", *args], timeout, stdout, stderr)
    code = next((proc.exitcode for proc in procs if proc.exitcode), 0)
    return subprocess.CompletedProcess(["fastgan", *args], code, stdout, stderr)


def _command(args: list[str], out: str, err: str, cwd: str | None, rank: int, world: int,
             port: int | None) -> None:
    """One forked process of ``run_command``: ``fastgan ARGS`` as rank ``rank`` of
    ``world``, with stdout and stderr (the file descriptors, so that its own child
    processes write there too) in files."""
    for fd, path in ((1, out), (2, err)):
        target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(target, fd)
        os.close(target)
    sys.stdout = open(1, "w", closefd=False)               # block-buffered, as to a file
    sys.stderr = open(2, "w", buffering=1, closefd=False)  # line-buffered, as always
    if world > 1:
        set_rank_env(rank, world, port)
    if cwd is not None:
        os.chdir(cwd)
    sys.argv = ["fastgan", *args]
    from fastgan.cli import main

    try:
        code = main(args)
    except SystemExit as e:  # argparse's errors; exit codes as the interpreter reads them
        code = e.code
    except BaseException:
        traceback.print_exc()
        code = 1
    # multiprocessing ends the process with os._exit, which skips these
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    sys.exit(code)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now (for a rendezvous or MASTER_PORT)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def set_rank_env(rank: int, world: int, port: int) -> None:
    """Make this process ``rank`` of ``world`` in a local gloo group on 127.0.0.1:``port``,
    as torchrun would: MASTER_ADDR, MASTER_PORT, RANK, WORLD_SIZE, LOCAL_RANK for
    ``distributed.init`` to read, and one thread (OMP_NUM_THREADS=1, and torch's own
    setting, since torch was imported before: the fork server's)."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)


def _inject_nan(rank: int, nan: dict) -> None:
    """Make ``nan['loss']`` ('d' or 'g') NaN on ``nan['rank']`` at call ``nan['call']``
    (and every call after it with ``nan['onwards']``)."""
    if rank != nan["rank"]:
        return
    from fastgan import kernels

    name = {"d": "gan_d_loss", "g": "gan_g_loss"}[nan["loss"]]
    orig = getattr(kernels, name)
    calls = [0]

    def poisoned(*args):
        out = orig(*args)
        calls[0] += 1
        if calls[0] != nan["call"] and not (nan.get("onwards") and calls[0] > nan["call"]):
            return out
        if isinstance(out, tuple):
            return (out[0] * float("nan"), *out[1:])
        return out * float("nan")

    setattr(kernels, name, poisoned)


def _record_checkpoints(rank: int, out: Path) -> None:
    """Every rank saves its G and D parameters whenever the loop checkpoints."""
    from fastgan.train import checkpoint

    orig = checkpoint.save

    def save(run_dir, step, state, generator, keep, **kw):
        torch.save({k: state[k] for k in ("G", "D", "G_ema") if k in state},
                   out / f"rank{rank}-step{step}.pt")
        return orig(run_dir, step, state, generator, keep, **kw)

    checkpoint.save = save


def _worker(rank, world, port, args, out, nan, errors):
    set_rank_env(rank, world, port)
    try:
        from fastgan import cli
        from fastgan.train.loop import train

        _record_checkpoints(rank, Path(out))
        if nan:
            _inject_nan(rank, nan)
        cfg = cli.train_config(cli.build_parser().parse_args(["train", *args]))
        train(cfg)
    except BaseException:
        errors[rank] = traceback.format_exc()
        raise


def run_train(args: list[str], world: int, out: Path, nan: dict | None = None) -> Path:
    """Run ``fastgan train ARGS`` on ``world`` processes; returns ``out`` (the records)."""
    out.mkdir(parents=True, exist_ok=True)
    errors = mp.Manager().dict()
    try:
        spawn(_worker, (world, free_port(), args, str(out), nan, errors), world)
    except Exception as e:
        raise AssertionError(f"training failed: {dict(errors) or e}") from None
    return out


def params(out: Path, rank: int, step: int) -> dict[str, torch.Tensor]:
    """{'G.name': tensor, 'D.name': tensor, 'G_ema.name': ...} of one rank at one
    checkpoint."""
    rec = torch.load(out / f"rank{rank}-step{step}.pt", weights_only=True)
    return {f"{net}.{k}": v for net in rec for k, v in rec[net].items()
            if v.is_floating_point()}
