import contextlib
import io
import os
import subprocess
import sys
import tempfile
from pathlib import Path

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


def run_fastgan(*args, env=None, timeout=300, cwd=None, ranks=1):
    """Run ``python -m fastgan ARGS`` and return the CompletedProcess (text): a process
    forked from the tests' fork server (``ranks.run_command``), or ``ranks`` of them as
    the ranks of one gloo job; with an ``env`` of its own, a new interpreter, since
    imports may read the environment."""
    if env is None:
        from ranks import run_command

        with tempfile.TemporaryDirectory(prefix="fastgan-command-") as workdir:
            return run_command(list(args), Path(workdir), timeout, cwd, world=ranks)
    assert ranks == 1, "several ranks are forked: no env of their own"
    return subprocess.run([sys.executable, "-m", "fastgan", *args], capture_output=True,
                          text=True, env={**os.environ, **env}, timeout=timeout, cwd=cwd)


def run_cli(*args, cwd=None) -> subprocess.CompletedProcess:
    """``fastgan ARGS`` in this process, through the same ``cli.main`` as the command:
    no interpreter and no torch import to pay for (~4 s a call here). For commands that
    stop before training (dry runs, bad input, eval, report, sample); a training run keeps
    a process of its own (``run_fastgan``), as it changes process-wide state. An uncaught
    exception is raised here, so it fails the test as a traceback on stderr would."""
    from fastgan.cli import main

    out, err = io.StringIO(), io.StringIO()
    here = os.getcwd()
    try:
        os.chdir(cwd or here)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main([str(a) for a in args])
    except SystemExit as e:  # argparse's errors
        code = e.code if isinstance(e.code, int) else 1
    finally:
        os.chdir(here)
    return subprocess.CompletedProcess(["fastgan", *args], code, out.getvalue(),
                                       err.getvalue())
