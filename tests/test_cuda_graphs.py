"""`graph_wave_stages` and `graph_decoder_loss`: the WaveFormer stages, and the decoder with the loss, replayed from
CUDA graphs train exactly as the eager model does."""

from __future__ import annotations

import pytest
import torch
from model_helpers import without_graphs

from rsna_phase0.models.blob_batch import synthetic_batch
from rsna_phase0.models.losses import LOSS_TERMS
from rsna_phase0.models.pretrainer import Pretrainer
from rsna_phase0.presets import get_preset

GRAPHED = ("graph_wave_stages", "graph_decoder_loss")


def eager_and_graphed(preset_name: str = "smoke", device: str = "cpu"):
    """The preset's default model (CUDA graphs on) and the same weights with no CUDA graphs."""
    preset = get_preset(preset_name)
    assert set(GRAPHED) <= set(preset.speedups)  # on by default
    torch.manual_seed(0)
    graphed = Pretrainer(preset).to(device)
    eager = Pretrainer(preset.with_overrides(speedups=without_graphs(preset.speedups))).to(device)
    eager.load_state_dict(graphed.state_dict())
    return preset, eager, graphed


def test_graphed_stages_keep_parameter_names_and_refuse_compile_dense():
    _, eager, graphed = eager_and_graphed()
    assert list(graphed.state_dict()) == list(eager.state_dict())
    for graphs in ((GRAPHED[0],), (GRAPHED[1],), GRAPHED):
        with pytest.raises(ValueError, match=f"compile_dense and {' and '.join(graphs)} claim"):
            get_preset("smoke", speedups=("compile_dense", *graphs))


def test_graphed_stages_evaluate_eagerly_and_train_eagerly_on_the_cpu():
    """The default speed-ups on a CPU: no CUDA graphs there, so the stages, decoder and loss run eagerly, loss,
    diagnostics and gradients those of the eager model (to the bit with OMP_NUM_THREADS=1; unset, two threads here,
    MinkowskiEngine's CPU sums combine in thread order, and the same batch's terms differed by up to ~5e-7)."""
    preset, eager, graphed = eager_and_graphed()
    batch = synthetic_batch(preset, 1, modality="mri", seed=0)
    eager.eval(), graphed.eval()
    with torch.no_grad():
        assert graphed(batch)["loss"].item() == pytest.approx(eager(batch)["loss"].item(), rel=1e-6)
    eager.train(), graphed.train()
    outs = [model(batch) for model in (eager, graphed)]
    assert list(outs[1]) == list(outs[0])
    for key, value in outs[0].items():
        assert _same(outs[1][key], value) or torch.allclose(outs[1][key], value, rtol=1e-5, atol=1e-6), key
    for out in outs:
        out["loss"].backward()
    grads = [{n: p.grad for n, p in model.named_parameters() if p.grad is not None} for model in (eager, graphed)]
    # MinkowskiEngine's CPU sums in thread order (two eager runs differ by ~2e-8 of the largest gradient)
    _close_to(grads[1], grads[0], 1e-6)
    assert graphed.encoder.graphed_wave_stages._captured is None  # nothing was captured
    assert all(g._captured is None for g in graphed.graphed_decode_losses.values())


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal to the bit, NaN equal to NaN (align_shuffled is NaN with a single region)."""
    return bool(((a == b) | (a.isnan() & b.isnan())).all())


def _close_to(actual: dict, expected: dict, tol: float) -> None:
    """Each gradient within `tol` of the largest gradient's size (rounding of a near-zero gradient is noise)."""
    assert actual.keys() == expected.keys()
    scale = max(g.abs().max().item() for g in expected.values())
    for name, grad in expected.items():
        torch.testing.assert_close(actual[name], grad, rtol=tol, atol=tol * scale, msg=name)


def _amp(amp: str):
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp, torch.float32)
    return torch.autocast("cuda", dtype=dtype, enabled=amp != "fp32")


