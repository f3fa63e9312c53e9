"""DDP and DeepSpeed across 2 real gloo ranks: ranks agree, match one process, skip NaNs
together; engine checkpoints save and load."""

import json

import pytest
import torch

from procs import load_state
from ranks import params, run_train

pytestmark = pytest.mark.slow

SHAPES = ["--width", "8", "--batch", "16", "--metric-samples", "32", "--workers", "1",
          "--log-every", "2", "--no-progress"]
RING = ["--data", "builtin:ring", "--batch", "32", "--pack", "2", "--lr-decay", "0",
        "--log-every", "3", "--no-progress", "--metric-samples", "64"]


def _assert_ranks_equal(out, step):
    p0, p1 = params(out, 0, step), params(out, 1, step)
    assert p0.keys() == p1.keys()
    for k in p0:
        assert torch.equal(p0[k], p1[k]), f"{k} differs between ranks at step {step}"


@pytest.mark.parametrize("flags", [
    ["--strategy", "ddp", "--precision", "fp32"],
    ["--strategy", "ddp", "--precision", "bf16"],
    ["--strategy", "ddp", "--precision", "fp16"],  # CPU autocast has fp16, GradScaler too
    ["--strategy", "deepspeed", "--zero", "1", "--precision", "bf16"],
    ["--strategy", "deepspeed", "--zero", "2", "--precision", "fp32"],
    ["--strategy", "ddp", "--precision", "fp16", "--loss", "rpgan", "--r2-gamma", "1",
     "--augment", "ada", "--ada-interval", "1"],
    ["--strategy", "deepspeed", "--zero", "1", "--precision", "bf16", "--loss", "rpgan",
     "--r2-gamma", "1", "--augment", "ada", "--ada-interval", "1"],
], ids=["ddp-fp32", "ddp-bf16", "ddp-fp16", "zero1-bf16", "zero2-fp32",
        "ddp-fp16-rpgan-r2-ada", "zero1-bf16-rpgan-r2-ada"])
def test_two_ranks_train_identically(tmp_path, cache_dir, flags):
    """DCGAN with BatchNorm and R1 on the shapes shards, 2 ranks: G and D (parameters and
    the synchronised BatchNorm statistics) are bitwise the same on both ranks; under the
    relativistic loss with R2 and ADA (fp16 and DeepSpeed) too."""
    run = tmp_path / "run"
    out = run_train(["--steps", "4", "--ckpt-every", "2", "--out", str(run),
                     "--cache-dir", cache_dir, *SHAPES, *flags], 2, tmp_path / "rec")
    for step in (2, 4):
        _assert_ranks_equal(out, step)
    moved = params(out, 0, 4)
    before = params(out, 0, 2)
    assert any(not torch.equal(moved[k], before[k]) for k in moved if k.startswith("G."))
    assert any(not torch.equal(moved[k], before[k]) for k in moved if k.startswith("D."))
    recs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert recs[-1]["step"] == 4 and recs[-1]["skipped_nonfinite"] == 0
    assert "r1" in recs[-1]  # the shapes preset's R1 ran (every 4 steps)
    rpgan = "rpgan" in flags
    assert ("r2" in recs[-1]) == rpgan and ("D(x,G(z))" in recs[-1]) == rpgan
    assert ("augment_p" in recs[-1]) == ("ada" in flags)


# --augment ada with p moving at every D step (0.1 kimg: by 0.08 a step at batch 8), R2
ADA_R2 = ["--augment", "ada", "--ada-interval", "1", "--ada-kimg", "0.1", "--r2-gamma", "1"]


@pytest.mark.parametrize("strategy", [["--strategy", "ddp"],
                                      ["--strategy", "deepspeed", "--zero", "1"],
                                      ["--strategy", "ddp", *ADA_R2]],
                         ids=["ddp", "zero1", "ddp-ada-r2"])
