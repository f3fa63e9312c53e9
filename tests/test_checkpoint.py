import errno
import functools
import hashlib
import logging
import os

import pytest
import torch
import torch.multiprocessing as mp

from fastgan.errors import RunError, UserError
from fastgan.train import checkpoint, distributed, resume
from procs import load_state
from ranks import free_port, set_rank_env, spawn


def _gen(step):
    return {"arch": "mlp", "kwargs": {"z_dim": 2, "width": 4}, "kind": "points",
            "dataset": "ring", "z_dim": 2, "state_dict": {"w": torch.full((2,), float(step))},
            "step": step}


def test_save_marks_complete_and_prunes(tmp_path):
    for step in (10, 20, 30, 40):
        checkpoint.save(tmp_path, step, {"step": step}, _gen(step), keep=2)
    done = checkpoint.complete(tmp_path)
    assert [p.name for p in done] == ["step-00000030", "step-00000040"]
    for p in done:
        assert (p / checkpoint.MARKER).exists()
    payload = checkpoint.load_generator(tmp_path)
    assert payload["step"] == 40
    state = load_state(done[-1])
    assert state["step"] == 40


def test_incomplete_checkpoint_is_never_loaded(tmp_path):
    checkpoint.save(tmp_path, 10, {"step": 10}, _gen(10), keep=3)
    newer = checkpoint.save(tmp_path, 20, {"step": 20}, _gen(20), keep=3)
    (newer / checkpoint.MARKER).unlink()  # as if the job died before the marker
    assert checkpoint.load_generator(tmp_path)["step"] == 10
    with pytest.raises(UserError, match="incomplete"):
        checkpoint.find_generator(newer)


