"""``--tensorboard``: the records of metrics.jsonl and the sample grids as TensorBoard
events in RUN_DIR/tensorboard, written by rank 0. tensorboard is an optional
dependency (``pip install 'fastgan[tensorboard]'``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import UserError

# scalars grouped into TensorBoard sections; the rest go under "run/"
GROUPS = {"loss_D": "loss", "loss_G": "loss", "r1": "loss", "D(x)": "D", "D(G(z))": "D",
          "grad_G": "grad_norm", "grad_D": "grad_norm"}


class Board:
    def __init__(self, run_dir: Path, main: bool):
        """Every rank checks the import, so a missing package stops them all alike."""
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise UserError("--tensorboard needs the tensorboard package: pip install "
                            "tensorboard (or pip install 'fastgan[tensorboard]')") from None
        self.writer = SummaryWriter(str(run_dir / "tensorboard")) if main else None

    def record(self, record: dict) -> None:
        if self.writer is None:
            return
        step = record["step"]
        for k, v in record.items():
            if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool):
                self.writer.add_scalar(f"{GROUPS.get(k, 'run')}/{k}", v, step)
        self.writer.add_scalar("health/warnings", len(record.get("health", [])), step)
        self.writer.flush()

    def samples(self, path: Path, step: int) -> None:
        if self.writer is None:
            return
        with Image.open(path) as img:
            self.writer.add_image("samples", np.asarray(img.convert("RGB")), step,
                                  dataformats="HWC")
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