def test_two_ranks_train_stylegan2_with_r1_and_ema(tmp_path, cache_dir, strategy):
    """StyleGAN2 at 32x32 with lazy R1 (a double backward through D under the wrapper),
    its preset's path length (G's plain module, at step 4) and style mixing (in G's
    forward through the wrapper), and the EMA generator: G, D and G_ema bitwise the
    same on both ranks; with ADA and R2 too, and ADA's p, moved from 0, the same on
    both."""
    run = tmp_path / "run"
    out = run_train(["--arch", "stylegan2", "--width", "4", "--z-dim", "16", "--steps", "4",
                     "--r1-interval", "2", "--r1-gamma", "1", "--ckpt-every", "2",
                     "--out", str(run), "--cache-dir", cache_dir, *SHAPES[4:], "--batch", "8",
                     *strategy], 2, tmp_path / "rec")
    for step in (2, 4):
        _assert_ranks_equal(out, step)
    p2, p4 = params(out, 0, 2), params(out, 0, 4)
    for net in ("G.", "D.", "G_ema."):
        assert any(not torch.equal(p2[k], p4[k]) for k in p2 if k.startswith(net)), net
    recs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert "r1" in recs[-1] and "pl" in recs[-1] and recs[-1]["skipped_nonfinite"] == 0
    if "--augment" in strategy:
        assert "r2" in recs[-1] and "augment_p" in recs[-1]
        ada = load_state(run / "checkpoints" / "step-00000004")["ada"]
        assert len(ada) == 2 and torch.equal(ada[0]["p"], ada[1]["p"])
        assert torch.equal(ada[0]["r_t"], ada[1]["r_t"])
        assert 0 < float(ada[0]["p"]) <= 1


@pytest.mark.parametrize("flags, shared", [
    (["--strategy", "ddp"], []),
    (["--strategy", "ddp", "--accum", "2"], []),
    (["--strategy", "deepspeed", "--zero", "2"], []),
    (["--strategy", "deepspeed", "--zero", "2", "--accum", "2"], []),
    (["--strategy", "deepspeed", "--zero", "1"], ["--grad-clip", "0.05"]),
], ids=["ddp", "ddp-accum2", "zero2", "zero2-accum2", "zero1-clip"])
def test_two_ranks_match_one_process(tmp_path, flags, shared):
    """2 ranks with global batch B train the MLP like 1 process with batch B (same seeds,
    same data, the same ``shared`` flags: fastgan clips ZeRO's gradient partitions as
    one process clips its gradients), within float tolerance (the gradient sums run in
    another order)."""
    common = [*RING, "--steps", "12", "--ckpt-every", "12", *shared]
    one = run_train([*common, "--out", str(tmp_path / "one")], 1, tmp_path / "rec1")
    two = run_train([*common, *flags, "--out", str(tmp_path / "two")], 2, tmp_path / "rec2")
    _assert_ranks_equal(two, 12)
    p1, p2 = params(one, 0, 12), params(two, 0, 12)
    start = params(run_train([*common, "--steps", "1", "--ckpt-every", "1",
                              "--out", str(tmp_path / "zero")], 1, tmp_path / "rec0"), 0, 1)
    # Adam divides each gradient by its own running magnitude, so an element whose
    # gradient is ~0 (a dead ReLU's) may step by up to lr either way on rounding noise:
    # a few elements may differ by a fraction of one step (lr 1e-3); nearly all match
    # to 1e-5, and both runs moved ~10 steps from the start.
    diffs = torch.cat([(p1[k] - p2[k]).abs().flatten() for k in p1])
    moved = torch.cat([(p1[k] - start[k]).abs().flatten() for k in p1])
    assert diffs.max() < 5e-4, diffs.max()
    assert (diffs > 1e-5).float().mean() < 0.005, (diffs > 1e-5).float().mean()
    assert moved.max() > 5e-3 and moved.median() > 20 * diffs.median()


@pytest.mark.parametrize("strategy", [["--strategy", "ddp"],
                                      ["--strategy", "deepspeed", "--zero", "1"],
                                      ["--strategy", "deepspeed", "--zero", "2"]],
                         ids=["ddp", "zero1", "zero2"])
@pytest.mark.parametrize("loss", ["d", "g"])
def test_nan_on_one_rank_skips_the_step_on_both(tmp_path, strategy, loss):
    """A NaN in one rank's D (or G) loss at step 3: both ranks skip that network's step 3
    (its parameters stay as they were after step 2), stay identical, and count it."""
    run = tmp_path / "run"
    out = run_train([*RING, "--steps", "4", "--ckpt-every", "1", "--out", str(run),
                     *strategy], 2, tmp_path / "rec", nan={"rank": 1, "loss": loss, "call": 3})
    for step in (1, 2, 3, 4):
        _assert_ranks_equal(out, step)
    p2, p3, p4 = (params(out, 0, s) for s in (2, 3, 4))
    hit, other = ("D.", "G.") if loss == "d" else ("G.", "D.")
    assert all(torch.equal(p2[k], p3[k]) for k in p2 if k.startswith(hit))
    assert any(not torch.equal(p2[k], p3[k]) for k in p2 if k.startswith(other))
    assert any(not torch.equal(p3[k], p4[k]) for k in p3 if k.startswith(hit))
    recs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert recs[-1]["skipped_nonfinite"] == 1
    assert all(v == v for r in recs for k, v in r.items() if k.startswith("loss"))
