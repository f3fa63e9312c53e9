"""Live diagnostics of the classic GAN failures, from what the loop logs anyway.

Signals (one value per ``--log-every`` record, in ``metrics.jsonl``):

* ``diversity``: mean pairwise distance between the features of a fixed batch of
  generated samples, divided by the same for a batch of real samples (features: the
  fixed random-conv network for images, the coordinates for 2-D points). About 1 when G
  is as varied as the data; near 0 when G makes one thing whatever z is.
* ``grad_G`` and ``grad_D``: mean gradient norms of the networks' parameters over the
  steps since the last record (the G phase's, and the D main phase's).
* ``D(x)``, ``D(G(z))``, ``loss_D``, ``loss_G``: as logged; under ``--loss rpgan``,
  ``D(x,G(z))``, the mean sigmoid(D(x) - D(G(z))), in place of D(x) and D(G(z)): that
  loss sees only the difference of the two logits, so each alone drifts freely.

Warnings (``health`` in the record: the active ones; a log line when one starts or
clears; short tags in the progress bar). Each needs its condition over several records
in a row, and none fires over the first ``WARMUP`` records or the first ``WARMUP_SHARE``
of the run (an untrained G is neither diverse nor good, and early coverage wanders):

* ``collapse`` (mode collapse): diversity below ``COLLAPSE_DIVERSITY`` for
  ``COLLAPSE_RECORDS`` records, or, on the embedded datasets, modes covered at most
  half their best (of at least 4) for ``MODES_RECORDS`` records.
* ``D-wins`` (vanishing gradients): D(G(z)) below ``SATURATED`` for ``SATURATED_RECORDS``
  records (D rejects every sample with confidence: under the minimax loss G's gradient
  would vanish; the non-saturating loss keeps it, but it says little), or G's gradient
  norm below ``VANISHED`` times its largest so far for as long.
  Under rpgan: D(x,G(z)) above ``1 - SATURATED`` for as many records (D ranks every
  real image above its fake with confidence).
* ``no-equilibrium`` (non-convergence): D(x) - D(G(z)) above ``GAP`` for ``GAP_RECORDS``
  records: D keeps telling real from fake apart; a balanced game sits near 0.5 / 0.5.
  Under rpgan: D(x,G(z)) above ``0.5 + GAP / 2`` for as many records.
* ``oscillation``: over the last ``SWING_RECORDS`` records, loss_D or loss_G spans more
  than ``SWING`` times its median, reversing direction at least every other record:
  the players chase each other instead of settling.
* ``diverging``: loss_G rose in each of the last ``RISE_RECORDS`` records to more than
  twice its lowest value after warm-up, or a loss is not finite.

Thresholds were set on runs built to fail (tests/test_health.py provokes each) and on
healthy default runs, which stay quiet.
"""

from __future__ import annotations

import math
from collections import deque

import torch

from ..sampling import quantize

WARMUP, WARMUP_SHARE = 2, 0.05
COLLAPSE_DIVERSITY, COLLAPSE_RECORDS, MODES_RECORDS = 0.4, 2, 3
SATURATED, SATURATED_RECORDS, VANISHED = 0.05, 3, 1e-3
GAP, GAP_RECORDS = 0.6, 5
SWING, SWING_RECORDS = 1.0, 8
RISE_RECORDS = 4
REFERENCE = 256  # samples in the real and generated diversity batches
PAIR = "D(x,G(z))"  # --loss rpgan's statistic of D's judgement

ADVICE = {
    "collapse": "mode collapse",
    "D-wins": "D wins (D(G(z)) saturated, G's gradient vanishing or uninformative)",
    "no-equilibrium": "D stays far ahead",
    "oscillation": "losses oscillate",
    "diverging": "losses diverge",
}


def mean_pairwise_distance(feats: torch.Tensor) -> float:
    f = feats.double().flatten(1)
    n = len(f)
    if n < 2:
        return float("nan")
    return float(torch.cdist(f, f).sum() / (n * (n - 1)))


