"""The text summary of benchmarks/profile_step.py: every row, then each issue 18 target with the figures it reads.

Targets (issue 18): GPU busy >= 80% for kaggle at its default batch, bf16 and fp16; views/s at least the MAE peer's
at the same views per step; samples/s at least 2x the `main` variant's (the step before issue 18), measured in the
same run; the MinkowskiEngine encoder within 1.1x of the masked-dense oracle at mask 0.6, and ahead of it with
background inactive. A target whose rows are missing (skipped, failed or not planned) says so.
"""

from __future__ import annotations

from throughput import format_table

COLUMNS = [
    ("label", "row", "{}"),
    ("views", "views", "{}"),
    ("step_ms", "step ms", "{:.1f}"),
    ("samples_per_s", "samples/s", "{:.1f}"),
    ("views_per_s", "views/s", "{:.0f}"),
    ("gpu_busy_pct", "busy%", "{:.0f}"),
    ("kernels_per_step", "kernels", "{:.0f}"),
    ("host_syncs_per_step", "syncs", "{:.0f}"),
    ("model_sync_ops", "model sync ops", "{}"),
    ("torch_sync_count", "torch syncs", "{}"),
    ("host_ops_per_step", "host ops", "{:.0f}"),
    ("peak_gib", "peak GiB", "{:.2f}"),
    ("error", "error", "{}"),
]


def _with_derived(row: dict) -> dict:
    """`model_sync_ops`: the sync-prone operators of one step called from the model's code; `torch_sync_count`:
    the synchronisations torch's sync debug mode saw in one step (CUDA only; profile_trace.py)."""
    found, seen = row.get("sync_prone_ops"), row.get("torch_syncs")
    error = row.get("error")
    return {
        **row,
        "model_sync_ops": found["in_model"] if found else None,
        "torch_sync_count": seen["total"] if seen else None,
        "error": error[:60] if error else None,
    }


def table(rows: list[dict]) -> str:
    return format_table([_with_derived(r) for r in rows], COLUMNS, left=1)


def _find(rows: list[dict], **match) -> dict | None:
    defaults = {"model": "ours", "encoder": "sparse", "mask": None, "background": "preset"}
    want = {**defaults, **match}
    for row in rows:
        if all(row.get(k) == v for k, v in want.items()) and "error" not in row:
            return row
    return None


def _ratio(a: dict | None, b: dict | None, key: str) -> float | None:
    if a is None or b is None or not a.get(key) or not b.get(key):
        return None
    return a[key] / b[key]


def _line(what: str, value: float | None, fmt: str, ok: bool | None) -> str:
    shown = fmt.format(value) if value is not None else "missing"
    verdict = "" if value is None or ok is None else ("  met" if ok else "  NOT met")
    return f"- {what}: {shown}{verdict}"


def target_lines(rows: list[dict]) -> list[str]:
    lines = ["GPU busy >= 80% of wall time (ours, sparse encoder):"]
    combos = sorted({(r["preset"], r["batch"], r["amp"]) for r in rows if r.get("model") == "ours"})
    variants = sorted({r["variant"] for r in rows if r.get("model") == "ours"})
    for preset, batch, amp in combos:
        for variant in variants:
            row = _find(rows, preset=preset, batch=batch, amp=amp, variant=variant)
            if row is not None and row.get("gpu_busy_pct") is not None:
                busy, unprofiled = row["gpu_busy_pct"], row.get("gpu_busy_pct_of_timed_wall")
                line = _line(f"{preset} B{batch} {amp} {variant}", busy, "{:.0f}%", busy >= 80)
                if unprofiled is not None:  # the same kernel time over the step timed without the profiler
                    line += f" (kernel time / unprofiled step: {unprofiled:.0f}%)"
                lines.append(line)
    lines.append("samples/s against the step before issue 18 (`main`, same run) >= 2x:")
    for preset, batch, amp in combos:
        before = _find(rows, preset=preset, batch=batch, amp=amp, variant="main")
        for variant in variants:
            if variant == "main":
                continue
            after = _find(rows, preset=preset, batch=batch, amp=amp, variant=variant)
            ratio = _ratio(after, before, "samples_per_s")
            if after is not None or before is not None:
                lines.append(_line(f"{preset} B{batch} {amp} {variant} / main", ratio, "{:.2f}x", ratio and ratio >= 2))
    lines.append("views/s against the MAE peer at the same views per step >= 1x:")
    for preset, batch, amp in combos:
        for variant in variants:
            peer = _find(rows, model="mae_peer", preset=preset, batch=batch, amp=amp, variant=variant)
            ours = _find(rows, preset=preset, batch=batch, amp=amp, variant=variant)
            if peer is None:
                continue
            ratio = _ratio(ours, peer, "views_per_s")
            label = f"{preset} {peer['views']} views {amp} {variant}: ours / peer ({peer['views_per_s']:.0f} views/s)"
            lines.append(_line(label, ratio, "{:.2f}x", ratio and ratio >= 1))
    lines.append("MinkowskiEngine step / masked-dense oracle step at mask 0.6 (<= 1.1x computed; < 1x inactive):")
    for preset, batch, amp in combos:
        for variant in variants:
            for background, limit in (("computed", 1.1), ("inactive", 1.0)):
                key = dict(preset=preset, batch=batch, amp=amp, variant=variant, mask=0.6, background=background)
                me, oracle = _find(rows, **key), _find(rows, **key | {"encoder": "masked_dense"})
                if me is None and oracle is None:
                    continue
                ratio = _ratio(me, oracle, "step_ms")
                ok = ratio is not None and (ratio <= limit if background == "computed" else ratio < limit)
                lines.append(_line(f"{preset} B{batch} {amp} {variant} background {background}", ratio, "{:.2f}x", ok))
    return lines


def detail_lines(rows: list[dict], limit: int = 8) -> list[str]:
    """Top kernels and sync callers of ours at the smallest batch (natural masks), and of the peer there."""
    fine = [r for r in rows if "error" not in r and r.get("mask") is None and r.get("encoder") == "sparse"]
    smallest = min((r["batch"] for r in fine), default=None)
    lines = []
    for row in fine:
        if row["batch"] != smallest:
            continue
        lines.append(f"{row['label']}:")
        top = row.get("top_kernels") or row.get("top_host_ops") or []
        unit = "kernels" if row.get("top_kernels") else "host ops"
        lines.append(f"  top {unit} (ms per step):")
        lines += [f"    {k['ms_per_step']:7.2f}  {k['name'][:110]}" for k in top[:limit]]
        if row.get("host_syncs_by_call"):
            lines.append(f"  host syncs per step by call: {row['host_syncs_by_call']}")
        for key, title in (("sync_prone_ops", "sync-prone operators"), ("torch_syncs", "syncs torch reports")):
            found = row.get(key)
            if found:
                lines.append(f"  {title} in one step ({found['total']}):")
                lines += [f"    {n:4d}  {where}" for where, n in list(found["by_caller"].items())[:limit]]
    return lines


def summary_text(info: dict, rows: list[dict]) -> str:
    head = f"device {info.get('device')}, torch {info.get('torch')}, settings {info.get('settings')}"
    parts = [head, "", table(rows), "", "Targets (issue 18):", *target_lines(rows), "", *detail_lines(rows)]
    return "\n".join(parts) + "\n"
