"""Resume and faults: exact resume (1 process, 2 DDP ranks, DeepSpeed ZeRO-1), SIGTERM
and SIGUSR1 pre-emption, a rank killed under torchrun --max-restarts, a checkpoint
writer killed mid-write, a stuck peer, repeated NaN losses, and the choice of what to
resume. All with real processes, real gloo groups and real checkpoint files."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from conftest import run_cli, run_fastgan
from fastgan.errors import UserError
from fastgan.train import checkpoint, resume
from procs import complete_steps, differences, load_state, start, torchrun, wait_for, workers
from ranks import run_train

QUICK = ["--lr-decay", "0", "--metric-samples", "64", "--sample-every", "0", "--no-progress",
         "--deterministic"]
DCGAN = ["--data", "builtin:shapes", "--batch", "16", "--width", "8", *QUICK]
# ADA's p moves every 3 D steps (the checkpoint at step 4 holds a count mid-interval);
# path length every 2 steps over 2 micro-batches (pl_mean moves twice a G reg) and style
# mixing: the running mean of the path lengths must come back too
STYLEGAN2 = ["--data", "builtin:shapes", "--arch", "stylegan2", "--res", "16", "--width", "4",
             "--z-dim", "16", "--batch", "8", "--accum", "2",
             "--augment", "ada", "--ada-interval", "3", "--ada-kimg", "0.1",
             "--r1-interval", "2", "--pl-weight", "2", "--pl-interval", "2",
             "--style-mixing", "0.9", *QUICK]
RING = ["--data", "builtin:ring", "--lr-decay", "0", "--no-progress"]


def _resumed_equals_straight(tmp_path, launch, args, n):
    """Train 2n steps straight; train n, stop, resume, train n more: the same state."""
    every = ["--ckpt-every", str(n), "--log-every", str(n)]
    straight, split = tmp_path / "straight", tmp_path / "split"
    for out, steps in ((straight, 2 * n), (split, n), (split, 2 * n)):
        r = launch([*args, *every, "--steps", str(steps), "--out", str(out)])
        assert r.returncode == 0, r.stdout + r.stderr
    assert f"resuming from {split}/checkpoints/step-{n:08d}" in r.stdout + r.stderr
    ckpt = f"checkpoints/step-{2 * n:08d}"
    return differences(load_state(straight / ckpt), load_state(split / ckpt))


@pytest.mark.slow
@pytest.mark.parametrize("args", [[*DCGAN, "--augment", "diffaug"], STYLEGAN2],
                         ids=["dcgan-diffaug", "stylegan2-ada-pl-mixing-accum2"])
def test_exact_resume_one_process(tmp_path, cache_dir, args):
    """Weights, EMA, both optimizers, schedulers, RNG, latent and loader streams: all
    bitwise equal (DCGAN: DiffAugment; StyleGAN2: noise inputs, ADA's augmentations and
    p, lazy R1, EMA, path length and its running mean, style mixing)."""
    diff = _resumed_equals_straight(
        tmp_path, lambda a: run_fastgan("train", *a, "--cache-dir", cache_dir), args, 4)
    assert diff == []


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "deepspeed"])
def test_exact_resume_two_ranks(tmp_path, cache_dir, strategy):
    """2 gloo ranks: DDP bitwise (DCGAN with BatchNorm and R1 on image shards, each
    rank's loader position); DeepSpeed ZeRO-1 within float tolerance (the MLPs on the
    ring, whose start is quicker: measured bitwise too)."""
    args = ([*DCGAN, "--r1-gamma", "0.1", "--r1-interval", "2", "--cache-dir", cache_dir]
            if strategy == "ddp" else [*RING, "--deterministic"])
    args += ["--strategy", strategy, "--zero", "1"]

    def launch(a):
        return run_fastgan("train", *a, ranks=2)

    diff = _resumed_equals_straight(tmp_path, launch, args, 4)
    if strategy == "ddp":
        assert diff == []
    else:  # only float differences of the weights would be tolerated, none seen
        assert all("max difference" in d and float(d.rsplit(" ", 1)[1]) < 1e-6 for d in diff)


@pytest.mark.slow
def test_sigterm_on_one_rank_stops_every_rank_with_a_checkpoint(tmp_path):
    run = tmp_path / "run"
    job = start(torchrun([*RING, "--steps", "100000", "--log-every", "100",
                          "--out", str(run)]), tmp_path / "log")
    ranks = wait_for(lambda: (w := workers(job.pid)) and len(w) == 2 and w, 60, "2 ranks",
                     job)
    wait_for(lambda: (run / "metrics.jsonl").exists() and (run / "metrics.jsonl").stat().st_size,
             120, "training", job)
    os.kill(ranks[1], signal.SIGTERM)  # rank 1 alone
    assert job.wait(120) == 0
    log = (tmp_path / "log").read_text()
    assert "stopped by SIGTERM on rank 1 at step" in log, log
    step = int(log.split("stopped by SIGTERM on rank 1 at step ")[1].split()[0])
    assert 100 <= step < 100000 and complete_steps(run) == [step]
    assert not [p for p in (run / "checkpoints").iterdir() if not checkpoint.is_complete(p)]
    # the same command continues it (here with a shorter goal, to end the test)
    r = run_fastgan("train", *RING, "--steps", str(step + 20), "--log-every", "10",
                    "--out", str(run))
    assert r.returncode == 0 and f"resuming from {run}/checkpoints/step-{step:08d}" in r.stderr


@pytest.mark.slow
def test_sigusr1_checkpoints_a_single_process(tmp_path):
    run = tmp_path / "run"
    job = start([sys.executable, "-m", "fastgan", "train", *RING, "--steps", "100000",
                 "--log-every", "100", "--out", str(run)], tmp_path / "log")
    wait_for(lambda: (run / "metrics.jsonl").exists() and (run / "metrics.jsonl").stat().st_size,
             120, "training", job)
    job.send_signal(signal.SIGUSR1)
    assert job.wait(60) == 0
    log = (tmp_path / "log").read_text()
    assert "stopped by SIGUSR1 on rank 0" in log and "--resume auto" in log, log
    (step,) = complete_steps(run)
    assert step >= 100


@pytest.mark.slow
def test_killed_rank_restarts_and_resumes_under_max_restarts(tmp_path):
    run = tmp_path / "run"
    every = 100
    job = start(torchrun([*RING, "--steps", "800", "--ckpt-every", str(every),
                          "--log-every", "100", "--out", str(run)], restarts=1),
                tmp_path / "log")
    wait_for(lambda: len(complete_steps(run)) >= 2, 120, "two checkpoints", job)
    ranks = workers(job.pid)
    killed_at = complete_steps(run)[-1]
    os.kill(ranks[1], signal.SIGKILL)
    assert job.wait(240) == 0
    log = (tmp_path / "log").read_text()
    assert "torchrun restart 1" in log, log
    resumed = int(log.split(f"resuming from {run}/checkpoints/step-")[1][:8])
    # the newest complete checkpoint when the rank died (no step lost beyond the interval)
    assert killed_at <= resumed < killed_at + 2 * every
    assert complete_steps(run)[-1] == 800
    assert all(checkpoint.is_complete(p) for p in (run / "checkpoints").iterdir())


# The writer is killed (SIGKILL, by itself, at a chosen point of the write) while it
# writes the step-8 checkpoint: while its files are written, or after the rename,
# before the completion marker.
KILLER = textwrap.dedent("""
    import os, signal, sys
    import fastgan.train.checkpoint as c
    where = sys.argv[1]
    if where == "files":
        real = c._fsync
        def fsync(path):
            if ".step-00000008.tmp" in str(path):
                os.kill(os.getpid(), signal.SIGKILL)
            real(path)
        c._fsync = fsync
    else:
        real = os.rename
        def rename(a, b):
            real(a, b)
            if str(b).endswith("step-00000008"):
                os.kill(os.getpid(), signal.SIGKILL)
        c.os.rename = rename
    from fastgan.cli import main
    sys.exit(main(sys.argv[2:]))
