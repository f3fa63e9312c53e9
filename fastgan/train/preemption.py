"""Pre-emption: SIGTERM or SIGUSR1 ends a run at the next step boundary, checkpointed.

Schedulers warn before they take nodes away: SLURM's ``--signal`` (USR1 by default in
``launch/slurm.sbatch``), Kubernetes and ``torchrun`` itself (which passes the SIGTERM it
gets on to its workers) send SIGTERM. The handler only notes the signal; the ranks
vote at each step boundary (:class:`StopVote`), so a signal that reaches a single rank
still stops all of them at the same step, and all of them checkpoint together.
"""

from __future__ import annotations

import signal
import threading

import numpy as np
import torch
import torch.distributed as dist

from .distributed import Dist

SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class StopRequest:
    """Context manager: while active, SIGTERM and SIGUSR1 set ``signal`` instead of
    ending the process. A second signal of the same kind is not special: the run still
    stops at the step boundary (torchrun kills its workers 30 s after its SIGTERM)."""

    def __init__(self):
        self.signal: int | None = None
        self._previous: dict[int, object] = {}

    @property
    def name(self) -> str:
        return signal.Signals(self.signal).name if self.signal else ""

    def _handle(self, signum, frame) -> None:
        if self.signal is None:
            self.signal = signum

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():  # signals need it
            for s in SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()


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
