"""Checkpoints: written atomically, proved by their completion marker, pruned to K.

Layout: ``RUN/checkpoints/step-00001234/`` holding ``state.pt`` (the training state:
G, D, both optimizers or, under DeepSpeed, ``G/`` and ``D/`` with each engine's own
checkpoint, step, RNG states), ``generator.pt`` (what ``fastgan sample``
needs: G's architecture, constructor arguments and weights, loadable with
``torch.load(weights_only=True)`` anywhere) and ``COMPLETE``, written last.

A checkpoint is built under a temporary name, its files fsynced, then renamed into
place, and only then marked complete: a job that dies at any point leaves either the
previous checkpoints untouched or a directory without a marker, which is never loaded.
A write that fails (a full disk, an I/O error) removes what it wrote and stops the run
on every rank with one line (``RunError``); the complete checkpoints stay as they were.

``COMPLETE`` holds the step on its first line and, on its second, a JSON record of the
size and SHA-256 of every file of the checkpoint, so that a file damaged after the
write (a truncated copy, a flipped bit) is found before it is loaded: :func:`verify`.
A marker of the step alone (older checkpoints) carries no record and is trusted.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import RunError, UserError

log = logging.getLogger("fastgan")

MARKER = "COMPLETE"
GENERATOR = "generator.pt"
STATE = "state.pt"
# suffix of a checkpoint that --resume auto found damaged and moved aside: kept for a
# look (never deleted), and never listed, loaded or pruned (its name is no step name)
CORRUPT = ".corrupt"
_NAME = re.compile(r"^step-(\d{8})$")
_CHUNK = 4 << 20  # bytes per read when hashing: few system calls, a bounded buffer
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
# torch's C++ writer reports a failed write without its errno: a write that failed with
# less than this left free on its filesystem failed for lack of space
_NEARLY_FULL = 1 << 20
_WEIGHTS_ONLY = re.compile(r"weights[_ ]only", re.IGNORECASE)


class Corrupt(UserError):
    """A checkpoint file that differs from its COMPLETE record or does not load."""


def checkpoint_dir(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / "checkpoints"


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _alone(obj) -> list:
    """``all_gather_object`` of a single process: its own object."""
    return [obj]


class _HashingFile:
    """The file object ``torch.save`` writes into: it hashes the bytes on their way to
    disk, so that COMPLETE's record costs no second read of a large file."""

    def __init__(self, fh):
        self.fh = fh
        self.sha256 = hashlib.sha256()
        self.bytes = 0

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        size = view.nbytes
        self.sha256.update(view)
        self.bytes += size
        while view:  # an unbuffered write may take part of it; the next one raises ENOSPC
            view = view[self.fh.write(view):]
        return size

    def flush(self) -> None:  # torch.save calls it at the end; the file is unbuffered
        pass

    def record(self) -> dict:
        return {"bytes": self.bytes, "sha256": self.sha256.hexdigest()}


def _save_hashed(obj, path: Path) -> dict:
    """``torch.save(obj)`` into ``path``; the file's {'bytes', 'sha256'}."""
    # unbuffered: a full disk fails the very write that hits it, as OSError(ENOSPC)
    # (torch.save to a path reports it as a RuntimeError of its C++ writer instead)
    with open(path, "wb", buffering=0) as fh:
        out = _HashingFile(fh)
        torch.save(obj, out)
    return out.record()


def file_record(path: Path) -> dict:
    """{'bytes', 'sha256'} of a file, read once in large chunks."""
    sha256, size = hashlib.sha256(), 0
    view = memoryview(bytearray(_CHUNK))
    with open(path, "rb", buffering=0) as fh:
        while n := fh.readinto(view):
            sha256.update(view[:n])
            size += n
    return {"bytes": size, "sha256": sha256.hexdigest()}