""")


@pytest.mark.slow
@pytest.mark.parametrize("where", ["files", "marker"])
def test_writer_killed_mid_checkpoint_resumes_from_the_previous_one(tmp_path, where):
    run = tmp_path / "run"
    args = ["train", *RING, "--steps", "12", "--ckpt-every", "4", "--log-every", "4",
            "--out", str(run)]
    r = subprocess.run([sys.executable, "-c", KILLER, where, *args], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == -signal.SIGKILL, r.stderr
    assert complete_steps(run) == [4]
    leftover = ".step-00000008.tmp" if where == "files" else "step-00000008"
    assert (run / "checkpoints" / leftover).is_dir()  # a dead write, never to be loaded
    r = run_fastgan("train", *args[1:])
    assert r.returncode == 0, r.stderr
    assert f"resuming from {run}/checkpoints/step-00000004 (step 4" in r.stderr
    assert complete_steps(run) == [4, 8, 12]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        "step-00000004", "step-00000008", "step-00000012"]  # no dead write left


# A bug: the GAN step raises at step 3, with the loader's workers running.
FAULTY_STEP = textwrap.dedent("""
    import sys
    from fastgan.train.phases import GANStep
    real_step = GANStep.__call__
    def step(self, real, z, n, c=None):
        if n == 3:
            raise RuntimeError("a bug in the step")
        return real_step(self, real, z, n, c)
    GANStep.__call__ = step
    from fastgan.cli import main
    sys.exit(main(sys.argv[1:]))