@pytest.mark.gpu
@pytest.mark.parametrize("amp", ["fp32", "bf16", "fp16"])
# torch 2.11 warns when a capture meets gradient accumulators of another stream (the warm-up's, once kept alive)
@pytest.mark.filterwarnings("error:The AccumulateGrad node's stream")
def test_cuda_graphed_stages_train_like_eager_stages(amp, monkeypatch):
    """Five AdamW steps side by side, new data each step: MRI and CT batches in turn (a decoder-and-loss graph per
    modality, both held), then a new batch shape (fresh captures) and back to the other modality."""
    preset, eager, graphed = eager_and_graphed(device="cuda")
    optimizers = [torch.optim.AdamW(m.parameters(), lr=1e-3) for m in (eager, graphed)]
    tol = 1e-4 if amp == "fp32" else 2e-2
    # float32 is float32 here: cuDNN's TF32 rounds at ~1e-3 and may pick another algorithm inside a capture
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    for step, (modality, regions) in enumerate([("mri", 2), ("ct", 2), ("mri", 2), ("mri", 1), ("ct", 2)]):
        batch = synthetic_batch(preset, regions, modality=modality, seed=step).to("cuda")
        outs, grads = [], []
        for model, optimizer in zip((eager, graphed), optimizers, strict=True):
            optimizer.zero_grad(set_to_none=True)
            with _amp(amp):
                out = model(batch)
            out["loss"].float().backward()
            outs.append({k: v.float().item() for k, v in out.items()})
            grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
            optimizer.step()
        assert not any(v.requires_grad for k, v in out.items() if k not in LOSS_TERMS)
        # the loss terms and the diagnostics (outputs without a gradient): all of order one (normalised errors,
        # shares, cosines), so `tol` bounds the absolute error too (a cosine near zero moves by ~1e-6 in float32)
        for key, value in outs[0].items():
            assert outs[1][key] == pytest.approx(value, rel=tol, abs=tol, nan_ok=True), f"step {step} {key}"
        _close_to(grads[1], grads[0], tol)
    stages = graphed.encoder.graphed_wave_stages._captured
    assert stages is not None and stages.replays == 1  # the last shape was captured anew and replayed once
    decode = {m: g._captured for m, g in graphed.graphed_decode_losses.items()}
    # MRI: captured anew at batch 1 and replayed once; CT: its graph held across the MRI steps, replayed twice
    assert decode["mri"].replays == 1 and decode["ct"].replays == 2, {m: c.replays for m, c in decode.items()}


@pytest.mark.gpu
def test_cuda_graphed_stages_refuse_a_backward_whose_activations_were_replayed_over():
    preset, _, graphed = eager_and_graphed(device="cuda")
    batch = synthetic_batch(preset, 1, modality="mri", seed=0).to("cuda")
    first = graphed(batch)["loss"]
    second = graphed(batch)["loss"]
    with pytest.raises(RuntimeError, match="replayed over by a later training forward"):
        first.backward()
    second.backward()
    assert all(p.grad is not None for p in graphed.encoder.wave_stages.parameters())


@pytest.mark.gpu
def test_cuda_out_of_memory_inside_a_capture_reaches_the_trainer_and_the_next_step_captures():
    """The trainer backs off on torch.cuda.OutOfMemoryError (smaller micro-batches): one raised inside the capture
    must arrive as itself, with no capture left open, and the retry must capture and train."""
    preset, _, graphed = eager_and_graphed(device="cuda")
    batch = synthetic_batch(preset, 2, modality="mri", seed=0).to("cuda")
    stages = graphed.encoder.graphed_wave_stages
    function = stages.function

    def out_of_memory_in_capture(*inputs):
        if torch.cuda.is_current_stream_capturing():
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (raised inside the capture by the test)")
        return function(*inputs)

    stages.function = out_of_memory_in_capture
    with pytest.raises(torch.cuda.OutOfMemoryError, match="inside the capture"):
        graphed(batch)
    assert not torch.cuda.is_current_stream_capturing() and stages._captured is None
    stages.function = function
    graphed.zero_grad(set_to_none=True)
    graphed(synthetic_batch(preset, 1, modality="mri", seed=1).to("cuda"))["loss"].backward()
    assert all(p.grad is not None for p in graphed.encoder.wave_stages.parameters())


