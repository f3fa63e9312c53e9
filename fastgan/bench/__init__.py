"""``fastgan bench``: throughput measured against baselines and physical limits, each
ratio from one run (these machines are too noisy to compare runs)."""

from __future__ import annotations

import dataclasses

from ..config import base_type, flag_name, int_flag


def options_from_args(cls, args):
    """The options dataclass ``cls`` from argparse's namespace: every integer field (an
    ``int`` annotation, optional or not) parsed by config.int_flag, named by its flag."""
    values = {}
    for f in dataclasses.fields(cls):
        value = getattr(args, f.name)
        if value is not None and base_type(f) == "int":
            value = int_flag(value, flag_name(f))
        values[f.name] = value
    return cls(**values)
