"""Health warnings fire on runs built to fail, and stay quiet on a healthy one."""

import json
import logging

import pytest
import torch

from fastgan.config import TrainConfig, apply, resolve
from fastgan.data import builtin
from fastgan.metrics import health
from fastgan.train.loop import train


def _run(tmp_path, name, **flags):
    cfg = TrainConfig()
    cfg.data.data = "builtin:ring"
    cfg.run.out, cfg.run.progress = str(tmp_path / name), False
    apply(cfg, flags, "test")
    summary = train(resolve(cfg, set(flags)))
    records = [json.loads(line) for line in
               (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
    return summary, records


def _fired(records):
    return {w for r in records for w in r["health"]}


@pytest.mark.slow  # whole train() runs
def test_collapse_fires_when_D_stands_still_and_G_races(tmp_path, caplog):
    # D barely learns, so G carries every sample to the one place D likes best
    caplog.set_level(logging.WARNING, logger="fastgan")
    summary, records = _run(tmp_path, "collapse", lr_d=1e-6, lr_g=1e-2, pack=1, lr_decay=0.0,
                            steps=400, log_every=40)
    assert "collapse" in _fired(records)
    assert records[-1]["diversity"] < 0.05
    assert "health: mode collapse (diversity" in caplog.text
    assert summary["health"]["collapse"] >= 3


@pytest.mark.slow
def test_D_wins_fires_when_G_cannot_learn(tmp_path):
    summary, records = _run(tmp_path, "dwins", lr_d=1e-2, lr_g=1e-7, pack=1, lr_decay=0.0,
                            steps=400, log_every=40)
    fired = _fired(records)
    assert {"D-wins", "no-equilibrium"} <= fired
    assert records[-1]["D(G(z))"] < 0.01 and records[-1]["grad_G"] > 0


@pytest.mark.slow
def test_oscillation_fires_on_a_game_that_never_settles(tmp_path):
    # a tenfold learning rate with heavy momentum: the losses swing by orders of magnitude
    _, records = _run(tmp_path, "osc", lr_d=2e-2, lr_g=2e-2, beta1=0.9, pack=1, lr_decay=0.0,
                      steps=600, log_every=30)
    assert "oscillation" in _fired(records)


@pytest.mark.slow
def test_a_healthy_run_stays_quiet(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="fastgan")
    summary, records = _run(tmp_path, "healthy", steps=1500, log_every=100)
    assert _fired(records) == set() and summary["health"] == {}
    assert "health:" not in caplog.text
    assert all(0.7 < r["diversity"] < 1.3 for r in records[3:])
    assert all("grad_G" in r and "grad_D" in r for r in records)


def _records(**series):
    n = len(next(iter(series.values())))
    return [{"step": 100 * (i + 1), **{k: v[i] for k, v in series.items()}} for i in range(n)]


def test_monitor_rules_on_synthetic_records():
    def fired(records, **kw):
        m = health.HealthMonitor(**kw)
        return {w for r in records for w in m(r)[0]}

    calm = dict(loss_D=[1.3] * 12, loss_G=[0.8] * 12, **{"D(x)": [0.52] * 12,
                "D(G(z))": [0.47] * 12}, diversity=[1.0] * 12, grad_G=[1.0] * 12)
    assert fired(_records(**calm)) == set()
    rising = {**calm, "loss_G": [0.8, 0.8, 0.8, 0.7, 0.8, 0.8, 0.8, 1.0, 1.3, 1.7, 2.2, 2.9]}
    assert fired(_records(**rising)) == {"diverging"}
    assert fired(_records(**{**calm, "loss_D": [1.3] * 11 + [float("nan")]})) == {"diverging"}
    vanished = {**calm, "grad_G": [1.0] * 6 + [1e-4] * 6}
    assert fired(_records(**vanished)) == {"D-wins"}
    modes = [8, 8, 8, 8, 3, 8, 3, 3, 3, 3, 3, 3]  # one dip is noise; three in a row is not
    recs = _records(**calm)
    for r, k in zip(recs, modes):
        r["modes_covered"], r["modes_total"] = k, 8
    m = health.HealthMonitor()
    active = [m(r)[0] for r in recs]
    assert active[4] == [] and active[8] == ["collapse"]
    # nothing fires within the warm-up, however bad
    bad = {**calm, "diversity": [0.01] * 12}
    assert fired(_records(**bad), warmup_steps=2000) == set()
    assert fired(_records(**bad)) == {"collapse"}


def test_image_diversity_sees_a_collapsed_batch():
    images = torch.from_numpy(builtin.shapes_sample(0, 32)[0])
    real = torch.stack([torch.from_numpy(builtin.shapes_sample(i, 32)[0]) for i in range(300)])
    real = real.permute(0, 3, 1, 2)
    div = health.Diversity(images=True, device="cpu")
    div.see_real(real[:200])
    assert div.real_spread is None and div(real.float()) == {}  # not enough real yet
    div.see_real(real[200:])
    as_generated = real.float() / 127.5 - 1
    same = div(as_generated)["diversity"]
    assert 0.9 < same < 1.1
    one = images.permute(2, 0, 1).float().div(127.5).sub(1).expand(256, -1, -1, -1)
    assert div(one)["diversity"] < 0.01
