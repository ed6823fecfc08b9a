"""Training: preflight, the loop, checkpoints, survival (signals, budget, watchdog), DDP."""
