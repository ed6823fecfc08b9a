"""The peer a user could pick instead of ours: a plain MAE-style 3D ViT at the users' Kaggle shape (issue 18).

64^3 single-channel views cut into 8^3 patches (512 tokens), embed 512, depth 8, 8 heads, 75% of the patches hidden
per view and only the visible tokens encoded, a 2-block decoder of width 256 that fills the hidden ones with a
mask token, and MSE on per-patch-normalised voxels of the hidden patches (MAE's norm_pix_loss): ~28M parameters,
a few dozen lines of PyTorch. benchmarks/profile_step.py runs it beside ours at the same views per step; alone:
    python benchmarks/mae_peer.py --device cuda --views 20 40 160 --amp bf16 [--compile]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn


def sincos_table(tokens_per_axis: int, dim: int) -> torch.Tensor:
    """Fixed 3D sine-cosine position code (n^3, dim), as MAE's 2D one extended to three axes."""
    per_axis = dim // 6
    freqs = 1.0 / 10000 ** (torch.arange(per_axis, dtype=torch.float32) / per_axis)
    axes = torch.meshgrid(*(torch.arange(tokens_per_axis, dtype=torch.float32),) * 3, indexing="ij")
    parts = [f(a.reshape(-1, 1) * freqs) for a in axes for f in (torch.sin, torch.cos)]
    table = torch.cat(parts, dim=1)
    return F.pad(table, (0, dim - table.shape[1]))


class Block(nn.Module):
    """Pre-norm transformer block: attention (fused SDPA) + MLP x4."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(self.norm1(x)).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        x = x + self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, c))
        return x + self.mlp(self.norm2(x))


class MAE3D(nn.Module):
    def __init__(
        self,
        size: int = 64,
        patch: int = 8,
        channels: int = 1,
        dim: int = 512,
        depth: int = 8,
        heads: int = 8,
        decoder_dim: int = 256,
        decoder_depth: int = 2,
        mask_ratio: float = 0.75,
    ) -> None:
        super().__init__()
        self.patch, self.grid, self.mask_ratio = patch, size // patch, mask_ratio
        voxels = patch**3 * channels
        self.embed = nn.Linear(voxels, dim)
        self.register_buffer("pos", sincos_table(self.grid, dim), persistent=False)
        self.blocks = nn.ModuleList(Block(dim, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.decoder_embed = nn.Linear(dim, decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        self.register_buffer("decoder_pos", sincos_table(self.grid, decoder_dim), persistent=False)
        self.decoder_blocks = nn.ModuleList(Block(decoder_dim, max(decoder_dim // 64, 1)) for _ in range(decoder_depth))
        self.decoder_norm = nn.LayerNorm(decoder_dim)
        self.head = nn.Linear(decoder_dim, voxels)
        nn.init.normal_(self.mask_token, std=0.02)

    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, S, S, S) -> (B, g^3, p^3 * C)."""
        b, c, p, g = x.shape[0], x.shape[1], self.patch, self.grid
        x = x.reshape(b, c, g, p, g, p, g, p).permute(0, 2, 4, 6, 3, 5, 7, 1)
        return x.reshape(b, g**3, p**3 * c)

    def forward(self, volumes: torch.Tensor) -> torch.Tensor:
        """The MAE loss of a batch of views (B, C, S, S, S), each with its own random mask."""
        patches = self.patchify(volumes)
        b, n, _ = patches.shape
        keep = max(1, int(round(n * (1 - self.mask_ratio))))
        order = torch.rand(b, n, device=volumes.device).argsort(dim=1)  # random per view, no host sync
        restore = order.argsort(dim=1)
        visible = order[:, :keep]
        x = (self.embed(patches) + self.pos).gather(1, visible[..., None].expand(-1, -1, self.pos.shape[1]))
        for block in self.blocks:
            x = block(x)
        y = self.decoder_embed(self.norm(x))
        y = torch.cat([y, self.mask_token.to(y.dtype).expand(b, n - keep, -1)], dim=1)
        y = y.gather(1, restore[..., None].expand(-1, -1, y.shape[2])) + self.decoder_pos
        for block in self.decoder_blocks:
            y = block(y)
        prediction = self.head(self.decoder_norm(y)).float()
        target = patches.float()
        target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6).sqrt()
        hidden = torch.ones(b, n, device=volumes.device).scatter_(1, visible, 0.0)
        return (((prediction - target) ** 2).mean(-1) * hidden).sum() / hidden.sum()


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def main(argv: list[str] | None = None) -> int:
    from throughput_measure import autocast, sync

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--views", nargs="+", type=int, default=[20, 40])
    parser.add_argument("--amp", choices=["bf16", "fp16", "none"], default=None, help="default: bf16 (GPU), none (CPU)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    parser.add_argument("--size", type=int, default=64, help="view side in voxels (64: the users' Kaggle shape)")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    amp = args.amp or ("bf16" if device.type == "cuda" else "none")
    for views in args.views:
        torch.manual_seed(0)
        model = MAE3D(size=args.size).to(device)
        if args.compile:
            model.compile()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        scaler = torch.amp.GradScaler(device.type, enabled=amp == "fp16")
        volumes = torch.rand(views, 1, args.size, args.size, args.size, device=device)
        for i in range(args.warmup + args.steps):
            if i == args.warmup:
                sync(device)
                start = time.perf_counter()
            with autocast(device, amp):
                loss = model(volumes)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        sync(device)
        seconds = (time.perf_counter() - start) / args.steps
        row = {"views": views, "amp": amp, "compile": args.compile, "params_m": parameter_count(model) / 1e6}
        row.update(step_ms=1000 * seconds, views_per_s=views / seconds, loss=float(loss.detach()))
        print(json.dumps(row), flush=True)
    return 0 if math.isfinite(row["loss"]) else 1


if __name__ == "__main__":
    sys.exit(main())