""")


@pytest.mark.slow
def test_an_unexpected_error_ends_the_process_with_its_traceback(tmp_path, cache_dir):
    """The loader's workers ignore the stop signals, so the interpreter's exit cannot end
    them with SIGTERM: the loop stops them itself, or a run that fails would hang."""
    args = ["train", "--data", "builtin:shapes", "--width", "8", "--batch", "16",
            "--workers", "2", "--steps", "10", "--no-progress", "--cache-dir", cache_dir,
            "--out", str(tmp_path / "run")]
    r = subprocess.run([sys.executable, "-c", FAULTY_STEP, *args], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 1, r.stderr
    assert "RuntimeError: a bug in the step" in r.stderr


@pytest.mark.slow
def test_a_stuck_peer_ends_the_run_with_an_error(tmp_path):
    """Rank 1 stops answering (SIGSTOP): rank 0's collective times out (--timeout 5)
    and fails, where it would otherwise wait for ever."""
    job = start(torchrun([*RING, "--steps", "100000", "--timeout", "5", "--log-every", "100",
                          "--out", str(tmp_path / "run")]), tmp_path / "log")
    ranks = wait_for(lambda: (w := workers(job.pid)) and len(w) == 2 and w, 60, "2 ranks",
                     job)
    wait_for(lambda: "img_s" in (tmp_path / "log").read_text(), 120, "training", job)
    os.kill(ranks[1], signal.SIGSTOP)
    t0 = time.monotonic()
    try:
        # gloo words it by where rank 0 waited ("Timed out waiting 5000ms for recv",
        # "Application timeout caused pair closure")
        wait_for(lambda: "[rank0]: RuntimeError" in (tmp_path / "log").read_text(),
                 90, "rank 0 to fail", job)
        waited = time.monotonic() - t0
    finally:
        try:
            os.kill(ranks[1], signal.SIGKILL)
        except ProcessLookupError:  # torchrun ended it already
            pass
        job.wait(60)
    assert job.returncode != 0
    assert waited < 30  # 5 s of timeout, and the step that was under way


@pytest.mark.slow
def test_repeated_nonfinite_losses_stop_the_run_and_keep_good_checkpoints(tmp_path):
    run = tmp_path / "run"
    args = [*RING, "--steps", "40", "--ckpt-every", "5", "--log-every", "5",
            "--max-nonfinite", "3", "--out", str(run)]
    # D's loss is NaN from its 12th call (step 12) on
    with pytest.raises(AssertionError, match="--max-nonfinite: NaN/Inf losses in 3 "
                       "consecutive steps \\(to step 14\\)"):
        run_train(args, 1, tmp_path / "rec", nan={"rank": 0, "loss": "d", "call": 12,
                                                     "onwards": True})
    assert complete_steps(run) == [5, 10]  # nothing written once the losses went bad


def test_which_checkpoint_to_resume(tmp_path):
    run = tmp_path / "run"
    assert resume.find(run, "auto") is None  # a new run
    for step in (4, 8):
        checkpoint.save(run, step, {"step": step}, {}, keep=3)
    (run / "config.json").write_text("{}")
    (run / "checkpoints" / "step-00000012").mkdir()  # a write that died before its marker
    assert resume.find(run, "auto").name == "step-00000008"
    assert resume.find(run, str(run)).name == "step-00000008"
    assert resume.find(run, str(run / "checkpoints" / "step-00000004")).name == "step-00000004"
    with pytest.raises(UserError, match="already holds a run"):
        resume.find(run, "none")
    (run / "checkpoints" / "step-00000012" / checkpoint.STATE).write_bytes(b"cut sh")
    with pytest.raises(UserError, match="incomplete checkpoint"):
        resume.find(run, str(run / "checkpoints" / "step-00000012"))
    with pytest.raises(UserError, match="no such file"):
        resume.find(run, str(tmp_path / "elsewhere"))


def test_resume_differences():
    cfg = {"model": {"arch": "dcgan", "width": 8}, "optim": {"lr_decay": 0.0, "lr_g": 1e-3},
           "loop": {"steps": 10, "batch": 16}, "run": {"out": "a"}, "dist": {"zero": 1}}
    now = {**cfg, "model": {"arch": "dcgan", "width": 16}, "optim": {"lr_decay": 0.0,
           "lr_g": 5e-4}, "loop": {"steps": 20, "batch": 16}, "run": {"out": "b"}}
    blocking, harmless = resume.differences(cfg, now, 2, 2, strategy="ddp")
    assert blocking == ["--width: now 16, checkpoint 8 (the networks' shapes)"]
    assert harmless == ["--lr-g: now 0.0005, checkpoint 0.001"]  # steps and out: quiet
    blocking, harmless = resume.differences(cfg, cfg, 2, 4, strategy="ddp")
    assert blocking == [] and "world size: now 4, checkpoint 2" in harmless[0]
    blocking, _ = resume.differences(cfg, cfg, 2, 4, strategy="deepspeed")
    assert "DeepSpeed's optimizer partitions" in blocking[0]
    # a checkpoint from before --latent-modes existed had one Gaussian
    grid = {"model": {"latent_modes": 100}, "optim": {}}
    blocking, _ = resume.differences({"model": {}}, grid, 1, 1, strategy="none")
    assert blocking == ["--latent-modes: now 100, checkpoint 0 (G's latent mixture)"]
    assert resume.differences({"model": {}}, {"model": {"latent_modes": 0}, "optim": {}}, 1, 1,
                              strategy="none") == ([], [])
    # a StyleGAN2 checkpoint from before path length and style mixing had neither: its
    # preset now brings both, and a resume says so
    sg2 = {"optim": {"pl_weight": 2.0, "pl_interval": 4, "style_mixing": 0.9}}
    assert resume.differences({"optim": {}}, sg2, 1, 1, strategy="none") == ([], [
        "--pl-weight: now 2.0, checkpoint 0.0", "--style-mixing: now 0.9, checkpoint 0.0"])


def test_keep_ckpts_at_least_two(tmp_path):
    r = run_cli("train", "--dry-run", "--keep-ckpts", "1", cwd=tmp_path)
    assert r.returncode == 2 and "--keep-ckpts: must be >= 2" in r.stderr


def test_strategy_changes_that_matter():
    cfg = {"dist": {"strategy": "ddp"}, "optim": {}}
    _, harmless = resume.differences(cfg, {"dist": {"strategy": "none"}, "optim": {}}, 2, 1,
                                     strategy="none")
    assert harmless[0] == "--strategy: now 'none', checkpoint 'ddp'"
    blocking, _ = resume.differences(cfg, {"dist": {"strategy": "deepspeed"}, "optim": {}},
                                     2, 2, strategy="deepspeed")
    assert blocking == ["--strategy: now 'deepspeed', checkpoint 'ddp' (the optimizer "
                        "state's format)"]
