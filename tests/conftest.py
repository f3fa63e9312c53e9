import os
import subprocess
import sys

import pytest
import torch

# The Triton kernels run on CPU tensors through Triton's interpreter, which must be
# chosen before fastgan.kernels is imported (Triton decides when it decorates a kernel).
# On a GPU machine they compile for the GPU instead.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    """One shard cache for the whole session: the embedded datasets are built once."""
    return str(tmp_path_factory.mktemp("fastgan-cache"))


def run_fastgan(*args, env=None, timeout=300, cwd=None):
    """Run ``python -m fastgan ARGS`` and return the CompletedProcess (text)."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "fastgan", *args], capture_output=True,
                          text=True, env=full_env, timeout=timeout, cwd=cwd)
