"""Real training jobs for the fault tests: torchrun commands, their worker processes,
waiting for checkpoints, and comparing two checkpoints' training states."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from fastgan.train import checkpoint, procfs


def torchrun(args: list[str], *, nproc: int = 2, restarts: int = 0) -> list[str]:
    """The command line of ``fastgan train ARGS`` on ``nproc`` local ranks."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc-per-node={nproc}", f"--max-restarts={restarts}",
            "-m", "fastgan", "train", *args]


def start(cmd: list[str], log: Path, **kw) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", **kw.pop("env", {})}
    return subprocess.Popen(cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT, env=env,
                            **kw)


def workers(parent: int) -> dict[int, int]:
    """{rank: pid} of the training processes started by ``parent`` (torchrun)."""
    found = {}
    for pid in procfs.children(parent):
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:  # it ended meanwhile
            continue
        for var in env:
            if var.startswith(b"RANK="):
                found[int(var[5:])] = pid
    return found


def wait_for(predicate, timeout: float, what: str, proc: subprocess.Popen | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the job ended (rc {proc.returncode}) before {what}")
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def complete_steps(run: Path) -> list[int]:
    return [int(p.name.split("-")[1]) for p in checkpoint.complete(run)]


def load_state(ckpt: Path) -> dict:
    """The training state (``state.pt``) of the checkpoint directory ``ckpt``."""
    return torch.load(ckpt / checkpoint.STATE, weights_only=True)


def differences(a, b, path: str = "") -> list[str]:
    """Where two training states differ (bitwise), ignoring the config."""
    if isinstance(a, dict):
        keys = set(a) | set(b)
        return [d for k in sorted(keys, key=str) if k != "config"
                for d in differences(a.get(k), b.get(k), f"{path}.{k}")]
    if isinstance(a, (list, tuple)):
        if len(a) != len(b):
            return [f"{path}: lengths {len(a)} != {len(b)}"]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in differences(x, y, f"{path}[{i}]")]
    if isinstance(a, torch.Tensor):
        if not isinstance(b, torch.Tensor) or a.shape != b.shape:
            return [f"{path}: {b!r:.60} is not a tensor of shape {tuple(a.shape)}"]
        if not torch.equal(a, b):
            return [f"{path}: max difference {(a.double() - b.double()).abs().max():.3g}"]
        return []
    return [] if a == b else [f"{path}: {a!r:.60} != {b!r:.60}"]
