"""Measuring in turns: what makes a ratio between two pipelines trustworthy here."""

from __future__ import annotations

import time

ROUNDS = 3


class Meter:
    """One pipeline under measurement: ``take()`` processes a batch and returns its size.

    Pipelines are measured in turns (``ROUNDS`` slices each), so that a machine whose
    speed drifts (shared cores) shifts them alike and the ratios hold. A loader paused
    while another is measured fills its prefetch queue; those batches are taken untimed
    (``drain``) before each slice, or discarded by ``flush``. ``sync`` waits for the
    device (CUDA runs ahead of the host) at the start and end of a slice.

    ``host_seconds`` is the time the host took to issue the batches of the slices,
    without the wait for the device at their ends: on a GPU, when it is well below
    ``seconds`` the host runs ahead and the device sets the pace; on a CPU the two agree.
    """

    def __init__(self, take, drain: int = 0, sync=lambda: None, flush=lambda: None):
        self.take, self.drain, self.sync, self.flush = take, drain, sync, flush
        self.images, self.steps, self.seconds, self.host_seconds = 0, 0, 0.0, 0.0

    def measure(self, seconds: float) -> None:
        for _ in range(self.drain):
            self.take()
        self.sync()
        start = time.perf_counter()
        while time.perf_counter() - start < seconds:
            self.images += self.take()
        self.sync()
        self.seconds += time.perf_counter() - start

    def measure_steps(self, steps: int) -> None:
        """A fixed number of batches: what ranks that step together must do.

        ``flush()`` runs first, untimed: e.g. emptying a loader's prefetch queue, filled
        while another pipeline was measured, so that its workers work while timed.
        """
        self.flush()
        self.sync()
        start = time.perf_counter()
        for _ in range(steps):
            self.images += self.take()
        issued = time.perf_counter()
        self.sync()
        self.seconds += time.perf_counter() - start
        self.host_seconds += issued - start
        self.steps += steps

    def reset(self) -> None:
        self.images, self.steps, self.seconds, self.host_seconds = 0, 0, 0.0, 0.0

    @property
    def host_ms(self) -> float:
        """Host milliseconds to issue one batch (measure_steps slices only)."""
        return 1e3 * self.host_seconds / max(self.steps, 1)

    @property
    def rate(self) -> float:
        return self.images / self.seconds