class Diversity:
    """diversity = spread of G's fixed batch / spread of a real batch, in one feature
    space. The real batch is collected from the first training batches seen (no extra
    reading, and the data stream is not disturbed)."""

    def __init__(self, images: bool, device):
        self.images, self.device = images, device
        self.real: list[torch.Tensor] = []
        self.real_spread: float | None = None
        self._features = None

    def features(self, x: torch.Tensor) -> torch.Tensor:
        if not self.images:
            return x.float().cpu()
        if self._features is None:
            from .features import RandConv

            self._features = RandConv().to(self.device).eval()
        if x.dtype != torch.uint8:  # generated: [-1, 1] floats, quantised as real ones are
            x = quantize(x)
        return self._features(x.to(self.device)).cpu()

    def see_real(self, batch: torch.Tensor) -> None:
        if self.real_spread is not None:
            return
        # a copy: on the CPU .cpu() is the tensor itself, and the loader's batches live
        # in buffers its workers refill a few batches later
        self.real.append(batch.detach().to("cpu", copy=True))
        got = torch.cat(self.real)
        if len(got) >= REFERENCE:
            self.real_spread = mean_pairwise_distance(self.features(got[:REFERENCE]))
            self.real = []

    def __call__(self, generated: torch.Tensor) -> dict:
        if not self.real_spread:
            return {}
        spread = mean_pairwise_distance(self.features(generated[:REFERENCE]))
        return {"diversity": round(spread / self.real_spread, 4)}


