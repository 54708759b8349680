"""Time farthest point sampling and kNN grouping (pure PyTorch) for 1k/2k/8k points.

Usage: python bench/bench_pointops.py [--batch 8] [--groups 64] [--k 32] [--device cpu]
"""
import argparse, time
import sys
from pathlib import Path
import torch
sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import best_time
from condense_nb.pointops import fps, knn, gather_points




def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=8); ap.add_argument("--groups", type=int, default=64)
    ap.add_argument("--k", type=int, default=32); ap.add_argument("--device", default="cpu")
    a = ap.parse_args()
    print(f"device={a.device} threads={torch.get_num_threads()} torch={torch.__version__} batch={a.batch} groups={a.groups} k={a.k}")
    for N in (1024, 2048, 8192):
        x = torch.rand(a.batch, N, 3, device=a.device)
        idx = fps(x, a.groups)
        t_fps = best_time(lambda: fps(x, a.groups))
        c = gather_points(x, idx)
        t_knn = best_time(lambda: knn(c, x, a.k))
        print(f"N={N:5d}: fps({a.groups}) {1e3 * t_fps:8.2f} ms   knn({a.groups} queries, k={a.k}) {1e3 * t_knn:8.2f} ms   (batch of {a.batch})")


if __name__ == "__main__":
    main()
