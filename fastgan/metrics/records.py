"""metrics.jsonl: what a run records every ``--log-every`` steps, and how it is read.

A record holds the step's statistics (means over the steps since the last record and
over the ranks), throughput, the data and numerics counters, and what G's samples from
a fixed z score (``ModeScorer``); the health monitor (health.py) reads each record as it
is written and adds the warnings active at it. Rank 0 alone writes.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path

import torch

from .. import sampling
from ..data import builtin
from . import health

log = logging.getLogger("fastgan")

FILE = "metrics.jsonl"
# cumulative counts in a record: optimizer steps skipped on every rank for a NaN/Inf
# loss or gradient, and steps the fp16 loss scalers skipped on an overflow
SKIP_NAMES = ("skipped_nonfinite", "skipped_overflow_G", "skipped_overflow_D")


class ModeScorer:
    """G's samples from a fixed z at each record: their mode metrics (the shapes
    oracle, or PacGAN's 2-D metrics) on the embedded datasets, and their diversity
    (health.py) on any data."""

    def __init__(self, dataset: str | None, n: int, z_dim: int, seed: int, device,
                 c_dim: int = 0):
        self.dataset = dataset
        n = n if dataset is not None else health.REFERENCE
        g = torch.Generator().manual_seed(seed + 1)
        self.z = torch.randn(n, z_dim, generator=g).to(device)
        self.c = sampling.class_cycle(n, c_dim, device)  # a conditional G: every class

    def __call__(self, G, diversity: health.Diversity) -> dict:
        out = sampling.generate(G, self.z, c=self.c)
        scores = diversity(out)
        if self.dataset in builtin.POINT_SETS:
            scores.update(builtin.POINT_SETS[self.dataset]().metrics(out.numpy()))
        elif self.dataset is not None:
            modes = builtin.classify_shapes(sampling.to_uint8(out))
            scores.update(builtin.shape_mode_metrics(modes))
        return scores


class Window:
    """The steps since the last record: when they began, and the NaN/Inf skip count
    then (for the record's throughput and its warning)."""

    def __init__(self, step: int, nonfinite_skips: int):
        self.started = self.t = time.perf_counter()
        self.step, self.nonfinite_skips = step, nonfinite_skips

    def close(self, step: int, nonfinite_skips: int) -> None:
        """The record of ``step`` is taken: the next window starts."""
        self.t, self.step, self.nonfinite_skips = time.perf_counter(), step, nonfinite_skips


def make_record(step: int, batch: int, window: Window, *, stats: dict, data: dict,
                skips: dict) -> dict:
    """A line of metrics.jsonl as the window ends: the statistics (means over its steps
    and the ranks), its throughput, the data and numerics counters. The scores of G's
    samples (ModeScorer) come after it."""
    now = time.perf_counter()
    return {
        "step": step,
        "kimg": round(step * batch / 1000, 3),
        **{k: float(f"{v:.6g}") for k, v in stats.items()},
        "img_s": round((step - window.step) * batch / (now - window.t), 1),
        "elapsed_s": round(now - window.started, 2),
        **data,
        **skips,
    }


class RecordLog:
    """Rank 0's metrics.jsonl, opened for appending, with the health monitor that reads
    every record and the optional TensorBoard writer that mirrors it."""

    def __init__(self, run_dir: Path, monitor: health.HealthMonitor, board=None, *,
                 echo: bool = False):
        self.path = run_dir / FILE
        self.monitor, self.board, self.echo = monitor, board, echo
        for past in read_records(self.path):  # what the monitor saw before a checkpoint
            monitor(past)
        self.file = open(self.path, "a")

    def write(self, record: dict) -> None:
        """Add the health warnings active at ``record`` (logging those that start or
        clear), then write it."""
        step = record["step"]
        record["health"], started, cleared = self.monitor(record)
        for w in started:
            log.warning("step %d: %s", step, self.monitor.message(w, record))
        for w in cleared:
            log.info("step %d: health: %s cleared", step, health.ADVICE[w])
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        if self.board is not None:
            self.board.record(record)
        if self.echo:
            print(json.dumps(record), file=sys.stderr)

    def close(self) -> None:
        self.file.close()


def _record_lines(path: Path) -> list[str]:
    """The complete lines of a metrics.jsonl. A last line without its newline is a
    record whose write a crash cut short: not a record."""
    if not path.exists():
        return []
    return [line for line in path.read_text().split("\n")[:-1] if line.strip()]


def read_records(path: Path) -> list[dict]:
    return [json.loads(line) for line in _record_lines(path)]


def truncate_records(path: Path, step: int) -> None:
    """Keep the records up to ``step``, a checkpoint's: the resumed run trains the
    later steps again and records them anew. Replaced atomically, so that a crash here
    loses no record either."""
    if not path.exists():
        return
    keep = [line for line in _record_lines(path) if json.loads(line).get("step", 0) <= step]
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as fh:
        fh.write("".join(line + "\n" for line in keep))
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
