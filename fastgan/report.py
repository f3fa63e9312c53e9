"""``fastgan report RUN_DIR``: one PNG with what a run's metrics.jsonl says, and its
latest samples, drawn with matplotlib.

Panels: the losses; D(x) and D(G(z)) (and D(x,G(z)) under rpgan) around 0.5; the
health signals (diversity, and on the embedded datasets modes covered and sample
quality); the gradient norms (log scale); under ``--augment ada``, p and r_t; the newest
sample grid. Records with an
active health warning are shaded red on every curve panel, and the warnings are listed
under the title.

The end of a run in text is here too: the progress bar's line and the summary that
``fastgan train`` prints.
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from .errors import UserError
from .metrics import health
from .metrics.health import PAIR

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

W, H = 1600, 1000
WARN = (1.0, 0.85, 0.85)  # the shading of records with a warning
# line colours without red, which means a warning here
COLOURS = ("tab:blue", "tab:orange", "tab:green", "tab:purple", "tab:brown", "tab:cyan")


def read_records(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        raise UserError(f"{run_dir}: no metrics.jsonl (not a fastgan run directory?)")
    records = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                raise UserError(f"{path}:{n}: not a JSON record") from None
    if not records:
        raise UserError(f"{path}: no records yet (the first comes after --log-every steps)")
    return records


def latest_samples(run_dir: Path) -> Path | None:
    final = run_dir / "samples" / "final.png"
    if final.is_file():
        return final
    grids = sorted((run_dir / "samples").glob("step-*.png"))
    return grids[-1] if grids else None


def warning_spans(xs: list[float], records: list[dict]) -> list[tuple[float, float]]:
    """The x ranges to shade: a record with a warning covers the steps since the record
    before it; consecutive ones merge into one span."""
    spans: list[tuple[float, float]] = []
    for i, r in enumerate(records):
        if not r.get("health"):
            continue
        start = xs[i - 1] if i else xs[i]
        if spans and spans[-1][1] == start:
            spans[-1] = (spans[-1][0], xs[i])
        else:
            spans.append((start, xs[i]))
    return spans


def health_line(records: list[dict]) -> str:
    """Which warnings were active, in how many records, from which step to which."""
    seen: dict[str, list[int]] = {}
    for r in records:
        for w in r.get("health", []):
            seen.setdefault(w, []).append(r["step"])
    if not seen:
        return "health: no warnings"
    return "health warnings: " + "; ".join(
        f"{w} at {len(s)} record(s), steps {s[0]}..{s[-1]}" for w, s in seen.items())


def columns(records: list[dict], *keys: str) -> dict[str, list]:
    """Series named by their metrics.jsonl keys: each record's value, None where it has
    none."""
    return {k: [r.get(k) for r in records] for k in keys}


def curves(ax: Axes, title: str, xs: list[float], series: dict[str, list],
           spans: list[tuple[float, float]], log: bool = False) -> None:
    """One panel: each series that has a value, against kimg; the spans shaded. A record
    without a series' value (or with a non-finite one, or on a log scale a non-positive
    one) is skipped: the line joins its neighbours."""
    ax.set_title(title, fontsize="medium")
    ax.set_xlabel("kimg")
    if log:
        ax.set_yscale("log")
    for a, b in spans:
        ax.axvspan(a, b, color=WARN, lw=0, zorder=0)
    x = np.asarray(xs, np.float64)
    for colour, (name, ys) in zip(COLOURS, series.items()):
        y = np.array([math.nan if v is None else v for v in ys], np.float64)
        keep = np.isfinite(y) & (y > 0 if log else True)
        if keep.any():  # a single value has no line to draw: a marker shows it
            ax.plot(x[keep], y[keep], color=colour, label=name, lw=1.5,
                    marker="o" if keep.sum() == 1 else None, ms=3)
    if ax.lines:
        ax.legend(loc="best", fontsize="small")
    ax.grid(alpha=0.3)


def report_figure(run: Path) -> Figure:
    """The report of the run directory ``run``, as a W x H figure."""
    # matplotlib takes about a second to import: the training loop, which imports this
    # module for its summaries, does not load it
    from .plots import new_figure

    records = read_records(run)
    xs = [r.get("kimg", r.get("step", i)) for i, r in enumerate(records)]
    last = records[-1]
    config = {}
    try:
        config = json.loads((run / "config.json").read_text())
    except (OSError, ValueError):
        pass
    what = [str(v) for v in (config.get("model", {}).get("arch"),
                             config.get("data", {}).get("data")) if v]
    what.append(f"step {last.get('step')}, {last.get('kimg')} kimg")
    fig = new_figure(W, H)
    fig.text(0.01, 0.985, f"fastgan report: {run}  ({', '.join(what)})", va="top",
             fontsize="large")
    spans = warning_spans(xs, records)
    fig.text(0.01, 0.955, health_line(records), va="top",
             color="firebrick" if spans else "darkgreen")
    grid = fig.add_gridspec(2, 3, left=0.05, right=0.99, bottom=0.06, top=0.9, wspace=0.22,
                            hspace=0.3)

    curves(fig.add_subplot(grid[0, 0]), "losses", xs, columns(records, "loss_D", "loss_G"),
           spans)
    probs = fig.add_subplot(grid[0, 1])
    # under --loss rpgan D(x,G(z)) is the one that says whether D can tell
    pair = any(PAIR in r for r in records)
    curves(probs, f"D(x) and D(G(z)){', D(x,G(z))' if pair else ''}; 0.5: D cannot tell",
           xs, columns(records, "D(x)", "D(G(z))", *([PAIR] if pair else [])), spans)
    probs.axhline(0.5, color="grey", ls="--", lw=1)
    signals = fig.add_subplot(grid[1, 0])
    modes = [r["modes_covered"] / r["modes_total"] if r.get("modes_total") else None
             for r in records]
    curves(signals, "health: diversity vs real (1: as varied), modes and quality (fractions)",
           xs, {**columns(records, "diversity"), "modes covered": modes,
                **columns(records, "high_quality", "recognisable")}, spans)
    signals.axhline(health.COLLAPSE_DIVERSITY, color="firebrick", ls="--", lw=1)
    ada = any("augment_p" in r for r in records)  # --augment ada: its own panel
    if ada:
        ada_panel = fig.add_subplot(grid[1, 2])
        curves(ada_panel, "ADA: p rises while r_t = E[sign(D(x))] is above its target",
               xs, columns(records, "augment_p", "r_t"), spans)
        target = config.get("optim", {}).get("ada_target")
        if target is not None and config["optim"].get("augment_p") is None:
            ada_panel.axhline(target, color="grey", ls="--", lw=1)
    curves(fig.add_subplot(grid[1, 1]), "gradient norms (log scale)", xs,
           columns(records, "grad_G", "grad_D"), spans, log=True)

    samples = fig.add_subplot(grid[:, 2] if not ada else grid[0, 2])
    path = latest_samples(run)
    samples.set_title(f"samples: {path.name if path else 'none yet'}", fontsize="medium")
    samples.set_axis_off()
    if path is not None:
        with Image.open(path) as g:
            samples.imshow(np.asarray(g.convert("RGB")))
    return fig


def report(run_dir: str, out: str | None = None) -> Path:
    run = Path(run_dir)
    if not run.is_dir():
        raise UserError(f"{run_dir}: no such run directory")
    out_path = Path(out) if out else run / "report.png"
    if not out_path.parent.exists():
        raise UserError(f"--out: directory {out_path.parent} does not exist")
    from .plots import to_image  # (not at the top: see report_figure)

    to_image(report_figure(run)).save(out_path)
    return out_path


# ------------------------------------------------ the end of a run, in text

def progress_postfix(r: dict) -> str:
    """The progress bar's summary of a record."""
    # a statistic is absent when every step since the last record skipped it (NaN/Inf)
    nan = float("nan")
    parts = [f"kimg {r['kimg']:.1f}", f"{r['img_s']:.0f} img/s",
             f"lossD {r.get('loss_D', nan):.3f}", f"lossG {r.get('loss_G', nan):.3f}",
             f"D(x) {r.get('D(x)', nan):.2f}", f"D(G(z)) {r.get('D(G(z))', nan):.2f}"]
    if PAIR in r:
        parts.append(f"{PAIR} {r[PAIR]:.2f}")
    if "augment_p" in r:
        parts.append(f"p {r['augment_p']:.3f}")
    if "modes_covered" in r:
        parts.append(f"modes {r['modes_covered']}/{r['modes_total']}")
    if r.get("health"):
        parts.append("WARNING " + ",".join(r["health"]))
    return ", ".join(parts)


