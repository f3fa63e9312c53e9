"""``fastgan bench modes`` trains its seeds as one batch of GANs: each member must be the
run ``fastgan train --seed k`` makes."""

import json

import pytest
import torch

from conftest import run_fastgan
from fastgan.bench import modes
from fastgan.config import TrainConfig, apply, resolve
from fastgan.train.loop import train


@pytest.mark.slow  # whole train() runs
@pytest.mark.parametrize("extra", [{}, {"ema_kimg": 0.5},
                                   {"r1_gamma": 0.05, "r1_interval": 3}])
def test_each_member_tracks_fastgan_train(tmp_path, extra):
    steps, seeds = 40, [3, 0]
    ens = modes.Ensemble(modes.variant_config("grid", extra, steps), seeds)
    for _ in range(steps):
        ens.step()
    for k, seed in enumerate(seeds):
        cfg = TrainConfig()
        cfg.data.data, cfg.loop.steps, cfg.run.seed = "builtin:grid", steps, seed
        cfg.run.out, cfg.run.progress = str(tmp_path / f"run{seed}"), False
        apply(cfg, extra, "test")
        train(resolve(cfg, {"steps", "seed", *extra}))
        ckpt = tmp_path / f"run{seed}" / "checkpoints" / f"step-{steps:08d}"
        gen = torch.load(ckpt / "generator.pt", weights_only=True)
        member = ens.member_state(k)
        for name, value in gen["state_dict"].items():
            # batched matrix products (and R1's double backward) round differently:
            # close, not bitwise (a missing R1 or EMA step is off by far more)
            torch.testing.assert_close(member[name], value, rtol=1e-4, atol=1e-4)


@pytest.mark.slow  # a process pool of trainings
def test_bench_modes_cli_prints_the_table(tmp_path):
    out = tmp_path / "m.json"
    # 7 seeds: chunks of 5 and 2 per variant, merged back into one row each, in seed order
    r = run_fastgan("bench", "modes", "--seeds", "7", "--steps", "30", "--datasets", "ring",
                    "--variants", "default,pacgan-gan", "--json", str(out))
    assert r.returncode == 0, r.stderr
    assert "PacGAN GAN" in r.stdout and "fastgan default" in r.stdout
    assert "4 process(es)" in r.stderr
    rows = json.loads(out.read_text())
    assert [(x["variant"], x["dataset"]) for x in rows] == [("default", "ring"),
                                                           ("pacgan-gan", "ring")]
    assert rows[1]["config"]["pack"] == 1 and rows[0]["config"]["pack"] == 2
    assert all(x["seeds"] == 7 and len(x["modes"]) == 7 for x in rows)
    # the chunk of seeds 5 and 6 is the same training as those seeds alone
    alone = modes.train_members("ring", "default", [5, 6], steps=30)
    assert [m["modes_covered"] for m in alone["metrics"]] == rows[0]["modes"][5:]
    assert [round(100 * m["high_quality"], 2) for m in alone["metrics"]] == \
        rows[0]["high_quality"][5:]
    r = run_fastgan("bench", "modes", "--variants", "wgan")
    assert r.returncode == 2 and "--variants: unknown wgan" in r.stderr


def test_chunks_of_seeds_summarise_into_one_row():
    """What each process of ``fastgan bench modes`` does, here in this process and for 3
    steps: chunks of seeds train; summarise merges them in seed order; table shows it."""
    cfg = modes.variant_config("grid", modes.VARIANTS["pacgan-gan"], 5)
    assert cfg.model.pack == 1 and cfg.optim.lr_g == 1e-4 and cfg.loop.steps == 5
    parts = [modes.train_members("ring", "default", [2], steps=3),
             modes.train_members("ring", "default", [0, 1], steps=3)]
    assert [len(p["metrics"]) for p in parts] == [1, 2]
    row = modes.summarise(parts)
    assert row["seeds"] == 3 and row["steps"] == 3 and row["variant"] == "default"
    assert row["modes"] == [m["modes_covered"] for p in parts[::-1] for m in p["metrics"]]
    text = modes.table([row])
    assert "PacGAN GAN" in text and "fastgan default" in text and "(3 seeds, 3 steps)" in text
