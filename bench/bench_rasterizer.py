"""Forward+backward time of the Gaussian rasterizer (`condense_nb.gaussians.rasterize`).

Renders D-channel features (FiT3D's 64) at 128×128 from random Gaussians in front of the camera
(projected sizes of a few pixels, like a fitted 3DGS scene) and times one forward pass plus the
backward pass of a loss on the image, for the pure-PyTorch path on the CPU and, when CUDA is
available, for the PyTorch path and gsplat on the GPU (with their ratio).

    python bench/bench_rasterizer.py                      # 10k and 50k Gaussians, 64 channels, 128×128
    python bench/bench_rasterizer.py --n 2000 --size 64 --reps 1 --threads 1
"""
import argparse
import math
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))     # run from a checkout without installing

import torch
from condense_nb.cameras import intrinsics
from condense_nb.gaussians import rasterize, _gsplat_available


def make_scene(n: int, D: int, size: int, device, seed: int = 0):
    "n Gaussians spread over the view of a 60° camera at the origin, depth 2–6, std about 1–2 px on screen."
    g = torch.Generator().manual_seed(seed)
    z = 2 + 4 * torch.rand(n, generator=g)
    t = math.tan(math.radians(30))
    xy = (torch.rand(n, 2, generator=g) * 2.2 - 1.1) * t * z[:, None]
    means = torch.cat([xy, z[:, None]], 1)
    quats = torch.randn(n, 4, generator=g)
    scales = torch.exp(torch.randn(n, 3, generator=g) * 0.4) * (0.045 * 128 / size)
    opac = 0.1 + 0.8 * torch.rand(n, generator=g)
    colors = torch.randn(n, D, generator=g)
    return [x.to(device) for x in (means, quats, scales, opac, colors)]


def time_fwd_bwd(args, K, V, size, backend, reps, sync):
    "Median seconds of forward + backward over `reps` runs (after one warm-up run)."
    times = []
    for r in range(reps + 1):
        params = [a.clone().requires_grad_() for a in args]
        sync(); t0 = time.perf_counter()
        img, alpha = rasterize(*params, V, K, size, size, backend=backend)
        (img.square().mean() + alpha.mean()).backward()
        sync(); dt = time.perf_counter() - t0
        if r: times.append(dt)
    times.sort()
    return times[len(times) // 2], alpha.mean().item()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, nargs="+", default=[10_000, 50_000], help="numbers of Gaussians")
    ap.add_argument("--size", type=int, default=128, help="image width = height")
    ap.add_argument("--channels", type=int, default=64)
    ap.add_argument("--reps", type=int, default=2, help="timed runs per setting (median reported)")
    ap.add_argument("--no-cpu", action="store_true", help="skip the CPU runs")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    a = ap.parse_args(argv)
    if a.threads: torch.set_num_threads(a.threads)

    K, V = intrinsics(60, a.size, a.size), torch.eye(4)
    print(f"torch {torch.__version__}, CPU threads {torch.get_num_threads()} (os.cpu_count {os.cpu_count()}), "
          f"CUDA {'yes: ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'no'}, "
          f"gsplat {'yes' if _gsplat_available() else 'no'}")
    print(f"forward+backward, {a.channels} channels, {a.size}x{a.size}, median of {a.reps}")
    if not a.no_cpu:
        for n in a.n:
            s, cov = time_fwd_bwd(make_scene(n, a.channels, a.size, "cpu"), K, V, a.size, "torch", a.reps, lambda: None)
            print(f"cpu   torch   N={n:>7,}  {s * 1e3:9.1f} ms   (mean alpha {cov:.2f})")
    if torch.cuda.is_available():
        sync = torch.cuda.synchronize
        Kc, Vc = K.cuda(), V.cuda()
        for n in a.n:
            args = make_scene(n, a.channels, a.size, "cuda")
            st, _ = time_fwd_bwd(args, Kc, Vc, a.size, "torch", a.reps, sync)
            line = f"cuda  torch   N={n:>7,}  {st * 1e3:9.1f} ms"
            if _gsplat_available():
                sg, _ = time_fwd_bwd(args, Kc, Vc, a.size, "gsplat", a.reps, sync)
                line += f"   gsplat {sg * 1e3:8.2f} ms   torch/gsplat {st / sg:6.1f}x"
            print(line)


if __name__ == "__main__":
    main()
