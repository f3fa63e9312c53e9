"""One run directory, one job: ``RUN/run.lock`` names the job that trains in it.

Two jobs on one run directory (the same command started twice, a requeued SLURM job
while the old one still runs) would both resume from the same checkpoint and then
write the same steps' checkpoints and records over each other. So rank 0 takes the lock
before anything in the run directory is read or written, refreshes it while the job
runs and removes it when the job ends, however it ends short of SIGKILL.

The lock file holds the holder's host, pid, process start time, job identity and the
time it was taken, as JSON; it appears whole or not at all (written under another name,
then hard-linked into place: link never replaces a file, on local disks and NFS alike).
A second job finds it and stops with one line naming the holder. A lock whose holder is
gone is taken over with a warning, so that restarts continue as they always did:

- its pid is dead on this host (or is another process now: the start time differs);
- it is an earlier incarnation of this very job: the same SLURM job id or torchrun run
  id, restarted fewer times (SLURM starts a requeued job only after the old one ended;
  torchrun restarts its workers only after stopping them all, and after a multi-node
  restart rank 0 may run on another host);
- another host holds it and has not refreshed it for ``STALE_S`` (its node died: a
  shared filesystem cannot tell us more). Hosts' clocks must agree to well within that.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from pathlib import Path

from ..errors import RunError, UserError
from . import procfs

log = logging.getLogger("fastgan")

NAME = "run.lock"
REFRESH_S = 30.0  # the holder touches the lock this often...
STALE_S = 300.0  # ...and another host takes it over after this long without a touch


def _process_start(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (clock ticks since boot), or None if it is
    gone or a zombie: a pid and its start time name one process, even after the pid is
    reused."""
    fields = procfs.stat(pid)
    if fields is None or fields[procfs.STATE] == "Z":
        return None
    return fields[procfs.START_TIME]


def _pid_alive(pid: int, start: str | None) -> bool:
    if not Path("/proc/self/stat").exists():  # no procfs: the pid alone must do
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # another user's process
            pass
        return True
    now = _process_start(pid)
    return now is not None and (start is None or now == start)


def job_identity() -> tuple[str | None, list[int]]:
    """(the scheduler's id of this job, how often it was restarted), from SLURM's and
    torchrun's environment: what stays the same across requeues and restarts."""
    env = os.environ
    parts = [f"slurm:{env['SLURM_JOB_ID']}" if env.get("SLURM_JOB_ID") else "",
             f"torchrun:{env['TORCHELASTIC_RUN_ID']}" if env.get("TORCHELASTIC_RUN_ID") else ""]
    job = " ".join(p for p in parts if p) or None
    restarts = [int(env.get("SLURM_RESTART_COUNT", 0) or 0),
                int(env.get("TORCHELASTIC_RESTART_COUNT", 0) or 0)]
    return job, restarts


