"""One run directory, one job (runlock.py), and metrics.jsonl that neither loses nor
repeats a record through stops, crashes and resumes."""

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from conftest import run_fastgan
from fastgan.cli import main as fastgan_main
from fastgan.errors import RunError, UserError
from fastgan.metrics.records import read_records
from fastgan.train import runlock
from fastgan.train.runlock import RunLock
from procs import complete_steps, start, wait_for

RING = ["--data", "builtin:ring", "--lr-decay", "0", "--no-progress"]


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()  # reaped: no zombie left to look alive
    return p.pid


def _plant(run_dir, **holder):
    """A lock file as another job would have left it."""
    run_dir.mkdir(parents=True, exist_ok=True)
    record = {"host": socket.gethostname(), "pid": os.getpid(), "job": None,
              "restarts": [0, 0], "started": "2026-01-01T00:00:00+0000", "token": "planted",
              **holder}
    (run_dir / runlock.NAME).write_text(json.dumps(record))
    return run_dir / runlock.NAME


def test_a_live_holder_is_named_and_refused(tmp_path):
    first = RunLock(tmp_path / "run")
    first.acquire()
    try:
        with pytest.raises(UserError) as e:
            RunLock(tmp_path / "run").acquire()
        msg = str(e.value)
        assert "in use by another job" in msg and f"pid {os.getpid()}" in msg
        assert socket.gethostname() in msg and "\n" not in msg
        first.ensure_held()  # the refused job took nothing
    finally:
        first.release()
    assert not (tmp_path / "run" / runlock.NAME).exists()
    assert os.listdir(tmp_path / "run") == []  # no temporary names left either


def test_a_dead_holder_on_this_host_is_taken_over(tmp_path, caplog):
    _plant(tmp_path, pid=_dead_pid())
    lock = RunLock(tmp_path)
    with caplog.at_level(logging.WARNING, logger="fastgan"):
        lock.acquire()
    assert "its process is dead" in caplog.text
    assert json.loads((tmp_path / runlock.NAME).read_text())["token"] == lock.record["token"]
    lock.release()


def test_a_reused_pid_is_not_its_holder(tmp_path):
    """Our own pid, alive, but with another start time: a reused pid, a gone holder."""
    _plant(tmp_path, pid=os.getpid(), pid_start="1")
    lock = RunLock(tmp_path)
    lock.acquire()
    lock.release()


def test_another_hosts_lock_is_taken_over_only_once_stale(tmp_path):
    path = _plant(tmp_path, host="elsewhere", pid=12345)
    with pytest.raises(UserError, match="host elsewhere, pid 12345"):
        RunLock(tmp_path).acquire()
    old = time.time() - runlock.STALE_S - 60
    os.utime(path, (old, old))
    lock = RunLock(tmp_path)
    lock.acquire()
    lock.release()


def test_an_earlier_incarnation_of_the_same_job_is_taken_over(tmp_path, monkeypatch):
    """A requeued SLURM job (same id, restarted once more), even though another host
    refreshed the lock a moment ago."""
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    _plant(tmp_path, host="elsewhere", job="slurm:4242", restarts=[0, 0])
    lock = RunLock(tmp_path)
    lock.acquire()
    lock.release()
    _plant(tmp_path, host="elsewhere", job="slurm:4243", restarts=[0, 0])  # another job
    with pytest.raises(UserError, match="job slurm:4243"):
        RunLock(tmp_path).acquire()


def test_a_job_whose_lock_was_taken_writes_no_checkpoint_nor_removes_it(tmp_path):
    lock = RunLock(tmp_path)
    lock.acquire()
    _plant(tmp_path, host="elsewhere", token="theirs")  # taken over meanwhile
    with pytest.raises(RunError, match="another job took over its lock"):
        lock.ensure_held()
    lock.release()
    assert json.loads((tmp_path / runlock.NAME).read_text())["token"] == "theirs"


def test_the_holder_refreshes_its_lock(tmp_path, monkeypatch):
    monkeypatch.setattr(runlock, "REFRESH_S", 0.05)
    lock = RunLock(tmp_path)
    lock.acquire()
    try:
        old = time.time() - 1000
        os.utime(tmp_path / runlock.NAME, (old, old))
        wait_for(lambda: time.time() - (tmp_path / runlock.NAME).stat().st_mtime < 10, 5,
                 "a refresh")
    finally:
        lock.release()


