"""Checkpoint faults end to end: a disk that fills up while a checkpoint is written (a
real tmpfs of a few MB, one process and two torchrun ranks), a damaged newest
checkpoint under --resume auto and --resume PATH, a damaged generator under `fastgan
sample`, and what proving a checkpoint costs. Real runs, real files, real processes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

import fastgan
from conftest import run_cli, run_fastgan
from fastgan.train import checkpoint
from procs import complete_steps, load_state, torchrun

PACKAGE = Path(fastgan.__file__).parent
RING = ["--data", "builtin:ring", "--lr-decay", "0", "--no-progress"]
MOUNTED = "fastgan-test: tmpfs mounted"
# In a mount namespace of its own (unshare -rm: no root needed where user namespaces are
# allowed, and the mount vanishes with the command): mount a tmpfs of $1 at $2, run the
# command, then copy what it left there to $3, where the test can look at it.
ON_SMALL_DISK = textwrap.dedent("""
    size=$1 disk=$2 left=$3
    shift 3
    mount -t tmpfs -o size="$size" tmpfs "$disk" || exit 97
    echo "%s" >&2
    "$@"
    rc=$?
    cp -a "$disk"/. "$left"
    exit $rc
""" % MOUNTED)


def _on_small_disk(tmp_path, size: str, cmd: list[str]) -> subprocess.CompletedProcess:
    """``cmd`` with a tmpfs of ``size`` at tmp_path/disk; its contents afterwards are
    in tmp_path/left. Skips where this machine cannot mount one."""
    if shutil.which("unshare") is None:
        pytest.skip("no unshare(1) to mount a small tmpfs with")
    disk, left = tmp_path / "disk", tmp_path / "left"
    disk.mkdir()
    left.mkdir()
    r = subprocess.run(["unshare", "-rm", "sh", "-c", ON_SMALL_DISK, "sh", size, str(disk),
                        str(left), *cmd], capture_output=True, text=True, timeout=240,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    if MOUNTED not in r.stderr:
        pytest.skip(f"cannot mount a tmpfs here (unshare -rm, mount -t tmpfs): "
                    f"{r.stderr.strip()[-200:]}")
    return r


def _assert_intact(run, newest: int) -> None:
    """Every complete checkpoint matches its record and loads; no partial write left."""
    root = checkpoint.checkpoint_dir(run)
    assert sorted(p.name for p in root.iterdir() if not checkpoint.is_complete(p)) == []
    steps = complete_steps(run)
    assert steps and steps[-1] == newest
    for ckpt in checkpoint.complete(run):
        assert checkpoint.verify(ckpt) > 0
        assert checkpoint.load_state(ckpt)["step"] == int(ckpt.name.split("-")[1])


@pytest.mark.slow
@pytest.mark.parametrize("nproc", [1, 2], ids=["one-process", "two-ranks"])
def test_disk_full_during_a_checkpoint_stops_the_run_in_one_line(tmp_path, nproc):
    """A ring run writes a 1.3 MB checkpoint every 5 steps, 3 kept, on a 4 MB disk: the
    fourth does not fit. Under two ranks rank 0 writes, and both must stop."""
    run = tmp_path / "disk" / "run"
    args = [*RING, "--steps", "40", "--ckpt-every", "5", "--log-every", "5",
            "--out", str(run)]
    cmd = (torchrun(args, nproc=2) if nproc == 2
           else [sys.executable, "-m", "fastgan", "train", *args])
    r = _on_small_disk(tmp_path, "4M", cmd)
    assert r.returncode == 1, r.stderr
    # each rank says the same line (torchrun may end rank 1 first, once rank 0 has exited)
    errors = [line for line in r.stderr.splitlines() if "fastgan train: error:" in line]
    assert 1 <= len(errors) <= nproc and len(set(errors)) == 1, r.stderr
    message = errors[0].split("error: ", 1)[1]
    left = tmp_path / "left" / "run"
    newest = complete_steps(left)[-1]
    failed = newest + 5
    root = checkpoint.checkpoint_dir(run)
    assert message.startswith(f"checkpoint of step {failed} not written: no space left on "
                              f"device in {root}: it needs about "), message
    assert (f"are free; its partial files are removed; the newest complete checkpoint is "
            f"{root}/step-{newest:08d}; free space") in message
    # no traceback through fastgan's code (torchrun reports a failed worker with one of
    # its own)
    assert str(PACKAGE) not in r.stderr, r.stderr
    assert r.stderr.count("Traceback (most recent call last)") == nproc - 1, r.stderr
    _assert_intact(left, newest)


@pytest.mark.slow
def test_a_shard_writer_failing_for_space_is_recognised(tmp_path):
    """DeepSpeed writes its shards with torch.save to a path, whose C++ writer reports a
    full disk as a RuntimeError without errno: still named as a full disk."""
    script = textwrap.dedent("""
        import json, sys, torch
        from fastgan.errors import RunError
        from fastgan.train import checkpoint
        run = sys.argv[1]
        def shards(tmp):
            torch.save(torch.zeros(2 << 20), tmp / "part.pt")  # 8 MB on a 4 MB disk
        try:
            checkpoint.save(run, 10, {"step": 10}, {}, keep=2, sharded=shards)
            print(json.dumps("no error"))
        except RunError as e:
            print(json.dumps(str(e)))
    """)
    run = tmp_path / "disk" / "run"
    r = _on_small_disk(tmp_path, "4M", [sys.executable, "-c", script, str(run)])
    assert r.returncode == 0, r.stderr
    message = json.loads(r.stdout)
    assert message.startswith("checkpoint of step 10 not written: no space left on device "
                              f"in {checkpoint.checkpoint_dir(run)}: it needs about "), message
    assert message.endswith("the newest complete checkpoint is none (no checkpoint yet); "
                            "free space, then the same command continues it")
    assert list((tmp_path / "left" / "run" / "checkpoints").iterdir()) == []


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A ring run with checkpoints at steps 4, 8 and 12, and its command line."""
    run = tmp_path_factory.mktemp("trained") / "run"
    args = [*RING, "--ckpt-every", "4", "--log-every", "4", "--out", str(run)]
    r = run_fastgan("train", *args, "--steps", "12")
    assert r.returncode == 0, r.stderr
    assert complete_steps(run) == [4, 8, 12]
    return run, args


