"""Metrics on disk (metrics.jsonl, one record per line) and the loss-curve PNG drawn from them.

Train records: {"kind": "train", "step", "epoch", "loss", <terms>, "lr", "seconds", "volumes_per_s"}.
Validation records: {"kind": "val", "step", "epoch", "loss", <terms>}.
On resume, records after the checkpoint's step are dropped, so the file never holds a step twice.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from rsna_phase0.training.checkpoint import atomic_write, atomic_write_text


class MetricsLog:
    def __init__(self, path: Path, enabled: bool = True) -> None:
        self.path = path
        self.enabled = enabled

    def truncate_after(self, step: int) -> int:
        """Drop records of steps after `step` (written after the checkpoint we resume from); returns how many."""
        if not self.enabled or not self.path.exists():
            return 0
        kept, dropped = [], 0
        for line in self.path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                dropped += 1  # a line torn by a kill
                continue
            if record.get("step", 0) > step:
                dropped += 1
            else:
                kept.append(line)
        if dropped:
            atomic_write_text(self.path, "".join(line + "\n" for line in kept))
        return dropped

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
        with open(self.path, "a") as handle:
            handle.write(json.dumps(clean) + "\n")
            handle.flush()


def read_metrics(path: Path) -> list[dict]:
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def _smooth(values: list[float], window: int) -> list[float]:
    out, total = [], 0.0
    for i, value in enumerate(values):
        total += value
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


TERMS = ("recon_global", "recon_local", "align")


def term_curves(train: list[dict], weights: dict[str, float] | None) -> dict[str, tuple[list[int], list[float]]]:
    """Each loss term per step, times its weight in the loss when `weights` is given (then they add up to the loss)."""
    curves = {}
    for term in TERMS:
        points = [(r["step"], r[term]) for r in train if r.get(term) is not None]
        if not points:
            continue
        weight = 1.0 if weights is None else weights[term]
        label = term if weights is None else f"{weight:g} x {term}"
        curves[label] = ([s for s, _ in points], [weight * v for _, v in points])
    return curves


def plot_loss_curve(
    metrics_path: Path, png_path: Path, title: str = "", weights: dict[str, float] | None = None
) -> bool:
    """Draw train loss (raw and smoothed), its terms (weighted as in the loss, or labelled unweighted) and the
    validation loss; False when there is nothing yet."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(metrics_path)
    train = [r for r in records if r.get("kind") == "train" and r.get("loss") is not None]
    val = [r for r in records if r.get("kind") == "val" and r.get("loss") is not None]
    if not train:
        return False
    fig, (ax_total, ax_terms) = plt.subplots(1, 2, figsize=(11, 4))
    steps = [r["step"] for r in train]
    losses = [r["loss"] for r in train]
    window = max(1, len(losses) // 20)
    ax_total.plot(steps, losses, color="tab:blue", alpha=0.3, lw=0.8, label="train")
    ax_total.plot(steps, _smooth(losses, window), color="tab:blue", lw=1.8, label=f"train (mean of {window})")
    if val:
        ax_total.plot([r["step"] for r in val], [r["loss"] for r in val], "o-", color="tab:red", label="validation")
    ax_total.set(xlabel="optimiser step", ylabel="loss", title=title or "loss")
    ax_total.legend()
    for label, (xs, ys) in term_curves(train, weights).items():
        ax_terms.plot(xs, _smooth(ys, window), label=label)
    how = "weighted as in the loss: they add up to it" if weights is not None else "unweighted"
    ax_terms.set(xlabel="optimiser step", ylabel=f"loss term (smoothed, mean of {window})", title=f"terms ({how})")
    ax_terms.legend()
    fig.tight_layout()
    atomic_write(png_path, lambda handle: fig.savefig(handle, format="png", dpi=90))
    plt.close(fig)
    return True
