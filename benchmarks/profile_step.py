"""Profile mode (issue 18): where a pre-training step's time goes, ours and the MAE peer side by side.

GPU, every figure issue 18's targets need in one run (benchmarks/gpu_issue18.sh wraps it, ~4 min on an H200):
    python benchmarks/profile_step.py --device cuda --plan issue18 --json OUT/profile.json --summary OUT/summary.txt
Ad hoc rows (the product of the lists):
    python benchmarks/profile_step.py --device cuda --preset kaggle --batch-sizes 4 8 --amp bf16 fp16 \
        --variants main opt opt-graph-decgraph-fused+compile --encoders sparse masked_dense --peer
CPU check of the script (GPU fields null; host operators and sync-prone operators still counted):
    python benchmarks/profile_step.py --device cpu --preset smoke --batch-sizes 1 --quick

A row is one model, preset, batch (regions), autocast, variant and encoder:
- variant `main`: the step as before issue 18 (`Preset.speedups = ()`, AdamW unfused); `opt`: the preset's
  speed-ups (rsna_phase0/models/speedups.py) and, on CUDA, AdamW(fused=True) as the trainer does; `+name` adds an
  optional one, `-name` takes a default one out: `-onepass` one MinkowskiEngine pass per MiM level instead of one
  over both, `-graph` the WaveFormer stages eager instead of from CUDA graphs, `-decgraph` the decoder and loss
  eager instead of from CUDA graphs, `-fused` the decoder's norm + GELU pairs eagerly (torch's GroupNorm and GELU on
  (B, C, D, H, W) maps) instead of as Triton kernels, `-graph-decgraph-fused+compile` torch.compile of the dense
  parts in place of all three;
- encoder `sparse` (MinkowskiEngine) or `masked_dense` (rsna_phase0/models/masked_dense_oracle.py: DenseEncoder(mask=...),
  the same weights); optional `mask` (every view re-masked at that ratio) and `background` (`computed`: no
  background threshold, `inactive`: the preset's);
- model `mae_peer` (benchmarks/mae_peer.py) on the very same views: B regions x (1 + n_local) views per step.
The step is the trainer's: forward and backward under autocast (fp16 with GradScaler), unscale, gradient clipping
at 1.0, AdamW, and the loss read back once (the trainer logs every step). Figures per row: step ms, samples/s,
views/s, peak GiB (allocated, counted from before the warm-up so that CUDA graphs' captures count); from
benchmarks/profile_trace.py GPU busy %, kernels and host synchronisations per step, the top kernels, and the
sync-prone operators of one step by caller. Rows are written to --json as they finish.
"""

from __future__ import annotations

import argparse
import gc
import json
import re
import sys
import time
import traceback
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from mae_peer import MAE3D, parameter_count
from profile_summary import summary_text
from profile_trace import profile_steps, sync_prone_ops, torch_syncs
from throughput_measure import autocast, device_from, sync

from rsna_phase0.atomic import write_json_atomic, write_text_atomic

VARIANT_BASES = ("main", "opt")
# a variant's `+name` adds the speed-up, `-name` takes it out of opt's (rsna_phase0/presets.py STEP_SPEEDUPS and
# OPTIONAL_SPEEDUPS): opt-graph-decgraph-fused+compile is the preset's speed-ups with torch.compile in place of
# the CUDA graphs and the fused kernels
VARIANT_CHANGES = {
    "compile": "compile_dense",
    "onepass": "one_sparse_pass",
    "graph": "graph_wave_stages",
    "decgraph": "graph_decoder_loss",
    "fused": "fused_norm_gelu",
}
_BATCHES: dict = {}  # synthetic batches on the host, by preset, batch and overrides


@dataclass(frozen=True)
class Row:
    model: str  # "ours" | "mae_peer"
    preset: str
    batch: int  # regions; each gives 1 + n_local views
    amp: str  # bf16 | fp16 | none
    variant: str = "opt"  # main | opt, then +name / -name of VARIANT_CHANGES: opt-graph+compile, ...
    encoder: str = "sparse"  # sparse | masked_dense (ours only)
    mask: float | None = None  # re-mask every view at this ratio
    background: str = "preset"  # preset | computed | inactive

    @property
    def label(self) -> str:
        parts = [self.model, self.preset, f"B{self.batch}", self.amp, self.variant]
        if self.model == "ours":
            parts.append(self.encoder)
        if self.mask is not None:
            parts.append(f"mask {self.mask:.2f}")
        if self.background != "preset":
            parts.append(f"background {self.background}")
        return " ".join(parts)


