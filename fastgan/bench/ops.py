"""What a training step asks of the host, counted on any device: the ops it dispatches,
and the reads of a tensor's value back to the host among them.

On a GPU each read (``.item()``, ``.tolist()``, ``bool(t)``, ``float(t)``, ``nonzero``,
anything whose output shape depends on the data) makes the host wait until the device
has finished everything queued before it: the host cannot run ahead, and host time and
device time add up instead of overlapping. Each op costs host time to dispatch (a few
microseconds in eager PyTorch, a kernel launch on a GPU). On a CPU a read costs nothing
and an op's cost hides in its compute, so both are counted, not timed: a step
dispatches the same ops on any device.
"""

from __future__ import annotations

import collections
import functools

import torch
from torch.utils._python_dispatch import TorchDispatchMode

# aten ops that read a value back to the host, or whose output shape depends on the data
READS = frozenset({"_local_scalar_dense", "nonzero", "masked_select", "unique", "_unique2",
                   "equal", "is_nonzero"})
# Tensor methods that read the data without going through the dispatcher
READ_METHODS = ("tolist", "numpy")


class OpCounter(TorchDispatchMode):
    """Context manager: ``ops`` (aten ops dispatched) and ``reads`` (by kind) while active.

    Backward ops count too (autograd runs them under the same mode). Reads through
    ``Tensor.tolist``/``numpy`` are counted by wrapping those methods for the duration:
    they never reach the dispatcher.
    """

    def __init__(self):
        super().__init__()
        self.ops = 0
        self.reads: collections.Counter = collections.Counter()
        self._saved: dict[str, object] = {}

    @property
    def total_reads(self) -> int:
        return sum(self.reads.values())

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops += 1
        name = func.overloadpacket.__name__
        if name in READS:
            self.reads[name] += 1
        return func(*args, **(kwargs or {}))

    def __enter__(self):
        for name in READ_METHODS:
            self._saved[name] = getattr(torch.Tensor, name)
            setattr(torch.Tensor, name,
                    functools.partialmethod(_counted_read, self, name, self._saved[name]))
        return super().__enter__()

    def __exit__(self, *exc):
        for name, method in self._saved.items():
            setattr(torch.Tensor, name, method)
        self._saved.clear()
        return super().__exit__(*exc)


def _counted_read(tensor, counter: OpCounter, name: str, method, *args, **kwargs):
    """``tensor.<name>(...)`` (tolist, numpy), counted as a read."""
    counter.reads["Tensor." + name] += 1
    return method(tensor, *args, **kwargs)


def count_calls(fn, calls: int) -> OpCounter:
    """Call ``fn()`` ``calls`` times under an :class:`OpCounter`; return it."""
    with OpCounter() as counter:
        for _ in range(calls):
            fn()
    return counter
