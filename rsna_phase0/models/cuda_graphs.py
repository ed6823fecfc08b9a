"""A stretch of the training step replayed as two CUDA graphs, forward and backward (speed-ups `graph_wave_stages`
and `graph_decoder_loss`).

At the kaggle preset's batch of 4 an H200 waits on the host: the step runs ~3,950 host operators (profiler count)
and the GPU runs most of their kernels faster than Python launches them (46-58% busy). A CUDA graph launches a
captured stretch of kernels in one call. The WaveFormer stages (~40% of the step's host operators), and the decoder
with the loss, are such stretches (none of their operators host-synchronising, fixed shapes): each is captured once
per input signature and then replayed, its gradients handed back to autograd as any operator's would be. Outputs
that need no gradient (the loss's diagnostics) come back as non-differentiable tensors.

Rules the caller keeps (each checked, with an error that says so, where a check is possible):
- training forwards with grad enabled are replayed; evaluation forwards (eval() or no_grad) run eagerly, and so do
  forwards under a dispatch mode (the trainer's FLOP count, benchmarks' operator counts), which must see the
  operators a replay would hide;
- CUDA only: on any other device the function runs eagerly (the same function; CUDA graphs exist only there),
  which is what the default speed-ups mean on a CPU; the trainer's report says which way its stages run;
- one replay per backward: a second forward of the same signature before the first one's backward overwrites the
  activations that backward needs, so that backward raises instead of returning wrong gradients;
- parameters stay where they are (an optimizer's in-place update is fine; moving the model after the first step is
  not): the graphs read them by address.
Each GraphedFunction holds one signature at a time, in its own memory pool: a new one (a short last batch, smaller
micro-batches after an out-of-memory back-off) frees the old graphs before capturing, so memory does not grow with
the number of shapes seen.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.func import functional_call
from torch.utils._python_dispatch import _get_current_dispatch_mode

WARMUP_ITERS = 3  # eager forward + backward passes before capture, on a side stream (cuBLAS / cuDNN set-up)


def cuda_autocast_state() -> tuple[bool, torch.dtype]:
    return torch.is_autocast_enabled("cuda"), torch.get_autocast_dtype("cuda")


def signature(inputs: tuple[torch.Tensor, ...]) -> tuple:
    """What a captured graph is valid for: every input's shape, dtype, device and grad flag, and the autocast state."""
    return (*((tuple(x.shape), x.dtype, x.device, x.requires_grad) for x in inputs), cuda_autocast_state())


class _Call(nn.Module):
    """`function` as the forward of a module holding `module` (for torch.func.functional_call); never registered
    anywhere, so parameter names stay the caller's."""

    def __init__(self, module: nn.Module, function: Callable) -> None:
        super().__init__()
        self.module, self.function = module, function

    def forward(self, *inputs: torch.Tensor):
        return self.function(*inputs)


class _Captured:
    """The forward and backward graphs of `function` at one input signature, with their static buffers."""

    def __init__(self, owner: GraphedFunction, inputs: tuple[torch.Tensor, ...]):
        module, function, prefixes = owner.module, owner.function, owner.prefixes
        self.speedup = owner.speedup
        named = [(name, p) for name, p in module.named_parameters() if p.requires_grad and name.startswith(prefixes)]
        self.params = tuple(p for _, p in named)
        # the captured passes differentiate detached aliases of the parameters (the same storage, so optimizer
        # steps show), never the parameters themselves: their gradient hooks (DDP's all-reduce) must fire in the
        # real backward only, and under DDP one firing inside the capture broke it ("operation would make the
        # legacy stream depend on a capturing blocking stream")
        aliases = {f"module.{name}": p.detach().requires_grad_() for name, p in named}
        call = _Call(module, function)

        def run(*xs: torch.Tensor):
            return functional_call(call, aliases, xs)

        self.inputs_need_grad = tuple(x.requires_grad for x in inputs)
        self.static_inputs = tuple(x.detach().clone().requires_grad_(x.requires_grad) for x in inputs)
        differentiable = [x for x in self.static_inputs if x.requires_grad] + list(aliases.values())
        # the autocast the caller runs under, without its weight-cast cache (a cached cast would be captured as a
        # tensor of the first step's weights)
        enabled, dtype = cuda_autocast_state()

        def autocast():
            return torch.autocast("cuda", dtype=dtype, enabled=enabled, cache_enabled=False)

        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side), autocast():
            for _ in range(WARMUP_ITERS):
                outputs = [o for o in run(*self.static_inputs) if o.requires_grad]
                grad_outputs = [torch.ones_like(o) for o in outputs]
                torch.autograd.grad(outputs, differentiable, grad_outputs, allow_unused=True)
            # the last warm-up graph would keep its gradient accumulators, made on the side stream, alive into the
            # capture: torch 2.11 then warned of a stream mismatch in the backward capture (an extra synchronisation)
            del outputs, grad_outputs
        torch.cuda.current_stream().wait_stream(side)
        # thread_local: the DataLoader's pin-memory thread keeps calling CUDA while this thread captures
        self.forward_graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.forward_graph, capture_error_mode="thread_local"), autocast():
            self.static_outputs = tuple(run(*self.static_inputs))
        self.outputs_differentiable = tuple(o.requires_grad for o in self.static_outputs)
        differentiated = [o for o in self.static_outputs if o.requires_grad]
        self.static_grad_outputs = tuple(torch.zeros_like(o) for o in differentiated)
        self.backward_graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.backward_graph, pool=self.forward_graph.pool(), capture_error_mode="thread_local"):
            self.static_grads = torch.autograd.grad(
                differentiated, differentiable, self.static_grad_outputs, allow_unused=True
            )
        # the captured autograd graph is spent (the backward graph holds what it needs): dropping it frees it and the
        # aliases' gradient accumulators made on the capture stream
        self.static_outputs = tuple(o.detach() for o in self.static_outputs)
        self.replays = 0  # forward replays so far: a backward checks that its forward's activations are still there