def parse_variant(variant: str) -> tuple[str, set[str], set[str]]:
    """`opt-graph+onepass` -> ("opt", {"onepass"}, {"graph"}): the base, the names added and the names removed."""
    base, *changes = re.split(r"(?=[+-])", variant)
    added = {c[1:] for c in changes if c[0] == "+"}
    removed = {c[1:] for c in changes if c[0] == "-"}
    if base not in VARIANT_BASES or not (added | removed) <= set(VARIANT_CHANGES) or added & removed:
        names = ", ".join(VARIANT_CHANGES)
        raise ValueError(f"variant {variant!r}: write main or opt, then +name or -name with a name of {names}")
    return base, added, removed


def issue18_plan(quick: bool, preset: str = "kaggle") -> list[Row]:
    """The rows issue 18's targets need, most important first (a budget cut drops the tail)."""

    def ours(batch, amp, variant, **kw):
        return Row("ours", preset, batch, amp, variant, **kw)

    def peer(batch, amp, variant="opt"):
        return Row("mae_peer", preset, batch, amp, variant)

    before_after = [ours(4, amp, v) for amp in ("bf16", "fp16") for v in ("main", "opt")]
    peers = [peer(4, "bf16"), peer(4, "fp16")]
    # the oracle's WaveFormer stages are eager, so both encoders run them eagerly (the decoder and loss graphed in
    # both): the ratio is the sparse part's
    oracle = [
        ours(4, "bf16", "opt-graph", encoder=e, mask=0.6, background=bg)
        for bg in ("computed", "inactive")
        for e in ("sparse", "masked_dense")
    ]
    without_graphs = [ours(4, amp, v) for v in ("opt-fused", "opt-decgraph", "opt-graph") for amp in ("bf16", "fp16")]
    compiled = "opt-graph-decgraph-fused+compile"
    if quick:
        return before_after + without_graphs + peers + oracle[2:]
    return (
        before_after
        + peers
        + [ours(8, amp, v) for amp in ("bf16", "fp16") for v in ("main", "opt")]
        + [peer(8, "bf16"), peer(8, "fp16")]
        + oracle
        + without_graphs
        + [ours(4, amp, "opt-onepass") for amp in ("bf16", "fp16")]
        + [ours(4, amp, "opt-graph", encoder="masked_dense") for amp in ("bf16", "fp16")]
        + [ours(4, "bf16", compiled), peer(4, "bf16", "opt+compile")]
        + [ours(32, "bf16", "opt"), peer(32, "bf16")]
        + [ours(4, "fp16", compiled), ours(8, "bf16", compiled)]
    )


def grid_plan(args) -> list[Row]:
    rows = []
    for preset in args.preset:
        for batch in args.batch_sizes:
            for amp in args.amp:
                for variant in args.variants:
                    parse_variant(variant)
                    for encoder in args.encoders:
                        rows.append(Row("ours", preset, batch, amp, variant, encoder, args.mask, args.background))
                    # the peer has no speed-ups: one row per batch and autocast, compiled when ours is
                    peer = Row(
                        "mae_peer",
                        preset,
                        batch,
                        amp,
                        "opt+compile" if "compile" in parse_variant(variant)[1] else "opt",
                    )
                    if args.peer and peer not in rows:
                        rows.append(peer)
    return rows


def parse_overrides(pairs: list[str]) -> dict:
    """`--set key=value` preset overrides (e.g. stage_dims=8,64,128 for a narrow copy of a preset on the CPU)."""
    from rsna_phase0.presets import Preset, parse_tuple_field

    defaults = {f: getattr(Preset(name="x", input_size=64, patch_size=8), f) for f in Preset.__dataclass_fields__}
    overrides = {}
    for pair in pairs:
        key, _, text = pair.partition("=")
        if key not in defaults or key == "name":
            raise ValueError(f"--set {pair!r}: {key!r} is not a preset field")
        current = defaults[key]
        if isinstance(current, tuple):
            overrides[key] = parse_tuple_field(key, text, current)
        elif current is None or isinstance(current, float):
            overrides[key] = None if text.lower() == "none" else float(text)
        else:
            overrides[key] = type(current)(text)
    return overrides


def preset_of(row: Row, overrides: dict | None = None):
    from rsna_phase0.presets import STEP_SPEEDUPS, get_preset

    base, added, removed = parse_variant(row.variant)
    taken_out = {VARIANT_CHANGES[name] for name in removed}
    speedups = tuple(s for s in (() if base == "main" else STEP_SPEEDUPS) if s not in taken_out)
    speedups += tuple(VARIANT_CHANGES[name] for name in sorted(added) if VARIANT_CHANGES[name] not in speedups)
    if row.model == "mae_peer":  # the preset gives the peer its sizes only; its variant says whether it compiles
        speedups = ()
    preset = get_preset(row.preset, batch_size=row.batch, speedups=speedups, **(overrides or {}))
    if row.background == "computed":
        preset = preset.with_overrides(background_threshold=None)
    return preset


