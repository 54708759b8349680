"""Shared timing helper for the bench scripts (run them from the repository root: `python bench/<script>.py`)."""
import time
import torch


def best_time(fn, repeat: int = 3) -> float:
    "Best wall time in seconds of `repeat` calls of `fn` after one warm-up call (CUDA synchronised)."
    fn()
    best = float("inf")
    for _ in range(repeat):
        if torch.cuda.is_available(): torch.cuda.synchronize()
        t = time.perf_counter(); fn()
        if torch.cuda.is_available(): torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return best