def print_summary(s: dict) -> None:
    """What a finished run tells on stderr: its final record and where its files are."""
    r = s["final"]
    lines = [
        f"fastgan: done: {s['steps']} steps in {s['elapsed_s']:.0f} s "
        f"({s['img_s']:.0f} img/s overall)",
        f"  final: loss_D {r.get('loss_D', float('nan')):.3f}, "
        f"loss_G {r.get('loss_G', float('nan')):.3f}, D(x) {r.get('D(x)', float('nan')):.3f}, "
        f"D(G(z)) {r.get('D(G(z))', float('nan')):.3f}"
        + (f", {PAIR} {r[PAIR]:.3f}" if PAIR in r else ""),
    ]
    if "augment_p" in r:
        lines.append(f"  ada: augmentation probability p {r['augment_p']:.3f}, real images "
                     f"judged real r_t {r.get('r_t', float('nan')):.3f}")
    if r.get("skipped_nonfinite"):
        lines.append(f"  numerics: {r['skipped_nonfinite']} micro-batch(es) dropped on every "
                     "rank for a non-finite loss (see the warnings)")
    if r.get("skipped_overflow_G") or r.get("skipped_overflow_D"):
        lines.append(f"  fp16: the loss scalers skipped {r['skipped_overflow_G']} G and "
                     f"{r['skipped_overflow_D']} D step(s) on overflow")
    if r.get("data_skipped_samples") or r.get("data_skipped_shards"):
        lines.append(f"  data: skipped {r['data_skipped_samples']} bad sample(s) and "
                     f"{r['data_skipped_shards']} failed shard read(s) (see the warnings)")
    if s.get("health"):
        lines.append("  health: " + "; ".join(
            f"{health.ADVICE[w]} in {n} record(s)" for w, n in s["health"].items())
            + " (see the warnings and the README's 'Training health')")
    if "modes_covered" in r:
        line = f"  modes: {r['modes_covered']}/{r['modes_total']} covered"
        if "recognisable" in r:
            line += f", {100 * r['recognisable']:.1f}% recognisable by the oracle, " \
                    f"mode KL {r['mode_kl']:.3f}"
        if "high_quality" in r:
            line += f", {100 * r['high_quality']:.1f}% high-quality samples"
        lines.append(line)
    lines += [
        f"  samples:    {s['samples']}",
        f"  checkpoint: {s['checkpoint']}",
        f"  metrics:    {os.path.join(s['run_dir'], 'metrics.jsonl')}",
    ]
    print("\n".join(lines), file=sys.stderr)