class HealthMonitor:
    """Turns the stream of records into active warnings (rank 0)."""

    def __init__(self, warmup_steps: int = 0):
        """``warmup_steps``: no warning for records up to this step (besides the first
        ``WARMUP`` records)."""
        self.history: deque[dict] = deque(maxlen=max(SWING_RECORDS, GAP_RECORDS) + 1)
        self.warmup_steps = warmup_steps
        self.records = 0
        self.best_modes = 0
        self.max_grad_g = 0.0
        self.low_modes = 0  # consecutive records at or below half the best coverage
        self.min_loss_g = math.inf
        self.active: set[str] = set()
        self.seen: dict[str, int] = {}  # warning -> records it was active in

    def __call__(self, record: dict) -> tuple[list[str], list[str], list[str]]:
        """(active warnings, those that started now, those that cleared now)."""
        self.records += 1
        self.history.append(record)
        if "modes_covered" in record:
            self.best_modes = max(self.best_modes, record["modes_covered"])
            low = self.best_modes >= 4 and record["modes_covered"] * 2 <= self.best_modes
            self.low_modes = self.low_modes + 1 if low else 0
        if math.isfinite(record.get("grad_G", math.nan)):
            self.max_grad_g = max(self.max_grad_g, record["grad_G"])
        warm = self.records <= WARMUP or record.get("step", 0) <= self.warmup_steps
        now = set() if warm else self._check(record)
        if not warm and "loss_G" in record:
            self.min_loss_g = min(self.min_loss_g, record["loss_G"])
        started = sorted(now - self.active)
        cleared = sorted(self.active - now)
        self.active = now
        for w in now:
            self.seen[w] = self.seen.get(w, 0) + 1
        return sorted(now), started, cleared

    def _last(self, key: str, n: int) -> list[float] | None:
        vals = [r[key] for r in list(self.history)[-n:] if key in r]
        return vals if len(vals) == n and self.records - WARMUP >= n else None

    def _check(self, r: dict) -> set[str]:
        out = set()
        div = self._last("diversity", COLLAPSE_RECORDS)
        if div and max(div) < COLLAPSE_DIVERSITY:
            out.add("collapse")
        if self.low_modes >= MODES_RECORDS:
            out.add("collapse")
        out |= self._pair_check() if PAIR in r else self._probability_check()
        grads = self._last("grad_G", SATURATED_RECORDS)
        if grads and max(grads) < VANISHED * self.max_grad_g:
            out.add("D-wins")
        for key in ("loss_D", "loss_G"):
            swing = self._last(key, SWING_RECORDS)
            if swing and all(map(math.isfinite, swing)) and \
                    max(swing) - min(swing) > SWING * abs(sorted(swing)[len(swing) // 2]):
                steps = [b - a for a, b in zip(swing, swing[1:])]
                reversals = sum(1 for a, b in zip(steps, steps[1:]) if a * b < 0)
                if reversals >= len(steps) // 2:
                    out.add("oscillation")
        rise = self._last("loss_G", RISE_RECORDS + 1)
        if rise and all(b > a for a, b in zip(rise, rise[1:])) \
                and rise[-1] > 2 * self.min_loss_g:
            out.add("diverging")
        if any(k in r and not math.isfinite(r[k]) for k in ("loss_D", "loss_G")):
            out.add("diverging")
        return out

    def _probability_check(self) -> set[str]:
        """D-wins and no-equilibrium from D(x) and D(G(z)) (--loss bce)."""
        out = set()
        fake = self._last("D(G(z))", SATURATED_RECORDS)
        if fake and max(fake) < SATURATED:
            out.add("D-wins")
        real, fake = self._last("D(x)", GAP_RECORDS), self._last("D(G(z))", GAP_RECORDS)
        if real and fake and min(a - b for a, b in zip(real, fake)) > GAP:
            out.add("no-equilibrium")
        return out

    def _pair_check(self) -> set[str]:
        """The same from D(x,G(z)) (--loss rpgan), which is 0.5 when D cannot tell."""
        out = set()
        pair = self._last(PAIR, SATURATED_RECORDS)
        if pair and min(pair) > 1 - SATURATED:
            out.add("D-wins")
        pair = self._last(PAIR, GAP_RECORDS)
        if pair and min(pair) > 0.5 + GAP / 2:
            out.add("no-equilibrium")
        return out

    def message(self, warning: str, r: dict) -> str:
        """The log line when ``warning`` starts: what is seen and what to do."""
        g = f", G's gradient norm {r['grad_G']:.3g}" if "grad_G" in r else ""
        if warning == "collapse":
            what = (f"diversity {r.get('diversity', float('nan')):.2f} of the real data's"
                    + (f", {r['modes_covered']}/{r['modes_total']} modes (best "
                       f"{self.best_modes})" if "modes_covered" in r else ""))
            todo = "try --pack 2 (mlp), --r1-gamma, a lower --lr-g, or resume an earlier checkpoint"
        elif warning == "D-wins":
            said = (f"{PAIR} {r[PAIR]:.3f}" if PAIR in r else
                    f"D(G(z)) {r['D(G(z))']:.3f}, D(x) {r['D(x)']:.3f}")
            what = f"{said}{g}, largest so far {self.max_grad_g:.3g}"
            todo = ("try a lower --lr-d, --r1-gamma (or a larger one), --augment ada (or "
                    "diffaug) on small data")
        elif warning == "no-equilibrium":
            said = (f"{PAIR} {r[PAIR]:.2f}" if PAIR in r else
                    f"D(x) {r['D(x)']:.2f} vs D(G(z)) {r['D(G(z))']:.2f}")
            what = f"{said} for {GAP_RECORDS} records"
            todo = "try --r1-gamma, a lower --lr-d, or a higher --lr-g"
        elif warning == "oscillation":
            what = (f"loss_D {r.get('loss_D', math.nan):.3g}, loss_G "
                    f"{r.get('loss_G', math.nan):.3g}, swinging over {SWING_RECORDS} records")
            todo = "try lower --lr-g/--lr-d, --beta1 0.5 or 0, --lr-decay, --ema-kimg"
        else:
            what = f"loss_G {r.get('loss_G', float('nan')):.3g} and rising{g}"
            todo = "try lower learning rates, --grad-clip, --r1-gamma"
        return f"health: {ADVICE[warning]} ({what}): {todo}"
