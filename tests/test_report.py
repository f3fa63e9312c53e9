"""``fastgan report`` draws a run; ``--tensorboard`` logs it."""

import json

import numpy as np
import pytest
from PIL import Image

from conftest import run_fastgan
from fastgan.errors import UserError
from fastgan.report import WARN, report


@pytest.fixture(scope="module")
def ring_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("report") / "run"
    # D barely learns: G collapses, so the report has warnings to shade
    r = run_fastgan("train", "--data", "builtin:ring", "--steps", "240", "--log-every", "20",
                    "--sample-every", "120", "--lr-d", "1e-6", "--lr-g", "1e-2", "--pack", "1",
                    "--lr-decay", "0", "--tensorboard", "--out", str(out), "--no-progress")
    assert r.returncode == 0, r.stderr
    return out


@pytest.mark.slow  # ring_run trains 240 steps
def test_report_draws_curves_warnings_and_samples(ring_run, tmp_path):
    path = report(str(ring_run))
    assert path == ring_run / "report.png"
    img = np.asarray(Image.open(path).convert("RGB"))
    assert img.shape == (1000, 1600, 3)
    colours = {tuple(c) for c in img.reshape(-1, 3)[::7]}
    assert WARN in colours                      # shaded records with a warning
    assert (31, 119, 180) in colours            # the first series' line colour
    right = img[100:900, 1100:]  # the sample scatter: the modes' red circles at least
    assert ((right[..., 0] > 180) & (right[..., 1] < 90)).sum() > 50
    other = tmp_path / "r.png"
    assert report(str(ring_run), str(other)) == other and other.exists()


def test_report_errors(tmp_path):
    with pytest.raises(UserError, match="no such run directory"):
        report(str(tmp_path / "nope"))
    with pytest.raises(UserError, match="no metrics.jsonl"):
        report(str(tmp_path))
    (tmp_path / "metrics.jsonl").write_text("{\n")
    with pytest.raises(UserError, match="metrics.jsonl:1: not a JSON record"):
        report(str(tmp_path))
    r = run_fastgan("report", str(tmp_path / "nope"))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_tensorboard_holds_the_scalars_and_the_sample_grids(ring_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(ring_run / "tensorboard"))
    acc.Reload()
    tags = acc.Tags()
    records = [json.loads(x) for x in (ring_run / "metrics.jsonl").read_text().splitlines()]
    loss = acc.Scalars("loss/loss_D")
    assert [e.step for e in loss] == [r["step"] for r in records]
    assert loss[-1].value == pytest.approx(records[-1]["loss_D"], rel=1e-6)
    for tag in ("D/D(G(z))", "grad_norm/grad_G", "run/diversity", "health/warnings"):
        assert tag in tags["scalars"], tag
    assert acc.Scalars("health/warnings")[-1].value >= 1
    assert [e.step for e in acc.Images("samples")] == [120, 240]
