"""Several real processes over gloo: torchrun for the CLI, multiprocessing for units."""

import json
import os
import subprocess
import sys

import pytest
import torch
import torch.multiprocessing as mp

from fastgan.train import distributed
from procs import load_state
from ranks import free_port, set_rank_env, spawn


def _torchrun(args, timeout=300):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           "--nproc-per-node", "2", "-m", "fastgan", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.mark.slow
def test_torchrun_two_ranks_ring(tmp_path):
    run = tmp_path / "run"
    # --ckpt-every makes every rank compare parameters bitwise before each checkpoint:
    # a run that drifted apart fails instead of finishing.
    r = _torchrun(["train", "--data", "builtin:ring", "--steps", "30", "--batch", "64",
                   "--log-every", "10", "--ckpt-every", "10", "--no-progress",
                   "--out", str(run)])
    assert r.returncode == 0, r.stderr[-3000:]
    assert "over 2 rank(s)" in r.stderr
    recs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in recs] == [10, 20, 30]  # rank 0 alone writes


@pytest.mark.slow
def test_torchrun_two_ranks_shapes(tmp_path, cache_dir):
    run = tmp_path / "run"
    r = _torchrun(["train", "--steps", "6", "--batch", "16", "--width", "8",
                   "--log-every", "3", "--ckpt-every", "3", "--metric-samples", "32",
                   "--workers", "1", "--sampling", "exact", "--no-progress", "--out", str(run),
                   "--cache-dir", cache_dir])
    assert r.returncode == 0, r.stderr[-3000:]
    assert (run / "checkpoints" / "step-00000006" / "COMPLETE").exists()
    state = load_state(run / "checkpoints" / "step-00000006")
    ranks = state["data"]  # every rank's loader position, for a resume
    assert [r["mode"] for r in ranks] == ["exact", "exact"]
    assert all(r["epoch"] == 0 and r["batch"] == 6 and r["samples"] == 48 for r in ranks)
    assert sorted(ranks[1]["slots"]) == ["1"]  # rank 1 reads slot 1 of 2


@pytest.mark.slow
def test_uneven_batch_is_a_clear_error(tmp_path):
    r = _torchrun(["train", "--data", "builtin:ring", "--steps", "2", "--batch", "33", "--pack",
                   "1", "--no-progress", "--out", str(tmp_path / "run")])
    assert r.returncode != 0
    assert "--batch: 33 does not divide over 2 ranks" in r.stderr


def _consistency_worker(rank, port, diverge, results):
    set_rank_env(rank, 2, port)
    d = distributed.init("cpu")
    try:
        torch.manual_seed(0)
        model = torch.nn.Linear(4, 3)
        if diverge and rank == 1:
            with torch.no_grad():
                model.weight[0, 0] += 1e-6
        try:
            distributed.check_consistent({"G": model}, d)
            results[rank] = "ok"
        except RuntimeError as e:
            results[rank] = str(e)
    finally:
        distributed.shutdown()


@pytest.mark.slow  # two processes
@pytest.mark.parametrize("diverge", [False, True])
def test_check_consistent(diverge):
    results = mp.Manager().dict()
    spawn(_consistency_worker, (free_port(), diverge, results), 2)
    if diverge:
        assert all("ranks disagree on the parameters of G" in results[r] for r in (0, 1))
    else:
        assert results[0] == results[1] == "ok"