def test_load_errors_name_the_path(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        checkpoint.load_generator(tmp_path / "nope")
    with pytest.raises(UserError, match="no complete checkpoint"):
        checkpoint.load_generator(tmp_path)
    bad = tmp_path / "generator.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="generator.pt"):
        checkpoint.load_generator(bad)


# ------------------------------------------------------------------ file records


def _files(ckpt):
    return {p.relative_to(ckpt).as_posix(): p.read_bytes()
            for p in sorted(ckpt.rglob("*")) if p.is_file()}


def test_complete_records_size_and_sha256_of_every_file(tmp_path):
    sharded = {"G/engine/part.pt": torch.arange(1000.), "D/engine/part.pt": torch.ones(7)}

    def write_shards(tmp):  # as DeepSpeed's engines write theirs: files of their own
        for name, tensor in sharded.items():
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            torch.save(tensor, tmp / name)

    ckpt = checkpoint.save(tmp_path, 10, {"step": 10, "w": torch.randn(100)}, _gen(10),
                           keep=2, sharded=write_shards)
    lines = (ckpt / checkpoint.MARKER).read_text().splitlines()
    assert lines[0] == "10"  # the first line is still the step alone
    recorded = checkpoint.records(ckpt)
    files = {name: data for name, data in _files(ckpt).items() if name != checkpoint.MARKER}
    assert sorted(recorded) == sorted(files) == sorted(
        [checkpoint.STATE, checkpoint.GENERATOR, *sharded])
    for name, data in files.items():
        assert recorded[name] == {"bytes": len(data),
                                  "sha256": hashlib.sha256(data).hexdigest()}, name
    assert checkpoint.verify(ckpt) == sum(len(d) for d in files.values())


def test_a_damaged_file_is_named_by_verify(tmp_path):
    ckpt = checkpoint.save(tmp_path, 10, {"step": 10, "w": torch.randn(100)}, _gen(10),
                           keep=2)
    state = ckpt / checkpoint.STATE
    good = state.read_bytes()
    flipped = bytearray(good)
    flipped[len(good) // 2] ^= 0x01  # one bit, the size unchanged
    state.write_bytes(bytes(flipped))
    with pytest.raises(checkpoint.Corrupt, match=r"state\.pt: corrupt \(its SHA-256 differs"):
        checkpoint.verify(ckpt)
    state.write_bytes(good[:1000])
    with pytest.raises(checkpoint.Corrupt, match=rf"state\.pt: corrupt \(1000 bytes where "
                                                 rf"COMPLETE records {len(good)}\)"):
        checkpoint.verify(ckpt)
    state.unlink()
    with pytest.raises(checkpoint.Corrupt, match=r"state\.pt: corrupt \(missing"):
        checkpoint.verify(ckpt)
    # generator.pt alone, as `fastgan sample` checks it, is still sound
    assert checkpoint.verify(ckpt, [checkpoint.GENERATOR]) > 0
    assert checkpoint.load_generator(ckpt)["step"] == 10


def test_an_old_complete_marker_without_a_record_is_accepted(tmp_path):
    ckpt = checkpoint.save(tmp_path, 10, {"step": 10}, _gen(10), keep=2)
    (ckpt / checkpoint.MARKER).write_text("10\n")  # what fastgan wrote before records
    assert checkpoint.records(ckpt) is None and checkpoint.verify(ckpt) is None
    assert checkpoint.complete(tmp_path) == [ckpt]
    assert checkpoint.load_generator(ckpt)["step"] == 10
    assert resume.find(tmp_path, "auto") == ckpt


def test_a_corrupt_generator_is_never_loaded_and_weights_only_never_advised(tmp_path):
    ckpt = checkpoint.save(tmp_path, 10, {"step": 10}, _gen(10), keep=2)
    gen = ckpt / checkpoint.GENERATOR
    gen.write_bytes(gen.read_bytes()[:-10])
    with pytest.raises(UserError, match=r"generator\.pt: corrupt \(\d+ bytes where"):
        checkpoint.load_generator(tmp_path)
    # a file outside a checkpoint: torch's own failure, without its advice to load it
    # with weights_only=False (which would run whatever code the file holds)
    loose = tmp_path / "code.pt"
    torch.save({"x": _RunsCode()}, loose)
    with pytest.raises(UserError) as caught:
        checkpoint.load_generator(loose)
    message = str(caught.value)
    assert message.startswith(f"{loose}: corrupt or not a fastgan checkpoint (")
    assert "weights_only" not in message and "\n" not in message
    assert "GLOBAL" in message  # what torch refused


class _RunsCode:
    def __reduce__(self):
        return (os.getcwd, ())


def test_resume_auto_moves_a_corrupt_newest_checkpoint_aside(tmp_path, caplog):
    for step in (4, 8, 12):
        checkpoint.save(tmp_path, step, {"step": step}, _gen(step), keep=3)
    root = checkpoint.checkpoint_dir(tmp_path)
    (root / "step-00000012" / checkpoint.STATE).write_bytes(b"cut")
    with caplog.at_level(logging.DEBUG, logger="fastgan"):
        assert resume.find(tmp_path, "auto") == root / "step-00000008"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [f"--resume auto: {root}/step-00000012/state.pt: corrupt (3 bytes "
                        "where COMPLETE records "
                        f"{checkpoint.records(root / 'step-00000012.corrupt')['state.pt']['bytes']}"
                        "): moved it aside to step-00000012.corrupt; trying the previous "
                        "checkpoint"]
    assert any("step-00000008 verified" in r.getMessage() for r in caplog.records)
    # kept, and out of every listing: never loaded, pruned or cleaned up
    checkpoint.save(tmp_path, 12, {"step": 12}, _gen(12), keep=2)
    checkpoint.save(tmp_path, 16, {"step": 16}, _gen(16), keep=2)
    assert sorted(p.name for p in root.iterdir()) == [
        "step-00000012", "step-00000012.corrupt", "step-00000016"]
    # --resume naming a damaged checkpoint: an error naming the file; nothing moved
    (root / "step-00000016" / checkpoint.GENERATOR).write_bytes(b"cut")
    with pytest.raises(UserError, match=r"^--resume: .*step-00000016/generator\.pt: corrupt"):
        resume.find(tmp_path, str(root / "step-00000016"))
    assert (root / "step-00000016").is_dir()


def test_resume_auto_starts_afresh_when_no_checkpoint_proves_sound(tmp_path, caplog):
    checkpoint.save(tmp_path, 4, {"step": 4}, _gen(4), keep=3)
    root = checkpoint.checkpoint_dir(tmp_path)
    (root / "step-00000004" / checkpoint.MARKER).write_text("4\n")  # no record: loaded
    (root / "step-00000004" / checkpoint.STATE).write_bytes(b"cut")
    assert resume.find(tmp_path, "auto") is None
    assert "no other checkpoint: starting afresh" in caplog.text
    assert [p.name for p in root.iterdir()] == ["step-00000004.corrupt"]


# ------------------------------------------------------------------ failed writes


class _FullDisk:
    """Pickling it fails as a write to a full disk does."""

    def __init__(self, code=errno.ENOSPC):
        self.code = code

    def __reduce__(self):
        raise OSError(self.code, os.strerror(self.code))


def test_a_write_failing_for_space_removes_its_files_and_keeps_the_others(tmp_path):
    for step in (10, 20):
        checkpoint.save(tmp_path, step, {"step": step, "w": torch.randn(1000)}, _gen(step),
                        keep=3)
    root = checkpoint.checkpoint_dir(tmp_path)
    before = {p.name: _files(p) for p in root.iterdir()}
    # state.pt whole, generator.pt cut short by the full disk
    with pytest.raises(RunError) as caught:
        checkpoint.save(tmp_path, 30, {"step": 30, "w": torch.randn(1000)},
                        {**_gen(30), "full": _FullDisk()}, keep=3)
    message = str(caught.value)
    assert sorted(p.name for p in root.iterdir()) == ["step-00000010", "step-00000020"]
    assert {p.name: _files(p) for p in root.iterdir()} == before  # byte for byte
    needed = sum(len(d) for d in before["step-00000020"].values())
    assert message.startswith(f"checkpoint of step 30 not written: no space left on device "
                              f"in {root}: it needs about {needed} bytes (")
    assert " are free; its partial files are removed; the newest complete checkpoint is " \
           f"{root}/step-00000020; free space" in message
    assert "\n" not in message


def test_another_write_error_is_one_line_too(tmp_path):
    checkpoint.save(tmp_path, 10, {"step": 10}, _gen(10), keep=3)
    root = checkpoint.checkpoint_dir(tmp_path)
    with pytest.raises(RunError) as caught:
        checkpoint.save(tmp_path, 20, {"step": 20, "x": _FullDisk(errno.EIO)}, _gen(20),
                        keep=3)
    assert str(caught.value) == (
        f"checkpoint of step 20 not written: [Errno {errno.EIO}] {os.strerror(errno.EIO)}: "
        f"{root}/.step-00000020.tmp; its partial files are removed; the newest complete "
        f"checkpoint is {root}/step-00000010")
    assert [p.name for p in root.iterdir()] == ["step-00000010"]


def test_a_bug_while_writing_keeps_its_traceback_and_its_files_are_removed(tmp_path):
    root = checkpoint.checkpoint_dir(tmp_path)
    with pytest.raises(ZeroDivisionError):
        checkpoint.save(tmp_path, 10, {"step": 10, "bug": _Bug()}, _gen(10), keep=3)
    assert list(root.iterdir()) == []


class _Bug:
    def __reduce__(self):
        return 1 / 0


def _failing_rank_worker(rank, port, tmp, failing, results):
    """Rank ``failing``'s part of the checkpoint meets a full disk."""
    set_rank_env(rank, 2, port)
    d = distributed.init("cpu", timeout_s=60)
    try:
        gather = functools.partial(distributed.all_gather_object, d=d)
        checkpoint.save(tmp, 10, {"step": 10}, _gen(10), keep=3, gather=gather,
                        is_main=d.is_main)
        full = _FullDisk()
        try:
            checkpoint.save(tmp, 20, {"step": 20, **({"x": full} if failing == "state" else {})},
                            _gen(20), keep=3, gather=gather, is_main=d.is_main,
                            sharded=functools.partial(_write_part, rank=rank,
                                                      fails=failing == rank))
            results[rank] = "no error"
        except RunError as e:
            results[rank] = str(e)
        distributed.barrier(d)  # the group still works: nobody is left behind
    finally:
        distributed.shutdown()


def _write_part(tmp, rank, fails):
    torch.save(torch.ones(10), tmp / f"part-{rank}.pt")
    if fails:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.slow
@pytest.mark.parametrize("failing", ["state", 1], ids=["rank0-state", "rank1-shard"])
def test_a_failed_write_stops_every_rank_with_the_same_line(tmp_path, failing):
    results = mp.Manager().dict()
    spawn(_failing_rank_worker, (free_port(), str(tmp_path), failing, results), 2)
    root = checkpoint.checkpoint_dir(tmp_path)
    assert results[0] == results[1]
    assert results[0].startswith("checkpoint of step 20 not written: no space left on "
                                 f"device in {root}" + (" (rank 1)" if failing == 1 else ""))
    assert [p.name for p in root.iterdir()] == ["step-00000010"]