def _copy(trained, tmp_path):
    run, args = trained
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    return copy, [a if a != str(run) else str(copy) for a in args]


@pytest.mark.slow
def test_a_corrupt_newest_checkpoint_is_moved_aside_and_the_previous_one_resumed(
        tmp_path, trained):
    run, args = _copy(trained, tmp_path)
    root = checkpoint.checkpoint_dir(run)
    state = root / "step-00000012" / checkpoint.STATE
    size = state.stat().st_size
    os.truncate(state, size // 2)
    # named by --resume: an error naming the file, and the checkpoint left where it is
    r = run_fastgan("train", *args, "--steps", "16", "--resume", str(root / "step-00000012"))
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        f"fastgan train: error: --resume: {state}: corrupt ({size // 2} bytes where "
        f"COMPLETE records {size})"]
    assert complete_steps(run) == [4, 8, 12]
    # --resume auto (a restarted or requeued job): moved aside, the one before resumed
    r = run_fastgan("train", *args, "--steps", "16")
    assert r.returncode == 0, r.stderr
    warnings = [line for line in r.stderr.splitlines() if "--resume auto:" in line]
    assert warnings == [f"fastgan: --resume auto: {state}: corrupt ({size // 2} bytes where "
                        f"COMPLETE records {size}): moved it aside to step-00000012.corrupt; "
                        "trying the previous checkpoint"]
    assert f"resuming from {root}/step-00000008 (step 8" in r.stderr
    assert complete_steps(run) == [8, 12, 16]
    assert (root / "step-00000012.corrupt" / checkpoint.STATE).stat().st_size == size // 2


@pytest.mark.slow
def test_sample_on_a_corrupt_generator_says_corrupt_and_never_weights_only(tmp_path,
                                                                             trained):
    run, _ = _copy(trained, tmp_path)
    gen = checkpoint.checkpoint_dir(run) / "step-00000012" / checkpoint.GENERATOR
    data = bytearray(gen.read_bytes())
    data[len(data) // 2] ^= 0x10  # one bit: the size is right, the hash is not
    gen.write_bytes(bytes(data))
    r = run_cli("sample", str(run), "--out", str(tmp_path / "grid.png"))
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        f"fastgan sample: error: {gen}: corrupt (its SHA-256 differs from the one COMPLETE "
        "records)"]
    # the file on its own (no record to check against): torch's failure, minus its
    # advice to load the file with weights_only=False
    loose = tmp_path / "generator.pt"
    loose.write_bytes(bytes(data[:len(data) // 2]))
    r = run_cli("sample", str(loose), "--out", str(tmp_path / "grid.png"))
    assert r.returncode == 2
    (line,) = r.stderr.strip().splitlines()
    assert line.startswith(f"fastgan sample: error: {loose}: corrupt or not a fastgan "
                           "checkpoint (")
    assert "weights_only" not in r.stderr
    assert not (tmp_path / "grid.png").exists()


@pytest.mark.slow
def test_what_verifying_a_checkpoint_costs(tmp_path):
    """Hashing happens while writing; proving a checkpoint at resume reads it once. Run
    with -s to see the figures (100 MB of weights)."""
    state = {"w": torch.randn(25_000_000)}
    t0 = time.perf_counter()
    ckpt = checkpoint.save(tmp_path, 1, state, {}, keep=2)
    t1 = time.perf_counter()
    nbytes = checkpoint.verify(ckpt)
    t2 = time.perf_counter()
    loaded = load_state(ckpt)
    t3 = time.perf_counter()
    assert nbytes == sum(f.stat().st_size for f in ckpt.iterdir()
                         if f.name != checkpoint.MARKER) > 100_000_000
    assert torch.equal(loaded["w"], state["w"])
    print(f"\ncheckpoint of {nbytes / 1e6:.0f} MB: save (hashing as it writes, fsync) "
          f"{t1 - t0:.2f} s; verify {t2 - t1:.2f} s ({nbytes / 1e9 / (t2 - t1):.2f} GB/s); "
          f"torch.load of its state.pt {t3 - t2:.2f} s (verify/load "
          f"{(t2 - t1) / (t3 - t2):.1f}x)")
