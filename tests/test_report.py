"""``fastgan report`` draws a run; ``--tensorboard`` logs it."""

import json

import numpy as np
import pytest
from PIL import Image

from conftest import run_cli, run_fastgan
from fastgan.errors import UserError
from fastgan.metrics import health
from fastgan.plots import to_image
from fastgan.report import WARN, H, W, report, report_figure, warning_spans

PANELS = ["losses", "D(x) and D(G(z)); 0.5: D cannot tell",
          "health: diversity vs real (1: as varied), modes and quality (fractions)",
          "gradient norms (log scale)"]
WARN_RGB = np.array([round(255 * c) for c in WARN])
SAMPLE_RGB = (255, 0, 255)  # the sample grid's colour: no curve is drawn in it
WARNED = range(8, 12)  # the records with a warning in synthetic_run


@pytest.fixture
def synthetic_run(tmp_path):
    """A run directory with 20 records, a collapse warning in records 8 to 11, and a
    one-colour sample grid."""
    records = [{"step": 100 * (i + 1), "kimg": 6.4 * (i + 1), "loss_D": 1.3 + 0.1 * (i % 3),
                "loss_G": 0.8 + 0.05 * i, "D(x)": 0.55, "D(G(z))": 0.45, "grad_G": 10 ** -i,
                "grad_D": 1.0, "diversity": 0.1 if i in WARNED else 1.0, "modes_covered": 8,
                "modes_total": 8, "high_quality": 0.9,
                "health": ["collapse"] if i in WARNED else []} for i in range(20)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (tmp_path / "config.json").write_text(json.dumps({"model": {"arch": "mlp"},
                                                      "data": {"data": "builtin:ring"}}))
    (tmp_path / "samples").mkdir()
    Image.new("RGB", (64, 64), SAMPLE_RGB).save(tmp_path / "samples" / "final.png")
    return tmp_path


def test_an_rpgan_run_shows_the_pair_statistic(synthetic_run):
    """Under --loss rpgan the records hold D(x,G(z)): the D(x) panel, the progress line
    and the summary show it; a bce run's do not name it."""
    from fastgan.report import progress_postfix

    path = synthetic_run / "metrics.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines()]
    bce_line = progress_postfix({**records[-1], "img_s": 1.0})
    path.write_text("".join(json.dumps({**r, "D(x,G(z))": 0.6}) + "\n" for r in records))
    probs = report_figure(synthetic_run).axes[1]
    assert probs.get_title() == "D(x) and D(G(z)), D(x,G(z)); 0.5: D cannot tell"
    assert [line.get_label() for line in probs.lines][:3] == ["D(x)", "D(G(z))", "D(x,G(z))"]
    assert "D(x,G(z))" not in bce_line
    assert "D(x,G(z)) 0.60" in progress_postfix({**records[-1], "img_s": 1.0,
                                                 "D(x,G(z))": 0.6})


def _column(img: np.ndarray, ax, x: float) -> np.ndarray:
    """The pixels of ``img`` (a render of ax's figure) down the inside of ``ax`` at data x."""
    bbox = ax.get_window_extent()
    col = round(ax.transData.transform((x, 1))[0])
    rows = slice(round(img.shape[0] - bbox.y1) + 3, round(img.shape[0] - bbox.y0) - 3)
    return img[rows, col]


def _share(pixels: np.ndarray, rgb) -> float:
    return float((np.abs(pixels.astype(int) - np.asarray(rgb)).max(axis=-1) <= 2).mean())


def test_report_figure_holds_every_panel_and_the_samples(synthetic_run):
    fig = report_figure(synthetic_run)
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == PANELS + ["samples: final.png"]
    curves = fig.axes[:4]
    assert [ax.get_yscale() for ax in curves] == ["linear"] * 3 + ["log"]
    assert [line.get_label() for line in curves[0].lines] == ["loss_D", "loss_G"]
    assert {"diversity", "modes covered", "high_quality"} <= {
        line.get_label() for line in curves[2].lines}
    assert "recognisable" not in {line.get_label() for line in curves[2].lines}  # no values
    threshold = [line for line in curves[2].lines if line.get_label().startswith("_")]
    assert [line.get_ydata()[0] for line in threshold] == [health.COLLAPSE_DIVERSITY]
    texts = [t.get_text() for t in fig.texts]
    assert "(mlp, builtin:ring, step 2000, 128.0 kimg)" in texts[0]
    assert texts[1] == "health warnings: collapse at 4 record(s), steps 900..1200"


def test_report_png_shades_the_warnings_and_shows_the_samples(synthetic_run, tmp_path):
    path = report(str(synthetic_run))
    assert path == synthetic_run / "report.png"
    with Image.open(path) as png:
        assert (png.format, png.size, png.mode) == ("PNG", (W, H), "RGB")
        img = np.asarray(png)
    fig = report_figure(synthetic_run)
    assert (np.asarray(to_image(fig)) == img).all()  # the figure is what report() saves
    warned = 64.0  # records 8 to 11 shade kimg 51.2 to 76.8
    for ax in fig.axes[:4]:
        assert _share(_column(img, ax, warned), WARN_RGB) > 0.6, ax.get_title()
        for calm in (30.0, 110.0):  # between the ticks' grid lines
            assert _share(_column(img, ax, calm), WARN_RGB) == 0, ax.get_title()
            assert _share(_column(img, ax, calm), (255, 255, 255)) > 0.6, ax.get_title()
    bbox = fig.axes[4].get_window_extent()
    samples = img[round(H - bbox.y1):round(H - bbox.y0), round(bbox.x0):round(bbox.x1)]
    assert _share(samples, SAMPLE_RGB) > 0.3
    other = tmp_path / "elsewhere" / "r.png"
    other.parent.mkdir()
    assert report(str(synthetic_run), str(other)) == other and other.exists()


def test_report_without_samples_or_warnings(synthetic_run):
    (synthetic_run / "samples" / "final.png").unlink()
    lines = (synthetic_run / "metrics.jsonl").read_text().splitlines()
    calm = [json.dumps({**json.loads(line), "health": []}) for line in lines]
    (synthetic_run / "metrics.jsonl").write_text("\n".join(calm) + "\n")
    fig = report_figure(synthetic_run)
    assert fig.axes[4].get_title() == "samples: none yet"
    assert fig.texts[1].get_text() == "health: no warnings"
    assert not any(ax.patches for ax in fig.axes[:4])  # nothing shaded


def test_warning_spans_cover_the_steps_since_the_record_before():
    records = [{"health": h} for h in ([], ["collapse"], ["collapse"], [], ["D-wins"], [])]
    assert warning_spans([1, 2, 3, 4, 5, 6], records) == [(1, 3), (4, 5)]
    assert warning_spans([1, 2], [{"health": ["diverging"]}, {}]) == [(1, 1)]


def test_report_errors(tmp_path):
    with pytest.raises(UserError, match="no such run directory"):
        report(str(tmp_path / "nope"))
    with pytest.raises(UserError, match="no metrics.jsonl"):
        report(str(tmp_path))
    (tmp_path / "metrics.jsonl").write_text("{\n")
    with pytest.raises(UserError, match="metrics.jsonl:1: not a JSON record"):
        report(str(tmp_path))
    with pytest.raises(UserError, match="--out: directory"):
        report(str(tmp_path), str(tmp_path / "nope" / "r.png"))
    r = run_cli("report", str(tmp_path / "nope"))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1


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
def test_report_of_a_trained_run(ring_run):
    r = run_cli("report", str(ring_run))
    assert r.returncode == 0 and r.stdout.strip() == str(ring_run / "report.png"), r.stderr
    fig = report_figure(ring_run)
    assert [ax.get_title() for ax in fig.axes] == PANELS + ["samples: final.png"]
    assert fig.texts[1].get_text().startswith("health warnings: ")
    with Image.open(ring_run / "report.png") as png:
        assert png.size == (W, H)
        assert _share(np.asarray(png), WARN_RGB) > 0.01


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
