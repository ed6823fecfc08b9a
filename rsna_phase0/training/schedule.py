"""Linear warm-up then cosine decay to a floor, as a small scheduler whose state is one integer."""

from __future__ import annotations

import math


class WarmupCosine:
    def __init__(self, optimizer, base_lr: float, warmup_steps: int, total_steps: int, min_ratio: float = 0.01):
        self.optimizer = optimizer
        self.base_lr = base_lr
        self.warmup_steps = max(0, warmup_steps)
        self.total_steps = max(1, total_steps)
        self.min_ratio = min_ratio
        self.step_count = 0
        self._apply()

    def lr_at(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.base_lr * (step + 1) / self.warmup_steps
        span = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        floor = self.base_lr * self.min_ratio
        return floor + (self.base_lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))

    @property
    def lr(self) -> float:
        return self.lr_at(self.step_count)

    def _apply(self) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr

    def step(self) -> None:
        self.step_count += 1
        self._apply()

    def state_dict(self) -> dict:
        # total_steps is recomputed from the config on resume (extending --epochs stretches the cosine)
        return {"step_count": self.step_count}

    def load_state_dict(self, state: dict) -> None:
        self.step_count = int(state["step_count"])
        self._apply()
