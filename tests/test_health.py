"""Health warnings fire on runs built to fail, and stay quiet on a healthy one.

The rules are tested on the metrics.jsonl series of whole training runs, recorded once
under tests/data/health/ (one JSON file per run: the flags that made it and its records,
without the live verdict and the timings); one of those runs is also trained end to end.
``python tests/test_health.py`` trains the four runs again and records them anew.
"""

import json
import logging
import sys
import tempfile
from pathlib import Path

import pytest
import torch

from fastgan.config import TrainConfig, apply, resolve
from fastgan.data import builtin
from fastgan.metrics import health
from fastgan.train.loop import train

RECORDED = Path(__file__).parent / "data" / "health"
# the flags of each recorded run, on builtin:ring
RUNS = {
    # D barely learns, so G carries every sample to the one place D likes best
    "collapse": dict(lr_d=1e-6, lr_g=1e-2, pack=1, lr_decay=0.0, steps=400, log_every=40),
    # G barely learns: D rejects all of its samples with confidence
    "dwins": dict(lr_d=1e-2, lr_g=1e-7, pack=1, lr_decay=0.0, steps=400, log_every=40),
    # a tenfold learning rate with heavy momentum: the losses swing by orders of magnitude
    "oscillation": dict(lr_d=2e-2, lr_g=2e-2, beta1=0.9, pack=1, lr_decay=0.0, steps=600,
                        log_every=30),
    # the ring's preset
    "healthy": dict(steps=1500, log_every=100),
}
# record fields left out of the recordings: the verdict under test, and wall-clock timings
UNRECORDED = ("health", "img_s", "elapsed_s")


def _train(out: Path, flags: dict) -> tuple[dict, list[dict]]:
    """train() on builtin:ring with ``flags`` into ``out``: its summary and its records."""
    cfg = TrainConfig()
    cfg.data.data = "builtin:ring"
    cfg.run.out, cfg.run.progress = str(out), False
    apply(cfg, flags, "test")
    summary = train(resolve(cfg, set(flags)))
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return summary, records


def write_recording(name: str, flags: dict, records: list[dict]) -> None:
    """tests/data/health/NAME.json: the flags, and the records less UNRECORDED, one a line
    (a new recording reads as a diff)."""
    kept = ",\n  ".join(json.dumps({k: v for k, v in r.items() if k not in UNRECORDED})
                        for r in records)
    RECORDED.mkdir(parents=True, exist_ok=True)
    (RECORDED / f"{name}.json").write_text(
        f'{{"flags": {json.dumps(flags)},\n "records": [\n  {kept}\n]}}\n')


def record_runs() -> None:
    """Train every run of RUNS and write its recording."""
    with tempfile.TemporaryDirectory() as tmp:
        for name, flags in RUNS.items():
            _, records = _train(Path(tmp) / name, flags)
            write_recording(name, flags, records)
            print(f"{name}: {len(records)} records", file=sys.stderr)


def _recorded(name: str) -> tuple[dict, list[dict]]:
    """The flags and the records of a recorded run."""
    data = json.loads((RECORDED / f"{name}.json").read_text())
    return data["flags"], data["records"]


def _replay(records: list[dict], warmup_steps: int = 0) -> list[list[str]]:
    """The warnings active at each record, from one monitor fed the records in turn."""
    monitor = health.HealthMonitor(warmup_steps=warmup_steps)
    return [monitor(r)[0] for r in records]


def _replay_run(records: list[dict], flags: dict) -> list[list[str]]:
    """_replay with the warm-up that train() gives a run of these flags."""
    return _replay(records, int(health.WARMUP_SHARE * flags["steps"]))


def _all_fired(records: list[dict], warmup_steps: int = 0) -> set[str]:
    return set().union(*_replay(records, warmup_steps))


def _fired(records: list[dict], flags: dict) -> dict[str, list[int]]:
    """warning -> the steps of the records it was active in, in a replay of a run."""
    steps: dict[str, list[int]] = {}
    for warnings, r in zip(_replay_run(records, flags), records):
        for w in warnings:
            steps.setdefault(w, []).append(r["step"])
    return steps


@pytest.mark.parametrize("name", RUNS)
def test_recordings_are_of_the_runs_described(name):
    flags, records = _recorded(name)
    assert flags == RUNS[name]  # changed flags need a new recording
    assert [r["step"] for r in records] == list(
        range(flags["log_every"], flags["steps"] + 1, flags["log_every"]))
    assert all(not set(UNRECORDED) & r.keys() for r in records)


def test_collapse_fires_once_G_sends_every_sample_to_one_place():
    flags, records = _recorded("collapse")
    fell = next(r["step"] for r in records if r["diversity"] < 0.05)
    fired = _fired(records, flags)
    # within two records of the fall, and from then on to the end
    assert fell < fired["collapse"][0] <= fell + 2 * flags["log_every"]
    assert fired["collapse"][-1] == flags["steps"]
    assert "no-equilibrium" not in fired  # D(x) and D(G(z)) both stay near 0.5


