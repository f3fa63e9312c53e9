"""``python -m fastgan.torchrun [torchrun options] -m fastgan train ...``: torchrun,
whose SIGTERM, SIGUSR1 and first SIGINT let the ranks checkpoint and exit 0
(``train/preemption.py``). The options are torchrun's."""

import sys

from .train.preemption import torchrun

if __name__ == "__main__":
    sys.exit(torchrun(sys.argv[1:]))