def host_batch(preset, regions: int, overrides_key: str):
    """A synthetic MRI batch of `regions` regions on the host, made once per geometry (numpy takes ~0.5 s per
    region at the users' sizes); beyond 8 regions, the 8-region batch repeated (the same speed, much sooner)."""
    from rsna_phase0.batch import MiMBatch
    from rsna_phase0.models.blob_batch import synthetic_batch

    key = (preset.name, regions, overrides_key)
    if key not in _BATCHES:
        if regions > 8 and regions % 8 == 0:
            base, k = host_batch(preset, 8, overrides_key), regions // 8
            fields = ("global_image", "global_mask", "local_image", "local_mask", "local_boxes")
            _BATCHES[key] = MiMBatch(base.modality, *(torch.cat([getattr(base, f)] * k) for f in fields))
        else:
            _BATCHES[key] = synthetic_batch(preset, regions, modality="mri")
    return _BATCHES[key]


def views_of(batch) -> torch.Tensor:
    return torch.cat([batch.global_image, batch.local_image])


def build(row: Row, device: torch.device, overrides: dict | None = None):
    """(model, a function giving the loss of one forward, the batch) for a row."""
    from throughput import oracle_of, remasked

    from rsna_phase0.models.pretrainer import Pretrainer

    preset = preset_of(row, overrides)
    batch = host_batch(preset, row.batch, json.dumps(overrides or {}, sort_keys=True)).to(device)
    if row.mask is not None:
        batch = remasked(batch, preset.grid, row.mask)
    torch.manual_seed(0)
    if row.model == "mae_peer":
        peer = MAE3D(size=preset.input_size, patch=preset.patch_size).to(device).train()
        if "compile" in parse_variant(row.variant)[1]:
            peer.compile()
        views = views_of(batch)
        return peer, lambda: peer(views), batch
    model = Pretrainer(preset).to(device).train()
    if row.encoder == "masked_dense":
        model, _ = oracle_of(model, device)
    elif row.encoder != "sparse":
        raise ValueError(f"encoder {row.encoder!r}: sparse or masked_dense")
    return model, lambda: model(batch)["loss"], batch