def _holder_record(path: Path) -> dict:
    """A lock file's record; one that cannot be read names no one (and ages like any
    other). FileNotFoundError when there is no such lock."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise
    except (OSError, ValueError):
        return {"host": "?", "pid": "?", "started": "?"}


def describe(holder: dict) -> str:
    return (f"host {holder.get('host')}, pid {holder.get('pid')}"
            + (f", job {holder['job']}" if holder.get("job") else "")
            + f", started {holder.get('started')}")


class RunLock:
    """``acquire()`` on rank 0 before the run directory is touched; ``release()`` at the
    end; ``ensure_held()`` before writing a checkpoint."""

    def __init__(self, run_dir: str | os.PathLike):
        self.path = Path(run_dir) / NAME
        job, restarts = job_identity()
        self.record = {
            "host": socket.gethostname(), "pid": os.getpid(),
            "pid_start": _process_start(os.getpid()), "job": job, "restarts": restarts,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "token": uuid.uuid4().hex,
        }
        self._stop = threading.Event()
        self._refresher: threading.Thread | None = None
        self.held = False

    # -- taking it ------------------------------------------------------------------

    def acquire(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"--out: cannot create run directory {self.path.parent}: "
                            f"{e.strerror or e}") from None
        for _ in range(10):  # each round ends taken, refused, or with a gone holder moved
            if self._link_into_place():
                self.held = True
                self._refresher = threading.Thread(target=self._refresh_loop,
                                                   name="fastgan-run-lock", daemon=True)
                self._refresher.start()
                return
            holder, age = self._read()
            if holder is None:
                continue  # removed between our link and our read: try again
            why_gone = self._why_gone(holder, age)
            if why_gone is None:
                raise UserError(
                    f"--out: run directory {self.path.parent} is in use by another job "
                    f"({describe(holder)}; lock {self.path} refreshed {age:.0f} s ago); "
                    "wait for it to end, or choose another --out")
            if self._move_aside(holder):
                log.warning("run directory %s: taking over the lock of a job that is gone "
                            "(%s: %s)", self.path.parent, describe(holder), why_gone)
        raise UserError(f"--out: could not take the lock {self.path}: other jobs keep "
                        "taking it")

    def _link_into_place(self) -> bool:
        tmp = self.path.with_name(f"{NAME}.{self.record['token']}")
        try:
            with open(tmp, "w") as fh:
                json.dump(self.record, fh)
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as e:
            raise UserError(f"--out: cannot write the lock {tmp}: {e.strerror or e}") from None
        try:
            os.link(tmp, self.path)
            return True
        except FileExistsError:
            return False
        finally:
            tmp.unlink()

    def _read(self) -> tuple[dict | None, float]:
        """The holder's record and the seconds since it was last refreshed."""
        try:
            age = time.time() - self.path.stat().st_mtime
            return _holder_record(self.path), age
        except FileNotFoundError:
            return None, 0.0

    def _why_gone(self, holder: dict, age: float) -> str | None:
        """Why the holder no longer runs, or None if it may."""
        mine = self.record
        if holder.get("job") and holder.get("job") == mine["job"] \
                and list(holder.get("restarts", [])) < mine["restarts"]:
            return "an earlier incarnation of this job"
        if holder.get("host") == mine["host"] and isinstance(holder.get("pid"), int):
            if not _pid_alive(holder["pid"], holder.get("pid_start")):
                return "its process is dead"
            return None
        if age > STALE_S:
            return f"not refreshed for {age:.0f} s (over {STALE_S:.0f} s)"
        return None

    def _move_aside(self, holder: dict) -> bool:
        """Rename the gone holder's lock away, unless another job replaced it meanwhile
        (then put that one back). True when the gone holder's lock is gone."""
        aside = self.path.with_name(f"{NAME}.gone-{self.record['token']}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return False  # another job moved it first
        moved = _holder_record(aside)
        if moved.get("token") != holder.get("token"):
            try:  # a live lock taken since we read: back where it was
                os.link(aside, self.path)
            except FileExistsError:
                pass
            aside.unlink(missing_ok=True)
            return False
        aside.unlink(missing_ok=True)
        return True

    # -- holding it -----------------------------------------------------------------

    def _refresh_loop(self) -> None:
        while not self._stop.wait(REFRESH_S):
            if self._mine():
                try:
                    os.utime(self.path)
                except OSError:
                    pass  # a passing filesystem hiccup; the next touch may succeed

    def _mine(self) -> bool:
        holder, _ = self._read()
        return holder is not None and holder.get("token") == self.record["token"]

    def ensure_held(self) -> None:
        """Before a checkpoint: stop rather than write into a run another job took."""
        if self.held and not self._mine():
            holder, _ = self._read()
            raise RunError(f"run directory {self.path.parent}: another job took over its "
                           f"lock ({describe(holder) if holder else 'lock removed'}); "
                           "stopping without writing a checkpoint")

    def release(self) -> None:
        self._stop.set()
        if self._refresher is not None:
            self._refresher.join()
            self._refresher = None
        if self.held and self._mine():
            self.path.unlink(missing_ok=True)
        self.held = False