def save(run_dir: str | os.PathLike, step: int, state: dict, generator: dict,
         keep: int, *, sharded: Callable[[Path], None] | None = None,
         gather: Callable[[object], list] = _alone, is_main: bool = True) -> Path | None:
    """Write checkpoint ``step`` and prune all but the newest ``keep`` complete ones.

    Every rank calls this. ``sharded(tmp)``, when given, runs on every rank between two
    synchronisations and writes state that each rank holds a part of (DeepSpeed's
    optimizer partitions) into the temporary directory, which is why its name carries
    no pid: every rank must find it (and a multi-node job needs a shared filesystem, as
    DeepSpeed's own checkpoints do). Rank 0 alone writes the rest and commits.

    ``gather`` is ``all_gather_object`` over the ranks. After each stage every rank
    learns whether any rank failed, so that a failed write (a full disk) removes its
    partial files and raises the same one-line RunError on every rank, rather than
    leaving the others waiting in a collective; a bug keeps its traceback on its rank.
    """
    root = checkpoint_dir(run_dir)
    write = _Write(step, root, root / f".step-{step:08d}.tmp", root / f"step-{step:08d}",
                   (state, generator), gather, is_main)
    write.settle(_attempt(_prepare, root, write.tmp) if is_main else None)
    if sharded is not None:
        write.settle(_attempt(sharded, write.tmp))
    write.settle(_attempt(_commit, root, write.tmp, write.final, step, state, generator)
                 if is_main else None)
    if not is_main:
        return None
    _prune(root, keep)
    return write.final


def _prepare(root: Path, tmp: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    _remove_unfinished(root)  # one checkpoint is written at a time: any other is dead
    tmp.mkdir()


def _commit(root: Path, tmp: Path, final: Path, step: int, state: dict,
            generator: dict) -> None:
    """Rank 0's part: the two payloads, every file's record, fsync, rename, marker."""
    files = {STATE: _save_hashed(state, tmp / STATE),
             GENERATOR: _save_hashed(generator, tmp / GENERATOR)}
    for folder, _, names in os.walk(tmp, topdown=False):
        for name in names:
            path = Path(folder) / name
            relative = path.relative_to(tmp).as_posix()
            if relative not in files:  # DeepSpeed's files, written by the engines
                files[relative] = file_record(path)
            _fsync(path)
        _fsync(Path(folder))
    if final.exists():  # an unmarked leftover of a crashed write at this very step
        shutil.rmtree(final)
    os.rename(tmp, final)
    _write_marker(final, step, files)
    _fsync(root)


def _write_marker(final: Path, step: int, files: dict) -> None:
    """COMPLETE: the step on the first line (what older fastgan wrote, all of it), the
    file record on the second. Written under another name and renamed, so that a marker
    cut short by a full disk is never taken for one."""
    part = final / f"{MARKER}.tmp"
    with open(part, "w") as fh:
        fh.write(f"{step}\n{json.dumps({'files': files}, sort_keys=True)}\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.rename(part, final / MARKER)
    _fsync(final)


def _attempt(stage: Callable, *args) -> Exception | None:
    """``stage(*args)``; the exception it raised, or None."""
    try:
        stage(*args)
    except Exception as e:  # every rank must hear of it (see save)
        return e
    return None


def _is_write_error(e: Exception) -> bool:
    # RuntimeError: torch's C++ file writer on a failed write ("basic_ios::clear",
    # "unexpected pos"), as DeepSpeed's torch.save to a path raises it
    return isinstance(e, (OSError, RuntimeError))


@dataclass(frozen=True)
class _Write:
    """One checkpoint's write, as a rank sees it."""

    step: int
    root: Path
    tmp: Path
    final: Path
    payloads: tuple
    gather: Callable[[object], list]
    is_main: bool

    def settle(self, failed: Exception | None) -> None:
        """After a stage, on every rank: nothing if every rank succeeded; else rank 0
        removes the partial write and every rank raises the same one-line RunError (a
        rank whose failure is a bug raises that instead, traceback and all)."""
        summary = None if failed is None else {
            "errno": getattr(failed, "errno", None), "reason": _first_line(failed),
            "path": getattr(failed, "filename", None), "free": _free(self.root)}
        summaries = self.gather(summary)
        if all(s is None for s in summaries):
            return
        message = None
        if self.is_main:
            rank = next(r for r, s in enumerate(summaries) if s is not None)
            message = self.failure_message(summaries[rank], rank)
        message = self.gather(message)[0]  # rank 0's words on every rank
        if failed is not None and not _is_write_error(failed):
            raise failed
        raise RunError(message)

    def failure_message(self, failure: dict, rank: int) -> str:
        """Rank 0: remove the partial write; say in one line what failed and what is
        left."""
        needed = max(_bytes_needed(self.root, self.payloads),
                     _tree_bytes(self.tmp) + _tree_bytes(self.final, unmarked=True))
        _discard(self.tmp, self.final)
        free = _free(self.root)
        code, free_then = failure["errno"], failure["free"]
        full = code in _NO_SPACE or (code is None and free_then is not None
                                     and free_then < _NEARLY_FULL)
        who = f" (rank {rank})" if rank else ""
        if full:
            what = (f"no space left on device in {self.root}{who}: it needs about "
                    f"{_size(needed)}, {_size(free)} are free")
        else:
            what = f"{failure['reason']}: {failure['path'] or self.tmp}{who}"
        done = complete(self.root.parent)
        newest = done[-1] if done else "none (no checkpoint yet)"
        return (f"checkpoint of step {self.step} not written: {what}; its partial files "
                f"are removed; the newest complete checkpoint is {newest}"
                + ("; free space, then the same command continues it" if full else ""))


def _discard(tmp: Path, final: Path) -> None:
    """The files of a failed write: the temporary directory and an unmarked final one
    (a marked checkpoint is never removed here)."""
    shutil.rmtree(tmp, ignore_errors=True)
    if final.is_dir() and not is_complete(final):
        shutil.rmtree(final, ignore_errors=True)


def _bytes_needed(root: Path, payloads: tuple) -> int:
    """About what a checkpoint takes: the newest complete one's size (same networks,
    same optimizers), else the bytes of the tensors to be written."""
    done = complete(root.parent)
    return _tree_bytes(done[-1]) if done else _tensor_bytes(payloads, set())


def _tree_bytes(path: Path, *, unmarked: bool = False) -> int:
    """Bytes of the files under ``path`` (with ``unmarked``: only if it is no complete
    checkpoint); 0 when there is no such directory."""
    if not path.is_dir() or (unmarked and is_complete(path)):
        return 0
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _free(path: Path) -> int | None:
    """Bytes free to this user on ``path``'s filesystem; None if it cannot be asked."""
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


def _tensor_bytes(obj, seen: set) -> int:
    """Bytes of the tensor storages in nested containers, each storage counted once (as
    torch.save writes it)."""
    if isinstance(obj, torch.Tensor):
        storage = obj.untyped_storage()
        if storage.data_ptr() in seen:
            return 0
        seen.add(storage.data_ptr())
        return storage.nbytes()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v, seen) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(v, seen) for v in obj)
    return 0