def training_step(model, loss_of, amp: str, device: torch.device, fused: bool):
    """The trainer's step on one batch; returns the loss as a float (one read per step, as the trainer logs)."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4, **({"fused": True} if fused else {}))
    scaler = torch.amp.GradScaler(device.type, enabled=amp == "fp16")

    def step() -> float:
        with autocast(device, amp):
            loss = loss_of()
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        scaler.step(optimizer)
        scaler.update()
        return float(loss.detach())

    return step


def measure(row: Row, device: torch.device, settings) -> dict:
    model, loss_of, batch = build(row, device, settings.overrides)
    views = views_of(batch).shape[0]
    extras = parse_variant(row.variant)[1]
    # AdamW(fused=True) is the trainer's choice on CUDA since issue 18; `main` keeps the step before it
    fused = device.type == "cuda" and parse_variant(row.variant)[0] == "opt"
    step = training_step(model, loss_of, row.amp, device, fused)
    result = {"params_m": parameter_count(model) / 1e6, "views": views}
    if device.type == "cuda":
        # from before the warm-up: a CUDA graph's capture allocates as an eager step does, but its replays then
        # write into its pool's freed blocks without allocating, so a peak taken after the captures misses them
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for _ in range(settings.warmup + (settings.compile_warmup if "compile" in extras else 0)):
        step()
    sync(device)
    result["warmup_s"] = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(settings.steps):
        loss = step()
    sync(device)
    seconds = (time.perf_counter() - start) / settings.steps
    result.update(
        step_ms=1000 * seconds,
        samples_per_s=row.batch / seconds,
        views_per_s=views / seconds,
        peak_gib=torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
        loss=loss,
    )
    result.update(profile_steps(step, device, settings.profile_steps))
    result["gpu_busy_pct_of_timed_wall"] = (
        100 * result["gpu_busy_ms_per_step"] / result["step_ms"] if result.get("gpu_busy_ms_per_step") else None
    )
    # dispatch-mode counting does not mix with compiled graphs; torch's own sync report does
    result["sync_prone_ops"] = None if "compile" in extras else sync_prone_ops(step, device)
    result["torch_syncs"] = torch_syncs(step, device)
    return result


PEER_COMPILE_SHARE = 0.4  # the peer's graph (one transformer) compiles in well under half of ours


def budget_left(settings, start: float, row: Row) -> bool:
    """Whether the row may start: time is left, and for a compiled row, enough for its compilation."""
    if settings.budget_s is None:
        return True
    needed = 0.0
    if "compile" in parse_variant(row.variant)[1]:
        needed = settings.compile_reserve_s * (PEER_COMPILE_SHARE if row.model == "mae_peer" else 1.0)
    return settings.budget_s - (time.perf_counter() - start) > needed


def run_rows(rows: list[Row], device: torch.device, settings, write) -> list[dict]:
    results, start = [], time.perf_counter()
    for row in rows:
        out = {"label": row.label, **asdict(row)}
        if not budget_left(settings, start, row):
            out["error"] = f"skipped: not enough of the {settings.budget_s:.0f} s budget left"
        else:
            try:
                out.update(measure(row, device, settings))
            except torch.cuda.OutOfMemoryError:
                out["error"] = "CUDA out of memory"
            except Exception as error:  # one failed row must not cost the run's other figures
                out["error"] = f"{type(error).__name__}: {error}"
                out["traceback"] = traceback.format_exc()[-3000:]
            finally:
                gc.collect()
                if device.type == "cuda":
                    torch.cuda.empty_cache()
        results.append(out)
        brief = {k: out.get(k) for k in ("step_ms", "views_per_s", "gpu_busy_pct", "host_syncs_per_step", "error")}
        print(f"# {row.label}: {json.dumps(brief)}", flush=True)
        write(results)
    return results


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--plan", choices=["issue18"], default=None, help="a fixed set of rows (ignores the lists)")
    parser.add_argument("--preset", nargs="+", default=None, help="default: kaggle (GPU), smoke (CPU)")
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=None, help="default: the preset's own")
    parser.add_argument("--amp", nargs="+", choices=["bf16", "fp16", "none"], default=None)
    parser.add_argument("--variants", nargs="+", default=["main", "opt"])
    parser.add_argument("--encoders", nargs="+", choices=["sparse", "masked_dense"], default=["sparse"])
    parser.add_argument("--mask", type=float, default=None, help="re-mask every view at this ratio")
    parser.add_argument("--background", choices=["preset", "computed", "inactive"], default="preset")
    parser.add_argument("--peer", action="store_true", help="also the MAE peer at the same views per step")
    parser.add_argument("--quick", action="store_true", help="fewer steps (and the plan's short form)")
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--profile-steps", type=int, default=None)
    parser.add_argument("--compile-warmup", type=int, default=3, help="extra warm-up steps of compiled rows")
    parser.add_argument("--budget-s", type=float, default=None, help="skip the rows left once this much time is spent")
    parser.add_argument(
        "--compile-reserve-s",
        type=float,
        default=90.0,
        help="start a compiled row of ours only with this much budget left (the peer's: 40%% of it)",
    )
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--summary", type=Path, default=None, help="also write the text summary here")
    args = parser.parse_args(argv)
    gpu = args.device.startswith("cuda")
    args.preset = args.preset or (["kaggle"] if gpu else ["smoke"])
    args.amp = args.amp or (["bf16", "fp16"] if gpu else ["none"])
    if not gpu and set(args.amp) & {"fp16"}:
        parser.error("fp16 autocast with GradScaler needs CUDA; use --amp none or bf16 on the CPU")
    if args.batch_sizes is None:
        from rsna_phase0.presets import get_preset

        args.batch_sizes = sorted({get_preset(name).batch_size for name in args.preset})
    args.warmup = args.warmup if args.warmup is not None else (1 if args.quick else 2)
    args.steps = args.steps if args.steps is not None else (2 if args.quick or not gpu else 8)
    args.profile_steps = args.profile_steps if args.profile_steps is not None else (1 if args.quick or not gpu else 2)
    args.overrides = parse_overrides(args.overrides)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = device_from(args.device)
    rows = issue18_plan(args.quick, args.preset[0]) if args.plan == "issue18" else grid_plan(args)
    if args.plan and device.type != "cuda":  # the plan's rows without autocast (a CPU check of the plan itself)
        rows = [replace(r, amp="none", batch=1) for r in rows if r.amp == "bf16" and r.batch == 4]
    info = {
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "argv": sys.argv[1:] if argv is None else argv,
        "settings": {
            k: getattr(args, k)
            for k in (
                "warmup",
                "steps",
                "profile_steps",
                "compile_warmup",
                "budget_s",
                "compile_reserve_s",
                "overrides",
            )
        },
    }
    print(f"# {json.dumps(info)}; {len(rows)} rows", flush=True)

    def write(results):
        if args.json:
            write_json_atomic(args.json, {"info": info, "rows": results})

    results = run_rows(rows, device, args, write)
    text = summary_text(info, results)
    print(text)
    if args.summary:
        write_text_atomic(args.summary, text)
    return 0 if any("error" not in r for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
