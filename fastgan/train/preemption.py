"""Pre-emption: SIGTERM, SIGUSR1 or SIGINT end a run at the next step boundary, checkpointed.

Schedulers warn before they take nodes away: SLURM's ``--signal`` (USR1 by default in
``launch/slurm.sbatch``), ``scancel``, Kubernetes and ``timeout`` send SIGTERM or USR1,
a terminal's Ctrl-C sends SIGINT. The handler only notes the signal; the ranks vote at
each step boundary (:class:`StopVote`), so a signal that reaches a single rank still
stops all of them at the same step, and all of them checkpoint together; then every
rank exits 0.

Who gets the signal:

* SLURM, ``timeout``, ``kill -- -PGID`` and a terminal send it to every process of the
  job (of the step, of the group). The DataLoader workers ignore all three signals
  (``data/stream.py``); their rank shuts them down when it ends. A worker killed by the
  signal would make its rank fail before it checkpoints.
* torchrun starts each rank in a session of its own, so a signal sent to torchrun's
  process group (Ctrl-C, ``kill -- -PGID``) reaches the ranks only through torchrun.
  torchrun as it comes (``torch.distributed.run``) turns SIGTERM and SIGINT into an
  exception: it passes the signal on to every rank's process group, waits
  ``--shutdown-timeout`` (30 s) for them, kills those left with SIGKILL, then ends with
  a traceback and exit status 1 whatever the ranks did; SIGUSR1 kills it outright.
  ``python -m fastgan.torchrun`` (which ``launch/torchrun.sh`` and
  ``launch/slurm.sbatch`` run) is torchrun whose agent passes SIGTERM, SIGUSR1 and the
  first SIGINT on to its ranks and goes on watching them (:class:`LauncherSignals`):
  no deadline, and it exits 0 when they exit 0 after their checkpoint.
* A rank can therefore get the same signal twice: from the scheduler and from torchrun.
  Repeated SIGTERMs and SIGUSR1s are one request. A SIGINT within
  :data:`SAME_INTERRUPT_S` of the first is the same request too; a later one stops the
  process at once, without a checkpoint (KeyboardInterrupt: ``fastgan: interrupted``,
  exit 130), as a second Ctrl-C does. The interval is measured when Python runs the
  handler, which waits for the operation under way; on a CPU whose single operations
  take seconds, a passed-on duplicate can count as a second SIGINT.
* A second Ctrl-C on a torchrun job: torchrun passes it on as torchrun itself does
  (the ranks stop at once) and ends with ``fastgan: interrupted``, exit 130.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

import numpy as np
import torch
import torch.distributed as dist

from . import procfs
from .distributed import Dist

SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)
#: Seconds after a first SIGINT within which another is the same request: a launcher
#: passing on a signal that the whole job got (SLURM signals every process of a step,
#: torchrun passes on what it gets), which arrives within milliseconds; a person who
#: reads the line below and presses Ctrl-C again takes longer.
SAME_INTERRUPT_S = 1.0
INTERRUPTED = ("fastgan: interrupted (SIGINT): checkpointing at the next step; press "
               "Ctrl-C again to stop at once without a checkpoint\n")


class SignalHandlers:
    """Context manager: while active, :data:`SIGNALS` call ``self._handle`` (in the main
    thread, where Python runs handlers; elsewhere nothing changes)."""

    def __init__(self):
        self._previous: dict[int, object] = {}

    def _handle(self, signum, frame) -> None:
        raise NotImplementedError

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for s in SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()


class StopRequest(SignalHandlers):
    """Context manager: while active, SIGTERM, SIGUSR1 and SIGINT set ``signal`` instead
    of ending the process (the first of them names the request). Repeats are the same
    request, except a SIGINT :data:`SAME_INTERRUPT_S` or more after the first, which
    raises KeyboardInterrupt (see the module's docstring).

    The first SIGINT also writes :data:`INTERRUPTED` on stderr, on local rank 0 only:
    the line is for the terminal, where every rank of a node writes."""

    def __init__(self):
        self.signal: int | None = None
        self.first_interrupt: float | None = None  # time.monotonic() of the first SIGINT
        self.announce = os.environ.get("LOCAL_RANK", "0") == "0"
        super().__init__()

    @property
    def name(self) -> str:
        return signal.Signals(self.signal).name if self.signal else ""

    def _handle(self, signum, frame) -> None:
        if signum == signal.SIGINT:
            now = time.monotonic()
            if self.first_interrupt is None:
                self.first_interrupt = now
                if self.announce:  # os.write: a handler may interrupt a print to stderr
                    os.write(sys.stderr.fileno(), INTERRUPTED.encode())
            elif now - self.first_interrupt >= SAME_INTERRUPT_S:
                raise KeyboardInterrupt
        if self.signal is None:
            self.signal = signum


class StopVote:
    """Whether any rank was asked to stop, agreed by every rank at the same step.

    The vote travels on the control group (gloo, host memory: see distributed.py), never
    through the device, and it is pipelined: each step boundary posts this rank's flag
    without waiting and takes the result of the previous boundary's vote, which is long
    done by then. So no step waits for the other ranks' hosts or for any device, and
    every rank stops at the same step: one step after the signal was noted, at the
    latest two. The result is read from the numpy array under the all-reduced tensor: a
    host value, not a device read.
    """

    def __init__(self, d: Dist):
        self.group = d.control
        self.flag = np.zeros(1, dtype=np.int32)
        self._tensor = torch.from_numpy(self.flag)  # shares the array's memory
        self._pending = None

    def __call__(self, stop_here: bool) -> bool:
        """Post this rank's flag; True once any rank's flag was set (on every rank alike)."""
        if self.group is None:  # one process
            return stop_here
        if self._pending is not None:
            self._pending.wait()
            self._pending = None
            if self.flag[0]:
                return True
        self.flag[0] = int(stop_here)
        self._pending = dist.all_reduce(self._tensor, op=dist.ReduceOp.MAX,
                                        group=self.group, async_op=True)
        return False

    def close(self) -> None:
        """Wait for the vote in flight (every rank posted the same votes, so it ends)."""
        if self._pending is not None:
            self._pending.wait()
            self._pending = None


# ------------------------------------------------------------------------ torchrun

#: The signals torchrun's own handler keeps (it turns them into an exception that ends
#: the job): those that mean "stop now", not "checkpoint and stop".
TORCHRUN_KEEPS = "SIGHUP,SIGQUIT"


class LauncherSignals(SignalHandlers):
    """In torchrun's agent process: SIGTERM, SIGUSR1 and the first SIGINT are passed on
    to every rank, and the agent goes on watching the ranks (their exit statuses make
    its own). A second SIGINT raises torchrun's SignalException, so torchrun does what
    it does on a signal: passes it on (the ranks stop at once), waits for them, ends.

    The ranks are the agent's children that lead a session of their own (torchrun
    starts each so); the signal goes to the rank alone, whose loader workers ignore it.
    Restarts (--max-restarts) are torchrun's: a rank that fails after the request is
    restarted like any other."""

    def __init__(self):
        self.interrupts = 0
        super().__init__()

    def _handle(self, signum, frame) -> None:
        if signum == signal.SIGINT:
            self.interrupts += 1
            if self.interrupts > 1:
                from torch.distributed.elastic.multiprocessing.api import SignalException

                raise SignalException(f"Process {os.getpid()} got signal: SIGINT",
                                      sigval=signal.SIGINT)
        for pid in rank_pids(os.getpid()):
            try:
                os.kill(pid, signum)
            except ProcessLookupError:  # it has just ended
                pass


def rank_pids(parent: int) -> list[int]:
    """The children of ``parent`` that lead their own session: torchrun's ranks."""
    return [pid for pid, fields in procfs.children(parent).items()
            if int(fields[procfs.SESSION]) == pid]


def torchrun(argv: list[str]) -> int:
    """``torchrun ARGV`` with :class:`LauncherSignals`; its exit status."""
    from torch.distributed import run
    from torch.distributed.elastic.multiprocessing.api import SignalException

    # first, so that an explicit --signals-to-handle in ARGV still wins
    argv = ["--signals-to-handle", TORCHRUN_KEEPS, *argv]
    with LauncherSignals():
        try:
            run.main(argv)
        except SignalException as e:
            print(f"fastgan: interrupted ({e.sigval.name}): the ranks were stopped without "
                  "a checkpoint", file=sys.stderr)
            return 130 if e.sigval == signal.SIGINT else 128 + int(e.sigval)
    return 0