def test_a_torn_last_record_is_no_record(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 10}\n{"step": 20}\n{"step": 3')
    assert read_records(path) == [{"step": 10}, {"step": 20}]


def _steps(run):
    return [r["step"] for r in read_records(run / "metrics.jsonl")]


@pytest.mark.slow
def test_two_jobs_on_one_run_directory(tmp_path):
    """Started together: one trains, the other stops in one line naming it; one record
    per step. The winner runs until the loser has gone, then is stopped by SIGTERM."""
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "fastgan", "train", *RING, "--steps", "1000000",
           "--log-every", "100", "--out", str(run)]
    jobs = [start(cmd, tmp_path / f"log{i}") for i in (0, 1)]
    loser = wait_for(lambda: next((j for j in jobs if j.poll() is not None), None), 120,
                     "one job to be refused")
    assert loser.returncode == 2, [(tmp_path / f"log{i}").read_text() for i in (0, 1)]
    (winner,) = [j for j in jobs if j is not loser]
    wait_for(lambda: _steps(run), 120, "the winner's first record", winner)
    winner.send_signal(signal.SIGTERM)
    assert winner.wait(60) == 0
    refused = (tmp_path / f"log{jobs.index(loser)}").read_text()
    assert refused.strip().splitlines()[-1].startswith("fastgan train: error: --out: run "
                                                       f"directory {run} is in use")
    assert "Traceback" not in refused
    stopped_at = complete_steps(run)[-1]  # the SIGTERM's checkpoint
    assert _steps(run) == list(range(100, stopped_at // 100 * 100 + 1, 100))
    assert not (run / runlock.NAME).exists()  # released at the end


@pytest.mark.slow
def test_a_killed_job_is_taken_over_and_its_records_continue(tmp_path):
    """SIGKILL mid-run (a lock and perhaps a half-written record left behind): the same
    command takes over, resumes from the checkpoint and records every step once."""
    run = tmp_path / "run"
    args = [*RING, "--log-every", "50", "--ckpt-every", "200", "--out", str(run)]
    job = start([sys.executable, "-m", "fastgan", "train", *args, "--steps", "100000"],
                tmp_path / "log")
    wait_for(lambda: complete_steps(run) and max(_steps(run), default=0) > complete_steps(run)[-1],
             180, "records after a checkpoint", job)
    job.kill()
    job.wait()
    assert (run / runlock.NAME).exists()
    with open(run / "metrics.jsonl", "a") as fh:
        fh.write('{"step": 99999, "loss')  # a record torn by the kill
    ckpt = complete_steps(run)[-1]
    r = run_fastgan("train", *args, "--steps", str(ckpt + 150))
    assert r.returncode == 0, r.stderr
    assert "taking over the lock of a job that is gone" in r.stderr
    assert f"resuming from {run}/checkpoints/step-{ckpt:08d}" in r.stderr
    assert _steps(run) == list(range(50, ckpt + 151, 50))


@pytest.mark.slow
def test_a_stop_at_a_record_keeps_that_record(tmp_path):
    """SIGTERM checkpoints at the step it lands on; with a record every step, that step's
    record is written too: the resumed run starts one later, with nothing missing."""
    run = tmp_path / "run"
    args = [*RING, "--log-every", "1", "--out", str(run)]
    job = start([sys.executable, "-m", "fastgan", "train", *args, "--steps", "100000"],
                tmp_path / "log")
    wait_for(lambda: len(_steps(run)) > 20, 120, "records", job)
    job.send_signal(signal.SIGTERM)
    assert job.wait(60) == 0
    (step,) = complete_steps(run)
    assert _steps(run) == list(range(1, step + 1))
    r = run_fastgan("train", *args, "--steps", str(step + 5))
    assert r.returncode == 0, r.stderr
    assert _steps(run) == list(range(1, step + 6))


def test_resume_auto_says_so_only_when_a_run_left_records_but_no_checkpoint(tmp_path, capsys):
    run = tmp_path / "run"
    args = ["train", *RING, "--width", "16", "--steps", "2", "--out", str(run)]
    assert fastgan_main(args) == 0
    assert "--resume auto" not in capsys.readouterr().err  # a fresh run is just that
    for ckpt in (run / "checkpoints").iterdir():
        (ckpt / "COMPLETE").unlink()
    assert fastgan_main(args) == 0
    assert f"--resume auto: no complete checkpoint in {run}: starting afresh" in \
        capsys.readouterr().err