class _Replay(torch.autograd.Function):
    @staticmethod
    def forward(ctx, captured: _Captured, *inputs_and_params):
        inputs = inputs_and_params[: len(captured.static_inputs)]
        for static, x in zip(captured.static_inputs, inputs, strict=True):
            static.copy_(x)
        captured.forward_graph.replay()
        captured.replays += 1
        ctx.captured, ctx.replay = captured, captured.replays
        # copies: a caller may keep the outputs past the next replay (the decoder saves them for its backward)
        outputs = tuple(o.clone() for o in captured.static_outputs)
        ctx.mark_non_differentiable(
            *(o for o, needs in zip(outputs, captured.outputs_differentiable, strict=True) if not needs)
        )
        return outputs

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, *grad_outputs):
        captured = ctx.captured
        if ctx.replay != captured.replays:
            raise RuntimeError(
                f"{captured.speedup}: this backward's forward was replayed over by a later training forward of the "
                f"same shapes, so its saved activations are gone; run one forward per backward, or remove "
                f"{captured.speedup} from the preset's speedups"
            )
        differentiated = (g for g, needs in zip(grad_outputs, captured.outputs_differentiable, strict=True) if needs)
        for static, grad in zip(captured.static_grad_outputs, differentiated, strict=True):
            if grad is None:
                static.zero_()
            else:
                static.copy_(grad)
        captured.backward_graph.replay()
        grads = iter(captured.static_grads)
        inputs = [next(grads).clone() if needs else None for needs in captured.inputs_need_grad]
        params = [None if g is None else g.clone() for g in grads]
        return (None, *inputs, *params)


class GraphedFunction:
    """`function(*tensors) -> tuple of tensors`, computed by those of `module`'s parameters whose names start with
    one of `prefixes`, replayed from CUDA graphs in training forwards (see the module docstring for the rules);
    `speedup` names the speed-up in errors."""

    def __init__(self, module: nn.Module, function: Callable, speedup: str, prefixes: tuple[str, ...] = ("",)) -> None:
        self.module, self.function, self.speedup, self.prefixes = module, function, speedup, prefixes
        self._key: tuple | None = None
        self._captured: _Captured | None = None

    def __call__(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if not self.will_replay(inputs):
            return tuple(self.function(*inputs))
        key = signature(inputs)
        if key != self._key:
            self.release()
            self._captured, self._key = _Captured(self, inputs), key
        captured = self._captured
        return _Replay.apply(captured, *inputs, *captured.params)

    def will_replay(self, inputs: tuple[torch.Tensor, ...]) -> bool:
        """Whether this call replays graphs: a training forward, on CUDA, outside any dispatch mode."""
        training = self.module.training and torch.is_grad_enabled()
        return training and all(x.is_cuda for x in inputs) and _get_current_dispatch_mode() is None

    def release(self) -> None:
        """Free the captured graphs and their memory pool (the next training forward captures anew)."""
        if self._captured is not None:
            self._captured, self._key = None, None
            torch.cuda.empty_cache()
