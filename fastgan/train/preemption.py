"""Pre-emption: SIGTERM or SIGUSR1 ends a run at the next step boundary, checkpointed.

Schedulers warn before they take nodes away: SLURM's ``--signal`` (USR1 by default in
``launch/slurm.sbatch``), Kubernetes and ``torchrun`` itself (which passes the SIGTERM it
gets on to its workers) send SIGTERM. The handler only notes the signal; the training
loop asks every rank at each step boundary whether any rank got one
(:func:`fastgan.train.distributed.any_rank`), so a signal that reaches a single rank
still stops all of them at the same step, and all of them checkpoint together.
"""

from __future__ import annotations

import signal
import threading

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
