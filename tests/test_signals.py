"""Stop signals sent to every process of a job, as SLURM, `timeout`, `kill -- -PGID` and
a terminal's Ctrl-C send them: the main process or every rank, their DataLoader workers
and torchrun. Real processes, real signals; see fastgan/train/preemption.py."""

from __future__ import annotations

import io
import os
import signal
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fastgan.train import checkpoint, procfs
from procs import complete_steps, start, torchrun, wait_for, workers

SHAPES = ["--data", "builtin:shapes", "--arch", "dcgan", "--res", "16", "--batch", "16",
          "--width", "8", "--lr-decay", "0", "--metric-samples", "64", "--sample-every", "0",
          "--no-progress", "--steps", "100000", "--log-every", "5"]


def _training(run: Path):
    return lambda: (run / "metrics.jsonl").exists() and (run / "metrics.jsonl").stat().st_size


def _stopped_at(log: str, by: str) -> int:
    assert f"fastgan: stopped by {by} at step " in log, log
    return int(log.split(f"stopped by {by} at step ")[1].split()[0])


def _one_checkpoint_at(run: Path, step: int) -> None:
    assert complete_steps(run) == [step]
    assert all(checkpoint.is_complete(p) for p in (run / "checkpoints").iterdir())


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1], ids=["TERM", "USR1"])
def test_signal_to_the_process_group_checkpoints_one_process(tmp_path, cache_dir, sig):
    run = tmp_path / "run"
    job = start([sys.executable, "-m", "fastgan", "train", *SHAPES, "--workers", "2",
                 "--cache-dir", cache_dir, "--out", str(run)], tmp_path / "log",
                start_new_session=True)
    wait_for(_training(run), 120, "training", job)
    assert len(procfs.children(job.pid)) >= 2  # the DataLoader workers, in the same group
    os.killpg(job.pid, sig)
    assert job.wait(60) == 0, (tmp_path / "log").read_text()
    log = (tmp_path / "log").read_text()
    assert "Traceback" not in log and "killed by signal" not in log, log
    _one_checkpoint_at(run, _stopped_at(log, f"{sig.name} on rank 0"))


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["fastgan.torchrun", "torch.distributed.run"])
def test_sigterm_to_every_process_of_a_torchrun_job(tmp_path, cache_dir, launcher):
    """As SLURM does: torchrun, both ranks and their loader workers get SIGTERM (torchrun
    starts each rank in a session of its own: one killpg per session). Both launchers
    let the ranks checkpoint at the same step; torchrun as it comes then exits 1 with
    its SignalException, fastgan.torchrun exits 0."""
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", launcher, *torchrun(
        [*SHAPES, "--workers", "2", "--cache-dir", cache_dir, "--out", str(run)])[3:]]
    job = start(cmd, tmp_path / "log", start_new_session=True)
    ranks = wait_for(lambda: (w := workers(job.pid)) and len(w) == 2 and w, 60, "2 ranks",
                     job)
    wait_for(_training(run), 120, "training", job)
    assert all(len(procfs.children(pid)) >= 2 for pid in ranks.values())  # loader workers
    for session in (job.pid, *ranks.values()):
        os.killpg(session, signal.SIGTERM)
    rc = job.wait(90)
    log = (tmp_path / "log").read_text()
    assert "killed by signal" not in log and "[rank" not in log, log
    _one_checkpoint_at(run, _stopped_at(log, "SIGTERM on rank 0, SIGTERM on rank 1"))
    if launcher == "fastgan.torchrun":
        assert rc == 0 and "Traceback" not in log, log
    else:
        assert rc == 1 and "SignalException: Process" in log, log


@pytest.mark.slow
def test_sigint_to_the_process_group_checkpoints_and_says_so(tmp_path, cache_dir):
    run = tmp_path / "run"
    job = start([sys.executable, "-m", "fastgan", "train", *SHAPES, "--workers", "2",
                 "--cache-dir", cache_dir, "--out", str(run)], tmp_path / "log",
                start_new_session=True)
    wait_for(_training(run), 120, "training", job)
    os.killpg(job.pid, signal.SIGINT)
    assert job.wait(60) == 0, (tmp_path / "log").read_text()
    log = (tmp_path / "log").read_text()
    assert "fastgan: interrupted (SIGINT): checkpointing at the next step; press Ctrl-C " \
           "again to stop at once without a checkpoint" in log, log
    assert "Traceback" not in log and "killed by signal" not in log, log
    _one_checkpoint_at(run, _stopped_at(log, "SIGINT on rank 0"))


def _slow_shard(tmp_path: Path) -> str:
    """A ``pipe:`` source whose every read waits READ_WAIT_S, then gives one batch of 16
    images; each read appends a line to ``reads`` as it starts. The pipe ignores SIGINT
    (the signal goes to the whole group), as a data source the job does not own would."""
    buf = tmp_path / "tiny.tar"
    with tarfile.open(buf, "w") as tar:
        for i in range(16):
            png = io.BytesIO()
            Image.fromarray(np.full((16, 16, 3), 16 * i, np.uint8)).save(png, "PNG")
            info = tarfile.TarInfo(f"{i:06d}.png")
            info.size = png.tell()
            png.seek(0)
            tar.addfile(info, png)
    script = tmp_path / "slow.sh"
    script.write_text(f"trap '' INT\necho read >> {tmp_path / 'reads'}\n"
                      f"sleep {READ_WAIT_S}\ncat {buf}\n")
    return f"pipe:exec sh {script}"


READ_WAIT_S = 5


def _reads(tmp_path: Path) -> int:
    path = tmp_path / "reads"
    return len(path.read_text().splitlines()) if path.exists() else 0


@pytest.mark.slow
def test_second_sigint_stops_at_once_without_a_checkpoint(tmp_path):
    """The first SIGINT comes while the loader waits for data, so the step that would
    checkpoint is seconds away; the second comes after the first was taken and later
    than a passed-on duplicate would: exit 130, nothing written."""
    run = tmp_path / "run"
    job = start([sys.executable, "-m", "fastgan", "train", "--data", _slow_shard(tmp_path),
                 *SHAPES[2:], "--log-every", "1", "--shuffle", "1", "--workers", "0",
                 "--out", str(run)], tmp_path / "log", start_new_session=True)
    wait_for(_training(run), 120, "training", job)
    reads = _reads(tmp_path)
    wait_for(lambda: _reads(tmp_path) > reads, 30, "the next read", job)
    time.sleep(1.0)  # the step before it is done: the loader waits (READ_WAIT_S)
    os.killpg(job.pid, signal.SIGINT)
    wait_for(lambda: "interrupted (SIGINT)" in (tmp_path / "log").read_text(), 10,
             "the first SIGINT's line", job)
    time.sleep(1.2)  # later than a duplicate (preemption.SAME_INTERRUPT_S)
    os.killpg(job.pid, signal.SIGINT)
    assert job.wait(30) == 130, (tmp_path / "log").read_text()
    log = (tmp_path / "log").read_text()
    assert log.rstrip().endswith("fastgan: interrupted"), log
    assert "stopped by" not in log and complete_steps(run) == [], log


def test_fastgan_torchrun_is_preemptions_torchrun():
    """``python -m fastgan.torchrun`` is train/preemption.py's torchrun, which the tests
    above run under real signals."""
    import fastgan.torchrun as entry
    from fastgan.train import preemption

    assert entry.torchrun is preemption.torchrun
