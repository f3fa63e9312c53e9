"""``python -m fastgan`` (and so ``torchrun ... -m fastgan train``)."""

import sys

from .cli import main

sys.exit(main())