def _size(n: int | None) -> str:
    if n is None:
        return "unknown bytes"
    return f"{n} bytes ({n / 2**20:.1f} MiB)"


def _first_line(e: BaseException, skip: re.Pattern | None = None) -> str:
    """An exception's first line (torch's C++ errors run to many) that ``skip`` does not
    match, or its type's name."""
    lines = [line.strip() for line in str(e).splitlines()
             if line.strip() and not (skip and skip.search(line))]
    return lines[0] if lines else type(e).__name__


def is_complete(path: str | os.PathLike) -> bool:
    p = Path(path)
    return bool(_NAME.match(p.name)) and (p / MARKER).is_file()


def complete(run_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    root = checkpoint_dir(run_dir)
    if not root.is_dir():
        return []
    return sorted((p for p in root.iterdir() if is_complete(p)), key=lambda p: p.name)


def _remove_unfinished(root: Path) -> None:
    """Temporary directories and unmarked checkpoints left by writes that died."""
    for p in root.iterdir():
        if p.name.endswith(".tmp") or (_NAME.match(p.name) and not is_complete(p)):
            shutil.rmtree(p, ignore_errors=True)


def _prune(root: Path, keep: int) -> None:
    done = complete(root.parent)
    for p in done[:-keep]:
        shutil.rmtree(p, ignore_errors=True)


def find_generator(path: str | os.PathLike) -> Path:
    """A generator.pt from a run directory, a checkpoint directory or the file itself."""
    p = Path(path)
    if p.is_file():
        return p
    if (p / GENERATOR).is_file() and (p / MARKER).exists():
        return p / GENERATOR
    if p.is_dir():
        done = complete(p)
        if done:
            return done[-1] / GENERATOR
        if (p / GENERATOR).is_file():
            raise UserError(f"{path}: checkpoint is incomplete (no {MARKER} marker)")
        raise UserError(f"{path}: no complete checkpoint found")
    raise UserError(f"{path}: no such file or directory")


def records(ckpt: str | os.PathLike) -> dict | None:
    """{file: {'bytes', 'sha256'}} from a checkpoint's COMPLETE, or None for a marker
    without a record (written before fastgan kept them)."""
    marker = Path(ckpt) / MARKER
    lines = marker.read_text(errors="replace").splitlines()
    if len(lines) < 2:
        return None
    try:
        files = json.loads(lines[1])["files"]
        if all(isinstance(r["bytes"], int) and isinstance(r["sha256"], str)
               for r in files.values()):
            return files
    except (ValueError, KeyError, TypeError, AttributeError):
        pass
    raise Corrupt(f"{marker}: corrupt (its file record does not parse)")


def verify(ckpt: str | os.PathLike, names: list[str] | None = None) -> int | None:
    """Check a checkpoint's files (or only ``names``) against the sizes and SHA-256s that
    COMPLETE records: the bytes read, or None when COMPLETE holds no record (an older
    checkpoint: nothing to check against, it is trusted). Raises Corrupt naming the
    first file that is missing or differs."""
    ckpt = Path(ckpt)
    recorded = records(ckpt)
    if recorded is None:
        log.debug("%s: no file record in %s (an older checkpoint): not verified", ckpt,
                  MARKER)
        return None
    read = 0
    for name in recorded if names is None else [n for n in names if n in recorded]:
        path, want = ckpt / name, recorded[name]
        if not path.is_file():
            raise Corrupt(f"{path}: corrupt (missing; {MARKER} records {want['bytes']} "
                          "bytes)")
        size = path.stat().st_size
        if size != want["bytes"]:
            raise Corrupt(f"{path}: corrupt ({size} bytes where {MARKER} records "
                          f"{want['bytes']})")
        if file_record(path)["sha256"] != want["sha256"]:
            raise Corrupt(f"{path}: corrupt (its SHA-256 differs from the one {MARKER} "
                          "records)")
        read += size
    return read


def move_aside(ckpt: Path) -> Path:
    """Rename a damaged checkpoint to ``step-XXXXXXXX.corrupt`` (``.corrupt-2``, ... when
    taken): kept for a look, out of every listing. Never deleted: it is the user's."""
    n = 1
    while True:
        aside = ckpt.with_name(ckpt.name + CORRUPT + (f"-{n}" if n > 1 else ""))
        if not aside.exists():
            os.rename(ckpt, aside)
            return aside
        n += 1


def load_generator(path: str | os.PathLike) -> dict:
    """The generator payload: {'arch', 'kwargs', 'state_dict', 'kind', 'step', ...},
    checked against its checkpoint's record when it is in one."""
    f = find_generator(path)
    if (f.parent / MARKER).is_file():
        verify(f.parent, [f.name])
    payload = safe_load(f, "corrupt or not a fastgan checkpoint")
    if not isinstance(payload, dict) or "arch" not in payload or "state_dict" not in payload:
        raise UserError(f"{f}: not a fastgan generator checkpoint")
    return payload


def load_state(ckpt: str | os.PathLike) -> dict:
    """The training state (``state.pt``) of a complete checkpoint."""
    return safe_load(Path(ckpt) / STATE, "corrupt or not a fastgan checkpoint")


def safe_load(f: Path, what: str):
    """``torch.load`` that never runs code from the file (``weights_only``) and names the
    file when it is truncated, foreign or tampered with."""
    try:
        return torch.load(f, map_location="cpu", weights_only=True)
    except Exception as e:
        raise Corrupt(f"{f}: {what} ({_load_failure(e)})") from None


def _load_failure(e: Exception) -> str:
    """Why torch.load failed, in a few words: the first sentence of its first line that
    is not advice about ``weights_only``. That advice (load it with weights_only=False)
    would run any code a file of unknown origin holds, so it is never passed on."""
    return _first_line(e, skip=_WEIGHTS_ONLY).split(". ")[0].rstrip(".")
