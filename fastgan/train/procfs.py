"""Other processes, as Linux's /proc tells them: what the run lock (runlock.py) and
fastgan.torchrun (preemption.py) need to know of a pid."""

from __future__ import annotations

from pathlib import Path

# fields of /proc/PID/stat, counted after the command name (see stat())
STATE, PARENT, SESSION, START_TIME = 0, 1, 3, 19


def stat(pid: int | str) -> list[str] | None:
    """The fields of ``/proc/PID/stat`` after the command name, which sits in parentheses
    and may hold spaces and parentheses itself; None when the process is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def children(parent: int) -> dict[int, list[str]]:
    """{pid: stat fields} of ``parent``'s living child processes."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = stat(entry.name)
            if fields is not None and int(fields[PARENT]) == parent:
                found[int(entry.name)] = fields
    return found
