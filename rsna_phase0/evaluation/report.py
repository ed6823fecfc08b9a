"""The evaluation's table (printed and saved as text) and plot (bars of the mean with sd error bars), from the
results payload of experiment.run_evaluation. Files are written atomically."""

from __future__ import annotations

import io
from pathlib import Path

from rsna_phase0.atomic import write_bytes_atomic, write_text_atomic

METRIC_NAMES = {"dice_aneurysm": "aneurysm Dice", "dice_vessel": "vessel Dice", "auc": "AUC (aneurysm present)"}


def _metrics(payload: dict) -> list[str]:
    row = payload["summary"][0] if payload["summary"] else {}
    return [payload["headline"], *(m for m in row if m in METRIC_NAMES and m != payload["headline"])]


def format_table(payload: dict) -> str:
    """init x mode x label fraction rows, each metric as mean +- sd over seeds (headline first)."""
    metrics = _metrics(payload)
    settings = payload["settings"]
    header = ["mode", "labels", "init", *(METRIC_NAMES[m] for m in metrics)]
    rows = [
        [
            row["mode"],
            f"{row['label_fraction']:.0%}",
            row["init"],
            *(f"{row[m]['mean']:.3f} +- {row[m]['sd']:.3f}" for m in metrics),
        ]
        for row in payload["summary"]
    ]
    widths = [max(len(str(x)) for x in column) for column in zip(header, *rows, strict=True)]
    lines = [
        f"{payload['task']} ({settings['modality']}, preset {settings['preset']}): {len(payload['split']['train'])} "
        f"train / {len(payload['split']['test'])} held out, {settings['seeds']} seeds, {settings['steps']} steps of "
        f"batch {settings['budget']['batch_size']}; mean +- sd over seeds",
        "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)),
    ]
    lines += ["  ".join(str(x).ljust(w) for x, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(line.rstrip() for line in lines) + "\n"


def plot_png(payload: dict) -> bytes:
    """One panel per metric: groups (mode, label fraction), a bar per init, sd as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = _metrics(payload)
    groups = sorted({(r["mode"], r["label_fraction"]) for r in payload["summary"]}, key=lambda g: (g[0], -g[1]))
    inits = sorted({r["init"] for r in payload["summary"]})
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.5 * len(metrics), 3.6), squeeze=False)
    width = 0.8 / len(inits)
    for ax, metric in zip(axes[0], metrics, strict=True):
        for j, init in enumerate(inits):
            rows = [
                next(r for r in payload["summary"] if (r["mode"], r["label_fraction"], r["init"]) == (*g, init))
                for g in groups
            ]
            ax.bar(
                [i + (j - (len(inits) - 1) / 2) * width for i in range(len(groups))],
                [r[metric]["mean"] for r in rows],
                width,
                yerr=[r[metric]["sd"] for r in rows],
                capsize=3,
                label=init,
            )
        ax.set_xticks(range(len(groups)), [f"{mode}\n{fraction:.0%} labels" for mode, fraction in groups])
        ax.set_ylabel(METRIC_NAMES[metric])
        ax.set_ylim(0, 1)
        ax.legend(fontsize=8)
    fig.suptitle(f"{payload['task']}: pretrained vs random init ({payload['settings']['seeds']} seeds, mean +- sd)")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return buffer.getvalue()


def write_report(payload: dict, out_dir) -> dict[str, Path]:
    """OUT/evaluate.txt (the table) and OUT/evaluate.png (the plot); evaluate.json is written by the experiment."""
    out_dir = Path(out_dir)
    return {
        "table": write_text_atomic(out_dir / "evaluate.txt", format_table(payload)),
        "plot": write_bytes_atomic(out_dir / "evaluate.png", plot_png(payload)),
        "json": out_dir / "evaluate.json",
    }