def wave_stage_inputs(preset, n: int):
    """What the WaveFormer stages take: the last sparse stage's map and each WaveFormer stage's hidden mask."""
    first, size = preset.sparse_stages, preset.input_size
    h = torch.randn(n, preset.stage_dims[first - 1], *(3 * [size // 2**first]), device="cuda", requires_grad=True)
    sides = [size // 2 ** (i + 1) for i in range(first, len(preset.stage_dims))]
    return h, [torch.rand(n, r, r, r, device="cuda") < 0.6 for r in sides]


def _launches(run) -> dict[str, int]:
    """Kernel and graph launches of one call of `run` (after a warm-up call: the capture, when graphed)."""
    from torch.profiler import ProfilerActivity, profile

    run()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        run()
        torch.cuda.synchronize()
    names = [e.name for e in prof.events()]
    return {k: sum(n.startswith(k) for n in names) for k in ("cudaLaunchKernel", "cudaGraphLaunch")}


@pytest.mark.gpu
def test_cuda_graphed_stages_launch_their_kernels_as_graphs():
    """A graphed step launches four CUDA graphs (forward and backward of the WaveFormer stages and of the decoder
    with the loss) in place of most of their own launches."""
    preset, eager, graphed = eager_and_graphed(device="cuda")
    batch = synthetic_batch(preset, 2, modality="mri", seed=0).to("cuda")
    plain = _launches(lambda: eager(batch)["loss"].backward())
    replayed = _launches(lambda: graphed(batch)["loss"].backward())
    h, masks = wave_stage_inputs(preset, 4)

    def stages_alone():
        maps = eager.encoder.wave_maps(h, masks)
        sum(m.float().sum() for m in maps).backward()

    stages = _launches(stages_alone)["cudaLaunchKernel"]
    assert plain["cudaGraphLaunch"] == 0 and replayed["cudaGraphLaunch"] == 4, (plain, replayed)
    assert plain["cudaLaunchKernel"] - replayed["cudaLaunchKernel"] > stages, (plain, replayed, stages)


def test_graphed_stages_run_eagerly_under_a_dispatch_mode_so_flops_are_counted():
    """The trainer's FLOP count (a dispatch mode) must see the stages' operators, which a replay would hide."""
    from rsna_phase0.training.t4_budget import count_step_flops

    preset, eager, graphed = eager_and_graphed()
    batch = synthetic_batch(preset, 1, modality="mri", seed=0)
    assert count_step_flops(graphed, batch).dense == count_step_flops(eager, batch).dense > 0


def _ddp_rank(rank: int, world: int, store_file: str) -> None:
    """One DDP rank on cuda:0 (gloo: two ranks may share a GPU), graphed and eager models side by side."""
    import torch.distributed as dist

    from rsna_phase0.training.distributed import wrap_ddp

    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    dist.init_process_group("gloo", init_method=f"file://{store_file}", rank=rank, world_size=world)
    try:
        preset, eager, graphed = eager_and_graphed(device="cuda")
        grads = []
        for model in (eager, graphed):
            ddp = wrap_ddp(model, torch.device("cuda"))
            for step in range(2):  # the capture, then a replay
                model.zero_grad(set_to_none=True)
                batch = synthetic_batch(preset, 1, modality="mri", seed=10 * step + rank).to("cuda")
                ddp(batch, touch_idle=True)["loss"].backward()
            grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
        _close_to(grads[1], grads[0], 1e-4)
        # the ranks saw different batches: equal gradients on both mean the graphed ones were all-reduced
        for grad in grads[1].values():
            other = grad.clone()
            dist.broadcast(other, src=0)
            assert torch.equal(other, grad)
    finally:
        dist.destroy_process_group()


@pytest.mark.gpu
def test_cuda_graphed_stages_under_ddp_reduce_like_eager_stages(tmp_path):
    """The trainer's DDP wrapper (bucket views, every parameter in every backward) over graphed stages: two ranks,
    the gradients after the all-reduce those of the eager stages."""
    import torch.multiprocessing as mp

    mp.spawn(_ddp_rank, args=(2, str(tmp_path / "store")), nprocs=2, join=True)