def test_D_wins_and_no_equilibrium_fire_when_G_cannot_learn():
    flags, records = _recorded("dwins")
    fired = _fired(records, flags)
    assert all(r["D(G(z))"] < 0.05 for r in records)  # from the first record on
    # as soon as the warm-up and the rules' record counts allow, and to the end
    assert fired["D-wins"] == [r["step"] for r in records[4:]]
    assert fired["no-equilibrium"][0] <= 7 * flags["log_every"]
    assert fired["no-equilibrium"][-1] == flags["steps"]
    assert not {"oscillation", "diverging"} & fired.keys()  # the losses move steadily


def test_oscillation_fires_on_a_game_that_never_settles():
    flags, records = _recorded("oscillation")
    loss_d = [r["loss_D"] for r in records]
    assert max(loss_d) > 100 * min(loss_d)  # the recording swings by orders of magnitude
    fired = _fired(records, flags)
    # once the rule has SWING_RECORDS records past the warm-up, within the first half
    assert fired["oscillation"][0] <= flags["steps"] // 2
    assert fired["oscillation"][-1] == flags["steps"]
    assert "diverging" not in fired


def test_a_healthy_run_stays_quiet():
    flags, records = _recorded("healthy")
    assert _replay_run(records, flags) == [[]] * len(records)
    assert all(0.7 < r["diversity"] < 1.3 for r in records[3:])
    assert all("grad_G" in r and "grad_D" in r for r in records)


@pytest.mark.slow  # a whole train() run: the loop feeds the monitor as the replays do
def test_collapse_end_to_end(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="fastgan")
    summary, records = _train(tmp_path / "collapse", RUNS["collapse"])
    assert _replay_run(records, RUNS["collapse"]) == [r["health"] for r in records]
    assert "collapse" in {w for r in records for w in r["health"]}
    assert records[-1]["diversity"] < 0.05
    assert "health: mode collapse (diversity" in caplog.text
    assert summary["health"]["collapse"] >= 3


def _records(**series):
    n = len(next(iter(series.values())))
    return [{"step": 100 * (i + 1), **{k: v[i] for k, v in series.items()}} for i in range(n)]


def test_monitor_rules_on_synthetic_records():
    calm = dict(loss_D=[1.3] * 12, loss_G=[0.8] * 12, **{"D(x)": [0.52] * 12,
                "D(G(z))": [0.47] * 12}, diversity=[1.0] * 12, grad_G=[1.0] * 12)
    assert _all_fired(_records(**calm)) == set()
    rising = {**calm, "loss_G": [0.8, 0.8, 0.8, 0.7, 0.8, 0.8, 0.8, 1.0, 1.3, 1.7, 2.2, 2.9]}
    assert _all_fired(_records(**rising)) == {"diverging"}
    assert _all_fired(_records(**{**calm, "loss_D": [1.3] * 11 + [float("nan")]})) == {"diverging"}
    vanished = {**calm, "grad_G": [1.0] * 6 + [1e-4] * 6}
    assert _all_fired(_records(**vanished)) == {"D-wins"}
    modes = [8, 8, 8, 8, 3, 8, 3, 3, 3, 3, 3, 3]  # one dip is noise; three in a row is not
    recs = _records(**calm)
    for r, k in zip(recs, modes):
        r["modes_covered"], r["modes_total"] = k, 8
    active = _replay(recs)
    assert active[4] == [] and active[8] == ["collapse"]
    # nothing fires within the warm-up, however bad
    bad = {**calm, "diversity": [0.01] * 12}
    assert _all_fired(_records(**bad), 2000) == set()
    assert _all_fired(_records(**bad)) == {"collapse"}


def test_rpgan_records_are_judged_by_the_pair_statistic():
    """Under --loss rpgan, D(x) and D(G(z)) drift together at no cost to the loss: a
    low D(G(z)) alone is no verdict; D(x,G(z)) near 1 is."""
    calm = dict(loss_D=[0.7] * 12, loss_G=[0.7] * 12, diversity=[1.0] * 12,
                grad_G=[1.0] * 12, **{"D(x)": [0.03] * 12, "D(G(z))": [0.02] * 12,
                                      "D(x,G(z))": [0.55] * 12})
    assert _all_fired(_records(**calm)) == set()
    assert _all_fired(_records(**{**calm, "D(x,G(z))": [0.85] * 12})) == {"no-equilibrium"}
    sure = _records(**{**calm, "D(x,G(z))": [0.99] * 12})
    assert _all_fired(sure) == {"D-wins", "no-equilibrium"}
    monitor = health.HealthMonitor(warmup_steps=0)
    assert "D(x,G(z)) 0.990" in monitor.message("D-wins", sure[-1])


def test_diversity_keeps_its_own_copy_of_the_real_batches():
    """The loader hands out batches in buffers that its workers refill later: the real
    reference must be what was seen, not what the buffer holds when it is complete."""
    half = health.REFERENCE // 2
    first, second = torch.randn(half, 2), torch.randn(half, 2)
    seen = health.Diversity(images=False, device="cpu")
    seen.see_real(first)
    expected = health.Diversity(images=False, device="cpu")
    expected.see_real(first.clone())
    first.zero_()  # the buffer refilled
    for diversity in (seen, expected):
        diversity.see_real(second)
    assert seen.real_spread == expected.real_spread > 0


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


if __name__ == "__main__":
    record_runs()
