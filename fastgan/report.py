"""``fastgan report RUN_DIR``: one PNG with what a run's metrics.jsonl says, and its
latest samples. Drawn with Pillow (already a dependency): no plotting library.

Panels: the losses; D(x) and D(G(z)) around 0.5; the health signals (diversity, and
on the embedded datasets modes covered and sample quality); the gradient norms (log
scale); the newest sample grid. Records with an active health warning are shaded red
on every curve panel, and the warnings are listed under the title.
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from .errors import UserError
from .metrics import health

W, H = 1600, 1000
COLOURS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14),
           (23, 190, 207)]
WARN = (255, 225, 225)


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


class Panel:
    """A line chart in a box of the canvas: x is kimg."""

    def __init__(self, draw: ImageDraw.ImageDraw, box: tuple[int, int, int, int], title: str,
                 xs: list[float], log: bool = False):
        self.d, self.title, self.log = draw, title, log
        x0, y0, x1, y1 = box
        self.box = (x0 + 60, y0 + 24, x1 - 10, y1 - 30)  # room for ticks and title
        self.xs = xs
        self.xmin, self.xmax = (min(xs), max(xs)) if xs else (0.0, 1.0)
        if self.xmax <= self.xmin:
            self.xmax = self.xmin + 1
        self.series: list[tuple[str, list[float | None]]] = []
        self.hlines: list[tuple[float, tuple]] = []

    def add(self, name: str, ys: list[float | None]) -> None:
        if any(y is not None for y in ys):
            self.series.append((name, ys))

    def _t(self, y: float) -> float:
        return math.log10(max(y, 1e-12)) if self.log else y

    def render(self, font, shade: list[bool]) -> None:
        d, (x0, y0, x1, y1) = self.d, self.box
        vals = [self._t(y) for _, ys in self.series for y in ys
                if y is not None and math.isfinite(y)] + [self._t(v) for v, _ in self.hlines]
        lo, hi = (min(vals), max(vals)) if vals else (0.0, 1.0)
        if hi - lo < 1e-9:
            lo, hi = lo - 0.5, hi + 0.5
        pad = (hi - lo) * 0.05
        lo, hi = lo - pad, hi + pad

        def px(x, y):
            return (x0 + (x - self.xmin) / (self.xmax - self.xmin) * (x1 - x0),
                    y1 - (self._t(y) - lo) / (hi - lo) * (y1 - y0))

        n = len(self.xs)
        for i, bad in enumerate(shade):  # the records with a warning, as bands
            if bad and n > 1:
                left = self.xs[max(i - 1, 0)] if i else self.xs[0]
                a, _ = px(left, 0 if not self.log else 1)
                b, _ = px(self.xs[i], 0 if not self.log else 1)
                d.rectangle((a, y0, max(b, a + 2), y1), fill=WARN)
        d.rectangle((x0, y0, x1, y1), outline=(0, 0, 0))
        d.text((x0, y0 - 20), self.title, fill=(0, 0, 0), font=font)
        for k in range(5):  # y ticks
            v = lo + (hi - lo) * k / 4
            y = y1 - (y1 - y0) * k / 4
            label = f"{10 ** v:.2g}" if self.log else f"{v:.3g}"
            d.line((x0 - 4, y, x0, y), fill=(0, 0, 0))
            d.text((x0 - 56, y - 6), label, fill=(60, 60, 60), font=font)
        for k in range(5):  # x ticks, kimg
            v = self.xmin + (self.xmax - self.xmin) * k / 4
            x = x0 + (x1 - x0) * k / 4
            d.line((x, y1, x, y1 + 4), fill=(0, 0, 0))
            d.text((x - 14, y1 + 6), f"{v:.4g}", fill=(60, 60, 60), font=font)
        for value, colour in self.hlines:
            _, y = px(self.xmin, value)
            d.line((x0, y, x1, y), fill=colour, width=1)
        for i, (name, ys) in enumerate(self.series):
            colour = COLOURS[i % len(COLOURS)]
            pts = [px(x, y) for x, y in zip(self.xs, ys) if y is not None and math.isfinite(y)]
            if len(pts) > 1:
                d.line(pts, fill=colour, width=2)
            elif pts:
                d.ellipse((pts[0][0] - 2, pts[0][1] - 2, pts[0][0] + 2, pts[0][1] + 2),
                          fill=colour)
            d.text((x0 + 8 + 120 * i, y0 + 4), name, fill=colour, font=font)


def report(run_dir: str, out: str | None = None) -> Path:
    run = Path(run_dir)
    if not run.is_dir():
        raise UserError(f"{run_dir}: no such run directory")
    records = read_records(run)
    xs = [r.get("kimg", r.get("step", i)) for i, r in enumerate(records)]

    def col(key):
        return [r.get(key) for r in records]

    img = Image.new("RGB", (W, H), (255, 255, 255))
    d = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    last = records[-1]
    config = {}
    try:
        config = json.loads((run / "config.json").read_text())
    except (OSError, ValueError):
        pass
    what = ", ".join(str(v) for v in (config.get("model", {}).get("arch"),
                                     config.get("data", {}).get("data")) if v)
    d.text((20, 10), f"fastgan report: {run}  ({what}; step {last.get('step')}, "
           f"{last.get('kimg')} kimg)", fill=(0, 0, 0), font=font)
    seen: dict[str, list[int]] = {}
    for r in records:
        for w in r.get("health", []):
            seen.setdefault(w, []).append(r["step"])
    health_line = ("health warnings: " + "; ".join(
        f"{w} at {len(s)} record(s), steps {s[0]}..{s[-1]}" for w, s in seen.items())
        if seen else "health: no warnings")
    d.text((20, 28), health_line, fill=(200, 0, 0) if seen else (0, 120, 0), font=font)
    shade = [bool(r.get("health")) for r in records]

    top, mid = 50, 50 + (H - 50) // 2
    half = (W - 560) // 2
    losses = Panel(d, (0, top, half, mid), "losses (x: kimg)", xs)
    losses.add("loss_D", col("loss_D"))
    losses.add("loss_G", col("loss_G"))
    probs = Panel(d, (half, top, 2 * half, mid), "D(x) and D(G(z)); 0.5: D cannot tell", xs)
    probs.add("D(x)", col("D(x)"))
    probs.add("D(G(z))", col("D(G(z))"))
    probs.hlines.append((0.5, (150, 150, 150)))
    signals = Panel(d, (0, mid, half, H), "health: diversity vs real (1: as varied), "
                    "modes and quality (fractions)", xs)
    signals.add("diversity", col("diversity"))
    if "modes_total" in last:
        signals.add("modes covered", [None if r.get("modes_covered") is None else
                                      r["modes_covered"] / r["modes_total"] for r in records])
    signals.add("high quality", col("high_quality"))
    signals.add("recognisable", col("recognisable"))
    signals.hlines.append((0.4, (230, 150, 150)))
    grads = Panel(d, (half, mid, 2 * half, H), "gradient norms (log scale)", xs, log=True)
    grads.add("grad_G", col("grad_G"))
    grads.add("grad_D", col("grad_D"))
    for p in (losses, probs, signals, grads):
        p.render(font, shade)

    grid = latest_samples(run)
    box = (2 * half + 20, top + 24, W - 20, H - 20)
    d.text((box[0], top + 4), f"samples: {grid.name if grid else 'none yet'}",
           fill=(0, 0, 0), font=font)
    if grid is not None:
        with Image.open(grid) as g:
            g = g.convert("RGB")
            scale = min((box[2] - box[0]) / g.width, (box[3] - box[1]) / g.height)
            g = g.resize((max(1, int(g.width * scale)), max(1, int(g.height * scale))),
                         Image.NEAREST if scale >= 1 else Image.LANCZOS)
            img.paste(g, (box[0], box[1]))
    out_path = Path(out) if out else run / "report.png"
    if not out_path.parent.exists():
        raise UserError(f"--out: directory {out_path.parent} does not exist")
    img.save(out_path)
    return out_path


# ------------------------------------------------ the end of a run, in text

def progress_postfix(r: dict) -> str:
    """The progress bar's summary of a record."""
    # a statistic is absent when every step since the last record skipped it (NaN/Inf)
    nan = float("nan")
    parts = [f"kimg {r['kimg']:.1f}", f"{r['img_s']:.0f} img/s",
             f"lossD {r.get('loss_D', nan):.3f}", f"lossG {r.get('loss_G', nan):.3f}",
             f"D(x) {r.get('D(x)', nan):.2f}", f"D(G(z)) {r.get('D(G(z))', nan):.2f}"]
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
        f"D(G(z)) {r.get('D(G(z))', float('nan')):.3f}",
    ]
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
